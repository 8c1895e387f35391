"""PASCAL VOC 2012 val and PASCAL Context 59 val: JPEGImages + index PNGs + an ImageSets list."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from magicseg_models.evaluation.benchmarks import benchmark_classes
from magicseg_models.evaluation.data_files import (
    check_files_exist,
    check_label_size,
    check_limit,
    data_root_folder,
    identity_lut,
    need_path,
    open_rgb,
    read_index_png,
)
from magicseg_models.evaluation.readers.base import BenchmarkReader, Sample


class _VOCStyleReader(BenchmarkReader):
    """JPEGImages + index-PNG folder + an ImageSets list, under VOCdevkit/<year>."""

    year: ClassVar[str]
    label_dir: ClassVar[str]
    list_file: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, data_root, limit: int | None = None, prompt_names: str = "default"):
        limit = check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        layout = (
            f"<data_root>/VOCdevkit/{self.year}/{{JPEGImages/<id>.jpg, {self.label_dir}/<id>.png, "
            f"{self.list_file}}}; data_root may also be VOCdevkit or {self.year}"
        )
        root = data_root_folder(self.benchmark, data_root, f"the folder holding VOCdevkit/{self.year}")
        base = self._find_base(root)
        if base is None:
            expected = root / self.year if root.name == "VOCdevkit" else root / "VOCdevkit" / self.year
            need_path(expected, self.benchmark, self.title, layout, folder=True)
        self.base = base
        self.image_dir = need_path(base / "JPEGImages", self.benchmark, "image", layout, folder=True)
        self.label_root = need_path(base / self.label_dir, self.benchmark, "label", layout, folder=True)
        listing = need_path(base / self.list_file, self.benchmark, "image list", layout, folder=False)
        ids = [line.split()[0] for line in listing.read_text("utf-8").splitlines() if line.strip()]
        super().__init__(root, classes, ids, limit)
        self._lut = identity_lut(classes.num_classes, classes.ignore_index)
        check_files_exist(
            self.benchmark,
            [p for i in self._ids for p in (self._image_path(i), self._label_path(i))],
            f"image/label files listed in {listing}",
        )

    def _find_base(self, root: Path) -> Path | None:
        for base in (root / "VOCdevkit" / self.year, root / self.year):
            if base.is_dir():
                return base
        if root.name == self.year or (root / "JPEGImages").is_dir():
            return root
        return None

    def _image_path(self, image_id: str) -> Path:
        return self.image_dir / f"{image_id}.jpg"

    def _label_path(self, image_id: str) -> Path:
        return self.label_root / f"{image_id}.png"

    def _load(self, image_id: str) -> Sample:
        image = open_rgb(self._image_path(image_id), self.benchmark)
        path = self._label_path(image_id)
        label = self._lut[read_index_png(path, self.benchmark)]
        check_label_size(label, image, path, self.benchmark)
        return Sample(image_id, image, label=label)


class VOCReader(_VOCStyleReader):
    """PASCAL VOC 2012 val: labels 0 = background, 1..20, 255 = ignore (values > 20 -> 255)."""

    benchmark = "voc"
    year = "VOC2012"
    label_dir = "SegmentationClass"
    list_file = "ImageSets/Segmentation/val.txt"
    title = "VOC 2012"


class ContextReader(_VOCStyleReader):
    """PASCAL Context 59 val (mmseg layout): raw 0 = background 0, raw 1..59 = labels 1..59,
    anything else -> 255 ignore."""

    benchmark = "context"
    year = "VOC2010"
    label_dir = "SegmentationClassContext"
    list_file = "ImageSets/SegmentationContext/val.txt"
    title = "VOC 2010"
