"""Rows and images the annotation tests share: random pixels, image pairs with their classes, context classes."""

from __future__ import annotations

import numpy as np

from magicseg_models.dataset.codecs import encode_image


def random_image(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def annotation_rows(vocab, n: int, seed: int = 0, sizes=((64, 64),)) -> list[dict]:
    """``n`` rows as the pair stage leaves them: one class, or two on odd rows, an image and a counterfactual."""
    ids = vocab.ids
    rows = []
    for k in range(n):
        cls = [ids[k % len(ids)]] + ([ids[(k + 3) % len(ids)]] if k % 2 else [])
        h, w = sizes[k % len(sizes)]
        rows.append({"sample_id": f"s{k}", "class_ids": cls, "class_names": [vocab[c].name for c in cls],
                     "prompt": "p", "counterfactual_prompt": "q", "seed": k,
                     "image": encode_image(random_image(seed + 2 * k, h, w), "png"),
                     "counterfactual_image": encode_image(random_image(seed + 2 * k + 1, h, w), "png"),
                     "height": h, "width": w, "drop_reason": None})
    return rows


def with_context(rows: list[dict], vocab) -> list[dict]:
    """Each row's prompt names two other classes of the tiny vocabulary (context classes)."""
    ids = vocab.ids
    return [{**row, "context_class_ids": [i for i in (ids[(k + 1) % len(ids)], ids[(k + 5) % len(ids)])
                                          if i not in row["class_ids"]]} for k, row in enumerate(rows)]
