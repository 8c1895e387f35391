"""MagicSeg training of ZegCLIP: the loop one worker runs, with no Ray or Prefect in it.

``train_worker(config, context)`` is the whole training of one rank: the Ray Train glue (``tasks/train_ray.py``)
calls it inside each Ray Train worker, and a test or notebook can call it directly with a single-process context.

One optimizer step (``config.optim.batch_size`` images over all ranks):

1. Each rank takes ``accumulation`` micro-batches of ``micro_batch_size`` images from its disjoint share of the
   shards (:mod:`magicseg_models.training.data`).
2. Per image, category random sampling picks m classes (own classes first, never its context classes under
   ``train.labels.context: ignore | label``) and remaps the masks to them
   (:mod:`magicseg_models.training.sampling`); their frozen text embeddings come from a bank computed once.
   ``train.filter`` skips samples in the loader; rank 0 logs how many each filter removes.
3. The image and its counterfactual go through the prompted encoder as one batch; the decoder runs on the image
   half only. Loss: focal x100 + dice x1 over the sampled classes, ``max(0, cos)`` x1 between the two global
   embeddings (:mod:`magicseg_models.training.losses`).
4. Gradients are averaged over micro-batches and ranks (DDP; no all-reduce until the last micro-batch), then
   AdamW and the poly schedule step.

Randomness is re-seeded from ``(seed, step, rank)`` at every step (class sampling, dropout), so a resumed run
draws what an uninterrupted run would have drawn at the same step. The data stream restarts at the epoch that
was in progress at the checkpoint (a new pass over it, in the same seeded order).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from magicseg_models.config import TrainConfig, public_config
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.storage import Storage
from magicseg_models.devices import training_autocast
from magicseg_models.errors import ConfigError, StorageError
from magicseg_models.training import checkpoints as ckpt
from magicseg_models.training.data import filter_report, make_train_loader
from magicseg_models.training.losses import MagicSegLoss
from magicseg_models.training.metrics_log import MetricsLog
from magicseg_models.training.sampling import draw_batch
from magicseg_models.training.selection import FilterReport
from magicseg_models.training.schedule import build_optimizer, build_scheduler


@dataclass
class WorkerContext:
    """Where this worker sits: rank, world size, device, and how it reports (Ray Train's report, or print)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    report: Callable[[dict], None] | None = None
    log: Callable[[str], None] = print

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def accumulation_plan(config: TrainConfig) -> tuple[int, int]:
    """(micro_batch_size, accumulation steps) that make ``optim.batch_size`` over ``workers`` ranks."""
    batch, workers = config.optim.batch_size, config.workers
    micro = config.optim.micro_batch_size or batch // workers
    if micro < 1 or batch % (workers * micro):
        raise ConfigError(f"optim.batch_size={batch} is not workers ({workers}) x micro_batch_size ({micro}) x an "
                          "integer number of accumulation steps; change one of them")
    return micro, batch // (workers * micro)


class TrainForward(nn.Module):
    """What DDP wraps: image and counterfactual through the same encoder in one batch, the decoder on the image."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, class_embeddings: torch.Tensor,
                counterfactuals: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        n = images.shape[0]
        both = images if counterfactuals is None else torch.cat([images, counterfactuals])
        patch, cls = self.model.encode_image(both)
        logits = self.model.decode(patch[:n], cls[:n], class_embeddings, tuple(images.shape[-2:]))
        return {"mask_logits": logits, "cls": cls[:n], "cls_counterfactual": cls[n:] if n < cls.shape[0] else None}


def _step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1, np.uint64)[0] % (2**63))


def _mean_over_ranks(values: dict[str, float], world_size: int, device: torch.device) -> dict[str, float]:
    if world_size == 1 or not dist.is_initialized():
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / world_size for k, v in zip(keys, t.tolist())}


def _masks_over_ranks(present: torch.Tensor, ctx: WorkerContext) -> torch.Tensor:
    """The focal/dice normaliser: present masks averaged over ranks (ZegCLIP's criterion), so every image weighs
    the same whichever rank it landed on."""
    count = present.sum().float()
    if ctx.world_size > 1 and dist.is_initialized():
        count = count.clone()
        dist.all_reduce(count)
        count = count / ctx.world_size
    return count.clamp(min=1.0)


def _finite_everywhere(values: dict[str, float], ctx: WorkerContext) -> bool:
    finite = all(math.isfinite(v) for v in values.values())
    if ctx.world_size > 1 and dist.is_initialized():
        flag = torch.tensor([0.0 if finite else 1.0], device=ctx.device)
        dist.all_reduce(flag)
        return float(flag) == 0.0
    return finite


def dataset_classes(reader: DatasetReader) -> list[str]:
    classes = reader.classes
    if not classes:
        raise StorageError(f"{reader.uri}/manifest.json lists no 'classes': cannot map class ids to names")
    return classes


def check_output(config: TrainConfig) -> int | None:
    """Before a run: the step a ``--resume`` continues from; refuses to train over checkpoints without it."""
    return check_run(config)[0]


def check_run(config: TrainConfig) -> tuple[int | None, FilterReport | None]:
    """:func:`check_output`, and what ``train.filter`` removes (refused in one line when the dataset lacks a score
    a filter needs)."""
    if not config.data or not config.out:
        raise ConfigError("training needs data (a dataset URI) and out (where checkpoints and metrics go)")
    accumulation_plan(config)
    reader = DatasetReader(config.data, config.storage.storage_options)  # fails here, in one line, not in a worker
    if len(reader) == 0:
        raise StorageError(f"{reader.uri} holds no samples to train on")
    dataset_classes(reader)
    report = filter_report(reader, config.filter)
    latest = ckpt.latest_checkpoint(Storage(config.out, config.storage.storage_options))
    if latest is not None and not config.resume:
        raise ConfigError(f"{config.out} already holds checkpoints (latest step {latest}): pass --resume to "
                          "continue, or another --out")
    return latest, report


def train_worker(config: TrainConfig, context: WorkerContext | None = None) -> dict[str, Any]:
    """Train (or resume) on ``config.data`` into ``config.out``; returns the final figures (same on every rank)."""
    ctx = context or WorkerContext()
    if not config.data or not config.out:
        raise ConfigError("training needs data (a dataset URI) and out (where checkpoints and metrics go)")
    micro, accumulation = accumulation_plan(config)
    out = Storage(config.out, config.storage.storage_options)
    reader = DatasetReader(config.data, config.storage.storage_options)
    if len(reader) == 0:
        raise StorageError(f"{reader.uri} holds no samples to train on")
    classes = dataset_classes(reader)
    filtered = filter_report(reader, config.filter) if ctx.is_main else None
    if filtered is not None:
        ctx.log(filtered.line())

    bundle, bank = _build_model(config, ctx, classes)
    optimizer = build_optimizer(bundle.model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim, config.steps)
    run = _Training(config, ctx, _distributed(TrainForward(bundle.model), ctx), optimizer, scheduler,
                    MagicSegLoss(config.loss), bank, len(classes), accumulation)
    step, epoch = _resume(config, ctx, out, bundle.model, optimizer, scheduler)
    metrics = MetricsLog(out, resume_step=step) if ctx.is_main else None
    run.batches = iter(_train_loader(config, ctx, bundle, micro, epoch))
    meta = {"model": public_config(config.model), "train": public_config(config), "classes": len(classes),
            "dataset": reader.uri, "init_seed": config.seed,
            "data_filter": filtered.as_dict() if filtered is not None else None}

    run.forward.train()
    last: dict[str, float] = {}
    window = _Window()
    while step < config.steps:
        sums, lr, epoch = run.optimizer_step(step, window)
        step += 1
        if step % config.log_every == 0 or step == config.steps:
            last = _log_step(ctx, metrics, window, step, sums, lr, epoch)
        if step % config.checkpoint_every == 0 or step == config.steps:
            _checkpoint(config, ctx, out, bundle.model, optimizer, scheduler, step, epoch, meta)
    curve = metrics.write_curve() if metrics is not None else None
    return {"step": step, "out": out.uri, "checkpoint": out.url(ckpt.step_dir(step)), "loss_curve": curve,
            "metrics": out.url("metrics.jsonl"), "last": last, "classes": len(classes),
            "data_filter": filtered.as_dict() if filtered is not None else None}


# ------------------------------------------------------------------------------------ train_worker's steps
def _build_model(config: TrainConfig, ctx: WorkerContext, classes: list[str]):
    """The model and the frozen text bank (V x D, computed once per vocabulary); the same init on every rank (the
    build is seeded). The text tower is dropped afterwards: the run never needs it again."""
    from magicseg_models.zegclip.build import build_zegclip

    bundle = build_zegclip(config.model, device=ctx.device, seed=config.seed)
    if ctx.is_main:
        ctx.log(bundle.summary())
    bank = bundle.class_embeddings(classes).to(ctx.device)
    del bundle.text_encoder
    return bundle, bank


def _distributed(forward: TrainForward, ctx: WorkerContext) -> nn.Module:
    """DDP over the ranks when there are several (parameters no loss reaches make DDP look for unused ones)."""
    if ctx.world_size > 1 and dist.is_initialized():
        unreached = bool(forward.model.parameters_without_gradient())
        return nn.parallel.DistributedDataParallel(
            forward, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=unreached)
    return forward


def _resume(config: TrainConfig, ctx: WorkerContext, out: Storage, model: nn.Module, optimizer, scheduler
            ) -> tuple[int, int]:
    """(step, epoch) to start at: 0, or the latest checkpoint under OUT (every rank loads the same files)."""
    latest = ckpt.latest_checkpoint(out) if config.resume else None
    if config.resume and latest is None and ctx.is_main:
        ctx.log(f"--resume: no checkpoint under {out.uri}, starting at step 0")
    if latest is None:
        return 0, 0
    loaded = ckpt.load_checkpoint(Storage(out.url(ckpt.step_dir(latest)), config.storage.storage_options))
    model.load_trainable_state_dict(loaded["weights"])
    optimizer.load_state_dict(loaded["state"]["optimizer"])
    scheduler.load_state_dict(loaded["state"]["scheduler"])
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)  # a resume with another --steps follows the new schedule
    ckpt.set_rng_state(loaded["state"]["rng"])
    step, epoch = int(loaded["state"]["step"]), int(loaded["state"].get("epoch", 0))
    if ctx.is_main:
        ctx.log(f"resumed from {out.url(ckpt.step_dir(latest))} at step {step}")
    return step, epoch


def _train_loader(config: TrainConfig, ctx: WorkerContext, bundle, micro: int, epoch: int):
    """This rank's share of the shards, from ``epoch`` on, in micro-batches."""
    return make_train_loader(config.data, config.storage.storage_options, config.augment, batch_size=micro,
                             rank=ctx.rank, world_size=ctx.world_size, num_workers=config.data_workers,
                             seed=config.seed, mean=bundle.image_mean, std=bundle.image_std, epoch_start=epoch,
                             pixel_device=pixel_work_device(config, ctx.device), context=config.labels.context,
                             filters=config.filter)


class _Window:
    """Samples seen since the last logged step, and since when: the logged throughput."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.began, self.samples = time.perf_counter(), 0

    def samples_per_s(self) -> float:
        return round(self.samples / max(time.perf_counter() - self.began, 1e-9), 3)


@dataclass
class _Training:
    """What one optimizer step needs, built once per run."""

    config: TrainConfig
    ctx: WorkerContext
    forward: nn.Module
    optimizer: Any
    scheduler: Any
    loss_fn: MagicSegLoss
    bank: torch.Tensor
    vocab_size: int
    accumulation: int
    batches: Any = None

    def optimizer_step(self, step: int, window: _Window) -> tuple[dict[str, float], float, int]:
        """One step: ``accumulation`` micro-batches, gradients summed (DDP syncs on the last only), then the update.
        Returns the step's mean losses, the learning rate it ran at and the epoch of its data."""
        config, ctx = self.config, self.ctx
        torch.manual_seed(_step_seed(config.seed, step, ctx.rank))  # dropout draws depend on the step only
        generator = torch.Generator().manual_seed(_step_seed(config.seed, step, ctx.rank) + 1)
        self.optimizer.zero_grad(set_to_none=True)
        sums = {"loss": 0.0, "loss_focal": 0.0, "loss_dice": 0.0, "loss_cf": 0.0}
        epoch = 0
        for micro_step in range(self.accumulation):
            batch = next(self.batches)
            epoch = int(batch["epoch"].min())
            last_micro = micro_step == self.accumulation - 1
            sync = contextlib.nullcontext() if last_micro or not hasattr(self.forward, "no_sync") \
                else self.forward.no_sync()
            with sync:
                losses = self._losses(batch, generator)
                (losses["loss"] / self.accumulation).backward()
            for key in sums:
                sums[key] += float(losses[key].detach()) / self.accumulation
            window.samples += batch["image"].shape[0] * ctx.world_size
        lr = self.optimizer.param_groups[0]["lr"]
        if not _finite_everywhere(sums, ctx):  # checked on every rank before the update: all stop together
            raise FloatingPointError(f"loss became non-finite at step {step + 1} ({sums} on rank {ctx.rank}): "
                                     "lower optim.lr or check the data")
        self.optimizer.step()
        self.scheduler.step()
        return sums, lr, epoch

    def _losses(self, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """One micro-batch: m classes drawn per image, the forward pass, the loss terms."""
        config, device = self.config, self.ctx.device
        images = batch["image"].to(device, non_blocking=True)
        ignore = batch["ignore"].to(device, non_blocking=True)
        subset, targets, present, valid = draw_batch(
            [(ids, masks.to(device)) for ids, masks in zip(batch["class_ids"], batch["masks"])],
            vocab_size=self.vocab_size, m=config.sampling.num_classes, generator=generator,
            exclude=batch["context_ids"])
        text = self.bank[subset.to(device)]  # B x m x D: every image its own classes
        cf = batch["counterfactual_image"].to(device, non_blocking=True) if config.loss.counterfactual else None
        with training_autocast(device):
            outputs = self.forward(images, text, cf)
        return self.loss_fn(outputs["mask_logits"].float(), targets, present, cls=outputs["cls"].float(),
                            cls_counterfactual=None if cf is None else outputs["cls_counterfactual"].float(),
                            ignore=ignore, num_masks=_masks_over_ranks(present, self.ctx),
                            valid=valid.to(device))


def _log_step(ctx: WorkerContext, metrics: MetricsLog | None, window: _Window, step: int, sums: dict[str, float],
              lr: float, epoch: int) -> dict[str, float]:
    """One record of ``metrics.jsonl`` (losses averaged over ranks) and to Ray Train; starts a new window."""
    last = _mean_over_ranks(sums, ctx.world_size, ctx.device)
    record = {"step": step, **{k: round(v, 6) for k, v in last.items()}, "lr": lr,
              "samples_per_s": window.samples_per_s(), "epoch": epoch}
    window.restart()
    if metrics is not None:
        metrics.log(record)
    if ctx.report is not None:
        ctx.report(record)
    return last


def _checkpoint(config: TrainConfig, ctx: WorkerContext, out: Storage, model: nn.Module, optimizer, scheduler,
                step: int, epoch: int, meta: dict) -> None:
    """Rank 0 writes the checkpoint (pruning old ones); every rank waits for it, so none races ahead of a
    checkpoint a restart would resume from."""
    if ctx.is_main:
        state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "rng": ckpt.rng_state(), "epoch": epoch}
        path = ckpt.save_checkpoint(out, step, model, state, meta, keep=config.keep_checkpoints)
        ctx.log(f"step {step}: checkpoint {path}")
    if ctx.world_size > 1 and dist.is_initialized():
        dist.barrier()


def pixel_work_device(config: TrainConfig, device: torch.device) -> torch.device | None:
    """Where the loader finishes the images (``pixel_work``): on a GPU, batched there frees the loader workers."""
    if config.pixel_work == "device" or (config.pixel_work == "auto" and torch.device(device).type == "cuda"):
        return torch.device(device)
    return None
