"""The LVIS rasteriser: instance segmentations (polygons or RLE) -> one semantic label map per image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def instance_mask(segmentation, height: int, width: int) -> np.ndarray | None:
    """Binary (H, W) mask of a COCO/LVIS segmentation (polygons, uncompressed or compressed RLE)."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if len(p) >= 6]
        if not polygons:
            return None
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        rle = mask_utils.frPyObjects(segmentation, height, width)
    elif isinstance(segmentation, dict):
        rle = segmentation
    else:
        return None
    return mask_utils.decode(rle)


def lvis_semantic_map(annotations: Sequence[dict], height: int, width: int) -> np.ndarray:
    """int64 (H, W) map: LVIS category id per pixel, 0 where no instance. Instances are painted
    from the largest mask area to the smallest (ties: annotation id), so small objects survive."""
    masks = []
    for ann in annotations:
        mask = instance_mask(ann.get("segmentation"), height, width)
        if mask is None:
            continue
        mask = mask.astype(bool)
        masks.append((-int(mask.sum()), int(ann.get("id", 0)), int(ann["category_id"]), mask))
    masks.sort(key=lambda m: (m[0], m[1]))
    label = np.zeros((height, width), dtype=np.int64)
    for _, _, category, mask in masks:
        label[mask] = category
    return label
