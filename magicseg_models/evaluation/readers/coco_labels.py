"""COCO-Object label values: lookup tables from COCO-Stuff-164k PNG values and from mmseg's train ids."""

from __future__ import annotations

import functools

import numpy as np

from magicseg_models.evaluation.benchmarks import data_table


@functools.lru_cache(maxsize=1)
def coco_object_lut() -> np.ndarray:
    """uint8 LUT: COCO-Stuff-164k PNG value -> COCO-Object label (``coco_object80_ids.tsv``)."""
    header, rows = data_table("coco_object80_ids.tsv")
    label_col, png_col = header.index("cocoobject_label"), header.index("cocostuff164k_png_value")
    lut = np.zeros(256, dtype=np.uint8)  # stuff 91..181, unused ids and unlabeled 255 -> 0
    for row in rows:
        lut[int(row[png_col])] = int(row[label_col])
    lut.flags.writeable = False
    return lut


def coco_train_id_lut() -> np.ndarray:
    """uint8 LUT: mmseg's COCO-Stuff-164k ``*_labelTrainIds`` (0..170, things first) -> COCO-Object."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:80] = np.arange(1, 81, dtype=np.uint8)
    return lut
