"""Device and precision for every model module: which device, which dtype, autocast and TF32 per call.

One place for these so that the generator, the detector, SAM, ZegCLIP and evaluation agree on what ``None`` or
``"auto"`` means and on how a half dtype falls back on a CPU.
"""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/"auto": the first CUDA GPU when there is one, else the CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The configured dtype, except float16 on a CPU (slow and partly unsupported there), which runs in float32."""
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        return torch.float32
    return dtype


def autocast_context(device: torch.device, dtype: str):
    """Autocast on a GPU when a half dtype is asked for; a CPU always runs float32."""
    if dtype == "float32" or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


@contextlib.contextmanager
def matmul_tf32(enabled: bool):
    """TF32 for float32 matmuls inside the block only. torch's switch is process-wide, and stages that share a
    process (the generator and the annotator in a plain loop) must each keep their own setting; cuBLAS reads it
    when a matmul is launched, so scoping the calls is enough."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


@contextlib.contextmanager
def model_context(device: torch.device, config):
    """One detector or SAM call: autocast to ``config.dtype`` on a GPU, TF32 matmuls when ``config.tf32``."""
    with autocast_context(device, config.dtype), matmul_tf32(config.tf32):
        yield


def training_autocast(device: torch.device):
    """Training's mixed precision: bfloat16 autocast on a GPU that supports it, else float32 (a CPU, older GPUs)."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
