"""What machine a benchmark ran on: every RESULT line is only comparable on the same card or CPU."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def device_label(device) -> str:
    """``cuda:NVIDIA-H100-80GB-HBM3`` or ``cpu-2threads``: the RESULT lines' ``device=`` value."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return "cuda:" + torch.cuda.get_device_name(device).replace(" ", "-")
    return f"cpu-{torch.get_num_threads()}threads"


def machine(device) -> str:
    """A longer description for the header line: card name, or CPU count x model."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return f"cpu:{os.cpu_count()}x{cpu_model()}".replace(" ", "_")
