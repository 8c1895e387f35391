"""Annotator backends side by side: OWLv2 against Grounding DINO, SAM 2 against SAM, same images, same process.

- **detectors**: ``detector.detect(images, phrases)`` on every row's image and counterfactual (1-2 class phrases
  each), the way the annotate stage calls it, for ``detector.backend`` = ``transformers`` (Grounding DINO, the
  baseline) and ``owlv2``.
- **segmenters**: ``segmenter.segment_scored(images, boxes)`` with three boxes per image, for
  ``segmenter.backend`` = ``segment-anything`` (SAM, the baseline) and ``sam2``.
- **FLOPs**: one image through each model, counted with ``torch.utils.flop_counter.FlopCounterMode`` (arithmetic,
  independent of the machine's load).

Weights come from the preset (``tiny``: tiny models, seconds on a CPU, plumbing only; ``sd15-random``: every
model at full size with random weights: Grounding DINO Swin-T, OWLv2 B/16 at 960 px, SAM ViT-H, SAM 2.1 large).
Images are random noise at the preset's generator size: detection quality does not matter here, the work per
image does. Times are the best of ``--repeats`` after ``--warmup`` untimed rounds, the two backends alternating.
Last line: ``RESULT annotators detector_speedup=<grounding_dino_s/owlv2_s> segmenter_speedup=<sam_s/sam2_s>
gd_ms=.. owlv2_ms=.. sam_ms=.. sam2_ms=.. (per image) gd_gflop=.. owlv2_gflop=.. sam_gflop=.. sam2_gflop=.. (one image)
device=<...> spread=<x> meaningful=yes|no load=<1m/5m/15m>``.

    .venv/bin/python benchmarks/bench_annotators.py                                # tiny, CPU, seconds
    .venv/bin/python benchmarks/bench_annotators.py --preset sd15-random --images 2 --repeats 1 --warmup 0 \\
        --set generator.height=512 --set generator.width=512                       # full size on a CPU (minutes)
    .venv/bin/python benchmarks/bench_annotators.py --preset sd15-random           # full size (GPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import describe, machine, noise_fields, print_load, ratio_note, spread  # noqa: E402

from magicseg_models.annotation import make_detector, make_segmenter  # noqa: E402
from magicseg_models.config import load_config  # noqa: E402
from magicseg_models.devices import resolve_device  # noqa: E402

PHRASES = [["cat"], ["dog", "bicycle"], ["traffic light"], ["teddy bear", "umbrella"]]


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn) -> float:
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - start


def gflop(fn) -> float:
    """Floating-point operations of one call, in GFLOP (a multiply-add counts as two).

    Attention runs on PyTorch's math kernel here: the counter has no formula for the fused CPU attention kernel
    and would count its FLOPs as zero (it does count the fused CUDA kernels, and the math kernel everywhere)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode(), sdpa_kernel(SDPBackend.MATH):
        fn()
    return counter.get_total_flops() / 1e9


def race(name_a: str, run_a, name_b: str, run_b, repeats: int, warmup: int) -> dict[str, list[float]]:
    """Best-of timings of two paths, alternating which runs first so drift in the machine's load hits both."""
    for _ in range(warmup):
        run_a(), run_b()
    times: dict[str, list[float]] = {name_a: [], name_b: []}
    for r in range(repeats):
        order = ((name_a, run_a), (name_b, run_b)) if r % 2 == 0 else ((name_b, run_b), (name_a, run_a))
        for name, run in order:
            times[name].append(_timed(run))
    return times


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=8, help="generated images (each with its counterfactual)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print_load("start")
    device = resolve_device(args.device)

    def annotate(*more: str):
        return load_config("build", args.preset, overrides=[*args.overrides, *more]).annotate

    config = load_config("build", args.preset, overrides=args.overrides)
    h, w = config.generator.height, config.generator.width
    rng = np.random.default_rng(0)
    from PIL import Image

    arrays = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2 * args.images)]
    images = [Image.fromarray(a) for a in arrays]
    phrases = [PHRASES[k % len(PHRASES)] for k in range(len(images))]
    boxes = [np.array([[0, 0, w / 2, h / 2], [w / 4, h / 4, 3 * w / 4, 3 * h / 4], [w / 2, 0, w, h]], np.float32)
             for _ in arrays]

    t0 = time.perf_counter()
    gd = make_detector(annotate().detector, device)
    owl = make_detector(annotate("annotate.detector.backend=owlv2").detector, device)
    sam = make_segmenter(annotate("annotate.segmenter.backend=segment-anything").segmenter, device)
    sam2 = make_segmenter(annotate("annotate.segmenter.backend=sam2").segmenter, device)
    print(f"preset {args.preset}: {len(images)} images at {h}x{w}, device {machine(device)}, torch threads "
          f"{torch.get_num_threads()}, models built in {time.perf_counter() - t0:.1f} s")
    for label, model in (("detector", gd), ("detector", owl), ("segmenter", sam), ("segmenter", sam2)):
        print(f"  {label}: {model.settings.get(label)}")

    flops = {"gd": gflop(lambda: gd.detect(images[:1], phrases[:1])),
             "owlv2": gflop(lambda: owl.detect(images[:1], phrases[:1])),
             "sam": gflop(lambda: sam.segment_scored(arrays[:1], boxes[:1])),
             "sam2": gflop(lambda: sam2.segment_scored(arrays[:1], boxes[:1]))}
    det = race("gd", lambda: gd.detect(images, phrases), "owlv2", lambda: owl.detect(images, phrases),
               args.repeats, args.warmup)
    seg = race("sam", lambda: sam.segment_scored(arrays, boxes), "sam2", lambda: sam2.segment_scored(arrays, boxes),
               args.repeats, args.warmup)

    times = {**det, **seg}
    per_image = {name: 1000 * min(values) / len(images) for name, values in times.items()}
    for name, values in times.items():
        print(f"  {name:6s} {per_image[name]:10.2f} ms/image   {flops[name]:10.3f} GFLOP/image   ({describe(values)})")
    det_ratio = min(det["gd"]) / min(det["owlv2"])
    seg_ratio = min(seg["sam"]) / min(seg["sam2"])
    print(f"detector speedup {det_ratio:.3f}: {ratio_note(spread(det['gd']), spread(det['owlv2']), det_ratio)} "
          "(Grounding DINO s / OWLv2 s)")
    print(f"segmenter speedup {seg_ratio:.3f}: {ratio_note(spread(seg['sam']), spread(seg['sam2']), seg_ratio)} "
          "(SAM s / SAM 2 s)")
    load = print_load("end")
    # the noise fields of the detector race, the wider of the two races' spreads when the segmenters' is wider
    noise = max((noise_fields(det["gd"], det["owlv2"], det_ratio), noise_fields(seg["sam"], seg["sam2"], seg_ratio)),
                key=lambda fields: float(fields.split()[0].split("=")[1]))
    print(f"RESULT annotators detector_speedup={det_ratio:.3f} segmenter_speedup={seg_ratio:.3f} "
          + " ".join(f"{name}_ms={per_image[name]:.2f}" for name in ("gd", "owlv2", "sam", "sam2")) + " "
          + " ".join(f"{name}_gflop={flops[name]:.3f}" for name in ("gd", "owlv2", "sam", "sam2"))
          + f" device={machine(device)} {noise} {load}")


if __name__ == "__main__":
    main()
