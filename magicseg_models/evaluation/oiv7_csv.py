"""The OpenImages-v7 point-label CSV parser: classes (by MID) and per-image labelled points, cached per file."""

from __future__ import annotations

import csv
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from magicseg_models.errors import BenchmarkDataError
from magicseg_models.evaluation.data_files import data_root_folder, need_path

OIV7_POINTS_CSV = "oidv7-val-annotations-point-labels.csv"
OIV7_CLASSES_CSV = "oidv7-class-descriptions.csv"
OIV7_LAYOUT = f"<data_root>/{{{OIV7_POINTS_CSV}, {OIV7_CLASSES_CSV}, validation/<ImageId>.jpg}}"


@dataclass(frozen=True)
class OIV7Points:
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
def _parse_oiv7(points_csv: str, classes_csv: str, _stamp: tuple) -> OIV7Points:
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
    return OIV7Points(mids, names, unnamed, points)


def oiv7_files(data_root) -> tuple[Path, Path, Path]:
    root = data_root_folder("oiv7-points", data_root, f"the folder holding {OIV7_POINTS_CSV}")
    points = need_path(root / OIV7_POINTS_CSV, "oiv7-points", "point-label", OIV7_LAYOUT, folder=False)
    classes = need_path(root / OIV7_CLASSES_CSV, "oiv7-points", "class-description", OIV7_LAYOUT, folder=False)
    return root, points, classes


def read_oiv7_points(points: Path, classes: Path) -> OIV7Points:
    stamp = tuple((p.stat().st_mtime_ns, p.stat().st_size) for p in (points, classes))
    return _parse_oiv7(str(points.resolve()), str(classes.resolve()), stamp)
