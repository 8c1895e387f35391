#!/usr/bin/env python
"""Training throughput: the shard loader per process against the previous loader path, and train steps per second.

1. **Loader, per process**: samples/s of one process turning shard rows into samples the way
   :class:`TrainDataset` does (Parquet read, decode, augmentation; the paths take turns row by row, so load
   changes on a shared machine hit them alike), with torch on one thread as in a DataLoader worker, for
   - ``new``: today's :class:`JointAugment` (geometry drawn first, only the crop region resized, masks picked
     from their source pixels, JPEG draft decoding for strong downscales) with ``defer_pixels``: the process
     stops after decoding the images and masks and drawing the augmentation, and :func:`finish_pixels` does the
     image resampling, crop, flip, colour and normalisation on the training GPU
     (``make_train_loader(pixel_device=...)``); its cost on this machine's device is printed separately
     (``finish_pixels_ms_per_sample``: negligible on a GPU, about the legacy path's cost on a CPU);
   - ``new_worker_pixels``: everything in the process (only the crop region resampled, float32 photometric), what
     ``make_train_loader`` does without ``pixel_device``;
   - ``legacy``: the path before it, kept below verbatim (:class:`LegacyJointAugment`: full decode, mmseg's order
     of whole-image resize, then crop, flip, torchvision's photometric, Normalize, Pad, all as v2 transforms)
     so both are measured in the same run on the same rows;
   - ``decode``: decoding only (no augmentation), the floor.
   Each is repeated ``--repeats`` passes; the best pass is reported with the spread of the passes, and
   ``loader_speedup`` = best new / best legacy samples/s is flagged
   ``not-meaningful`` when the repeats spread wider than the ratio's distance from 1.
2. **DataLoader** (``--loader-workers`` > 0): ``make_train_loader`` end to end with worker processes, samples/s.
3. **Train step**: optimizer steps/s and samples/s of the real worker loop (``train_worker``: sampling, text
   bank lookup, image + counterfactual forward, losses, backward, AdamW) in this process, without Ray, on the
   preset's model (``tiny`` on a CPU; ``zegclip-vitb16 --set model.weights=random`` on a GPU).

The dataset is synthetic (``write_synthetic_dataset``: shapes drawn by code, JPEG images, RLE masks) at
``--size`` pixels in a temporary folder, unless ``--data URI`` is given. The loader figures use the
``zegclip-vitb16`` augmentation (resize 0.5-2x of a 2048x512 scale, crop 512 with cat_max_ratio, flip,
photometric). The load average is printed at the start and the end. Last line::

    RESULT train loader_speedup=<new/legacy> loader_samples_per_s=<new> legacy_samples_per_s=<...> ...

Usage: ``.venv/bin/python benchmarks/bench_train.py [--preset tiny] [--samples 96] [--size 512] [--repeats 3]
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
from typing import Any, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image as PILImage  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402
from torchvision.transforms.v2._utils import query_size  # noqa: E402

from benchmarks._machine import device_label, load_average, machine, ratio_note, spread  # noqa: E402
from magicseg_models.config import AugmentConfig, load_config  # noqa: E402
from magicseg_models.dataset.reader import DatasetReader, decode_row  # noqa: E402
from magicseg_models.errors import ShardError  # noqa: E402
from magicseg_models.training.augment import (CLIP_MEAN, CLIP_STD, CROP_TRIES, JointAugment,  # noqa: E402
                                              check_stats, finish_pixels)
from magicseg_models.errors import one_line  # noqa: E402
from magicseg_models.training.data import (TrainDataset, collate, epoch_pieces,  # noqa: E402
                                           iter_piece_rows, make_train_loader, sample_seed)

CLASSES = ["cat", "dog", "bus (vehicle)", "bicycle", "person", "umbrella", "horse", "bench"]


# ---------------------------------------------------------------------------------------------------------------
# The legacy loader path, frozen as it was before the crop-first augmentation: the baseline of loader_speedup and
# the reference of tests/test_augment_distribution.py. Do not "fix" it: it is a measurement of the old code.

class LegacyRandomResizeKeepRatio(v2.Transform):
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`` as a v2 transform."""

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 antialias: bool = True):
        super().__init__()
        self.scale = (max(scale), min(scale))  # (long, short): mmseg's rule does not care about orientation
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        lo, hi = self.ratio_range
        ratio = lo + float(torch.rand(())) * (hi - lo) if hi > lo else lo
        # mmcv.imrescale: fit (long, short) = int(scale * ratio) keeping the aspect ratio; sizes rounded half up
        long_cap, short_cap = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        factor = min(long_cap / max(height, width), short_cap / min(height, width))
        return {"size": [max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # the Mask kernel ignores interpolation and always uses nearest: masks stay binary
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=self.antialias)


class LegacyCatMaxRatioCrop(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)`` on multi-label masks (see the module docstring).

    The class masks are channels ``first_class_channel:`` of the (single) ``tv_tensors.Mask`` among the inputs.
    """

    def __init__(self, size: int, cat_max_ratio: float = 0.75, count_background: bool = True,
                 first_class_channel: int = 1, tries: int = CROP_TRIES, fallback: str = "best"):
        super().__init__()
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.count_background = count_background
        self.fallback = fallback  # all draws failed: "draw" = mmseg's unchecked next draw, "best" = the best one
        self.first_class_channel = first_class_channel
        self.tries = tries

    def _largest_share(self, classes: torch.Tensor, top: int, left: int, h: int, w: int) -> float:
        """Largest category's share of the crop's labelled pixels; 1.0 when fewer than two categories are there."""
        crop = classes[:, top:top + h, left:left + w]
        counts = crop.flatten(1).sum(1, dtype=torch.int64)
        if self.count_background:
            counts = torch.cat([counts, (~crop.any(0)).sum().reshape(1)])
        counts = counts[counts > 0]
        if counts.numel() < 2:  # mmseg: len(cnt) > 1 is part of the acceptance test
            return 1.0
        return float(counts.max()) / float(counts.sum())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        h, w = min(self.size, height), min(self.size, width)  # smaller sides are padded later, not cropped

        def draw() -> tuple[int, int]:
            return (int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ())))

        top, left = draw()
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        if self.cat_max_ratio < 1.0 and masks and (height > h or width > w):
            classes = masks[0][self.first_class_channel:].as_subclass(torch.Tensor).bool()
            best = None
            for attempt in range(self.tries):
                if attempt:
                    top, left = draw()
                share = self._largest_share(classes, top, left, h, w)
                if share < self.cat_max_ratio:
                    best = (share, top, left)
                    break
                if best is None or share < best[0]:
                    best = (share, top, left)
            share, top, left = best
            if share >= self.cat_max_ratio and self.fallback == "draw":
                top, left = draw()
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class LegacyPadTo(v2.Transform):
    """Pad bottom/right up to ``size`` x ``size`` with 0 (mmseg ``Pad(size=crop_size)``, after Normalize)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - width), max(0, self.size - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


class LegacyMMSegPhotometricDistort(v2.RandomPhotometricDistort):
    """torchvision's port of PhotoMetricDistortion with mmseg's ranges and without the channel permutation."""

    def __init__(self) -> None:
        super().__init__(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.1, 0.1),
                         p=0.5)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        params["channel_permutation"] = None
        return params


def _legacy_as_image(x: Any) -> tv_tensors.Image:
    if isinstance(x, PILImage.Image):
        x = F.pil_to_tensor(x.convert("RGB"))
    elif isinstance(x, np.ndarray):  # HxWx3, as PIL and decoders hand them out
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image, got shape {tuple(x.shape)}")
    return tv_tensors.Image(x)


class LegacyJointAugment:
    """Callable: (image, counterfactual image, masks) -> dict(image, counterfactual_image, masks, ignore).

    Inputs: images as uint8 3xHxW tensors, HxWx3 arrays or PIL images (same size); masks KxHxW bool (K may be 0).
    Output (train): ``image`` and ``counterfactual_image`` 3xSxS float32 normalised, ``masks`` KxSxS bool,
    ``ignore`` SxS bool (True on padding), S = ``cfg.crop_size``. Eval mode: HxW follows the resize, ignore all False.
    """

    def __init__(self, cfg: AugmentConfig | None = None, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, train: bool = True):
        self.cfg = cfg or AugmentConfig()
        self.train = train
        mean, std = check_stats(mean, std)
        cfg = self.cfg
        to_float = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                    v2.Normalize(mean=mean, std=std)]
        if train:
            steps = [LegacyRandomResizeKeepRatio(cfg.scale, cfg.ratio_range),
                     LegacyCatMaxRatioCrop(cfg.crop_size, cfg.cat_max_ratio, cfg.cat_count_background,
                                     fallback=cfg.crop_fallback),
                     v2.RandomHorizontalFlip(p=cfg.flip_prob)]
            if cfg.photometric:
                steps.append(LegacyMMSegPhotometricDistort())
            steps += to_float + [LegacyPadTo(cfg.crop_size)]
        else:
            steps = [LegacyRandomResizeKeepRatio(cfg.scale, (1.0, 1.0))] + to_float
        self.transform = v2.Compose(steps)

    def __call__(self, image: Any, counterfactual_image: Any, masks: Any, *, seed: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image, cf = _legacy_as_image(image), _legacy_as_image(counterfactual_image)
        if image.shape != cf.shape:
            raise ValueError(f"image {tuple(image.shape)} and counterfactual {tuple(cf.shape)} differ in size")
        masks = torch.as_tensor(masks, dtype=torch.bool)
        if masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not match image {tuple(image.shape)}")
        # channel 0 = valid pixels (becomes 0 where LegacyPadTo pads); uint8 because resize kernels take no bool
        stacked = torch.cat([torch.ones((1, *masks.shape[1:]), dtype=torch.bool), masks]).to(torch.uint8)
        inputs = (image, cf, tv_tensors.Mask(stacked))
        if seed is None and generator is not None:
            seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        if seed is None:
            out_image, out_cf, out_masks = self.transform(*inputs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(seed) & (2**64 - 1))
                out_image, out_cf, out_masks = self.transform(*inputs)
        out_masks = out_masks.as_subclass(torch.Tensor)
        return {"image": out_image.as_subclass(torch.Tensor), "counterfactual_image": out_cf.as_subclass(torch.Tensor),
                "masks": out_masks[1:].bool(), "ignore": out_masks[0] == 0}


def legacy_decode_sample(row: dict, shard: str = "?") -> dict:
    """A row (needed columns) -> dict(image, counterfactual_image: uint8 3xHxW, class_ids: int64 K,
    masks: bool KxHxW (instance masks united per class, classes sorted by id), sample_id)."""
    sample_id = str(row.get("sample_id", "?"))
    try:
        row = decode_row(row)
    except ShardError as err:  # decode_row names the sample; add where it lives
        raise ShardError(f"shard {shard}: {one_line(err, 300)}") from None
    image, cf = F.pil_to_tensor(row["image"]), F.pil_to_tensor(row["counterfactual_image"])
    height, width = int(row["height"]), int(row["width"])
    if tuple(image.shape[1:]) != (height, width) or cf.shape != image.shape:
        raise ShardError(f"shard {shard}: sample {sample_id}: image is {image.shape[1]}x{image.shape[2]}, "
                         f"counterfactual {cf.shape[1]}x{cf.shape[2]}, row says {height}x{width}")
    annotations = row.get("annotations") or []
    if any(a.get("class_id") is None for a in annotations):
        raise ShardError(f"shard {shard}: sample {sample_id}: an annotation has no class_id")
    class_ids = sorted({int(a["class_id"]) for a in annotations})
    masks = np.zeros((len(class_ids), height, width), dtype=bool)
    index = {c: k for k, c in enumerate(class_ids)}
    for a in annotations:
        masks[index[int(a["class_id"])]] |= a["mask"]
    return {"image": image, "counterfactual_image": cf, "class_ids": torch.tensor(class_ids, dtype=torch.int64),
            "masks": torch.from_numpy(masks), "sample_id": sample_id}


class LegacyTrainDataset(TrainDataset):
    """:class:`TrainDataset` with the legacy per-sample work: full decode, then :class:`LegacyJointAugment`."""

    def _make_sample(self, row: dict, shard: str, epoch: int) -> dict:
        sample = legacy_decode_sample(row, shard)
        out = self.augment(sample["image"], sample["counterfactual_image"], sample["masks"],
                           seed=sample_seed(self.seed, epoch, sample["sample_id"]))
        sample.update(out)
        sample["epoch"] = epoch
        return sample


# ---------------------------------------------------------------------------------------------------------------


def make_dataset(root: str, samples: int, size: int) -> str:
    from magicseg_models.dataset.synthetic import write_synthetic_dataset
    from magicseg_models.planning import PlanSpec, plan_jobs

    spec = PlanSpec(class_ids=tuple(range(len(CLASSES))), class_names=tuple(CLASSES), num_samples=samples,
                    seed=0, shard_size=max(8, samples // 4), two_class_fraction=0.5)
    uri = os.path.join(root, "ds")
    write_synthetic_dataset(uri, plan_jobs(spec), CLASSES, height=size, width=size, config={"preset": "bench"})
    return uri


class _DecodeOnly:
    """An ``augment`` that only finishes the decode (pixels of both images), for the floor figure."""

    def __call__(self, image, counterfactual_image, masks, seed=None):
        return {"image": F.pil_to_tensor(image.convert("RGB")),
                "counterfactual_image": F.pil_to_tensor(counterfactual_image.convert("RGB"))}


def read_rows(uri: str) -> tuple[list[tuple[dict, str]], float]:
    """Every row (undecoded, the loader's columns) with its shard, and the seconds per row of reading them."""
    reader = DatasetReader(uri)
    began = time.perf_counter()
    rows = [(row, piece.path) for piece in epoch_pieces(reader.shards, 0, 0, 0, 1, shuffle=False)
            for row in iter_piece_rows(reader, piece)]
    return rows, (time.perf_counter() - began) / max(len(rows), 1)


def time_paths(uri: str, cfg: AugmentConfig, repeats: int) -> dict[str, list[float]]:
    """Seconds per sample of each path (its per-sample work plus the shared Parquet read), ``repeats`` passes.

    The paths take turns row by row - each row goes through every path before the next row - so a load change
    on a shared machine hits all of them alike and their ratio holds even when the passes' totals drift."""
    paths = {"new": TrainDataset(uri, augment=JointAugment(cfg, defer_pixels=True)),
             "new_worker_pixels": TrainDataset(uri, augment=JointAugment(cfg)),
             "legacy": LegacyTrainDataset(uri, augment=LegacyJointAugment(cfg)),
             "decode": TrainDataset(uri, augment=_DecodeOnly())}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # what a DataLoader worker runs with
    try:
        read_rows(uri)  # warm the page cache and imports
        times: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(repeats):
            rows, read_s = read_rows(uri)
            spent = dict.fromkeys(paths, 0.0)
            for row, shard in rows:
                for name, dataset in paths.items():
                    began = time.perf_counter()
                    dataset._make_sample(row, shard, 0)
                    spent[name] += time.perf_counter() - began
            for name in paths:
                times[name].append(spent[name] / len(rows) + read_s)
    finally:
        torch.set_num_threads(threads)
    return times


def time_finish(uri: str, cfg: AugmentConfig, device: torch.device, batch_size: int = 8) -> float:
    """Seconds per sample of :func:`finish_pixels` on ``device``: the work the ``new`` path moves out of the loader
    process."""
    samples = list(TrainDataset(uri, augment=JointAugment(cfg, defer_pixels=True), epochs=1))
    batches = [collate(samples[i:i + batch_size]) for i in range(0, len(samples), batch_size)]
    for batch in batches:
        for key in ("image", "counterfactual_image"):
            batch[key] = [x.to(device) for x in batch[key]]
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)  # comparable with the loader paths (and free of thread contention on a busy VM)
    try:
        finish_pixels(batches[0], device)  # warm-up (kernels, allocator)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        began = time.perf_counter()
        for batch in batches:
            finish_pixels(batch, device)
        sync()
    finally:
        torch.set_num_threads(threads)
    return (time.perf_counter() - began) / len(samples)


def time_loader(uri: str, cfg: AugmentConfig, workers: int, device: torch.device) -> tuple[float, int]:
    """``make_train_loader`` end to end with worker processes; pixel work on ``device`` when it is a GPU."""
    pixel_device = device if device.type == "cuda" else None
    loader = make_train_loader(uri, augment_cfg=cfg, batch_size=8, num_workers=workers, epochs=1, seed=0,
                               pixel_device=pixel_device)
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
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=2, help="0 = skip the DataLoader measurement")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)

    config = load_config("train", args.preset, overrides=["data_workers=2", *args.overrides])
    loader_cfg = load_config("train", "zegclip-vitb16").augment if args.preset == "tiny" else config.augment
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = tempfile.mkdtemp(prefix="bench-train-")
    try:
        uri = args.data or make_dataset(root, args.samples, args.size)
        print(f"machine: {machine(device)}; torch threads {torch.get_num_threads()} (loader paths: 1); "
              f"dataset {uri}; {load_average()} at start")
        times = time_paths(uri, loader_cfg, max(1, args.repeats))
        stats = {name: spread(values) for name, values in times.items()}
        rate = {name: 1.0 / s["best"] for name, s in stats.items()}
        speedup = rate["new"] / rate["legacy"]
        note = ratio_note(stats["new"], stats["legacy"], speedup)
        print(f"  loader per process, best of {args.repeats} (median, spread of the repeats):")
        for name, label in (("new", "new, pixels on device"), ("new_worker_pixels", "new, all in process"),
                            ("legacy", "legacy (resize first)"), ("decode", "decode only")):
            s = stats[name]
            print(f"    {label:24s} {rate[name]:8.2f} samples/s  {1e3 * s['best']:7.2f} ms/sample "
                  f"(median {1e3 * s['median']:.2f} ms, spread {s['spread']:.0%})")
        worker_speedup = rate["new_worker_pixels"] / rate["legacy"]
        worker_note = ratio_note(stats["new_worker_pixels"], stats["legacy"], worker_speedup)
        finish_s = time_finish(uri, loader_cfg, device)
        print(f"  loader_speedup new/legacy {speedup:.2f}x: {note}; with the pixel work in the process too "
              f"{worker_speedup:.2f}x: {worker_note}")
        for name in ("new", "new_worker_pixels"):  # each pass ran the paths on the same rows at the same time
            passes = ", ".join(f"{old / new:.2f}" for new, old in zip(times[name], times["legacy"]))
            print(f"    {name}/legacy pass by pass: {passes}")
        print(f"  finish_pixels on {device.type} (the deferred resample, crop, flip, colour, normalisation; batch 8): "
              f"{1e3 * finish_s:.2f} ms/sample")
        fields = (f"loader_speedup={speedup:.3f} loader_samples_per_s={rate['new']:.2f} "
                  f"legacy_samples_per_s={rate['legacy']:.2f} speedup_note={note.split('(')[0]} "
                  f"in_process_speedup={worker_speedup:.3f} in_process_samples_per_s="
                  f"{rate['new_worker_pixels']:.2f} decode_samples_per_s={rate['decode']:.2f} "
                  f"finish_pixels_ms_per_sample={1e3 * finish_s:.2f}")
        if args.loader_workers > 0:
            loader_s, m = time_loader(uri, loader_cfg, args.loader_workers, device)
            print(f"  DataLoader, {args.loader_workers} workers: {m} samples {loader_s:.2f} s "
                  f"{m / loader_s:.2f} samples/s")
            fields += f" dataloader_samples_per_s={m / loader_s:.2f}"
        steps_per_s, samples_per_s = time_train(uri, config, args.steps, os.path.join(root, "train"))
        print(f"  train steps ({args.preset}, batch {config.optim.batch_size}, {config.model.image_size}px): "
              f"{steps_per_s:.3f} steps/s, {samples_per_s:.2f} samples/s")
        print(f"{load_average()} at end")
        print(f"RESULT train {fields} steps_per_s={steps_per_s:.3f} train_samples_per_s={samples_per_s:.2f} "
              f"device={device_label(device)}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
