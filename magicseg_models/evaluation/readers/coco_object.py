"""COCO-Object val: COCO val2017 images with COCO-Stuff-164k label PNGs (or prepared / mmseg train-id PNGs)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from magicseg_models.errors import BenchmarkDataError
from magicseg_models.evaluation.benchmarks import benchmark_classes
from magicseg_models.evaluation.data_files import (
    check_label_size,
    check_limit,
    data_root_folder,
    identity_lut,
    need_path,
    open_rgb,
    read_index_png,
)
from magicseg_models.evaluation.readers.base import BenchmarkReader, Sample
from magicseg_models.evaluation.readers.coco_labels import coco_object_lut, coco_train_id_lut

COCO_LAYOUT = (
    "<data_root>/val2017/<id>.jpg with <data_root>/stuffthingmaps_trainval2017/val2017/<id>.png "
    "(COCO-Stuff-164k), or mmseg's <data_root>/images/val2017 with <data_root>/annotations/val2017"
)


class COCOObjectReader(BenchmarkReader):
    """COCO-Object val (COCO val2017 + COCO-Stuff-164k label PNGs): 0 = background, 1..80."""

    benchmark = "coco-object"

    def __init__(
        self,
        data_root,
        limit: int | None = None,
        prompt_names: str = "default",
        prepared_dir: str | os.PathLike | None = None,
    ):
        limit = check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        root = data_root_folder(self.benchmark, data_root, "the folder holding val2017 and the COCO-Stuff label PNGs")
        image_dir = next((d for d in (root / "val2017", root / "images" / "val2017") if d.is_dir()), None)
        if image_dir is None:
            need_path(root / "val2017", self.benchmark, "image", COCO_LAYOUT, folder=True)
        label_candidates = (root / "stuffthingmaps_trainval2017" / "val2017", root / "annotations" / "val2017")
        label_dir = next((d for d in label_candidates if d.is_dir()), None)
        if label_dir is None:
            need_path(label_candidates[0], self.benchmark, "label", COCO_LAYOUT, folder=True)
        self.image_dir, self.label_dir = image_dir, label_dir
        self.prepared_dir = Path(prepared_dir).expanduser() if prepared_dir is not None else label_dir
        ids = sorted(p.stem for p in image_dir.glob("*.jpg"))
        if not ids:
            raise BenchmarkDataError(f"{self.benchmark}: no .jpg images in {image_dir}")
        super().__init__(root, classes, ids, limit)
        missing = [i for i in self._ids if self._label_source(i) is None]
        if missing:
            raise BenchmarkDataError(
                f"{self.benchmark}: {len(missing)} of {len(self._ids)} images have no label PNG, first: "
                f"{label_dir / (missing[0] + '.png')}"
            )

    def _label_source(self, image_id: str) -> tuple[Path, str] | None:
        """(path, kind) of the label file read for ``image_id``: prepared, raw or train_ids."""
        for path, kind in (
            (self.prepared_dir / f"{image_id}_instanceTrainIds.png", "prepared"),
            (self.label_dir / f"{image_id}.png", "raw"),
            (self.label_dir / f"{image_id}_labelTrainIds.png", "train_ids"),
        ):
            if path.is_file():
                return path, kind
        return None

    def label(self, image_id: str, prepared: bool = True) -> tuple[np.ndarray, Path]:
        source = self._label_source(image_id)
        if source is not None and source[1] == "prepared" and not prepared:
            raw = self.label_dir / f"{image_id}.png"
            ids = self.label_dir / f"{image_id}_labelTrainIds.png"
            source = (raw, "raw") if raw.is_file() else (ids, "train_ids") if ids.is_file() else None
        if source is None:
            raise BenchmarkDataError(
                f"{self.benchmark}: missing label file {self.label_dir / (image_id + '.png')} "
                f"(expected layout: {COCO_LAYOUT})"
            )
        path, kind = source
        values = read_index_png(path, self.benchmark)
        if kind == "prepared":
            lut = identity_lut(81, 0)
            lut[255] = 0  # unlabeled is background in COCO-Object
            return lut[values], path
        return (coco_object_lut() if kind == "raw" else coco_train_id_lut())[values], path

    def _load(self, image_id: str) -> Sample:
        image = open_rgb(self.image_dir / f"{image_id}.jpg", self.benchmark)
        label, path = self.label(image_id)
        check_label_size(label, image, path, self.benchmark)
        return Sample(image_id, image, label=label)
