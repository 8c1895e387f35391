"""Image and mask codecs for shard rows: JPEG/PNG bytes and COCO RLE strings (pycocotools)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils


def encode_image(image: Image.Image | np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
    """Encode an RGB image (PIL or HxWx3 uint8 array) as JPEG (default) or PNG bytes."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    if fmt.lower() in ("jpeg", "jpg"):
        image.convert("RGB").save(buf, format="JPEG", quality=quality)
    elif fmt.lower() == "png":
        image.save(buf, format="PNG")
    else:
        raise ValueError(f"unknown image format {fmt!r}; use jpeg or png")
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    return image.convert("RGB")


def encode_mask(mask: np.ndarray) -> tuple[str, int]:
    """A boolean HxW mask -> (COCO compressed RLE counts string, area in pixels)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return rle["counts"].decode("ascii"), int(mask_utils.area(rle))


def box_fill(mask: np.ndarray, box) -> float:
    """Share of the (xyxy pixel) box covered by the mask: a mask that spills outside its object fills little of
    the box it was prompted with. 0 for an empty box."""
    height, width = mask.shape
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    if x1 <= x0 or y1 <= y0:
        return 0.0
    return float(mask[y0:y1, x0:x1].sum()) / float((x1 - x0) * (y1 - y0))


def decode_mask(counts: str, height: int, width: int) -> np.ndarray:
    """COCO compressed RLE counts string of an image of ``height`` x ``width`` -> boolean HxW mask.

    Raises ValueError for counts that do not cover exactly height x width pixels: pycocotools does not check, and
    decodes such strings into uninitialised memory or past the end of its buffer.
    """
    data = counts.encode("ascii")
    if _rle_total(data) != int(height) * int(width):
        raise ValueError(f"RLE counts do not cover a {height}x{width} mask")
    return mask_utils.decode({"size": [int(height), int(width)], "counts": data}).astype(bool)


def _rle_total(data: bytes) -> int:
    """Pixels covered by a compressed RLE string, parsed as pycocotools' rleFrString does; -1 when malformed."""
    c = np.frombuffer(data, np.uint8).astype(np.int64) - 48  # each char: 5 value bits, 0x20 = "more chars follow"
    if c.size == 0:
        return 0
    if c.min() < 0 or c.max() > 63 or c[-1] & 0x20:
        return -1
    ends = np.flatnonzero((c & 0x20) == 0)  # last char of each run
    starts = np.r_[0, ends[:-1] + 1]
    k = np.arange(c.size) - np.repeat(starts, ends - starts + 1)  # char position within its run
    if k.max() > 10:  # no real run needs 55 bits; also keeps the shifts below inside int64
        return -1
    x = np.add.reduceat((c & 0x1F) << (5 * k), starts)
    x -= np.where(c[ends] & 0x10, 1 << (5 * (k[ends] + 1)), 0)  # sign bit of the run's last char
    # run m > 2 is stored as the difference to run m - 2
    x[1::2], x[2::2] = np.cumsum(x[1::2]), np.cumsum(x[2::2])
    return -1 if (x < 0).any() else int(x.sum())
