"""What every benchmark reader is: a sequence of :class:`Sample` in a fixed order, cut to ``limit`` images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from magicseg_models.evaluation.benchmarks import BenchmarkClasses

POINT_COLUMNS = ("x_px", "y_px", "class_index", "is_positive")


@dataclass(frozen=True, eq=False)
class Sample:
    """One benchmark image with its ground truth in the benchmark's label space."""

    image_id: str
    image: Image.Image  # RGB
    label: np.ndarray | None = None  # (H, W); uint8 (int64 for lvis); None for oiv7-points
    points: np.ndarray | None = None  # (N, 4) int64, POINT_COLUMNS; oiv7-points only


class BenchmarkReader(Sequence):
    """A benchmark split as a sequence of :class:`Sample`, in a fixed order."""

    benchmark: ClassVar[str]

    def __init__(self, root: Path, classes: BenchmarkClasses, image_ids: Sequence[str], limit: int | None):
        self.data_root = root
        self.classes = classes
        ids = list(image_ids)
        self._ids = tuple(ids if limit is None else ids[:limit])
        self.total = len(ids)  # images in the full split, before ``limit``

    @property
    def image_ids(self) -> tuple[str, ...]:
        return self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if isinstance(index, slice):
            raise TypeError(f"{type(self).__name__} does not support slicing; use limit=")
        n = len(self._ids)
        i = index + n if index < 0 else index
        if not 0 <= i < n:
            raise IndexError(f"sample {index} out of range for {n} samples")
        return self._load(self._ids[i])

    def __iter__(self) -> Iterator[Sample]:
        for image_id in self._ids:
            yield self._load(image_id)

    def _load(self, image_id: str) -> Sample:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.data_root)!r}, {len(self)} of {self.total} images)"
