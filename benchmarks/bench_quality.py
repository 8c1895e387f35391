"""The cost of issue 16's new per-sample work against the annotate stage alone, same models, same rows.

- **without** (the baseline): ``Annotator`` with ``annotate.context_classes=false`` - the asked classes only.
- **with**: ``Annotator`` with ``annotate.context_classes=true`` (the prompt's other vocabulary classes detected
  and masked too) followed by the quality stage (``QualityScorer``: CLIP image and prompt embeddings, the
  cosine) on the rows annotate kept, each in batches of its own ``resources.batch_size``, as actors get them.

Both annotators share one detector and one segmenter (only the flag differs). Rows: random-noise images at the
preset's generator size (the work per image matters here, not what it shows), each with a prompt that names its
asked classes and two other vocabulary classes (the context classes), ``context_class_ids`` set. Times are the
best of ``--repeats`` after ``--warmup`` untimed rounds, alternating the order, on ``--threads`` CPU threads
(default 1, as the build's annotate actor). Last line:
``RESULT quality overhead=<with/without, wall> cpu_overhead=<the same in process CPU seconds, which other jobs on
the machine disturb less> annotate_ms=<ms per sample, without> context_ms=<extra ms per sample of
context classes> quality_ms=<ms per sample of the quality stage> device=<...> spread=<x> meaningful=yes|no
load=<1m/5m/15m>``.

    .venv/bin/python benchmarks/bench_quality.py                         # tiny preset, CPU, seconds
    .venv/bin/python benchmarks/bench_quality.py --preset sd15-random --samples 8 --repeats 2 \\
        --set generator.height=256 --set generator.width=256 --set annotate.detector.image_size=256 \\
        --set annotate.segmenter.model_type=vit_b                        # full-size CLIP, reduced annotate (CPU)
    .venv/bin/python benchmarks/bench_quality.py --preset sd15-random    # full sizes (GPU)
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import describe, machine, noise_fields, print_load, ratio_note, spread  # noqa: E402
from benchmarks.bench_annotate import make_rows, run_batched  # noqa: E402

from magicseg_models.annotation import Annotator  # noqa: E402
from magicseg_models.config import load_config  # noqa: E402
from magicseg_models.pipeline import run_live  # noqa: E402
from magicseg_models.quality.clip_score import QualityScorer  # noqa: E402
from magicseg_models.vocabulary import Vocabulary  # noqa: E402


def with_prompts(rows: list[dict], vocab: Vocabulary) -> list[dict]:
    """Each row gets a prompt naming its classes and two others of the vocabulary (its context classes)."""
    ids = vocab.ids
    out = []
    for k, row in enumerate(rows):
        others = [c for c in (ids[(k * 3 + 1) % len(ids)], ids[(k * 5 + 2) % len(ids)]) if c not in row["class_ids"]]
        others = list(dict.fromkeys(others))
        asked = " and a ".join(row["class_names"])
        scene = " and a ".join(vocab[c].name for c in others)
        out.append({**row, "prompt": f"a photo of a {asked} beside a {scene}, in a busy street at dusk",
                    "context_class_ids": others})
    return out


def run_quality(scorer: QualityScorer, rows: list[dict], batch_size: int) -> list[dict]:
    out = []
    for start in range(0, len(rows), batch_size):
        out.extend(run_live(scorer, rows[start:start + batch_size]))
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _timed(fn, *args, cpu: list[float] | None = None) -> tuple[float, list[dict]]:
    """Wall seconds of ``fn(*args)``; with ``cpu``, the process's CPU seconds are appended to it."""
    _sync()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    _sync()
    if cpu is not None:
        cpu.append(time.process_time() - start_cpu)
    return time.perf_counter() - start, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--samples", type=int, default=32, help="rows (image + counterfactual each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: as the build's annotate actor, num_cpus=1, runs; and a thread "
                             "that spin-waits for a descheduled sibling cannot distort the figures on a shared CPU)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. annotate.segmenter.model_type=vit_b")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print_load("start")

    base = load_config("build", args.preset, overrides=[*args.overrides, "annotate.context_classes=false"])
    full = load_config("build", args.preset, overrides=[*args.overrides, "annotate.context_classes=true"])
    vocab = Vocabulary.load(base.vocabulary.file, base.vocabulary.classes)
    t0 = time.perf_counter()
    plain = Annotator(base.annotate, vocab, device=args.device)
    context = Annotator(full.annotate, vocab, device=plain.device, detector=plain.detector,
                        segmenter=plain.segmenter)
    scorer = QualityScorer(full.quality, device=plain.device)
    load_s = time.perf_counter() - t0
    device = plain.device
    rows = with_prompts(make_rows(vocab, args.samples, base.generator.height, base.generator.width), vocab)
    a_batch, q_batch = base.annotate.resources.batch_size, full.quality.resources.batch_size
    print(f"preset {args.preset}: {args.samples} samples at {base.generator.height}x{base.generator.width}, "
          f"annotate rows per call {a_batch}, quality rows per call {q_batch}, CLIP {scorer.source['model']} at "
          f"{scorer.image_size}px, device {machine(device)}, torch threads {torch.get_num_threads()}, models "
          f"loaded in {load_s:.1f} s")

    def without() -> list[dict]:
        return run_batched(plain, rows, a_batch)

    def with_new_work() -> list[dict]:
        return run_quality(scorer, run_batched(context, rows, a_batch), q_batch)

    annotated = run_batched(context, rows, a_batch)
    for _ in range(args.warmup):
        without()
        with_new_work()
    times: dict[str, list[float]] = {"without": [], "with": [], "context": [], "quality": []}
    cpu: dict[str, list[float]] = {"without": [], "with": []}
    for r in range(args.repeats):
        for name in (("without", "with") if r % 2 == 0 else ("with", "without")):
            seconds, _ = _timed(without if name == "without" else with_new_work, cpu=cpu[name])
            times[name].append(seconds)
        # the two parts of "with" on their own, for the per-sample figures
        times["context"].append(_timed(run_batched, context, rows, a_batch)[0])
        times["quality"].append(_timed(run_quality, scorer, annotated, q_batch)[0])
    out = with_new_work()
    kept = [r for r in out if not r.get("drop_reason")]
    context_found = sum(not a.get("asked", True) for r in kept for a in r.get("annotations") or [])
    print(f"rows: {len(kept)}/{len(rows)} kept, {sum(r.get('clip_score') is not None for r in kept)} scored, "
          f"{context_found} context-class annotations (asked=false)")
    best = {name: min(values) for name, values in times.items()}
    for name in ("without", "with", "context", "quality"):
        print(f"  {name:8s} best {best[name]:8.3f} s   {1000 * best[name] / len(rows):9.2f} ms/sample   "
              f"({describe(times[name])}; all: {', '.join(f'{t:.3f}' for t in times[name])})")
    ratio = best["with"] / best["without"]
    # CPU seconds of this process: what the work costs even when other jobs share the cores (wall time does not)
    cpu_ratio = min(cpu["with"]) / min(cpu["without"])
    print(f"overhead {ratio:.3f}: {ratio_note(spread(times['with']), spread(times['without']), ratio)}; "
          f"in process CPU seconds {cpu_ratio:.3f} ({min(cpu['with']):.3f} / {min(cpu['without']):.3f})")
    per_sample = {name: 1000 * value / len(rows) for name, value in best.items()}
    load = print_load("end")
    print(f"RESULT quality overhead={ratio:.3f} cpu_overhead={cpu_ratio:.3f} "
          f"annotate_ms={per_sample['without']:.2f} context_ms={max(0.0, per_sample['context'] - per_sample['without']):.2f} "
          f"quality_ms={per_sample['quality']:.2f} device={machine(device)} "
          f"{noise_fields(times['with'], times['without'], ratio)} {load}")


if __name__ == "__main__":
    main()
