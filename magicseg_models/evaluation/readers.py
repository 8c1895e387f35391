"""Readers for the evaluation benchmarks in their standard on-disk layouts.

Every reader is a sequence of :class:`Sample` (``len``, indexing, iteration) in a fixed order, cut
to the first ``limit`` images when given; ``reader.classes`` is the benchmark's
:class:`~magicseg_models.evaluation.benchmarks.BenchmarkClasses` (label numbering is documented in
:mod:`.benchmarks`). Images are RGB PIL images exactly as stored (no EXIF rotation: the labels are
drawn on the stored pixels). ``data_root`` is a local folder. A missing folder or file, or an
unreadable one, raises :class:`BenchmarkDataError` with one line naming the path and the layout
expected; the files of the selected images are checked when the reader is opened.

Layouts (``data_root`` = the folder given to :func:`open_benchmark`):

``voc``: PASCAL VOC 2012 val, order of ``val.txt`` (1449 images)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNGs: index 0..20, 255 = border
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt

  ``data_root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC2012``.

``context``: PASCAL Context 59 in mmsegmentation's layout (its converter writes 0 = background,
1..59 = the 59 classes), order of ``val.txt`` (5104 images)::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt

  ``data_root`` may also be ``VOCdevkit`` or ``VOC2010``. Raw 0 is background (label 0) and raw
  1..59 are labels 1..59 (the paper's "59 + background" setting), not mmseg's reduce_zero_label.

``coco-object``: COCO val2017 images with COCO-Stuff-164k label PNGs, sorted by image id (5000)::

    val2017/<id>.jpg                                  (or images/val2017/, mmseg's layout)
    stuffthingmaps_trainval2017/val2017/<id>.png      (or annotations/val2017/, mmseg's layout)

  Per image the first that exists is read: ``<id>_instanceTrainIds.png`` in ``prepared_dir``
  (default: the label folder; written by :func:`prepare_coco_object`, values = labels), the raw
  COCO-Stuff ``<id>.png`` (mapped with ``coco_object80_ids.tsv``: a thing value k <= 90 -> its
  1..80 label, stuff and unlabeled 255 -> 0) or mmseg's ``<id>_labelTrainIds.png`` (171-class
  train ids: 0..79 -> 1..80, the rest -> 0).

``lvis``: LVIS v1 val, sorted by image id (19809 images)::

    lvis_v1_val.json                                  (or annotations/lvis_v1_val.json)
    train2017/<file>.jpg, val2017/<file>.jpg          COCO images; the folder is the one in the
                                                      image's coco_url (the other is tried too)

  Semantic maps come from the instance masks (polygons or RLE, decoded with pycocotools).
  Overlaps: instances are painted from the largest mask area to the smallest (ties: annotation id),
  so a smaller object lying on a larger one keeps its pixels. Pixels of no instance are background
  0. LVIS is federated (not every class is exhaustively annotated per image); like the paper's
  semantic protocol we score unannotated pixels as background anyway.

``oiv7-points``: OpenImages-v7 point labels, sorted by image id; only images with at least one
yes/no point (about 36.7k)::

    oidv7-val-annotations-point-labels.csv            ImageId, X, Y, Label, EstimatedYesNo, ...
    oidv7-class-descriptions.csv                      LabelName, DisplayName (header optional)
    validation/<ImageId>.jpg

  ``Sample.points`` is an int64 array (N, 4) of ``x_px, y_px, class_index, is_positive``: pixel
  column/row ``min(floor(X * width), width - 1)`` (same for Y), ``class_index`` into
  ``reader.classes.names`` (every label that occurs in the CSV, sorted by MID), and 1 for "yes" /
  0 for "no"; "unsure" points are skipped.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from magicseg_models.errors import ConfigError, MagicSegError
from magicseg_models.evaluation.benchmarks import (
    BENCHMARKS,
    BenchmarkClasses,
    _table,
    benchmark_classes,
    oiv7_benchmark_classes,
)

POINT_COLUMNS = ("x_px", "y_px", "class_index", "is_positive")

OIV7_POINTS_CSV = "oidv7-val-annotations-point-labels.csv"
OIV7_CLASSES_CSV = "oidv7-class-descriptions.csv"


class BenchmarkDataError(MagicSegError):
    """A benchmark's file or folder is missing, unreadable or not in the expected layout."""


@dataclass(frozen=True, eq=False)
class Sample:
    """One benchmark image with its ground truth in the benchmark's label space."""

    image_id: str
    image: Image.Image  # RGB
    label: np.ndarray | None = None  # (H, W); uint8 (int64 for lvis); None for oiv7-points
    points: np.ndarray | None = None  # (N, 4) int64, POINT_COLUMNS; oiv7-points only


# ------------------------------------------------------------------------------------------- helpers
def _root(benchmark: str, data_root: str | os.PathLike | None, what: str) -> Path:
    if data_root is None or str(data_root) == "":
        raise BenchmarkDataError(f"{benchmark}: no data_root given (expected {what})")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"{benchmark}: data_root {root} is not a folder (expected {what})")
    return root


def _need(path: Path, benchmark: str, what: str, layout: str, folder: bool) -> Path:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise BenchmarkDataError(f"{benchmark}: missing {what} {kind} {path} (expected layout: {layout})")
    return path


def _check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    return limit


def _missing_files(benchmark: str, expected: Sequence[Path], total_what: str) -> None:
    missing = [p for p in expected if not p.is_file()]
    if missing:
        raise BenchmarkDataError(
            f"{benchmark}: {len(missing)} of {len(expected)} {total_what} are missing, "
            f"first: {missing[0]}"
        )


def _open_rgb(path: Path, benchmark: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BenchmarkDataError(f"{benchmark}: missing image file {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise BenchmarkDataError(f"{benchmark}: unreadable image {path} ({err})") from None


def _read_index_png(path: Path, benchmark: str) -> np.ndarray:
    """The stored indices of a palette ('P') or grayscale ('L') label PNG, as uint8 (H, W)."""
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise BenchmarkDataError(
                    f"{benchmark}: label PNG {path} has mode {im.mode}, expected a palette ('P') or "
                    "grayscale ('L') index image"
                )
            return np.array(im, dtype=np.uint8)
    except FileNotFoundError:
        raise BenchmarkDataError(f"{benchmark}: missing label file {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise BenchmarkDataError(f"{benchmark}: unreadable label PNG {path} ({err})") from None


def _check_size(label: np.ndarray, image: Image.Image, path: Path, benchmark: str) -> None:
    if label.shape != (image.height, image.width):
        raise BenchmarkDataError(
            f"{benchmark}: label {path} is {label.shape[1]}x{label.shape[0]}, its image is "
            f"{image.width}x{image.height}"
        )


def _identity_lut(num_labels: int, other: int) -> np.ndarray:
    """uint8 LUT over 0..255 keeping 0..num_labels-1 and 255 as they are, other values -> ``other``."""
    lut = np.full(256, other, dtype=np.uint8)
    lut[:num_labels] = np.arange(num_labels, dtype=np.uint8)
    lut[255] = 255
    return lut


# ------------------------------------------------------------------------------------------ base class
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


# ----------------------------------------------------------------------------------- VOC and Context
class _VOCStyleReader(BenchmarkReader):
    """JPEGImages + index-PNG folder + an ImageSets list, under VOCdevkit/<year>."""

    year: ClassVar[str]
    label_dir: ClassVar[str]
    list_file: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, data_root, limit: int | None = None, prompt_names: str = "default"):
        limit = _check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        layout = (
            f"<data_root>/VOCdevkit/{self.year}/{{JPEGImages/<id>.jpg, {self.label_dir}/<id>.png, "
            f"{self.list_file}}}; data_root may also be VOCdevkit or {self.year}"
        )
        root = _root(self.benchmark, data_root, f"the folder holding VOCdevkit/{self.year}")
        base = self._find_base(root)
        if base is None:
            expected = root / self.year if root.name == "VOCdevkit" else root / "VOCdevkit" / self.year
            _need(expected, self.benchmark, self.title, layout, folder=True)
        self.base = base
        self.image_dir = _need(base / "JPEGImages", self.benchmark, "image", layout, folder=True)
        self.label_root = _need(base / self.label_dir, self.benchmark, "label", layout, folder=True)
        listing = _need(base / self.list_file, self.benchmark, "image list", layout, folder=False)
        ids = [line.split()[0] for line in listing.read_text("utf-8").splitlines() if line.strip()]
        super().__init__(root, classes, ids, limit)
        self._lut = _identity_lut(classes.num_classes, classes.ignore_index)
        _missing_files(
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
        image = _open_rgb(self._image_path(image_id), self.benchmark)
        path = self._label_path(image_id)
        label = self._lut[_read_index_png(path, self.benchmark)]
        _check_size(label, image, path, self.benchmark)
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


# --------------------------------------------------------------------------------------- COCO-Object
_COCO_LAYOUT = (
    "<data_root>/val2017/<id>.jpg with <data_root>/stuffthingmaps_trainval2017/val2017/<id>.png "
    "(COCO-Stuff-164k), or mmseg's <data_root>/images/val2017 with <data_root>/annotations/val2017"
)


@functools.lru_cache(maxsize=1)
def coco_object_lut() -> np.ndarray:
    """uint8 LUT: COCO-Stuff-164k PNG value -> COCO-Object label (``coco_object80_ids.tsv``)."""
    header, rows = _table("coco_object80_ids.tsv")
    label_col, png_col = header.index("cocoobject_label"), header.index("cocostuff164k_png_value")
    lut = np.zeros(256, dtype=np.uint8)  # stuff 91..181, unused ids and unlabeled 255 -> 0
    for row in rows:
        lut[int(row[png_col])] = int(row[label_col])
    lut.flags.writeable = False
    return lut


def _coco_train_id_lut() -> np.ndarray:
    """uint8 LUT: mmseg's COCO-Stuff-164k ``*_labelTrainIds`` (0..170, things first) -> COCO-Object."""
    lut = np.zeros(256, dtype=np.uint8)
    lut[:80] = np.arange(1, 81, dtype=np.uint8)
    return lut


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
        limit = _check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        root = _root(self.benchmark, data_root, "the folder holding val2017 and the COCO-Stuff label PNGs")
        image_dir = next((d for d in (root / "val2017", root / "images" / "val2017") if d.is_dir()), None)
        if image_dir is None:
            _need(root / "val2017", self.benchmark, "image", _COCO_LAYOUT, folder=True)
        label_candidates = (root / "stuffthingmaps_trainval2017" / "val2017", root / "annotations" / "val2017")
        label_dir = next((d for d in label_candidates if d.is_dir()), None)
        if label_dir is None:
            _need(label_candidates[0], self.benchmark, "label", _COCO_LAYOUT, folder=True)
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

    def _label(self, image_id: str, prepared: bool = True) -> tuple[np.ndarray, Path]:
        source = self._label_source(image_id)
        if source is not None and source[1] == "prepared" and not prepared:
            raw = self.label_dir / f"{image_id}.png"
            ids = self.label_dir / f"{image_id}_labelTrainIds.png"
            source = (raw, "raw") if raw.is_file() else (ids, "train_ids") if ids.is_file() else None
        if source is None:
            raise BenchmarkDataError(
                f"{self.benchmark}: missing label file {self.label_dir / (image_id + '.png')} "
                f"(expected layout: {_COCO_LAYOUT})"
            )
        path, kind = source
        values = _read_index_png(path, self.benchmark)
        if kind == "prepared":
            lut = _identity_lut(81, 0)
            lut[255] = 0  # unlabeled is background in COCO-Object
            return lut[values], path
        return (coco_object_lut() if kind == "raw" else _coco_train_id_lut())[values], path

    def _load(self, image_id: str) -> Sample:
        image = _open_rgb(self.image_dir / f"{image_id}.jpg", self.benchmark)
        label, path = self._label(image_id)
        _check_size(label, image, path, self.benchmark)
        return Sample(image_id, image, label=label)


def prepare_coco_object(
    data_root: str | os.PathLike, out: str | os.PathLike | None = None, overwrite: bool = False
) -> Path:
    """Write COCO-Object labels ``<id>_instanceTrainIds.png`` (values 0..80) once, into ``out``
    (default: the COCO-Stuff label folder, where the reader looks first; pass another folder to the
    reader as ``prepared_dir``). Existing files are kept unless ``overwrite``. Returns the folder."""
    reader = COCOObjectReader(data_root)
    folder = Path(out).expanduser() if out is not None else reader.label_dir
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in reader.image_ids:
        target = folder / f"{image_id}_instanceTrainIds.png"
        if target.is_file() and not overwrite:
            continue
        label, _ = reader._label(image_id, prepared=False)
        tmp = target.with_name(f".{target.name}.tmp")
        Image.fromarray(label.astype(np.uint8)).save(tmp, format="PNG")
        os.replace(tmp, target)
    return folder


# ------------------------------------------------------------------------------------------------ LVIS
_LVIS_LAYOUT = (
    "<data_root>/lvis_v1_val.json (or <data_root>/annotations/lvis_v1_val.json) with the COCO images in "
    "<data_root>/train2017 and <data_root>/val2017"
)


def _instance_mask(segmentation, height: int, width: int) -> np.ndarray | None:
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
        mask = _instance_mask(ann.get("segmentation"), height, width)
        if mask is None:
            continue
        mask = mask.astype(bool)
        masks.append((-int(mask.sum()), int(ann.get("id", 0)), int(ann["category_id"]), mask))
    masks.sort(key=lambda m: (m[0], m[1]))
    label = np.zeros((height, width), dtype=np.int64)
    for _, _, category, mask in masks:
        label[mask] = category
    return label


class LVISReader(BenchmarkReader):
    """LVIS v1 val: semantic maps (0 = background, 1..1203 = category id) from instance masks."""

    benchmark = "lvis"

    def __init__(self, data_root, limit: int | None = None, prompt_names: str = "default"):
        limit = _check_limit(limit)
        classes = benchmark_classes(self.benchmark, prompt_names)
        root = _root(self.benchmark, data_root, "the folder holding lvis_v1_val.json and the COCO images")
        candidates = (root / "lvis_v1_val.json", root / "annotations" / "lvis_v1_val.json")
        json_path = next((p for p in candidates if p.is_file()), None)
        if json_path is None:
            _need(candidates[0], self.benchmark, "annotation", _LVIS_LAYOUT, folder=False)
        try:
            with open(json_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise BenchmarkDataError(f"{self.benchmark}: unreadable annotation file {json_path} ({err})") from None
        if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
            raise BenchmarkDataError(f"{self.benchmark}: {json_path} has no 'images'/'annotations' (not LVIS json)")
        self.json_path = json_path
        n = len(classes.names)
        for category in data.get("categories", []):
            cid, cname = category.get("id"), category.get("name")
            if not isinstance(cid, int) or not 1 <= cid <= n:
                raise BenchmarkDataError(f"{self.benchmark}: {json_path} has category id {cid!r}; LVIS v1 has 1..{n}")
            if cname is not None and cname != classes.names[cid - 1]:
                raise BenchmarkDataError(
                    f"{self.benchmark}: {json_path} names category {cid} {cname!r}, LVIS v1 calls it "
                    f"{classes.names[cid - 1]!r} (not an LVIS v1 file?)"
                )
        self._images = {int(img["id"]): img for img in data["images"]}
        self._anns: dict[int, list[dict]] = defaultdict(list)
        for ann in data["annotations"]:
            self._anns[int(ann["image_id"])].append(ann)
        ordered = sorted(self._images)
        self._key = {self._image_id(self._images[i]): i for i in ordered}
        super().__init__(root, classes, [self._image_id(self._images[i]) for i in ordered], limit)
        missing = [k for k in self._ids if self._image_path(k) is None]
        if missing:
            raise BenchmarkDataError(
                f"{self.benchmark}: {len(missing)} of {len(self._ids)} images are missing, first: "
                f"{self._candidates(missing[0])[0]} (expected layout: {_LVIS_LAYOUT})"
            )

    @staticmethod
    def _file_ref(img: dict) -> tuple[str | None, str]:
        url = img.get("coco_url") or ""
        if url:
            parts = url.rstrip("/").split("/")
            return (parts[-2] if len(parts) >= 2 else None), parts[-1]
        return None, img.get("file_name") or f"{int(img['id']):012d}.jpg"

    def _image_id(self, img: dict) -> str:
        return Path(self._file_ref(img)[1]).stem

    def _candidates(self, image_id: str) -> list[Path]:
        folder, name = self._file_ref(self._images[self._key[image_id]])
        folders = [f for f in (folder, "val2017", "train2017") if f]
        return [self.data_root / f / name for f in dict.fromkeys(folders)]

    def _image_path(self, image_id: str) -> Path | None:
        return next((p for p in self._candidates(image_id) if p.is_file()), None)

    def _load(self, image_id: str) -> Sample:
        img = self._images[self._key[image_id]]
        path = self._image_path(image_id) or self._candidates(image_id)[0]
        image = _open_rgb(path, self.benchmark)
        height, width = int(img["height"]), int(img["width"])
        if (image.width, image.height) != (width, height):
            raise BenchmarkDataError(
                f"{self.benchmark}: image {path} is {image.width}x{image.height}, {self.json_path.name} says "
                f"{width}x{height}"
            )
        label = lvis_semantic_map(self._anns.get(int(img["id"]), []), height, width)
        return Sample(image_id, image, label=label)


# ------------------------------------------------------------------------------------ OpenImages v7
_OIV7_LAYOUT = f"<data_root>/{{{OIV7_POINTS_CSV}, {OIV7_CLASSES_CSV}, validation/<ImageId>.jpg}}"


@dataclass(frozen=True)
class _OIV7Points:
    mids: tuple[str, ...]
    names: tuple[str, ...]
    unnamed: tuple[str, ...]  # MIDs with no row in the class-descriptions CSV
    points: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]  # id -> (xy float64, class int64, pos)


def _column(header: list[str], options: tuple[str, ...], path: Path) -> int:
    for name in options:
        if name in header:
            return header.index(name)
    raise BenchmarkDataError(
        f"oiv7-points: {path} has no column {' or '.join(options)} (columns: {', '.join(header)})"
    )


def _read_class_descriptions(path: Path) -> dict[str, str]:
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and rows[0][0].lstrip("\ufeff") in ("LabelName", "MID", "label_name"):
        rows = rows[1:]
    return {row[0].lstrip("\ufeff"): row[1] for row in rows if len(row) >= 2}


@functools.lru_cache(maxsize=2)
def _parse_oiv7(points_csv: str, classes_csv: str, _stamp: tuple) -> _OIV7Points:
    points_path, classes_path = Path(points_csv), Path(classes_csv)
    descriptions = _read_class_descriptions(classes_path)
    raw: dict[str, list[tuple[float, float, str, bool]]] = defaultdict(list)
    text_labels: dict[str, str] = {}
    seen: set[str] = set()
    with open(points_path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [h.lstrip("\ufeff").strip() for h in next(reader, [])]
        i_id = _column(header, ("ImageId", "ImageID"), points_path)
        i_label = _column(header, ("Label", "LabelName"), points_path)
        i_x, i_y = _column(header, ("X",), points_path), _column(header, ("Y",), points_path)
        i_yn = _column(header, ("EstimatedYesNo",), points_path)
        i_text = header.index("TextLabel") if "TextLabel" in header else None
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            try:
                mid, verdict = row[i_label], row[i_yn].strip().lower()
                if mid not in seen:
                    seen.add(mid)
                    if i_text is not None and row[i_text]:
                        text_labels[mid] = row[i_text]
                if verdict == "unsure":
                    continue
                if verdict not in ("yes", "no"):
                    raise BenchmarkDataError(
                        f"oiv7-points: {points_path} line {lineno}: EstimatedYesNo is {row[i_yn]!r}, "
                        "expected yes/no/unsure"
                    )
                raw[row[i_id]].append((float(row[i_x]), float(row[i_y]), mid, verdict == "yes"))
            except (IndexError, ValueError):
                raise BenchmarkDataError(f"oiv7-points: {points_path} line {lineno} is malformed: {row}") from None
    mids = tuple(sorted(seen))
    index = {mid: i for i, mid in enumerate(mids)}
    names = tuple(descriptions.get(m) or text_labels.get(m) or m for m in mids)
    unnamed = tuple(m for m in mids if m not in descriptions)
    points = {}
    for image_id, rows in raw.items():
        xy = np.array([(x, y) for x, y, _, _ in rows], dtype=np.float64)
        cls = np.array([index[m] for _, _, m, _ in rows], dtype=np.int64)
        pos = np.array([p for _, _, _, p in rows], dtype=bool)
        points[image_id] = (xy, cls, pos)
    return _OIV7Points(mids, names, unnamed, points)


def _oiv7_files(data_root) -> tuple[Path, Path, Path]:
    root = _root("oiv7-points", data_root, f"the folder holding {OIV7_POINTS_CSV}")
    points = _need(root / OIV7_POINTS_CSV, "oiv7-points", "point-label", _OIV7_LAYOUT, folder=False)
    classes = _need(root / OIV7_CLASSES_CSV, "oiv7-points", "class-description", _OIV7_LAYOUT, folder=False)
    return root, points, classes


def _load_oiv7(points: Path, classes: Path) -> _OIV7Points:
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (points, classes))
    return _parse_oiv7(str(points.resolve()), str(classes.resolve()), stamp)


def oiv7_classes(data_root, prompt_names: str = "default") -> BenchmarkClasses:
    """The OpenImages-v7 point classes: every label in the point CSV, sorted by MID (names from the
    class-descriptions CSV). Parses the point CSV (cached per file)."""
    _, points, classes = _oiv7_files(data_root)
    parsed = _load_oiv7(points, classes)
    return oiv7_benchmark_classes(parsed.mids, parsed.names, prompt_names)


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
        limit = _check_limit(limit)
        root, points, classes_csv = _oiv7_files(data_root)
        self.image_dir = Path(images_dir).expanduser() if images_dir is not None else root / "validation"
        _need(self.image_dir, self.benchmark, "image", _OIV7_LAYOUT, folder=True)
        parsed = _load_oiv7(points, classes_csv)
        classes = oiv7_benchmark_classes(parsed.mids, parsed.names, prompt_names)
        self.unnamed_labels = parsed.unnamed
        self._points = parsed.points
        super().__init__(root, classes, sorted(parsed.points), limit)
        _missing_files(self.benchmark, [self.image_dir / f"{i}.jpg" for i in self._ids], "images with point labels")

    def _load(self, image_id: str) -> Sample:
        image = _open_rgb(self.image_dir / f"{image_id}.jpg", self.benchmark)
        xy, cls, pos = self._points[image_id]
        w, h = image.size
        x = np.clip(np.floor(xy[:, 0] * w), 0, w - 1).astype(np.int64)
        y = np.clip(np.floor(xy[:, 1] * h), 0, h - 1).astype(np.int64)
        points = np.stack([x, y, cls, pos.astype(np.int64)], axis=1)
        return Sample(image_id, image, points=points)


# -------------------------------------------------------------------------------------------- factory
READERS: dict[str, type[BenchmarkReader]] = {
    "voc": VOCReader,
    "context": ContextReader,
    "coco-object": COCOObjectReader,
    "lvis": LVISReader,
    "oiv7-points": OIV7PointsReader,
}
assert tuple(READERS) == BENCHMARKS


def open_benchmark(
    name: str,
    data_root: str | os.PathLike | None,
    limit: int | None = None,
    prompt_names: str = "default",
    **options,
) -> BenchmarkReader:
    """The reader of benchmark ``name`` (one of ``BENCHMARKS``) over ``data_root``. ``options``:
    ``prepared_dir`` (coco-object), ``images_dir`` (oiv7-points)."""
    if name not in READERS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    try:
        return READERS[name](data_root, limit=limit, prompt_names=prompt_names, **options)
    except TypeError as err:
        if "unexpected keyword" in str(err):
            raise ConfigError(f"benchmark {name} does not take option(s) {', '.join(options)}") from None
        raise


__all__ = [
    "POINT_COLUMNS",
    "BenchmarkDataError",
    "BenchmarkReader",
    "COCOObjectReader",
    "ContextReader",
    "LVISReader",
    "OIV7PointsReader",
    "Sample",
    "VOCReader",
    "coco_object_lut",
    "lvis_semantic_map",
    "oiv7_classes",
    "open_benchmark",
    "prepare_coco_object",
]
