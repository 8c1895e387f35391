"""Synthetic samples that follow the dataset contract exactly, with masks known by construction.

Used by the tests, ``benchmarks/bench_store.py`` and the demo (until the build flow of issue #6 lands): each
named class becomes a coloured shape on a textured background; the counterfactual image is the same background
without the shapes (what the paired generator aims for). Nothing here claims to be a model's output.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Sequence

import numpy as np

from magicseg_models.dataset.codecs import box_fill, encode_image, encode_mask
from magicseg_models.dataset.store import DatasetStore

DROP_EVERY = 7  # every 7th job is dropped, so manifests carry drop reasons like real builds


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(str(seed).encode(), digest_size=8).digest(), "little"))


def synthetic_row(sample_id: str, class_ids: Sequence[int], class_names: Sequence[str], seed: int,
                  height: int = 128, width: int = 128, image_format: str = "jpeg", quality: int = 95) -> dict:
    rng = _rng(seed)
    scores = _rng(seed + 1)  # the quality scores draw apart, so images and masks stay those of schema 1
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(40, 200, size=3)
    background = (base + 40 * np.sin(xx[..., None] / (7 + 5 * rng.random()) + rng.random(3) * 6)
                  + rng.normal(0, 12, size=(height, width, 3)))
    counterfactual = np.clip(background, 0, 255).astype(np.uint8)
    image = counterfactual.copy()
    annotations = []
    for class_id, name in zip(class_ids, class_names):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        ry, rx = rng.uniform(0.1, 0.25) * height, rng.uniform(0.1, 0.25) * width
        mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[mask] = rng.integers(0, 256, size=3)
        rows, cols = np.nonzero(mask)
        counts, area = encode_mask(mask)
        box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
        annotations.append({
            "class_id": int(class_id), "class_name": name, "box": box,
            "score": float(rng.uniform(0.35, 0.95)), "mask_rle": counts, "area": area, "asked": True,
            "predicted_iou": float(scores.uniform(0.7, 1.0)), "stability_score": float(scores.uniform(0.8, 1.0)),
            "box_fill": box_fill(mask, box),
        })
    phrase = " and a ".join(class_names)
    return {
        "sample_id": sample_id, "class_names": list(class_names), "class_ids": [int(c) for c in class_ids],
        "prompt": f"a photo of a {phrase}", "counterfactual_prompt": "a photo of a " + " and a ".join(
            "nothing" for _ in class_names),
        "seed": int(seed),
        "image": encode_image(image, image_format, quality),
        "counterfactual_image": encode_image(counterfactual, image_format, quality),
        "height": height, "width": width, "annotations": annotations,
        "counterfactual_scores": [float(rng.uniform(0.0, 0.2)) for _ in class_names],
        "context_class_ids": [], "clip_score": float(scores.uniform(0.2, 0.35)),
    }


def write_synthetic_dataset(uri: str, jobs: Iterable[Any], classes: Sequence[str], *, height: int = 128,
                            width: int = 128, config: dict | None = None, storage_options: dict | None = None,
                            selected_classes: Sequence[str] | None = None) -> DatasetStore:
    """Write planned jobs (objects with index, sample_id, class_ids, class_names, seed, shard) as a dataset.

    ``classes``: names by id (the full vocabulary); ``selected_classes``: the names the plan draws from.
    """
    jobs = list(jobs)
    store = DatasetStore(uri, storage_options)
    store.write_run_header(config=config or {}, planned=len(jobs), classes=list(classes),
                           selected_classes=list(selected_classes or classes),
                           models={"generator": "synthetic", "annotator": "synthetic"})
    by_shard: dict[int, list] = {}
    for job in jobs:
        by_shard.setdefault(job.shard, []).append(job)
    for shard, shard_jobs in sorted(by_shard.items()):
        dropped = {}
        with store.open_shard(shard, settings={"generator": "synthetic"}) as writer:
            for job in shard_jobs:
                if job.index % DROP_EVERY == DROP_EVERY - 1:
                    dropped[job.sample_id] = "synthetic:dropped"
                    continue
                writer.write([synthetic_row(job.sample_id, job.class_ids, job.class_names, job.seed, height, width)])
            writer.commit(planned=len(shard_jobs), dropped=dropped)
    return store
