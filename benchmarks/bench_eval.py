#!/usr/bin/env python
"""Evaluation speed: the mIoU confusion matrix against mmseg's histc loop, and sliding-window inference.

(a) Metric. ``--maps`` random label-map pairs of ``--map-size`` squared pixels (ground truth with ~5 % ignored
pixels, predictions agreeing on ~70 % of pixels) are built once on the device, not timed, for each class count
in ``--classes`` (default 21 and 150, VOC and ADE sizes). Two paths score the same uint8 maps:

- ours: one :class:`~magicseg_models.evaluation.metrics.ConfusionMatrix` on the device, ``update`` per image
  (one ``torch.bincount``), ``compute()`` at the end;
- reference: mmseg 0.x's loop: per image, copy prediction and label to the CPU and run
  ``histc_intersect_and_union`` (three ``torch.histc`` passes), sum the areas, IoU at the end.

The per-class IoUs of both are asserted equal. Times are the best of ``--repeats`` after an untimed round on 8 maps,
synchronised on CUDA. ``metric_speedup`` = total reference time / total our time over all class counts.

(b) Inference. ``--images`` random images of ``--size`` x ``round(size * 4 / 3)`` (VOC's 3:4 shape at the
resized short side, so two windows each at crop 512 / stride 426) go through
:func:`~magicseg_models.evaluation.inference.infer_scores` (resize, sliding windows in batches of
``--batch-size``, merge, resize back), bf16 autocast on CUDA and float32 on CPU. The model is ``--model``:

- ``tiny``: :func:`magicseg_models.zegclip.build_zegclip` with the eval ``tiny`` preset's model (random tiny
  CLIP, offline) scoring 20 class names, sigmoid of its mask logits;
- ``conv``: a 3-layer random conv net (stride-4 stem) with 21 sigmoid outputs, upsampled to the window;
- ``auto`` (default): ``tiny`` when ``magicseg_models.zegclip`` imports and builds, else ``conv``.

``windows_per_s`` = windows run / best time over the images (one untimed image first). The last line is::

    RESULT eval metric_speedup=<reference/ours time> windows_per_s=<...> device=<cpu|cuda device name>
        spread=<x> meaningful=yes|no load=<1m/5m/15m>

Usage: ``.venv/bin/python benchmarks/bench_eval.py [--device auto|cpu|cuda] [--maps 200] [--map-size 512]
[--classes 21,150] [--images 4] [--size 512] [--crop 512] [--stride 426] [--batch-size 8]
[--model auto|tiny|conv] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import (  # noqa: E402
    cpu_model,
    describe,
    device_label,
    noise_fields,
    print_load,
    ratio_note,
    spread,
)

from magicseg_models.config import InferenceConfig  # noqa: E402
from magicseg_models.errors import one_line  # noqa: E402
from magicseg_models.evaluation.inference import infer_scores, slide_windows  # noqa: E402
from magicseg_models.evaluation.metrics import ConfusionMatrix, histc_intersect_and_union  # noqa: E402

VOC_NAMES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
             "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor"]


# ------------------------------------------------------------------------------------------- report helpers


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def repeat_times(fn: Callable[[], object], device: torch.device, repeats: int,
                 warmup: Callable[[], object] | None = None) -> tuple[list[float], object]:
    """(seconds of each of ``repeats`` calls after one untimed warm-up call, the last call's result)."""
    (warmup or fn)()  # untimed round: allocator, kernels, caches
    times, result = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times, result


# ------------------------------------------------------------------------------------------- (a) metric
def make_maps(n: int, size: int, num_classes: int, device: torch.device, seed: int) -> tuple[list, list]:
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for _ in range(n):
        target = rng.integers(0, num_classes, (size, size), dtype=np.uint8)
        target[rng.random((size, size), dtype=np.float32) < 0.05] = 255
        noise = rng.integers(0, num_classes, (size, size), dtype=np.uint8)
        pred = np.where(rng.random((size, size), dtype=np.float32) < 0.7, np.minimum(target, num_classes - 1), noise)
        preds.append(torch.from_numpy(pred).to(device))
        targets.append(torch.from_numpy(target).to(device))
    return preds, targets


def ours_metric(preds: list, targets: list, num_classes: int, device: torch.device) -> np.ndarray:
    cm = ConfusionMatrix(num_classes, device=device)
    for pred, target in zip(preds, targets):
        cm.update(pred, target)
    return np.array(cm.compute()["per_class_iou"])


def reference_metric(preds: list, targets: list, num_classes: int) -> np.ndarray:
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    for pred, target in zip(preds, targets):
        # mmseg's pre_eval: seg_pred.cpu().numpy(), then intersect_and_union on CPU tensors
        i, u, _, _ = histc_intersect_and_union(pred.cpu().numpy(), target.cpu().numpy(), num_classes, 255)
        inter += i.double()
        union += u.double()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (inter / union).numpy()


def bench_metric(args, device: torch.device) -> tuple[float, str]:
    """(histc time / our time over all class counts, the RESULT fields saying how far the repeats spread)."""
    total_ours = total_ref = 0.0
    rounds_ours, rounds_ref = [0.0] * args.repeats, [0.0] * args.repeats  # each repeat summed over class counts
    print(f"\n(a) metric: {args.maps} label maps of {args.map_size}x{args.map_size}, best of {args.repeats}")
    print(f"  {'classes':>7} {'ours s':>9} {'histc s':>9} {'ours img/s':>11} {'histc img/s':>12} {'speedup':>8}")
    for num_classes in args.classes:
        preds, targets = make_maps(args.maps, args.map_size, num_classes, device, seed=num_classes)
        # warm-up on a few maps only: a full untimed round of the histc loop would double the run time
        times_ours, iou_ours = repeat_times(lambda: ours_metric(preds, targets, num_classes, device), device,
                                            args.repeats,
                                            warmup=lambda: ours_metric(preds[:8], targets[:8], num_classes, device))
        times_ref, iou_ref = repeat_times(lambda: reference_metric(preds, targets, num_classes), device, args.repeats,
                                          warmup=lambda: reference_metric(preds[:8], targets[:8], num_classes))
        np.testing.assert_allclose(iou_ours, iou_ref, rtol=0, atol=1e-12, equal_nan=True)
        t_ours, t_ref = min(times_ours), min(times_ref)
        total_ours += t_ours
        total_ref += t_ref
        rounds_ours = [a + b for a, b in zip(rounds_ours, times_ours)]
        rounds_ref = [a + b for a, b in zip(rounds_ref, times_ref)]
        note = ratio_note(spread(times_ref), spread(times_ours), t_ref / t_ours)
        print(f"  {num_classes:>7} {t_ours:>9.3f} {t_ref:>9.3f} {args.maps / t_ours:>11.1f} "
              f"{args.maps / t_ref:>12.1f} {t_ref / t_ours:>8.2f}   (IoUs equal, mIoU {np.nanmean(iou_ours):.4f}; "
              f"ours {describe(times_ours)}, histc {describe(times_ref)}; {note})")
        del preds, targets
    return total_ref / total_ours, noise_fields(rounds_ref, rounds_ours, total_ref / total_ours)


# ------------------------------------------------------------------------------------------- (b) inference
def conv_predict_fn(device: torch.device, num_classes: int = 21) -> tuple[Callable, int, str]:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 64, 4, stride=4), nn.GELU(), nn.Conv2d(64, 64, 3, padding=1), nn.GELU(),
                        nn.Conv2d(64, num_classes, 1)).to(device).eval()

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(net(batch / 127.5 - 1))  # 1/4-resolution scores; slide_inference upsamples

    return predict, num_classes, f"conv (random 3-layer, {num_classes} classes)"


def zegclip_predict_fn(device: torch.device, preset: str = "tiny",
                      overrides: Sequence[str] = ()) -> tuple[Callable, int, str]:
    """ZegCLIP of the eval ``preset``'s model (``model.weights=random`` for ViT-B/16 without a download) scoring
    the 20 VOC class names."""
    from magicseg_models.config import load_config
    from magicseg_models.zegclip import build_zegclip

    config = load_config("eval", preset, overrides=list(overrides)).model
    bundle = build_zegclip(config, device=device)
    bundle.model.eval()
    with torch.inference_mode():
        text = bundle.class_embeddings(VOC_NAMES).to(device)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(bundle.model(bundle.normalize(batch / 255.0), text)["mask_logits"])

    return predict, len(VOC_NAMES), f"ZegCLIP {preset} preset ({config.weights} weights, {len(VOC_NAMES)} classes)"


def pick_model(choice: str, device: torch.device) -> tuple[Callable, int, str]:
    if choice in ("auto", "tiny"):
        try:
            return zegclip_predict_fn(device)
        except Exception as err:  # any failure of the optional model falls back to the conv net, said aloud
            first = one_line(str(err), 120)
            print(f"note: ZegCLIP tiny unavailable ({type(err).__name__}: {first}); using the conv model")
    return conv_predict_fn(device)


def bench_inference(args, device: torch.device) -> float:
    predict, num_classes, name = pick_model(args.model, device)
    h, w = args.size, round(args.size * 4 / 3)
    cfg = InferenceConfig(short_side=args.size, crop_size=args.crop, stride=args.stride, batch_size=args.batch_size,
                          dtype="bfloat16" if device.type == "cuda" else "float32")
    per_image = len(slide_windows(h, w, args.crop, args.stride))
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8).to(device)
              for _ in range(args.images)]

    def run() -> None:
        for image in images:
            infer_scores(image, predict, num_classes, cfg)

    infer_scores(images[0], predict, num_classes, cfg)  # warm-up image
    times, _ = repeat_times(run, device, args.repeats)
    t = min(times)
    windows = per_image * args.images
    print(f"\n(b) inference: {name}; {args.images} images {h}x{w}, crop {args.crop} stride {args.stride}, "
          f"{per_image} windows/image, batch {args.batch_size}, {cfg.dtype if device.type == 'cuda' else 'float32'}")
    print(f"  {t:.3f} s for {windows} windows: {windows / t:.1f} windows/s, {args.images / t:.2f} images/s "
          f"({describe(times)})")
    return windows / t


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ap.add_argument("--maps", type=int, default=200, help="label maps for the metric part (default 200)")
    ap.add_argument("--map-size", type=int, default=512, help="label map side (default 512)")
    ap.add_argument("--classes", default="21,150", help="comma-separated class counts (default 21,150)")
    ap.add_argument("--images", type=int, default=4, help="images for the inference part (default 4)")
    ap.add_argument("--size", type=int, default=512, help="image short side for inference (default 512)")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--stride", type=int, default=426)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", choices=("auto", "tiny", "conv"), default="auto")
    ap.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    args = ap.parse_args(argv)
    args.classes = [int(c) for c in args.classes.split(",") if c.strip()]
    if any(c < 1 or c > 255 for c in args.classes):
        ap.error("--classes must be within 1..255 (uint8 maps, 255 = ignore)")
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda asked but CUDA is not available")

    print_load("start")
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); device {device_label(device)}; python {platform.python_version()}")
    start = time.perf_counter()
    speedup, noise = bench_metric(args, device)
    middle = time.perf_counter()
    windows_per_s = bench_inference(args, device)
    print(f"\nwall: metric part {middle - start:.1f} s, inference part {time.perf_counter() - middle:.1f} s")
    load = print_load("end")
    print(f"RESULT eval metric_speedup={speedup:.3f} windows_per_s={windows_per_s:.2f} device={device_label(device)} "
          f"{noise} {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
