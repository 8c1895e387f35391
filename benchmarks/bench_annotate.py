"""Annotation throughput: the batched stage against the authors' per-image, per-box loop, same models, same images.

Both paths label the same rows (an image and its counterfactual each, 1-2 classes) with the same Grounding DINO
and SAM objects, and produce the same labels (checked):

- **batched** (ours): ``Annotator(rows)`` in batches of ``annotate.resources.batch_size`` rows, as a Ray actor
  gets them - images and counterfactuals of a batch in detector batches, text features once per caption, SAM
  image embeddings in batches, all boxes of an image in one mask-decoder call.
- **loop** (the authors' way): for each row, the detector on the image, then on the counterfactual, one image
  per forward with the text encoder run every time; then ``SamPredictor.set_image`` and one
  ``predict(box=...)`` call per box; masks RLE-encoded the same way.

Images are random noise at the preset's generator size (detection quality does not matter here; the work per
image does). Times are the best of ``--repeats`` after ``--warmup`` untimed rounds, alternating the order.
Last line: ``RESULT annotate speedup=<loop_time/batched_time> images_per_s=<samples/s batched> device=<...>
spread=<x> meaningful=yes|no load=<1m/5m/15m>``,
where a sample is one image plus its counterfactual (what the generator produces per job).

    .venv/bin/python benchmarks/bench_annotate.py                       # tiny preset, CPU, seconds
    .venv/bin/python benchmarks/bench_annotate.py --preset sd15-random  # full-size random weights (GPU)
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

from magicseg_models.annotation import Annotator, SamSegmenter, not_detected_reason  # noqa: E402
from magicseg_models.annotation.stage import decide_drop  # noqa: E402
from magicseg_models.config import load_config  # noqa: E402
from magicseg_models.dataset.codecs import decode_image, encode_image, encode_mask  # noqa: E402
from magicseg_models.vocabulary import Vocabulary  # noqa: E402


def make_rows(vocab: Vocabulary, n: int, height: int, width: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    ids = vocab.ids
    rows = []
    for k in range(n):
        cls = [ids[k % len(ids)]] + ([ids[(k * 7 + 3) % len(ids)]] if k % 2 and len(ids) > 1 else [])
        cls = list(dict.fromkeys(cls))
        rows.append({"sample_id": f"bench-{k}", "class_ids": cls, "class_names": [vocab[c].name for c in cls],
                     "image": encode_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)),
                     "counterfactual_image": encode_image(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)),
                     "drop_reason": None})
    return rows


def run_batched(annotator: Annotator, rows: list[dict], batch_size: int) -> list[dict]:
    out = []
    for start in range(0, len(rows), batch_size):
        out.extend(annotator(rows[start:start + batch_size]))
    return out


def run_loop(annotator: Annotator, rows: list[dict]) -> list[dict]:
    """The authors' way: one image per detector call (text encoded each time), SAM one box per call."""
    from segment_anything import SamPredictor

    detector, config = annotator.detector, annotator.config
    cache = getattr(detector, "text_cache", None)
    if cache is not None:
        cache.enabled = False
    predictor = SamPredictor(annotator.segmenter.sam)
    out = []
    try:
        for row in rows:
            row = dict(row)
            classes = [(int(c), n, annotator.vocabulary[int(c)].detector_phrase)
                       for c, n in zip(row["class_ids"], row["class_names"])]
            phrases = [p for _, _, p in classes]
            image = decode_image(row["image"])
            det = detector.detect([image], [phrases])[0]
            cf = detector.detect([decode_image(row["counterfactual_image"])], [phrases])[0]
            row["counterfactual_scores"] = [float(s) for s in cf.best_scores]
            reason = decide_drop(det, [n for _, n, _ in classes], row["counterfactual_scores"], keep=config.keep,
                                 counterfactual_threshold=config.counterfactual_threshold)
            if reason:
                row.update(annotations=None, drop_reason=reason)
                out.append(row)
                continue
            array = np.asarray(image)
            predictor.set_image(array)
            instances = []
            for k, (class_id, name, _) in enumerate(classes):
                for j in det.of_class(k):
                    mask, _, _ = predictor.predict(box=det.boxes[j], multimask_output=False)
                    rle, area = encode_mask(mask[0])
                    instances.append({"class_id": class_id, "class_name": name, "box": det.boxes[j].tolist(),
                                      "score": float(det.scores[j]), "mask_rle": rle, "area": area})
            row.update(annotations=instances, drop_reason=None, height=image.height, width=image.width)
            out.append(row)
    finally:
        if cache is not None:
            cache.enabled = True
    return out


def _timed(fn, *args) -> tuple[float, list[dict]]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def _same_labels(a: list[dict], b: list[dict]) -> tuple[bool, str]:
    """Same drops and per-class instance counts (required); boxes, scores and masks matched as sets (reported).

    Random full-size weights saturate many scores near 1.0; among such near-ties, NMS and the per-class cut
    (``detector.max_boxes``) can pick other boxes when float noise differs between batch sizes, so the share of
    identical instances is reported rather than required. With real weights and the tiny preset it is all.
    """
    matched = total = 0
    for x, y in zip(a, b):
        if x["drop_reason"] != y["drop_reason"]:
            return False, f"{x['sample_id']}: drop {x['drop_reason']} vs {y['drop_reason']}"
        if x["annotations"] is None:
            continue
        for class_id in x["class_ids"]:
            p = [i for i in x["annotations"] if i["class_id"] == class_id]
            q = [i for i in y["annotations"] if i["class_id"] == class_id]
            if len(p) != len(q):
                return False, f"{x['sample_id']}: {len(p)} vs {len(q)} instances of class {class_id}"
            for i in p:
                total += 1
                matched += any(abs(i["score"] - j["score"]) <= 1e-3 and np.allclose(i["box"], j["box"], atol=0.5)
                               and abs(i["area"] - j["area"]) <= max(2, 0.01 * j["area"]) for j in q)
    return True, f"same drops and per-class counts; {matched}/{total} instances identical (box, score, mask)"



def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--samples", type=int, default=64, help="rows (image + counterfactual each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. annotate.segmenter.model_type=vit_b")
    args = parser.parse_args(argv)
    print_load("start")

    config = load_config("build", args.preset, overrides=args.overrides)
    c = config.annotate
    if c.segmenter.backend != "segment-anything":
        raise SystemExit("the loop baseline uses segment-anything's SamPredictor: segmenter.backend must be "
                         "segment-anything")
    if c.segmenter.encoder_dtype != "float32":
        raise SystemExit("the loop baseline's SamPredictor feeds the image encoder float32: "
                         "segmenter.encoder_dtype must be float32 here (benchmarks/gpu_suite.py measures bfloat16)")
    vocab = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    t0 = time.perf_counter()
    annotator = Annotator(c, vocab, device=args.device)
    assert isinstance(annotator.segmenter, SamSegmenter)
    load_s = time.perf_counter() - t0
    device = annotator.device
    rows = make_rows(vocab, args.samples, config.generator.height, config.generator.width)
    batch = c.resources.batch_size
    print(f"preset {args.preset}: {args.samples} samples at {config.generator.height}x{config.generator.width}, "
          f"rows per call {batch}, detector batch {c.detector.batch_size}, SAM batch {c.segmenter.batch_size}, "
          f"device {machine(device)}, torch threads {torch.get_num_threads()}, models loaded in {load_s:.1f} s")

    for _ in range(args.warmup):
        run_batched(annotator, rows, batch)
        run_loop(annotator, rows)
    times: dict[str, list[float]] = {"batched": [], "loop": []}
    results: dict[str, list[dict]] = {}
    for r in range(args.repeats):
        order = ("batched", "loop") if r % 2 == 0 else ("loop", "batched")
        for name in order:
            seconds, results[name] = _timed(run_batched, annotator, rows, batch) if name == "batched" else \
                _timed(run_loop, annotator, rows)
            times[name].append(seconds)
    same, why = _same_labels(results["batched"], results["loop"])
    kept = sum(r["drop_reason"] is None for r in results["batched"])
    instances = sum(len(r["annotations"] or []) for r in results["batched"])
    drops = [r["drop_reason"] for r in results["batched"] if r["drop_reason"]]
    print(f"labels: {kept}/{len(rows)} kept, {instances} instances, "
          f"{len(drops)} dropped ({sum(d.startswith(not_detected_reason('')) for d in drops)} not detected); "
          f"batched == loop: {same} ({why})")
    best = {name: min(values) for name, values in times.items()}
    for name in ("batched", "loop"):
        print(f"  {name:8s} best {best[name]:8.3f} s   {len(rows) / best[name]:8.2f} samples/s   "
              f"({describe(times[name])}; all: {', '.join(f'{t:.3f}' for t in times[name])})")
    ratio = best["loop"] / best["batched"]
    print(f"speedup {ratio:.3f}: {ratio_note(spread(times['loop']), spread(times['batched']), ratio)}")
    load = print_load("end")
    print(f"RESULT annotate speedup={ratio:.3f} images_per_s={len(rows) / best['batched']:.2f} "
          f"device={machine(device)} {noise_fields(times['loop'], times['batched'], ratio)} {load}")


if __name__ == "__main__":
    main()
