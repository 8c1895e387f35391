"""A dataset written WITHOUT this project's writer: plain pyarrow, PIL and pycocotools, per the documented contract.

Readers, checks and previews must accept it (other tools will write datasets like this). Types are deliberately
wider than ours (int64, float64, variable-size box lists) as the contract allows.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from pycocotools import mask as mask_utils

CLASSES = ("cat", "dog", "traffic light")

_ANNOTATION = pa.struct([
    ("class_id", pa.int64()), ("class_name", pa.string()), ("box", pa.list_(pa.float64())),
    ("score", pa.float64()), ("mask_rle", pa.string()), ("area", pa.int64()),
])
_SCHEMA = pa.schema([
    ("sample_id", pa.string()), ("class_names", pa.list_(pa.string())), ("class_ids", pa.list_(pa.int64())),
    ("prompt", pa.string()), ("counterfactual_prompt", pa.string()), ("seed", pa.int64()),
    ("image", pa.binary()), ("counterfactual_image", pa.binary()), ("height", pa.int64()), ("width", pa.int64()),
    ("annotations", pa.list_(_ANNOTATION)), ("counterfactual_scores", pa.list_(pa.float64())),
])


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def handmade_row(i: int, height: int = 48, width: int = 64) -> dict:
    """Sample ``i``: a flat grey-ish background with one rectangle (class i % 3) and, for odd i, a disc (class 0)."""
    rng = np.random.default_rng(i)
    background = np.full((height, width, 3), rng.integers(60, 120, size=3), dtype=np.uint8)
    image = background.copy()
    yy, xx = np.mgrid[0:height, 0:width]
    masks = [(i % 3, (yy >= height // 4) & (yy < height // 2 + 4) & (xx >= width // 8) & (xx < width // 2))]
    if i % 2:
        masks.append((0, (yy - 3 * height // 4) ** 2 + (xx - 3 * width // 4) ** 2 <= (min(height, width) // 6) ** 2))
    annotations = []
    for class_id, mask in masks:
        image[mask] = rng.integers(150, 256, size=3)
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        ys, xs = np.nonzero(mask)
        annotations.append({
            "class_id": class_id, "class_name": CLASSES[class_id],
            "box": [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)],
            "score": 0.5 + 0.1 * class_id, "mask_rle": rle["counts"].decode("ascii"), "area": int(mask_utils.area(rle)),
        })
    names = [a["class_name"] for a in annotations]
    return {
        "sample_id": f"hand-{i:04d}", "class_names": names, "class_ids": [a["class_id"] for a in annotations],
        "prompt": "a hand-made picture of a " + " and a ".join(names),
        "counterfactual_prompt": "a hand-made picture of an empty background", "seed": 1000 + i,
        "image": _png(image), "counterfactual_image": _png(background), "height": height, "width": width,
        "annotations": annotations, "counterfactual_scores": [0.05 for _ in names],
    }


def write_handmade_dataset(root_dir: str, n: int = 3, height: int = 48, width: int = 64) -> str:
    """Write ``n`` rows as ``shards/part-00000.parquet`` plus a hand-written ``manifest.json``; returns ``root_dir``."""
    rel = "shards/part-00000.parquet"
    os.makedirs(os.path.join(root_dir, "shards"), exist_ok=True)
    path = os.path.join(root_dir, rel)
    table = pa.Table.from_pylist([handmade_row(i, height, width) for i in range(n)], schema=_SCHEMA)
    pq.write_table(table, path)
    with open(path, "rb") as f:
        data = f.read()
    manifest = {
        "schema_version": 1,
        "shards": [{"path": rel, "rows": n, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
        "counts": {"planned": n, "kept": n, "dropped": {}},
    }
    with open(os.path.join(root_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return root_dir
