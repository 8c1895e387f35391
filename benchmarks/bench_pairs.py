#!/usr/bin/env python
"""Paired generation (ours) against the authors' way (two plain StableDiffusionPipeline calls per pair).

The same jobs (prompt, counterfactual prompt, seed) go through:

- (a) ours: ``PairGenerator(config.generator)(rows)`` - the stage as shipped: pairs batched ``--batch`` at a time,
  image and counterfactual from the same latents in one UNet call per timestep (4 x batch branches), the
  empty-prompt embedding cached, VAE decode batched, JPEG encoding in a thread pool;
- (b) plain: for every pair, two ``StableDiffusionPipeline`` calls with one image each (the image, then the
  counterfactual), both given the same latents (the pair's seeded noise), built from the SAME components (UNet,
  VAE, text encoder, tokenizer, scheduler config), each image JPEG-encoded after its call.

Both produce the same images (the script checks the largest pixel difference on the first pair). Timings are the
best of ``--repeats`` after ``--warmup`` untimed rounds, (a)/(b) order alternating, one process, one device.
UNet calls are counted with a forward hook: (a) counts calls per UNet batch (the calls each pair goes through),
(b) calls per pair. PNDM (SD 1.5's default scheduler) evaluates the UNet ``steps + 1`` times (one warm-up
evaluation of its multistep method), in both paths.

Last line::

    RESULT pairs speedup=<time_b/time_a> unet_calls_per_pair=<n> steps=<s> pairs_per_s=<(a) pairs/s> device=<...>
        spread=<x> meaningful=yes|no load=<1m/5m/15m>

Usage: ``.venv/bin/python benchmarks/bench_pairs.py [--preset tiny|sd15-random|sd15] [--pairs 8] [--batch 4]
[--steps 20] [--size PX] [--scheduler NAME] [--repeats 3] [--warmup 1] [--device auto|cpu|cuda]
[--set generator.key=value ...]``. ``--preset sd15-random`` is the GPU throughput setting (full SD 1.5
architecture, random weights, fp16; no download).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

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
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from magicseg_models.config import load_config  # noqa: E402
from magicseg_models.dataset.codecs import encode_image  # noqa: E402
from magicseg_models.generation import PairGenerator  # noqa: E402
from magicseg_models.vocabulary import Vocabulary  # noqa: E402


def make_rows(n: int) -> list[dict]:
    names = [c.prompt_name for c in Vocabulary.default()]
    rows = []
    for i in range(n):
        name = names[(i * 97) % len(names)]
        scene = f"a photo of a {{}} on a wooden table in a bright kitchen, morning light, detailed ({i})"
        rows.append({"sample_id": f"bench-{i:05d}", "prompt": scene.format(name),
                     "counterfactual_prompt": scene.format("nothing"), "seed": 1000 + i})
    return rows




class CallCounter:
    def __init__(self, module):
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, *_):
        self.calls += 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="pairs per UNet batch in (a)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--size", type=int, default=None, help="image height and width (default: the preset's)")
    ap.add_argument("--scheduler", default=None, help="default: the preset's (the model's own: PNDM)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    print_load("start")

    overrides = [f"generator.steps={args.steps}", f"generator.resources.batch_size={args.batch}",
                 "generator.image_format=jpeg", *args.overrides]
    if args.size:
        overrides += [f"generator.height={args.size}", f"generator.width={args.size}"]
    if args.scheduler:
        overrides.append(f"generator.scheduler={args.scheduler}")
    config = load_config("build", preset=args.preset, overrides=overrides).generator

    t0 = time.perf_counter()
    gen = PairGenerator(config, device=None if args.device == "auto" else args.device)
    load_s = time.perf_counter() - t0
    pipe = gen.pipeline
    device = gen.device

    from diffusers import StableDiffusionPipeline

    plain = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.unet, scheduler=pipe.scheduler.__class__.from_config(
                                        pipe.scheduler.config),
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    plain.set_progress_bar_config(disable=True)

    rows = make_rows(args.pairs)
    h, w = config.height, config.width
    fmt, quality = config.image_format, config.jpeg_quality

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run_ours() -> list[dict]:
        return gen(rows)

    def run_plain() -> list[tuple[bytes, bytes]]:
        out = []
        for row in rows:
            latents, _ = pipe.prepare_latents([row["seed"]], h, w, pipe.dtype)
            pair = []
            for text in (row["prompt"], row["counterfactual_prompt"]):
                image = plain(text, latents=latents, height=h, width=w, num_inference_steps=config.steps,
                              guidance_scale=config.guidance_scale, output_type="pil").images[0]
                pair.append(encode_image(image, fmt, quality))
            out.append(tuple(pair))
        return out

    def timed(fn) -> tuple[float, int]:
        counter = CallCounter(pipe.unet)
        try:
            sync()
            start = time.perf_counter()
            fn()
            sync()
            return time.perf_counter() - start, counter.calls
        finally:
            counter.handle.remove()

    # the two paths make the same images: compare the first pair in floats
    first = rows[0]
    ours_np = pipe([first["prompt"]], [first["counterfactual_prompt"]], [first["seed"]], height=h, width=w,
                   num_inference_steps=config.steps, guidance_scale=config.guidance_scale, output_type="np")
    diff = 0.0
    for text, ours in ((first["prompt"], ours_np.images[0]), (first["counterfactual_prompt"],
                                                                ours_np.counterfactual_images[0])):
        ref = plain(text, latents=ours_np.initial_latents, height=h, width=w, num_inference_steps=config.steps,
                    guidance_scale=config.guidance_scale, output_type="np").images[0]
        diff = max(diff, float(np.abs(ref - ours).max()))

    for _ in range(args.warmup):
        run_ours()
        run_plain()
    times = {"ours": [], "plain": []}
    calls = {}
    for r in range(args.repeats):
        order = (("ours", run_ours), ("plain", run_plain)) if r % 2 == 0 else (("plain", run_plain),
                                                                               ("ours", run_ours))
        for name, fn in order:
            seconds, n_calls = timed(fn)
            times[name].append(seconds)
            calls[name] = n_calls
    gen.close()

    t_a, t_b = min(times["ours"]), min(times["plain"])
    n_batches = -(-args.pairs // args.batch)
    calls_a = calls["ours"] / n_batches  # calls each pair goes through (its UNet batch's calls)
    calls_b = calls["plain"] / args.pairs
    unet_params = sum(p.numel() for p in pipe.unet.parameters())
    print(f"machine: {cpu_model()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); device {device_label(device)}; python {platform.python_version()}")
    print(f"preset {args.preset}: {gen.settings['model']}, UNet {unet_params / 1e6:.2f} M params, {h}x{w}, "
          f"{config.steps} steps, guidance {config.guidance_scale}, {type(pipe.scheduler).__name__}, "
          f"{gen.settings['dtype']}; {args.pairs} pairs, (a) {args.batch} pairs per UNet batch; "
          f"load {load_s:.1f} s")
    print(f"max |ours - plain| pixel difference on pair 0: {diff:.2e} (images in [0, 1])")
    print(f"{'path':<8}{'best s':>10}{'pairs/s':>10}{'UNet calls':>12}{'calls/pair':>12}   repeats")
    print(f"{'ours':<8}{t_a:>10.3f}{args.pairs / t_a:>10.2f}{calls['ours']:>12}{calls_a:>12.1f}   "
          f"{describe(times['ours'])}")
    print(f"{'plain':<8}{t_b:>10.3f}{args.pairs / t_b:>10.2f}{calls['plain']:>12}{calls_b:>12.1f}   "
          f"{describe(times['plain'])}")
    print(f"speedup {t_b / t_a:.3f}: {ratio_note(spread(times['plain']), spread(times['ours']), t_b / t_a)}")
    load = print_load("end")
    print(f"RESULT pairs speedup={t_b / t_a:.3f} unet_calls_per_pair={calls_a:g} steps={config.steps} "
          f"pairs_per_s={args.pairs / t_a:.3f} device={device_label(device)} "
          f"{noise_fields(times['plain'], times['ours'], t_b / t_a)} {load}")


if __name__ == "__main__":
    main()
