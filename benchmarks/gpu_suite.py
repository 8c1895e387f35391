#!/usr/bin/env python
"""The one-GPU performance suite: every GPU figure of the factory and of training in one short run.

Sized for a short GPU loan (at most 8 minutes of wall time, model start-up and warm-up included): a global time
budget (``--budget-s``) skips the items that no longer fit, and says so, rather than overrunning. Every figure is
printed with the card's name (``torch.cuda.get_device_name``) and written to a JSON file:

- **pairs**: paired SD (``sd15-random``: full SD 1.5 architecture, random weights, fp16, 20 steps, 512 px) in
  pairs/s through ``PairGenerator``, and the ratio to the card's FLOP bound: the FLOPs of one pair are counted
  with ``torch.utils.flop_counter.FlopCounterMode`` on the real text-encoder, UNet and VAE calls of one pair
  (every timestep), and the bound is the card's dense fp16/bf16 tensor peak (``PEAK_TFLOPS``) / FLOPs per pair;
- **pairs_sdxl**, **pairs_flux**: the same for the other generator families (``sdxl-random``: SDXL at 1024 px,
  30 steps, 4 UNet branches per pair; ``flux-schnell-random``: FLUX.1-schnell at 1024 px, 4 steps, 2 transformer
  branches per pair), 2 pairs per round, with their FLOP ratio (docs/generators.md);
- **annotate**: Grounding DINO SwinT + SAM ViT-H (random weights at real sizes) through ``Annotator``: samples/s
  (a sample = an image and its counterfactual), the GPU's busy fraction while it runs (the union of kernel times
  from the CUDA profiler over the wall time) and the share of a GPU it needs to keep up with one SD GPU;
- **train**: ZegCLIP ViT-B/16 (random weights) training steps/s: one step = a micro-batch of 4 images and their
  counterfactuals at 512 px, forward, focal + dice + counterfactual losses, backward, AdamW (the per-GPU step of
  the preset's global batch of 64 on 16 GPUs), on synthetic tensors on the device (the loader is measured by
  ``bench_train.py``);
- **eval**: ZegCLIP ViT-B/16 sliding-window inference (512 / 426, bf16), windows/s;
- **annotate.owlv2**, **annotate.sam2**: the annotate item with OWLv2 (B/16, 960 px) in place of Grounding DINO,
  and with SAM 2.1 large in place of SAM ViT-H (docs/annotators.md), against the annotate item's samples/s;
- **levers**: each speed switch on against the same item with today's defaults (off), measured in this run:
  ``generator.channels_last``, ``generator.compile`` (UNet and VAE decoder), ``generator.vae_decode_batch=1``
  (per-image decode against the batched default), ``generator.tf32``, ``annotate.segmenter.encoder_dtype=bfloat16``
  and ``annotate.*.tf32``. Each says whether its ratio is outside the spread of the repeats.

Peak GPU memory (``torch.cuda.max_memory_allocated``, reset before each item) comes with every item. Times are the
best of ``--repeats`` after an untimed warm-up; the spread of the repeats is printed next to each best figure.

``--smoke`` runs the same code on the CPU with tiny models (the ``tiny`` presets) in well under 3 minutes, so the
script cannot rot: CI runs it. Its figures only say that the path works. ``torch.compile`` takes minutes on a CPU,
so the budget skips that lever there.

Last line::

    RESULT gpu_suite card=<name> pairs_per_s=<x> flop_ratio=<x|na> annotate_samples_per_s=<x> gpu_share=<x|na>
    keep_up_share=<x> train_steps_per_s=<x> eval_windows_per_s=<x> skipped=<n> wall_s=<s>

``gpu_share`` is the annotator's GPU busy fraction (na on a CPU); ``keep_up_share`` = pairs/s / annotate
samples/s, the share of a whole GPU the annotator needs to keep up with one SD GPU (goal: at most 0.5).

Usage: ``bash benchmarks/gpu_suite.sh [--smoke] [--budget-s 420] [--out DIR] [--only pairs,annotate,...]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks._machine import cpu_model, load_average, ratio_note, spread  # noqa: E402
from magicseg_models.errors import one_line  # noqa: E402

# Dense (no sparsity) fp16/bf16 tensor-core peaks from the vendors' data sheets, TFLOPS. The first pattern that
# matches torch.cuda.get_device_name wins; a card not listed gets no FLOP ratio (and the suite says so).
PEAK_TFLOPS: list[tuple[str, float, str]] = [
    (r"H100.*(SXM|HBM3)", 989.0, "H100 SXM"),
    (r"H200(?!.*NVL)", 989.0, "H200 SXM"),
    (r"A100", 312.0, "A100"),
    (r"\bL4\b", 121.0, "L4"),
    (r"A10G", 125.0, "A10G"),
]


def peak_tflops(card: str) -> tuple[float, str] | None:
    """(dense fp16/bf16 TFLOPS, row name) of the card, or None for a card not in ``PEAK_TFLOPS``."""
    for pattern, tflops, name in PEAK_TFLOPS:
        if re.search(pattern, card):
            return tflops, name
    return None


def flops(value: float) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= scale:
            return f"{value / scale:.3g} {prefix}FLOP"
    return f"{value:.3g} FLOP"


def busy_fraction(intervals: list[tuple[float, float]], wall: float) -> float:
    """Share of ``wall`` covered by at least one interval (overlapping kernels on several streams count once)."""
    if wall <= 0:
        return 0.0
    covered, end = 0.0, -math.inf
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        covered += stop - max(start, end)
        end = stop
    return min(1.0, covered / wall)


# ------------------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class Sizes:
    """What one mode runs: the full GPU sizes, or tiny ones for the CPU smoke run."""

    build_preset: str
    build_overrides: tuple[str, ...]
    pairs: int  # pairs per timed round
    pair_batch: int  # pairs per UNet batch
    samples: int  # annotate rows per timed round
    # the other generator families: item -> (build preset, overrides); 2 pairs per round, 2 per batch
    families: dict[str, tuple[str, tuple[str, ...]]]
    train_preset: str
    train_overrides: tuple[str, ...]
    train_steps: int  # steps per timed round
    eval_preset: str
    eval_overrides: tuple[str, ...]
    eval_images: int
    repeats: int
    budget_s: float
    # seconds an item is expected to take here, start-up and warm-up included: an item that no longer fits in
    # what is left of the budget is skipped
    estimates: dict[str, float] = field(default_factory=dict)


FULL = Sizes(
    build_preset="sd15-random", build_overrides=("generator.steps=20", "generator.dtype=float16"),
    pairs=16, pair_batch=8, samples=32,
    families={"pairs_sdxl": ("sdxl-random", ()), "pairs_flux": ("flux-schnell-random", ())},
    train_preset="zegclip-vitb16", train_overrides=("model.weights=random",), train_steps=10,
    eval_preset="zegclip-vitb16", eval_overrides=("model.weights=random",), eval_images=8,
    # 420 s + the 45 s grace + interpreter start-up stay under the loan's 8 minutes
    repeats=3, budget_s=420,
    estimates={"pairs": 45, "annotate": 60, "train": 35, "eval": 25, "pairs_sdxl": 60, "pairs_flux": 70,
               "pairs.channels_last": 25,
               "pairs.vae_decode_per_image": 25, "pairs.tf32": 25, "annotate.sam_encoder_bf16": 50,
               "annotate.tf32": 50, "annotate.owlv2": 50, "annotate.sam2": 50, "pairs.compile": 150},
)
SMOKE = Sizes(
    build_preset="tiny", build_overrides=("generator.height=32", "generator.width=32", "generator.steps=2"),
    pairs=4, pair_batch=2, samples=4,
    families={name: ("tiny", (f"generator.family={family}", "generator.height=32", "generator.width=32",
                              "generator.steps=2"))
              for name, family in (("pairs_sdxl", "sdxl"), ("pairs_flux", "flux"))},
    train_preset="tiny", train_overrides=(), train_steps=2,
    eval_preset="tiny", eval_overrides=(), eval_images=2,
    repeats=2, budget_s=150,
    # compiling even the tiny UNet takes about 5 minutes on a 2-core CPU: the budget skips it here
    estimates={"pairs": 15, "annotate": 10, "train": 10, "eval": 5, "pairs_sdxl": 8, "pairs_flux": 8,
               "pairs.channels_last": 8,
               "pairs.vae_decode_per_image": 8, "pairs.tf32": 8, "annotate.sam_encoder_bf16": 8,
               "annotate.tf32": 8, "annotate.owlv2": 8, "annotate.sam2": 8, "pairs.compile": 300},
)


# ------------------------------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_repeats(fn: Callable[[], Any], device: torch.device, repeats: int) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` (the caller has warmed it up), synchronised on a GPU."""
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def kernel_busy_fraction(fn: Callable[[], Any], device: torch.device) -> float | None:
    """Busy fraction of the GPU during one call of ``fn``: CUDA kernel intervals from the profiler (CUDA activity
    only, to keep its overhead off the host side) over the call's wall time. None on a CPU."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        sync(device)
        wall = time.perf_counter() - start
    kernels = [(e.time_range.start, e.time_range.end) for e in prof.events() if e.device_type == DeviceType.CUDA]
    return busy_fraction(kernels, wall * 1e6)  # profiler times are microseconds


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def rate(count: float, times: list[float]) -> dict:
    """Best rate (count / best time) with the spread of the repeats' times."""
    s = spread(times)
    return {"best": count / s["best"], "median": count / s["median"], "spread": s["spread"], "n": s["n"],
            "times": [round(t, 4) for t in times]}


# ------------------------------------------------------------------------------------------- items
def run_pairs(suite: Suite, *overrides: str, count_flops: bool = False, family_item: str | None = None) -> dict:
    """pairs/s of the SD 1.5 item (its levers with ``overrides``), or of another family's ``family_item``."""
    from benchmarks.bench_pairs import make_rows
    from magicseg_models.config import load_config
    from magicseg_models.generation import PairGenerator

    sz = suite.sizes
    preset, base, pairs, batch = sz.build_preset, sz.build_overrides, sz.pairs, sz.pair_batch
    if family_item is not None:
        (preset, base), pairs, batch = sz.families[family_item], 2, 2
    config = load_config("build", preset, overrides=[
        *base, f"generator.resources.batch_size={batch}", "generator.image_format=jpeg", *overrides]).generator
    began = time.perf_counter()
    gen = PairGenerator(config, device=suite.device)
    load_s = time.perf_counter() - began
    rows = make_rows(pairs)
    try:
        began = time.perf_counter()
        gen(rows[:batch])  # warm-up: allocator, cuDNN autotuning, compilation
        sync(suite.device)
        warmup_s = time.perf_counter() - began
        times = timed_repeats(lambda: gen(rows), suite.device, sz.repeats)
        out = {"config": {"preset": preset, "family": config.family, "height": config.height,
                          "width": config.width, "steps": config.steps, "dtype": gen.settings["dtype"],
                          "batch": batch, "pairs": pairs, "overrides": list(overrides)},
               "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2), "pairs_per_s": rate(pairs, times)}
        if count_flops:
            out["flops"] = pair_flops(gen, rows[0])
    finally:
        gen.close()
        del gen
    return out


def pair_flops(gen, row: dict) -> dict:
    """FLOPs of one pair on the real calls: text encoders (the pair's two prompts; the empty prompt is cached),
    the UNet or transformer at every timestep (4 branches with guidance, 2 without), the VAE decode of both
    images. ``unet`` is the denoiser whatever its kind."""
    from torch.utils.flop_counter import FlopCounterMode

    c = gen.config
    with FlopCounterMode(display=False) as counter:
        gen.pipeline([row["prompt"]], [row["counterfactual_prompt"]], [int(row["seed"])], height=c.height,
                     width=c.width, num_inference_steps=c.steps, guidance_scale=c.guidance_scale,
                     output_type="uint8")
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    denoiser = getattr(gen.pipeline, "unet", None) or gen.pipeline.transformer
    unet = by_module.get(type(denoiser).__name__, 0)
    encoders = {type(m).__name__ for m in (gen.pipeline.text_encoder, getattr(gen.pipeline, "text_encoder_2", None))
                if m is not None}
    text = sum(by_module.get(name, 0) for name in encoders)
    total = counter.get_total_flops()
    return {"per_pair": total, "unet": unet, "text_encoder": text, "vae_and_rest": total - unet - text}


def annotate_config(suite: Suite, *overrides: str):
    from magicseg_models.config import load_config

    return load_config("build", suite.sizes.build_preset, overrides=[*suite.sizes.build_overrides, *overrides])


def run_annotate(suite: Suite, *overrides: str, busy: bool = False) -> dict:
    from benchmarks.bench_annotate import make_rows, run_batched
    from magicseg_models.annotation import Annotator
    from magicseg_models.vocabulary import Vocabulary

    config = annotate_config(suite, *overrides)
    c = config.annotate
    vocab = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    began = time.perf_counter()
    annotator = Annotator(c, vocab, device=suite.device)
    load_s = time.perf_counter() - began
    rows = make_rows(vocab, suite.sizes.samples, config.generator.height, config.generator.width)
    batch = c.resources.batch_size
    began = time.perf_counter()
    run_batched(annotator, rows[:batch], batch)
    sync(suite.device)
    warmup_s = time.perf_counter() - began
    times = timed_repeats(lambda: run_batched(annotator, rows, batch), suite.device, suite.sizes.repeats)
    out = {"config": {"detector": c.detector.weights, "segmenter": f"{c.segmenter.model_type} {c.segmenter.weights}",
                      "size": f"{config.generator.height}x{config.generator.width}", "rows_per_call": batch,
                      "samples": len(rows), "overrides": list(overrides)},
           "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2),
           "samples_per_s": rate(len(rows), times)}
    if busy:
        # two calls' worth of rows: the profiler's trace of a whole round takes longer to read than to record
        part = rows[:2 * batch]
        try:
            out["gpu_busy_fraction"] = kernel_busy_fraction(lambda: run_batched(annotator, part, batch),
                                                            suite.device)
        except Exception as err:  # the profiler failing must not cost the samples/s figure
            out["gpu_busy_fraction"] = None
            out["gpu_busy_error"] = f"{type(err).__name__}: {str(err).strip()[:200]}"
    del annotator
    return out


def run_train(suite: Suite) -> dict:
    from magicseg_models.config import load_config
    from magicseg_models.training.losses import MagicSegLoss
    from magicseg_models.training.sampling import sample_batch
    from magicseg_models.training.schedule import build_optimizer
    from magicseg_models.devices import training_autocast
    from magicseg_models.training.trainer import TrainForward, accumulation_plan
    from magicseg_models.vocabulary import Vocabulary
    from magicseg_models.zegclip.build import build_zegclip

    sz, device = suite.sizes, suite.device
    config = load_config("train", sz.train_preset, overrides=list(sz.train_overrides))
    micro, _ = accumulation_plan(config)
    began = time.perf_counter()
    bundle = build_zegclip(config.model, device=device, seed=config.seed)
    names = [c.prompt_name for c in Vocabulary.default()][:max(150, config.sampling.num_classes)]
    bank = bundle.class_embeddings(names).to(device)  # once per vocabulary in training too
    model = bundle.model
    forward = TrainForward(model).train()
    optimizer = build_optimizer(model, config.optim)
    loss_fn = MagicSegLoss(config.loss)
    load_s = time.perf_counter() - began

    size = config.model.image_size
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(micro, 3, size, size, generator=gen).to(device)
    counterfactuals = torch.randn(micro, 3, size, size, generator=gen).to(device)
    ignore = torch.zeros(micro, size, size, dtype=torch.bool, device=device)
    half = torch.zeros(2, size, size, dtype=torch.bool)
    half[0, :, : size // 2] = True
    half[1, :, size // 2:] = True
    items = [(torch.tensor([(2 * k) % len(names), (2 * k + 1) % len(names)]), half.to(device)) for k in range(micro)]

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        subset, targets, present = sample_batch(items, vocab_size=len(names), m=config.sampling.num_classes,
                                                generator=gen)
        with training_autocast(device):
            outputs = forward(images, bank[subset.to(device)], counterfactuals)
        losses = loss_fn(outputs["mask_logits"].float(), targets, present, cls=outputs["cls"].float(),
                         cls_counterfactual=outputs["cls_counterfactual"].float(), ignore=ignore,
                         num_masks=present.sum().float().clamp(min=1.0))
        losses["loss"].backward()
        optimizer.step()

    def steps() -> None:
        for _ in range(sz.train_steps):
            step()

    began = time.perf_counter()
    for _ in range(2):
        step()
    sync(device)
    warmup_s = time.perf_counter() - began
    times = timed_repeats(steps, device, sz.repeats)
    del forward, optimizer, model, bundle
    return {"config": {"preset": sz.train_preset, "image_size": size, "micro_batch": micro,
                       "sampled_classes": config.sampling.num_classes, "counterfactual": True,
                       "steps_per_round": sz.train_steps},
            "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2),
            "steps_per_s": rate(sz.train_steps, times), "samples_per_s": rate(sz.train_steps * micro, times)}


def run_eval(suite: Suite) -> dict:
    from benchmarks.bench_eval import zegclip_predict_fn
    from magicseg_models.config import load_config
    from magicseg_models.evaluation.inference import infer_scores, slide_windows

    sz, device = suite.sizes, suite.device
    config = load_config("eval", sz.eval_preset, overrides=list(sz.eval_overrides))
    cfg = config.inference
    if device.type != "cuda":
        cfg = cfg.model_copy(update={"dtype": "float32"})
    began = time.perf_counter()
    predict, num_classes, name = zegclip_predict_fn(device, sz.eval_preset, sz.eval_overrides)
    load_s = time.perf_counter() - began
    h, w = cfg.short_side, round(cfg.short_side * 4 / 3)  # VOC's 3:4 shape: two windows at 512 / 426
    per_image = len(slide_windows(h, w, cfg.crop_size, cfg.stride))
    gen = torch.Generator().manual_seed(1)
    images = [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8).to(device)
              for _ in range(sz.eval_images)]

    def run() -> None:
        for image in images:
            infer_scores(image, predict, num_classes, cfg)

    began = time.perf_counter()
    infer_scores(images[0], predict, num_classes, cfg)
    sync(device)
    warmup_s = time.perf_counter() - began
    times = timed_repeats(run, device, sz.repeats)
    return {"config": {"model": name, "image": f"{h}x{w}", "windows_per_image": per_image,
                       "batch": cfg.batch_size, "dtype": cfg.dtype},
            "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2),
            "windows_per_s": rate(per_image * sz.eval_images, times)}


# lever name -> (the base item it is compared with, the figure, the config overrides that turn it on)
LEVERS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    # first, as the other generators are: not speed switches but other models (docs/annotators.md), their
    # throughput against the paper's pair
    "annotate.owlv2": ("annotate", "samples_per_s", ("annotate.detector.backend=owlv2",)),
    "annotate.sam2": ("annotate", "samples_per_s", ("annotate.segmenter.backend=sam2",)),
    "pairs.channels_last": ("pairs", "pairs_per_s", ("generator.channels_last=true",)),
    "pairs.vae_decode_per_image": ("pairs", "pairs_per_s", ("generator.vae_decode_batch=1",)),
    "pairs.tf32": ("pairs", "pairs_per_s", ("generator.tf32=true",)),
    "annotate.sam_encoder_bf16": ("annotate", "samples_per_s", ("annotate.segmenter.encoder_dtype=bfloat16",)),
    "annotate.tf32": ("annotate", "samples_per_s", ("annotate.detector.tf32=true", "annotate.segmenter.tf32=true")),
    "pairs.compile": ("pairs", "pairs_per_s", ("generator.compile=true",)),
}
MODEL_SWAPS = ("annotate.owlv2", "annotate.sam2")
CORE = ("pairs", "annotate", "train", "eval")
FAMILIES = ("pairs_sdxl", "pairs_flux")
# core figures first, then the other generators and annotators: when the budget runs short, levers are skipped
ITEMS = (*CORE, *FAMILIES, *LEVERS)


def lever_verdict(on: dict, off: dict) -> dict:
    """The lever's speedup (on / off rate) and whether the repeats' spread lets it tell the two apart."""
    ratio = on["best"] / off["best"]
    note = ratio_note(on, off, ratio)
    if not note.startswith("meaningful"):
        verdict = "no difference within the spread: keep today's default"
    else:
        verdict = "faster on: a candidate default" if ratio > 1 else "slower on: keep it off"
    return {"speedup": round(ratio, 4), "note": note, "verdict": verdict}


# ------------------------------------------------------------------------------------------- the suite
class Suite:
    def __init__(self, sizes: Sizes, device: torch.device, budget_s: float, out_dir: str, smoke: bool):
        self.sizes, self.device, self.smoke, self.out_dir = sizes, device, smoke, out_dir
        self.began = time.perf_counter()
        self.budget_s = budget_s
        self.card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({cpu_model()})"
        self.results: dict[str, Any] = {}
        self.skipped: dict[str, str] = {}
        self.current: str | None = None
        self.load_start = load_average()
        self.lock = threading.Lock()

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.began)

    def say(self, text: str) -> None:
        print(f"[{self.card}] {text}", flush=True)

    def run(self, name: str, fn: Callable[[], dict]) -> None:
        estimate = self.sizes.estimates.get(name, 30)
        if estimate > self.left():
            self.skipped[name] = f"budget: needs about {estimate:.0f} s, {max(self.left(), 0):.0f} s left"
            self.say(f"{name}: SKIPPED ({self.skipped[name]})")
            self.write_json()
            return
        self.current = name
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        began = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # one item failing must not cost the others their figures
            first = one_line(str(err), 200)
            result = {"error": f"{type(err).__name__}: {first}"}
        result["seconds"] = round(time.perf_counter() - began, 2)
        result["peak_gpu_mb"] = (round(torch.cuda.max_memory_allocated(self.device) / 2**20)
                                 if self.device.type == "cuda" else None)
        free_memory(self.device)
        with self.lock:
            self.results[name] = result
            self.current = None
        derive(self)
        self.report(name, result)
        self.write_json()

    # ------------------------------------------------------------------------------------- reporting
    def report(self, name: str, r: dict) -> None:
        peak = f"peak GPU memory {r['peak_gpu_mb']} MB" if r["peak_gpu_mb"] is not None else "peak GPU memory n/a (CPU)"
        head = (f"{name} ({r['seconds']:.1f} s: start-up {r.get('load_s', 0):.1f} s, warm-up "
                f"{r.get('warmup_s', 0):.1f} s):")
        if "error" in r:
            self.say(f"{head} FAILED: {r['error']}")
            return
        if name in LEVERS:
            base, figure, overrides = LEVERS[name]
            v = r["lever"]
            self.say(f"{head} {' '.join(overrides)}: {self._rate(r[figure], figure)} against "
                     f"{self._rate(self.results[base][figure], figure)} off; speedup {v['speedup']:.3f}, "
                     f"{v['note']}: {v['verdict']}; {peak}")
            return
        if name == "pairs" or name in FAMILIES:
            c = r["config"]
            self.say(f"{head} {c['preset']} {c['dtype']} {c['steps']} steps {c['height']}x{c['width']}, "
                     f"{c['batch']} pairs per UNet batch: {self._rate(r['pairs_per_s'], 'pairs/s')}; {peak}")
            f = r.get("flops")
            if f:
                self.say(f"  FLOPs per pair {flops(f['per_pair'])} (UNet {flops(f['unet'])}, text encoder "
                         f"{flops(f['text_encoder'])}, VAE and the rest {flops(f['vae_and_rest'])}); "
                         f"{r['flop_bound_note']}")
        elif name == "annotate":
            busy = r.get("gpu_busy_fraction")
            self.say(f"{head} {r['config']['segmenter']} + detector {r['config']['detector']} at "
                     f"{r['config']['size']}: {self._rate(r['samples_per_s'], 'samples/s')}; GPU busy "
                     f"{'n/a (CPU)' if busy is None else f'{busy:.0%}'}; {peak}")
        elif name == "train":
            self.say(f"{head} ZegCLIP {r['config']['preset']} micro-batch {r['config']['micro_batch']} at "
                     f"{r['config']['image_size']} px: {self._rate(r['steps_per_s'], 'steps/s')}; {peak}")
        elif name == "eval":
            self.say(f"{head} {r['config']['model']}, {r['config']['windows_per_image']} windows per "
                     f"{r['config']['image']} image: {self._rate(r['windows_per_s'], 'windows/s')}; {peak}")

    @staticmethod
    def _rate(value: dict, unit: str) -> str:
        unit = unit.replace("_per_s", "/s").replace("_", " ")
        return (f"{value['best']:.4g} {unit} best of {value['n']} (median {value['median']:.4g}, "
                f"spread {value['spread']:.0%})")

    def figure(self, item: str, key: str, digits: int = 3) -> str:
        r = self.results.get(item) or {}
        value = r.get(key)
        if isinstance(value, dict):
            value = value.get("best")
        return "na" if value is None else f"{value:.{digits}f}"

    def summary(self) -> dict:
        return {"card": self.card, "device": str(self.device), "mode": "smoke" if self.smoke else "full",
                "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                "cpus": os.cpu_count(), "budget_s": self.budget_s,
                "wall_s": round(time.perf_counter() - self.began, 1), "load_start": self.load_start,
                "load_end": load_average(), "items": self.results, "skipped": self.skipped}

    def write_json(self) -> str:
        path = os.path.join(self.out_dir, "gpu_suite.json")
        os.makedirs(self.out_dir, exist_ok=True)
        with self.lock:
            data = json.dumps(self.summary(), indent=1, default=str)
        with open(path + ".tmp", "w") as f:
            f.write(data)
        os.replace(path + ".tmp", path)  # a reader (or a kill) never sees half a file
        return path

    def result_line(self) -> str:
        card = re.sub(r"[^\w.]+", "-", self.card).strip("-")
        return (f"RESULT gpu_suite card={card} pairs_per_s={self.figure('pairs', 'pairs_per_s')} "
                f"flop_ratio={self.figure('pairs', 'flop_ratio', 4)} "
                f"annotate_samples_per_s={self.figure('annotate', 'samples_per_s')} "
                f"gpu_share={self.figure('annotate', 'gpu_busy_fraction', 3)} "
                f"keep_up_share={self.figure('annotate', 'keep_up_share', 3)} "
                f"train_steps_per_s={self.figure('train', 'steps_per_s')} "
                f"eval_windows_per_s={self.figure('eval', 'windows_per_s')} skipped={len(self.skipped)} "
                f"wall_s={time.perf_counter() - self.began:.1f}")

    def finish(self) -> None:
        path = self.write_json()
        self.say(f"figures written to {path}")
        if self.skipped:
            self.say(f"skipped for the budget ({self.budget_s:.0f} s): {', '.join(self.skipped)}")
        print(f"load average at end: {load_average()}", flush=True)
        print(self.result_line(), flush=True)


def flop_bound(suite: Suite, pairs: dict | None) -> None:
    """The FLOP bound of a pairs item (the card's dense peak / FLOPs per pair) and its measured ratio to it."""
    if not pairs or "flops" not in pairs:
        return
    peak = peak_tflops(suite.card) if suite.device.type == "cuda" else None
    if peak is None:
        pairs["flop_bound_note"] = (f"no FLOP ratio: '{suite.card}' has no dense fp16 peak in PEAK_TFLOPS "
                                    "(benchmarks/gpu_suite.py); add its data-sheet figure")
    else:
        bound = peak[0] * 1e12 / pairs["flops"]["per_pair"]
        pairs["flop_bound_pairs_per_s"] = bound
        pairs["flop_ratio"] = pairs["pairs_per_s"]["best"] / bound
        pairs["flop_bound_note"] = (f"FLOP bound {bound:.2f} pairs/s at {peak[0]:.0f} TFLOPS ({peak[1]} dense "
                                    f"fp16): ratio {pairs['flop_ratio']:.3f}")


def derive(suite: Suite) -> None:
    """Figures made of two items: the FLOP ratio of each pairs item, the GPU share the annotator needs."""
    for name in ("pairs", *FAMILIES):
        flop_bound(suite, suite.results.get(name))
    pairs, annotate = suite.results.get("pairs"), suite.results.get("annotate")
    if pairs and annotate and "samples_per_s" in annotate and "pairs_per_s" in pairs:
        # seconds of a whole GPU the annotator needs per second of one SD GPU's output (goal: at most 0.5)
        annotate["keep_up_share"] = pairs["pairs_per_s"]["best"] / annotate["samples_per_s"]["best"]


def run_suite(suite: Suite, only: list[str]) -> None:
    for name in ITEMS:
        if only and name not in only:
            continue
        if name == "pairs":
            suite.run(name, lambda: run_pairs(suite, count_flops=True))
        elif name in FAMILIES:
            suite.run(name, lambda name=name: run_pairs(suite, count_flops=True, family_item=name))
        elif name == "annotate":
            suite.run(name, lambda: run_annotate(suite, busy=True))
        elif name == "train":
            suite.run(name, lambda: run_train(suite))
        elif name == "eval":
            suite.run(name, lambda: run_eval(suite))
        else:
            base, figure, overrides = LEVERS[name]
            if "error" in suite.results.get(base, {"error": "not run"}):
                suite.skipped[name] = f"its base item '{base}' has no figure"
                suite.say(f"{name}: SKIPPED ({suite.skipped[name]})")
                continue

            def lever(name=name, base=base, figure=figure, overrides=overrides) -> dict:
                r = run_pairs(suite, *overrides) if base == "pairs" else run_annotate(suite, *overrides)
                r["lever"] = lever_verdict(r[figure], suite.results[base][figure])
                if name in MODEL_SWAPS:  # a faster model is not a default: its labels differ
                    r["lever"]["verdict"] = "another model, other labels: pick it by docs/annotators.md"
                return r

            suite.run(name, lever)


def watchdog(suite: Suite, grace_s: float) -> threading.Timer:
    """Last resort when an item overruns the budget (a compile that takes far longer than estimated): the figures
    so far, the RESULT line, and exit 3, instead of a loan spent waiting."""

    def fire() -> None:
        suite.skipped[suite.current or "?"] = f"cut: still running {grace_s:.0f} s past the budget"
        suite.say(f"budget overrun: stopping in the middle of '{suite.current}'")
        suite.finish()
        os._exit(3)

    timer = threading.Timer(max(suite.left(), 0) + grace_s, fire)
    timer.daemon = True
    timer.start()
    return timer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models on the CPU: the script works, in minutes")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-time budget (default 420, smoke 150)")
    ap.add_argument("--grace-s", type=float, default=45, help="how long an item may overrun before the run stops")
    ap.add_argument("--out", default=None, help="folder for gpu_suite.json (default out/gpu-suite-<UTC time>)")
    ap.add_argument("--only", default="", help=f"comma-separated items of: {', '.join(ITEMS)}")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    args = ap.parse_args(argv)
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = [x for x in only if x not in ITEMS]
    if unknown:
        ap.error(f"unknown items {unknown}; known: {', '.join(ITEMS)}")
    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: this suite needs an NVIDIA GPU that torch can use (torch.cuda.is_available() is "
              "False); --smoke runs the same script on the CPU", file=sys.stderr)
        return 2
    budget = args.budget_s if args.budget_s is not None else sizes.budget_s
    out_dir = args.out or os.path.join("out", "gpu-suite-" + time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()))
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    suite = Suite(sizes, device, budget, out_dir, args.smoke)
    print(f"load average at start: {suite.load_start}", flush=True)
    mode = "smoke (tiny models, CPU: the path works, the figures mean nothing)" if args.smoke else "full"
    suite.say(f"gpu_suite {mode}"
              f"; torch {torch.__version__} CUDA {torch.version.cuda}; {os.cpu_count()} CPUs; budget {budget:.0f} s")
    timer = watchdog(suite, args.grace_s)
    try:
        run_suite(suite, only)
    finally:
        timer.cancel()
    suite.finish()
    return 1 if any("error" in r for r in suite.results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
