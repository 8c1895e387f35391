"""A PNG contact sheet of a dataset: per sample, image | counterfactual | annotations overlaid, under a header.

Each row of the grid is a header strip (sample id, prompt, counterfactual prompt) over three square tiles:
the image, the counterfactual image, and the image with every mask blended in its class colour, its box
outlined and a "class_name score" label. Only the first ``n`` rows and the columns drawn are read.

``sort`` (``magicseg preview --sort SCORE``) shows the ``n`` worst samples by a quality score instead of the first
``n``: ``clip_score``, ``predicted_iou``, ``stability_score`` or ``box_fill`` ascending (a mask score counts the
sample's worst mask), ``counterfactual_score`` descending (a counterfactual that still shows the class is the bad
case); ``-SCORE`` turns the order round (best first). Samples without the score come last; ties keep dataset
order. Only the score columns of every shard are read, then the chosen rows' shards.
"""

from __future__ import annotations

import colorsys
import io
import itertools
from typing import Iterable

import fsspec
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from magicseg_models.dataset.inspect import SCORES, sample_scores
from magicseg_models.dataset.reader import DatasetReader, decode_row
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import MagicSegError

COLUMNS = ("sample_id", "prompt", "counterfactual_prompt", "image", "counterfactual_image", "height", "width",
           "annotations")
HEADER_HEIGHT = 16  # pixels of the text strip above each row of tiles
MASK_ALPHA = 0.5
PAD_COLOR = (24, 24, 24)
FRAME_COLOR = (72, 72, 72)
MIN_TILE = 32


def class_color(class_id: int) -> tuple[int, int, int]:
    """A stable, well-spread colour per class id (hue steps by the golden ratio)."""
    r, g, b = colorsys.hsv_to_rgb((int(class_id) * 0.618033988749895 + 0.1) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def _text(draw: ImageDraw.ImageDraw, text: str, max_width: float, font) -> str:
    """``text`` on one line, cut with '...' to fit ``max_width`` pixels."""
    text = " ".join(str(text).split())
    if not isinstance(font, ImageFont.FreeTypeFont):  # Pillow's bitmap fallback font is latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    if draw.textlength(text, font=font) <= max_width:
        return text
    text = text[:int(max_width // 2)]  # no glyph is narrower than 2 px: skip measuring what cannot fit
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def _fit(image: Image.Image, tile: int) -> tuple[Image.Image, float, int, int]:
    """``image`` scaled to ``tile`` on its long side; also the scale and the offsets that centre it in a tile."""
    scale = tile / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR), scale, (tile - size[0]) // 2, (tile - size[1]) // 2


def _canvas(tile: int) -> Image.Image:
    """An empty tile with a faint frame, so padded tiles stay apart (an image filling its tile covers it)."""
    canvas = Image.new("RGB", (tile, tile), PAD_COLOR)
    ImageDraw.Draw(canvas).rectangle((0, 0, tile - 1, tile - 1), outline=FRAME_COLOR)
    return canvas


def _tile(image: Image.Image | None, tile: int, font) -> Image.Image:
    canvas = _canvas(tile)
    if image is None:
        ImageDraw.Draw(canvas).text((4, 4), "(missing)", fill=(200, 200, 200), font=font)
        return canvas
    fitted, _, ox, oy = _fit(image, tile)
    canvas.paste(fitted, (ox, oy))
    return canvas


def _overlay_tile(image: Image.Image | None, annotations: list[dict], tile: int, font) -> Image.Image:
    if image is None:
        return _tile(None, tile, font)
    fitted, scale, ox, oy = _fit(image, tile)
    pixels = np.asarray(fitted, dtype=np.float32).copy()
    for ann in annotations:
        if ann.get("mask") is None:
            continue
        mask = Image.fromarray(np.asarray(ann["mask"], dtype=np.uint8) * 255).resize(fitted.size,
                                                                                     Image.Resampling.NEAREST)
        inside = np.asarray(mask) > 127
        pixels[inside] = (1 - MASK_ALPHA) * pixels[inside] + MASK_ALPHA * np.array(class_color(ann["class_id"]))
    canvas = _canvas(tile)
    canvas.paste(Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), (ox, oy))
    draw = ImageDraw.Draw(canvas)
    for ann in annotations:  # boxes and labels after every mask, so no mask covers a label
        color = class_color(ann["class_id"])
        x0, y0, x1, y1 = (float(v) * scale for v in ann["box"])
        x0, y0, x1, y1 = x0 + ox, y0 + oy, max(x0, x1 - 1) + ox, max(y0, y1 - 1) + oy
        draw.rectangle((x0, y0, x1, y1), outline=color, width=1)
        score = ann.get("score")
        label = _text(draw, f"{ann['class_name']} {score:.2f}" if score is not None else str(ann["class_name"]),
                      tile - 2, font)
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        w, h = right + 2, bottom + 1
        lx = min(max(0.0, x0), tile - w)
        ly = y0 - h if y0 - h >= 0 else y0 + 1
        light = sum(c * k for c, k in zip(color, (0.299, 0.587, 0.114))) > 140
        draw.rectangle((lx, ly, lx + w, ly + h), fill=color)
        draw.text((lx + 1, ly), label, fill=(0, 0, 0) if light else (255, 255, 255), font=font)
    return canvas


def preview_image(rows: Iterable[dict], tile: int = 256) -> Image.Image:
    """The grid for decoded rows (``DatasetReader.iter_rows(decode=True)``): width 3*tile, height k*(HEADER_HEIGHT+tile)."""
    if tile < MIN_TILE:
        raise MagicSegError(f"preview tile size must be at least {MIN_TILE} pixels, got {tile}")
    rows = list(rows)
    if not rows:
        raise MagicSegError("no samples to preview")
    font = ImageFont.load_default()  # bundled; never downloads
    row_h = HEADER_HEIGHT + tile
    grid = Image.new("RGB", (3 * tile, len(rows) * row_h), PAD_COLOR)
    draw = ImageDraw.Draw(grid)
    for i, row in enumerate(rows):
        y = i * row_h
        draw.rectangle((0, y, 3 * tile - 1, y + HEADER_HEIGHT - 1), fill=(0, 0, 0))
        header = f"{row.get('sample_id', '?')} | {row.get('prompt') or ''}"
        if row.get("sort_score") is not None:
            header = f"{row['sort_name']} {row['sort_score']:.3f} | {header}"
        if row.get("counterfactual_prompt"):
            header += f" | counterfactual: {row['counterfactual_prompt']}"
        draw.text((4, y + 2), _text(draw, header, 3 * tile - 8, font), fill=(235, 235, 235), font=font)
        tiles = (_tile(row.get("image"), tile, font), _tile(row.get("counterfactual_image"), tile, font),
                 _overlay_tile(row.get("image"), row.get("annotations") or [], tile, font))
        for j, im in enumerate(tiles):
            grid.paste(im, (j * tile, y + HEADER_HEIGHT))
    return grid


def worst_samples(reader: DatasetReader, sort: str, n: int) -> list[dict]:
    """The ``n`` decoded rows that come first under ``sort`` (module docstring), each with ``sort_score``."""
    name = sort.removeprefix("-")
    if name not in SCORES:
        raise MagicSegError(f"preview --sort takes one of {', '.join(SCORES)} (or -NAME for best first), "
                            f"got {sort!r}")
    worst_is_high = name == "counterfactual_score"
    reverse = worst_is_high != sort.startswith("-")
    ranked: list[tuple[float, int, int, int]] = []  # (key, order, shard, row): ties keep dataset order
    stored = False
    for k, shard in enumerate(reader.shards):
        values = sample_scores(reader.parquet_file(shard["path"]), name)
        stored |= values is not None
        for i, value in enumerate(values or []):
            if value is not None:
                ranked.append((-value if reverse else value, len(ranked), k, i))
    if not stored:
        raise MagicSegError(f"{reader.uri} does not store {name} (a dataset of schema 1 or from another writer)")
    if not ranked:
        raise MagicSegError(f"{reader.uri}: no sample has a {name} (quality.enabled=false when it was built?)")
    chosen = sorted(ranked)[:int(n)]
    wanted: dict[int, set[int]] = {}
    for _, _, k, i in chosen:
        wanted.setdefault(k, set()).add(i)
    rows: dict[tuple[int, int], dict] = {}
    for k, indices in wanted.items():
        table = reader.parquet_file(reader.shards[k]["path"]).read(columns=list(COLUMNS))
        for i in indices:
            rows[k, i] = table.slice(i, 1).to_pylist()[0]
    return [{**decode_row(rows[k, i]), "sort_name": name, "sort_score": -key if reverse else key}
            for key, _, k, i in chosen]


def render_preview(uri: str, out: str, n: int = 16, tile: int = 256, storage_options: dict | None = None,
                   sort: str | None = None) -> dict:
    """Write the grid of the first ``n`` samples of the dataset at ``uri`` as a PNG at ``out`` (path or fsspec URL);
    with ``sort``, of the ``n`` worst by that score (module docstring).

    ``storage_options`` apply to ``uri``, and to ``out`` when it is on the same kind of storage.
    Returns ``{"rows": k, "path": out, "size": [W, H], "sample_ids": [...]}``.
    """
    if int(n) < 1:
        raise MagicSegError(f"preview needs n >= 1 samples, got {n}")
    reader = DatasetReader(uri, storage_options)
    if sort:
        rows = worst_samples(reader, sort, int(n))
    else:  # islice as well as limit: stop right after the n-th row without touching the next shard
        rows = list(itertools.islice(reader.iter_rows(columns=COLUMNS, decode=True, limit=int(n)), int(n)))
    if not rows:
        raise MagicSegError(f"dataset at {uri} has no samples to preview")
    image = preview_image(rows, tile)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    same_storage = fsspec.core.split_protocol(out)[0] == fsspec.core.split_protocol(uri)[0]
    # the PNG is its own Storage root (rel ""): one-line errors, and an atomic write on local disks
    Storage(out, storage_options if same_storage else None).write_bytes_atomic("", buf.getvalue())
    return {"rows": len(rows), "path": out, "size": list(image.size),
            "sample_ids": [row.get("sample_id") for row in rows]}
