"""Optimizer and learning-rate schedule as the ZegCLIP authors configured them in mmseg/mmcv.

- AdamW over the trainable parameters only (deep prompts, the post-encoder LayerNorm, relationship descriptor and
  decoder); mmseg's ``paramwise_cfg`` gives the backbone prompts and the head ``lr_mult=10`` (so 2e-5 becomes 2e-4).
- mmcv's ``PolyLrUpdaterHook``: ``lr = (base - min_lr) * (1 - step / max_steps) ** power + min_lr``, with a linear
  warm-up that scales that value by ``1 - (1 - step / warmup) * (1 - warmup_ratio)`` (ratio 1e-6).

The schedule is a :class:`torch.optim.lr_scheduler.LambdaLR`, so its position is part of a checkpoint.
"""

from __future__ import annotations

from typing import Callable

import torch

from magicseg_models.config import OptimConfig

WARMUP_RATIO = 1e-6  # mmcv's default, as in the ZegCLIP configs


def parameter_groups(model: torch.nn.Module, optim: OptimConfig) -> list[dict]:
    """All trainable parameters at ``lr x head_lr_mult`` with ``weight_decay``.

    The authors' ``paramwise_cfg`` also lists ``norm``/``ln`` with ``decay_mult=0``, but mmcv tries the longer keys
    first and every trainable name starts with ``backbone`` or ``decode_head`` (``head``), so in their runs the
    norms were decayed too; we do what their runs did.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": params, "lr": optim.lr * optim.head_lr_mult, "weight_decay": optim.weight_decay}] if params \
        else []


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    groups = parameter_groups(model, optim)
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=groups[0]["lr"])
    # Adam's weight decay is L2 in the gradient, not decoupled: the paper's text says Adam without decay
    return torch.optim.Adam([{**g, "weight_decay": 0.0} for g in groups], lr=groups[0]["lr"])


def lr_factor(step: int, base_lr: float, optim: OptimConfig, max_steps: int) -> float:
    """Multiplier of ``base_lr`` at ``step`` (0-based: the lr used for the update that makes step ``step + 1``)."""
    if optim.schedule == "constant":
        lr = base_lr
    else:
        progress = min(step, max_steps) / max(max_steps, 1)
        lr = (base_lr - optim.min_lr) * (1.0 - progress) ** optim.power + optim.min_lr
    if optim.warmup_iters and step < optim.warmup_iters:
        lr *= 1.0 - (1.0 - step / optim.warmup_iters) * (1.0 - WARMUP_RATIO)
    return lr / base_lr


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig,
                    max_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    lambdas: list[Callable[[int], float]] = [
        (lambda step, base=group["lr"]: lr_factor(step, base, optim, max_steps)) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
