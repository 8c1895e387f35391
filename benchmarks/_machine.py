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


def load_average() -> str:
    """The 1/5/15-minute load average, ``load=0.12/0.30/0.25``: a figure taken on a busy machine says so."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load=unknown"
    return f"load={one:.2f}/{five:.2f}/{fifteen:.2f}"


def spread(values) -> dict:
    """Best, median and relative spread ((max - min) / min) of a benchmark's repeats (times: lower is better)."""
    values = sorted(float(v) for v in values)
    if not values:
        raise ValueError("spread() needs at least one value")
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    rel = (values[-1] - values[0]) / values[0] if values[0] > 0 else float("inf")
    return {"best": values[0], "median": median, "spread": rel, "n": len(values)}


def ratio_note(numerator: dict, denominator: dict, ratio: float) -> str:
    """``meaningful`` unless the repeats of either side spread wider than the ratio's distance from 1, in which
    case the ratio cannot tell the two paths apart on this machine at this load."""
    noise = max(numerator["spread"], denominator["spread"])
    return "meaningful" if abs(ratio - 1.0) > noise else f"not-meaningful(spread {noise:.0%} >= |ratio-1|)"


def describe(values, unit: str = "s") -> str:
    """``best 1.234 s (median 1.300, spread 12% over 3)``: the best repeat and how far the repeats spread."""
    s = spread(values)
    return f"best {s['best']:.4g} {unit} (median {s['median']:.4g}, spread {s['spread']:.0%} over {s['n']})"


def print_load(when: str) -> str:
    """Prints and returns the load average, ``when`` = ``start`` or ``end``: a figure from a busy machine says so."""
    load = load_average()
    print(f"load average at {when}: {load}", flush=True)
    return load


def noise_fields(numerator_times, denominator_times, ratio: float) -> str:
    """``spread=0.050 meaningful=yes`` for a RESULT line: the wider spread of the two sides' repeats, and whether
    the ratio stands out of it (see :func:`ratio_note`)."""
    a, b = spread(numerator_times), spread(denominator_times)
    ok = ratio_note(a, b, ratio) == "meaningful"
    return f"spread={max(a['spread'], b['spread']):.3f} meaningful={'yes' if ok else 'no'}"
