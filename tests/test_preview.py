"""Tests for magicseg_models.dataset.preview: real datasets (local and S3, ours and hand-built), real PNGs."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

try:  # tests/ is not a package: `handmade` under pytest, `tests.handmade` when the repo root is on sys.path
    from tests.handmade import write_handmade_dataset
except ImportError:
    from handmade import write_handmade_dataset
from flows.cli import main
from magicseg_models.dataset import DatasetStore
from magicseg_models.dataset import reader as reader_module
from magicseg_models.dataset.preview import HEADER_HEIGHT, MASK_ALPHA, class_color, preview_image, render_preview
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.errors import MagicSegError, StorageError


def load_png(path: str) -> np.ndarray:
    import fsspec

    with fsspec.open(path, "rb") as f:
        image = Image.open(io.BytesIO(f.read()))
        image.load()
    assert image.format == "PNG"
    return np.asarray(image.convert("RGB")).astype(np.int16)


def tiles_of(grid: np.ndarray, i: int, tile: int) -> list[np.ndarray]:
    y = i * (HEADER_HEIGHT + tile) + HEADER_HEIGHT
    return [grid[y:y + tile, j * tile:(j + 1) * tile] for j in range(3)]


def placement(height: int, width: int, tile: int) -> tuple[float, int, int, int, int]:
    """Scale, x/y offset and fitted size of a height x width image in a tile (the aspect-keeping contract)."""
    scale = tile / max(height, width)
    w, h = max(1, round(width * scale)), max(1, round(height * scale))
    return scale, (tile - w) // 2, (tile - h) // 2, w, h


def shrink(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a 3x3 cross, ``steps`` times (numpy only)."""
    m = mask.copy()
    for _ in range(steps):
        p = np.pad(m, 1)
        m = p[1:-1, 1:-1] & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m


def check_grid(path: str, uri: str, tile: int, n: int) -> None:
    """Every row's tiles against the dataset's own first rows: image, counterfactual, overlay inside/outside."""
    grid = load_png(path)
    rows = list(DatasetReader(uri).iter_rows(decode=True, limit=n))
    assert grid.shape == (len(rows) * (HEADER_HEIGHT + tile), 3 * tile, 3)
    for i, row in enumerate(rows):
        image_tile, cf_tile, over_tile = tiles_of(grid, i, tile)
        scale, ox, oy, w, h = placement(row["height"], row["width"], tile)
        for got, src in ((image_tile, row["image"]), (cf_tile, row["counterfactual_image"])):
            want = np.asarray(src.resize((w, h), Image.Resampling.BILINEAR)).astype(np.int16)
            assert np.abs(got[oy:oy + h, ox:ox + w] - want).mean() < 3
            if (w, h) != (tile, tile):  # padding is a flat colour
                pad = np.ones((tile, tile), bool)
                pad[oy:oy + h, ox:ox + w] = False
                pad[[0, -1], :] = pad[:, [0, -1]] = False  # the tile's 1-px frame
                assert len(np.unique(got[pad].reshape(-1, 3), axis=0)) == 1

        # tile pixel -> source pixel (nearest), then each mask at tile resolution
        ys = np.clip(((np.arange(h) + 0.5) / scale).astype(int), 0, row["height"] - 1)
        xs = np.clip(((np.arange(w) + 0.5) / scale).astype(int), 0, row["width"] - 1)
        base, over = image_tile[oy:oy + h, ox:ox + w], over_tile[oy:oy + h, ox:ox + w]
        union = np.zeros((h, w), bool)
        assert row["annotations"]
        for ann in row["annotations"]:
            mask = ann["mask"][np.ix_(ys, xs)]
            union |= mask
            core = shrink(mask, 2)
            for other in row["annotations"]:
                if other is not ann:
                    core &= ~other["mask"][np.ix_(ys, xs)]
            assert core.sum() > 10
            expected = (1 - MASK_ALPHA) * base[core] + MASK_ALPHA * np.array(class_color(ann["class_id"]))
            close = (np.abs(over[core] - expected).max(axis=1) <= 3).mean()
            assert close > 0.8, f"{row['sample_id']} {ann['class_name']}: only {close:.0%} of the mask coloured"
        # outside every mask and away from box outlines/labels: the overlay tile is the image tile
        outside = shrink(~union, 3)
        for ann in row["annotations"]:
            x0, y0, x1, y1 = (int(v * scale) for v in ann["box"])
            outside[max(0, y0 - 16):y1 + 3, max(0, x0 - 3):] = False  # outline, and a label as wide as the tile
        assert outside.sum() > 50
        assert (np.abs(over[outside] - base[outside]).max(axis=1) == 0).mean() > 0.95


def test_preview_of_synthetic_dataset(synthetic_dataset, tmp_path):
    out = str(tmp_path / "preview.png")
    info = render_preview(synthetic_dataset, out, n=3, tile=128)
    first = [row["sample_id"] for row in DatasetReader(synthetic_dataset).iter_rows(columns=["sample_id"], limit=3)]
    assert info == {"rows": 3, "path": out, "size": [3 * 128, 3 * (128 + HEADER_HEIGHT)], "sample_ids": first}
    check_grid(out, synthetic_dataset, tile=128, n=3)


def test_preview_default_n_and_manifest_order(synthetic_dataset, tmp_path):
    reader = DatasetReader(synthetic_dataset)
    assert len(reader) > 16 and len(reader.shards) > 2
    info = render_preview(synthetic_dataset, str(tmp_path / "all.png"), tile=64)  # n=16 spans 3 shards
    assert info["rows"] == 16 and info["size"] == [3 * 64, 16 * (64 + HEADER_HEIGHT)]
    # the rendering is the pure function over the first rows in manifest order
    rows = list(reader.iter_rows(decode=True, limit=16))
    expected = np.asarray(preview_image(rows, tile=64)).astype(np.int16)
    assert np.array_equal(load_png(str(tmp_path / "all.png")), expected)


def test_preview_of_handmade_dataset(tmp_path):
    """A dataset written without our writer (plain pyarrow, wider types, non-square, lossless images)."""
    root = write_handmade_dataset(str(tmp_path / "hand"), n=4, height=48, width=64)
    out = str(tmp_path / "out" / "nested" / "hand.png")  # parent folders are created
    info = render_preview(root, out, n=3, tile=96)
    assert info["rows"] == 3 and info["size"] == [288, 3 * (96 + HEADER_HEIGHT)]
    check_grid(out, root, tile=96, n=3)


def test_preview_reads_only_first_rows_and_needed_columns(tmp_path, monkeypatch):
    root = write_handmade_dataset(str(tmp_path / "hand"), n=6)
    seen_columns, decoded = [], []
    real_batches, real_decode = DatasetReader.iter_batches, reader_module.decode_row

    def spy_batches(self, columns=None, *args, **kwargs):
        seen_columns.append(columns)
        return real_batches(self, columns, *args, **kwargs)

    def spy_decode(row):
        decoded.append(row["sample_id"])
        return real_decode(row)

    monkeypatch.setattr(DatasetReader, "iter_batches", spy_batches)
    monkeypatch.setattr(reader_module, "decode_row", spy_decode)
    assert render_preview(root, str(tmp_path / "p.png"), n=2, tile=64)["rows"] == 2
    assert decoded == ["hand-0000", "hand-0001"]
    assert seen_columns and all(c is not None for c in seen_columns)
    read = set().union(*map(set, seen_columns))
    assert {"image", "counterfactual_image", "annotations", "sample_id", "prompt"} <= read
    assert not read & {"seed", "counterfactual_scores", "class_ids"}


def test_preview_to_s3(synthetic_dataset, s3_bucket):
    out = f"{s3_bucket}/previews/grid.png"
    info = render_preview(synthetic_dataset, out, n=2, tile=64)
    assert info["path"] == out and info["rows"] == 2
    assert load_png(out).shape == (2 * (64 + HEADER_HEIGHT), 192, 3)


def test_empty_dataset_errors(tmp_path):
    root = write_handmade_dataset(str(tmp_path / "empty"), n=0)
    with pytest.raises(MagicSegError, match=r"^dataset at .*empty has no samples to preview$"):
        render_preview(root, str(tmp_path / "p.png"))
    no_shards = tmp_path / "noshards"
    no_shards.mkdir()
    (no_shards / "manifest.json").write_text(json.dumps({"schema_version": 1, "shards": [], "counts": {}}))
    with pytest.raises(MagicSegError, match="has no samples to preview"):
        render_preview(str(no_shards), str(tmp_path / "p.png"))
    assert not (tmp_path / "p.png").exists()


def test_bad_arguments_are_one_line_errors(tmp_path):
    root = write_handmade_dataset(str(tmp_path / "hand"), n=2)
    for n in (0, -3):
        with pytest.raises(MagicSegError) as err:
            render_preview(root, str(tmp_path / "p.png"), n=n)
        assert "\n" not in str(err.value) and "n >= 1" in str(err.value)
    with pytest.raises(MagicSegError, match="tile"):
        render_preview(root, str(tmp_path / "p.png"), tile=4)
    with pytest.raises(StorageError, match="not found"):
        render_preview(str(tmp_path / "missing"), str(tmp_path / "p.png"))


@pytest.mark.parametrize("column,damage,message", [
    ("image", lambda row: row.update(image=b"\xff\xd8 not really a JPEG"), "image is not a decodable image"),
    ("counterfactual_image", lambda row: row.update(counterfactual_image=row["image"][:200]),
     "counterfactual_image is not a decodable image"),
    ("mask_rle", lambda row: row["annotations"][0].update(mask_rle=row["annotations"][0]["mask_rle"][:-2]),
     "annotations.mask_rle is not a valid COCO RLE of 32x32 pixels"),
    ("mask_rle", lambda row: row["annotations"][0].update(mask_rle=""),  # pycocotools decodes this to garbage
     "annotations.mask_rle is not a valid COCO RLE"),
])
def test_undecodable_sample_is_one_line_from_the_cli(tmp_path, capsys, column, damage, message):
    from magicseg_models.dataset.synthetic import synthetic_row

    uri = str(tmp_path / "ds")
    row = synthetic_row("s0-bad", [1], ["dog"], seed=1, height=32, width=32)
    damage(row)
    with DatasetStore(uri).open_shard(0) as writer:
        writer.write([row])
        writer.commit()
    assert main(["preview", uri, "--out", str(tmp_path / "p.png")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"sample s0-bad: {message}" in lines[0], lines
    assert not (tmp_path / "p.png").exists()


def test_unwritable_output_is_one_line_naming_it(tmp_path):
    root = write_handmade_dataset(str(tmp_path / "hand"), n=1)
    (tmp_path / "a-file").write_text("")
    out = str(tmp_path / "a-file" / "p.png")  # its parent is a file
    with pytest.raises(StorageError) as err:
        render_preview(root, out, tile=32)
    assert out in str(err.value) and "\n" not in str(err.value)


def test_class_colors_are_stable_and_distinct():
    colors = [class_color(i) for i in range(12)]
    assert colors == [class_color(i) for i in range(12)]
    for a in range(12):
        for b in range(a + 1, 12):
            assert max(abs(x - y) for x, y in zip(colors[a], colors[b])) > 30


def test_long_text_and_tall_images_fit(tmp_path):
    """Long prompts/labels are cut to the strip, a portrait image is padded left and right."""
    tall = Image.new("RGB", (20, 80), (200, 10, 10))
    mask = np.zeros((80, 20), bool)
    mask[10:30, 5:15] = True
    row = {"sample_id": "x" * 50, "prompt": "word " * 200, "counterfactual_prompt": "other " * 50,
           "image": tall, "counterfactual_image": None, "height": 80, "width": 20,
           "annotations": [{"class_id": 7, "class_name": "a very long class name " * 5, "box": [5, 10, 15, 30],
                            "score": 0.9, "mask": mask}]}
    grid = np.asarray(preview_image([row], tile=64))
    assert grid.shape == (HEADER_HEIGHT + 64, 192, 3)
    image_tile = grid[HEADER_HEIGHT:, :64]
    assert (image_tile[1:-1, 1:5] == image_tile[1, 1]).all() and tuple(image_tile[32, 32]) == (200, 10, 10)
    assert (image_tile[:, 0] != image_tile[1, 1]).all(axis=1).all()  # framed


# ------------------------------------------------------------------------------------------- --sort SCORE
def test_sort_shows_the_worst_samples_first_across_shards(tmp_path, capsys):
    from helpers_quality import write_scored_dataset

    clip = [0.31, 0.12, None, 0.28, 0.05, 0.22, 0.4, 0.19, 0.33]
    rows = write_scored_dataset(str(tmp_path / "ds"), n=9, clip_scores=clip)
    out = render_preview(str(tmp_path / "ds"), str(tmp_path / "worst.png"), n=3, tile=64, sort="clip_score")
    assert out["sample_ids"] == ["q004", "q001", "q007"]  # 0.05, 0.12, 0.19: shards 1, 0, 1
    best = render_preview(str(tmp_path / "ds"), str(tmp_path / "best.png"), n=2, tile=64, sort="-clip_score")
    assert best["sample_ids"] == ["q006", "q008"]
    # counterfactual: the highest score is the worst pair
    cf = render_preview(str(tmp_path / "ds"), str(tmp_path / "cf.png"), n=1, tile=64, sort="counterfactual_score")
    assert cf["sample_ids"] == [max(rows, key=lambda r: max(r["counterfactual_scores"]))["sample_id"]]
    # a mask score ranks a sample by its worst mask
    fill = render_preview(str(tmp_path / "ds"), str(tmp_path / "fill.png"), n=1, tile=64, sort="box_fill")
    assert fill["sample_ids"] == [min(rows, key=lambda r: min(a["box_fill"] for a in r["annotations"]))["sample_id"]]
    # one grid row per chosen sample
    grid = load_png(str(tmp_path / "worst.png"))
    assert grid.shape == (3 * (HEADER_HEIGHT + 64), 3 * 64, 3)

    assert main(["preview", str(tmp_path / "ds"), "--out", str(tmp_path / "cli.png"), "--n", "2",
                 "--sort", "clip_score"]) == 0
    assert "2 samples, worst clip_score first" in capsys.readouterr().out


def test_sort_by_a_score_the_dataset_lacks_is_one_line(tmp_path, capsys):
    from helpers_quality import write_scored_dataset

    write_scored_dataset(str(tmp_path / "ds"), n=4, clip_scores=[None] * 4)
    with pytest.raises(MagicSegError, match="no sample has a clip_score"):
        render_preview(str(tmp_path / "ds"), str(tmp_path / "p.png"), n=2, sort="clip_score")
    with pytest.raises(MagicSegError, match="--sort takes one of"):
        render_preview(str(tmp_path / "ds"), str(tmp_path / "p.png"), n=2, sort="beauty")
    root = write_handmade_dataset(str(tmp_path / "hand"), n=3)  # schema 1: no clip_score column at all
    assert main(["preview", root, "--out", str(tmp_path / "h.png"), "--sort", "clip_score"]) != 0
    err = capsys.readouterr().err
    assert "does not store clip_score" in err and "Traceback" not in err
