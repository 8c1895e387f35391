"""OpenImages-v7 val point labels: images with their labelled points (``Sample.points``), no dense labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from magicseg_models.evaluation.benchmarks import BenchmarkClasses, benchmark_classes, oiv7_benchmark_classes
from magicseg_models.evaluation.data_files import check_files_exist, check_limit, need_path, open_rgb
from magicseg_models.evaluation.oiv7_csv import OIV7_LAYOUT, oiv7_files, read_oiv7_points
from magicseg_models.evaluation.readers.base import BenchmarkReader, Sample


def oiv7_classes(data_root, prompt_names: str = "default") -> BenchmarkClasses:
    """The OpenImages-v7 point classes: every label in the point CSV, sorted by MID (names from the
    class-descriptions CSV). Parses the point CSV (cached per file)."""
    return benchmark_classes("oiv7-points", prompt_names, data_root)


class OIV7PointsReader(BenchmarkReader):
    """OpenImages-v7 val point labels: ``Sample.points`` (N, 4) int64 = x_px, y_px, class_index,
    is_positive ("yes" 1, "no" 0; "unsure" skipped); ``Sample.label`` is None."""

    benchmark = "oiv7-points"

    def __init__(
        self,
        data_root,
        limit: int | None = None,
        prompt_names: str = "default",
        images_dir: str | os.PathLike | None = None,
    ):
        limit = check_limit(limit)
        root, points, classes_csv = oiv7_files(data_root)
        self.image_dir = Path(images_dir).expanduser() if images_dir is not None else root / "validation"
        need_path(self.image_dir, self.benchmark, "image", OIV7_LAYOUT, folder=True)
        parsed = read_oiv7_points(points, classes_csv)
        classes = oiv7_benchmark_classes(parsed.mids, parsed.names, prompt_names)
        self.unnamed_labels = parsed.unnamed
        self._points = parsed.points
        super().__init__(root, classes, sorted(parsed.points), limit)
        check_files_exist(self.benchmark, [self.image_dir / f"{i}.jpg" for i in self._ids], "images with point labels")

    def _load(self, image_id: str) -> Sample:
        image = open_rgb(self.image_dir / f"{image_id}.jpg", self.benchmark)
        xy, cls, pos = self._points[image_id]
        w, h = image.size
        x = np.clip(np.floor(xy[:, 0] * w), 0, w - 1).astype(np.int64)
        y = np.clip(np.floor(xy[:, 1] * h), 0, h - 1).astype(np.int64)
        points = np.stack([x, y, cls, pos.astype(np.int64)], axis=1)
        return Sample(image_id, image, points=points)
