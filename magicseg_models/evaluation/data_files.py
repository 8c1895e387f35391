"""Checks and reads of benchmark files: the data root, required paths, RGB images, index PNGs, label LUTs.

Every failure is a :class:`~magicseg_models.errors.BenchmarkDataError` naming the path and the layout expected.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from magicseg_models.errors import BenchmarkDataError, ConfigError


def data_root_folder(benchmark: str, data_root: str | os.PathLike | None, what: str) -> Path:
    if data_root is None or str(data_root) == "":
        raise BenchmarkDataError(f"{benchmark}: no data_root given (expected {what})")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise BenchmarkDataError(f"{benchmark}: data_root {root} is not a folder (expected {what})")
    return root


def need_path(path: Path, benchmark: str, what: str, layout: str, folder: bool) -> Path:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        kind = "folder" if folder else "file"
        raise BenchmarkDataError(f"{benchmark}: missing {what} {kind} {path} (expected layout: {layout})")
    return path


def check_limit(limit: int | None) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")
    return limit


def check_files_exist(benchmark: str, expected: Sequence[Path], total_what: str) -> None:
    missing = [p for p in expected if not p.is_file()]
    if missing:
        raise BenchmarkDataError(
            f"{benchmark}: {len(missing)} of {len(expected)} {total_what} are missing, "
            f"first: {missing[0]}"
        )


def open_rgb(path: Path, benchmark: str) -> Image.Image:
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except FileNotFoundError:
        raise BenchmarkDataError(f"{benchmark}: missing image file {path}") from None
    except (UnidentifiedImageError, OSError) as err:
        raise BenchmarkDataError(f"{benchmark}: unreadable image {path} ({err})") from None


def read_index_png(path: Path, benchmark: str) -> np.ndarray:
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


def check_label_size(label: np.ndarray, image: Image.Image, path: Path, benchmark: str) -> None:
    if label.shape != (image.height, image.width):
        raise BenchmarkDataError(
            f"{benchmark}: label {path} is {label.shape[1]}x{label.shape[0]}, its image is "
            f"{image.width}x{image.height}"
        )


def identity_lut(num_labels: int, other: int) -> np.ndarray:
    """uint8 LUT over 0..255 keeping 0..num_labels-1 and 255 as they are, other values -> ``other``."""
    lut = np.full(256, other, dtype=np.uint8)
    lut[:num_labels] = np.arange(num_labels, dtype=np.uint8)
    lut[255] = 255
    return lut
