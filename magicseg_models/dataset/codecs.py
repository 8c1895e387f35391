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


def decode_mask(counts: str, height: int, width: int) -> np.ndarray:
    """COCO compressed RLE counts string of an image of ``height`` x ``width`` -> boolean HxW mask."""
    rle = {"size": [int(height), int(width)], "counts": counts.encode("ascii")}
    return mask_utils.decode(rle).astype(bool)
