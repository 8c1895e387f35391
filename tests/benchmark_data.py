"""Tiny benchmark folders in each benchmark's official layout, shared by the reader, evaluation and CLI tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def voc_palette() -> list[int]:
    """The PASCAL VOC colour map (bit-interleaved), 256 RGB entries."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def save_jpg(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, quality=90)


def save_png(path: Path, values: np.ndarray, palette: list[int] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8))
    if palette is not None:
        image.putpalette(palette)  # turns the 'L' image into a 'P' image with these indices
    image.save(path)


VOC_IDS = ["2008_000002", "2007_000033", "2007_000129"]  # val.txt order, deliberately not sorted


def make_voc(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    base = tmp_path / "VOCdevkit" / "VOC2012"
    labels = {}
    for n, image_id in enumerate(VOC_IDS):
        h, w = 12 + n, 16
        save_jpg(base / "JPEGImages" / f"{image_id}.jpg", w, h)
        label = np.zeros((h, w), np.uint8)
        label[2:8, 3:10] = 15 + n  # person/pottedplant/sheep
        label[9:, 10:] = 20
        label[2:8, 3] = 255  # border pixels
        label[1, :] = 255
        labels[image_id] = label
        save_png(base / "SegmentationClass" / f"{image_id}.png", label, voc_palette())
    save_jpg(base / "JPEGImages" / "2009_999999.jpg", 8, 8)  # not in val.txt: never read
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n".join(VOC_IDS) + "\n")
    return tmp_path, labels


OIV7_HEADER = "ImageId,Source,Label,TextLabel,X,Y,EstimatedYesNo,YesVotes,NoVotes,UnsureVotes"


def make_oiv7(tmp_path: Path, extra_rows: tuple[str, ...] = ()) -> Path:
    rows = [
        "bbbb000000000002,crowdsource-verification,/m/01yrx,,0.5,0.25,yes,3,0,0",
        "bbbb000000000002,crowdsource-verification,/m/0bt9lr,,1.0,0.0,no,0,3,0",
        "bbbb000000000002,crowdsource-verification,/m/0bt9lr,,0.1,0.1,unsure,1,1,1",
        "aaaa000000000001,cloud,/m/0bt9lr,,0.999,0.999,yes,2,0,1",
        "cccc000000000003,cloud,/m/05s2s,,0.3,0.3,unsure,0,0,2",  # only unsure: not an evaluated image
        "aaaa000000000001,cloud,/m/09xyz,Mystery thing,0.0,0.5,no,0,2,0",  # MID with no description
        *extra_rows,
    ]
    (tmp_path / "oidv7-val-annotations-point-labels.csv").write_text("\n".join([OIV7_HEADER, *rows]) + "\n")
    (tmp_path / "oidv7-class-descriptions.csv").write_text(
        "LabelName,DisplayName\n/m/01yrx,Cat\n/m/05s2s,Plant\n/m/0bt9lr,Dog\n/m/0dzct,Human face\n"
    )
    save_jpg(tmp_path / "validation" / "aaaa000000000001.jpg", 40, 30)
    save_jpg(tmp_path / "validation" / "bbbb000000000002.jpg", 40, 30)
    return tmp_path
