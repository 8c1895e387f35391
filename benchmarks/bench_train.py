#!/usr/bin/env python
"""Training throughput: the shard loader against a decode-only baseline, and train steps per second.

1. **Loader**: samples/s per DataLoader worker process of ``make_train_loader`` (decode + joint v2 augmentation +
   collate, ``--loader-workers`` processes) against ``iter_decoded`` (decode only, one process, no augmentation)
   over the same shards. ``loader_ratio`` = loader samples/s per worker / decode-only samples/s: the price of
   augmentation (1.0 would be free).
2. **Train step**: optimizer steps/s and samples/s of the real worker loop (``train_worker``: sampling, text
   bank lookup, image + counterfactual forward, losses, backward, AdamW) in this process, without Ray, on the
   preset's model (``tiny`` on a CPU; ``zegclip-vitb16 --set model.weights=random`` on a GPU).

The dataset is synthetic (``write_synthetic_dataset``: shapes drawn by code, JPEG images, RLE masks) at
``--size`` pixels in a temporary folder, unless ``--data URI`` is given. Last line::

    RESULT train loader_ratio=<...> steps_per_s=<...> device=<...>

Usage: ``.venv/bin/python benchmarks/bench_train.py [--preset tiny] [--samples 96] [--size 512]
[--loader-workers 2] [--steps 10] [--set key=value ...]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from benchmarks._machine import device_label, machine  # noqa: E402
from magicseg_models.config import load_config  # noqa: E402
from magicseg_models.training.data import iter_decoded, make_train_loader  # noqa: E402

CLASSES = ["cat", "dog", "bus (vehicle)", "bicycle", "person", "umbrella", "horse", "bench"]


def make_dataset(root: str, samples: int, size: int) -> str:
    from magicseg_models.dataset.synthetic import write_synthetic_dataset
    from magicseg_models.planning import PlanSpec, plan_jobs

    spec = PlanSpec(class_ids=tuple(range(len(CLASSES))), class_names=tuple(CLASSES), num_samples=samples,
                    seed=0, shard_size=max(8, samples // 4), two_class_fraction=0.5)
    uri = os.path.join(root, "ds")
    write_synthetic_dataset(uri, plan_jobs(spec), CLASSES, height=size, width=size, config={"preset": "bench"})
    return uri


def time_decode(uri: str) -> tuple[float, int]:
    began, n = time.perf_counter(), 0
    for _ in iter_decoded(uri):
        n += 1
    return time.perf_counter() - began, n


def time_loader(uri: str, config, workers: int) -> tuple[float, int]:
    loader = make_train_loader(uri, augment_cfg=config.augment, batch_size=8, num_workers=workers, epochs=1,
                               seed=0)
    began, n = time.perf_counter(), 0
    for batch in loader:
        n += batch["image"].shape[0]
    return time.perf_counter() - began, n


def time_train(uri: str, config, steps: int, out: str) -> tuple[float, float]:
    from magicseg_models.training.trainer import WorkerContext, train_worker

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = config.model_copy(update={"data": uri, "out": out, "steps": steps, "log_every": 1,
                                    "checkpoint_every": 10**9})
    train_worker(cfg, WorkerContext(device=device, log=lambda _: None))
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steady = records[len(records) // 2:] or records  # the first steps pay for warm-up (allocator, autotuning)
    per_sample = sum(r["samples_per_s"] for r in steady) / len(steady)
    return per_sample / cfg.optim.batch_size, per_sample


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--data", help="an existing dataset URI instead of a synthetic one")
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--loader-workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    config = load_config("train", args.preset, overrides=["data_workers=2", *args.overrides])
    # the loader measurement uses the paper's augmentation (crop 512 of a short side scaled 0.5-2x)
    loader_config = load_config("train", "zegclip-vitb16").augment if args.preset == "tiny" else config.augment
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = tempfile.mkdtemp(prefix="bench-train-")
    try:
        uri = args.data or make_dataset(root, args.samples, args.size)
        print(f"machine: {machine(device)}; torch threads {torch.get_num_threads()}; dataset {uri}")
        time_decode(uri)  # warm the page cache and imports: both paths then read from memory
        decode_s, n = time_decode(uri)
        decode_rate = n / decode_s
        loader_s, m = time_loader(uri, config.model_copy(update={"augment": loader_config}), args.loader_workers)
        loader_rate = m / loader_s
        per_worker = loader_rate / max(args.loader_workers, 1)
        print(f"  decode only, 1 process       {n:5d} samples {decode_s:7.2f} s {decode_rate:8.2f} samples/s")
        print(f"  loader, {args.loader_workers} workers (augment) {m:5d} samples {loader_s:7.2f} s "
              f"{loader_rate:8.2f} samples/s = {per_worker:.2f} per worker")
        steps_per_s, samples_per_s = time_train(uri, config, args.steps, os.path.join(root, "train"))
        print(f"  train steps ({args.preset}, batch {config.optim.batch_size}, {config.model.image_size}px): "
              f"{steps_per_s:.3f} steps/s, {samples_per_s:.2f} samples/s")
        print(f"RESULT train loader_ratio={per_worker / decode_rate:.3f} steps_per_s={steps_per_s:.3f} "
              f"device={device_label(device)} loader_samples_per_s={loader_rate:.2f} "
              f"decode_samples_per_s={decode_rate:.2f} train_samples_per_s={samples_per_s:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
