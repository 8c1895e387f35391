"""Benchmark class lists, prompt names and readers, on tiny fixtures in each benchmark's official layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from magicseg_models.errors import ConfigError, MagicSegError
from magicseg_models.evaluation.benchmarks import BENCHMARKS, benchmark_classes, prompt_columns
from magicseg_models.evaluation.readers import (
    BenchmarkDataError,
    COCOObjectReader,
    open_benchmark,
    prepare_coco_object,
)
from tests.benchmark_data import VOC_IDS, make_oiv7, make_voc, save_jpg, save_png, voc_palette

ROOT = Path(__file__).resolve().parents[1]


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------ classes
def test_class_counts_and_background():
    expected = {"voc": (20, True), "context": (59, True), "coco-object": (80, True), "lvis": (1203, True)}
    for name, (count, background) in expected.items():
        classes = benchmark_classes(name)
        assert len(classes.names) == count and len(classes.prompt_names) == count
        assert classes.has_background is background
        assert classes.num_classes == count + 1
        assert classes.label_names[0] == "background"
    assert benchmark_classes("voc").names[0] == "aeroplane" and benchmark_classes("voc").names[19] == "tvmonitor"
    assert benchmark_classes("voc").ignore_index == 255
    assert benchmark_classes("context").names[58] == "wood"
    coco = benchmark_classes("coco-object")
    assert coco.names[0] == "person" and coco.names[79] == "toothbrush"
    lvis = benchmark_classes("lvis")
    assert lvis.names[0] == "aerosol_can" and lvis.names[1202] == "zucchini"
    assert lvis.ignore_index == -1  # 255 is a real LVIS class id
    assert lvis.label_names[255] == "Christmas_tree"
    assert set(BENCHMARKS) == {"voc", "context", "coco-object", "lvis", "oiv7-points"}


def test_default_prompt_names():
    voc = benchmark_classes("voc")
    assert voc.prompt_column == "ZegCLIP" and voc.prompt_names == voc.names
    assert benchmark_classes("context").prompt_column == "mmseg_name"
    assert benchmark_classes("coco-object").prompt_names == benchmark_classes("coco-object").names
    lvis = benchmark_classes("lvis")
    assert lvis.prompt_column == "text"
    assert lvis.prompt_names[63] == "bat (animal)"
    assert lvis.prompt_names[697] == "monitor (computer equipment) computer monitor"
    assert len(set(lvis.prompt_names)) == 1203
    assert all("_" not in p for p in lvis.prompt_names)


def test_prompt_name_columns():
    group = benchmark_classes("voc", "GroupViT")
    assert group.prompt_names[10] == "table" and group.prompt_names[15] == "plant"
    assert group.prompt_names[19] == "monitor"
    assert group.names == benchmark_classes("voc").names  # canonical names never change
    sclip = benchmark_classes("voc", "sclip_cls_voc20")  # column names are case-insensitive
    assert sclip.prompt_column == "SCLIP_cls_voc20" and sclip.multi_name
    assert sclip.prompt_alternatives[3] == ("ship",)
    assert len(sclip.prompt_alternatives[14]) == 7 and sclip.prompt_alternatives[14][0] == "person"
    assert benchmark_classes("context", "GroupViT_context60").prompt_names[0] == "airplane"
    coco = benchmark_classes("coco-object", "SCLIP_cls_coco_object")
    assert len(coco.prompt_names) == 80 and "sky" in coco.background_prompts
    assert coco.prompt_alternatives[0][-1] == "body"
    assert benchmark_classes("lvis", "name").prompt_names[63] == "bat_(animal)"
    base = benchmark_classes("lvis", "base")
    assert base.prompt_names[63] == "bat" and base.prompt_names[697] == "computer monitor"
    synonyms = benchmark_classes("lvis", "synonyms")
    assert synonyms.multi_name and synonyms.prompt_alternatives[0] == ("aerosol can", "spray can")
    assert "ClearCLIP_cls_voc21" in prompt_columns("voc")


def test_unknown_prompt_column_and_benchmark():
    with pytest.raises(ConfigError) as err:
        benchmark_classes("voc", "CLIP")
    message = one_line(err)
    assert "'CLIP'" in message and "GroupViT" in message and "SCLIP_cls_voc20" in message and "default" in message
    with pytest.raises(MagicSegError) as err:
        benchmark_classes("ade20k")
    assert "voc" in one_line(err)
    with pytest.raises(MagicSegError) as err:
        open_benchmark("ade20k", "/tmp")
    one_line(err)
    with pytest.raises(BenchmarkDataError) as err:
        benchmark_classes("oiv7-points")  # its classes come from the data root
    assert "data_root" in one_line(err)


# ------------------------------------------------------------------------------------------------ VOC
def test_voc_reads_palette_labels_in_val_order(tmp_path):
    root, labels = make_voc(tmp_path)
    png = Image.open(root / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_IDS[0]}.png")
    assert png.mode == "P" and png.getpalette()[15 * 3 : 15 * 3 + 3] == [192, 128, 128]  # person colour
    for data_root in (root, root / "VOCdevkit", root / "VOCdevkit" / "VOC2012"):
        reader = open_benchmark("voc", data_root)
        assert len(reader) == 3 and reader.image_ids == tuple(VOC_IDS)
        samples = list(reader)
        assert [s.image_id for s in samples] == VOC_IDS
        for sample in samples:
            assert sample.image.mode == "RGB" and sample.points is None
            assert sample.label.dtype == np.uint8
            np.testing.assert_array_equal(sample.label, labels[sample.image_id])
    reader = open_benchmark("voc", root, limit=2)
    assert len(reader) == 2 and reader.total == 3 and reader.image_ids == tuple(VOC_IDS[:2])
    assert reader[-1].image_id == VOC_IDS[1]
    with pytest.raises(IndexError):
        reader[2]
    assert reader.classes.names[14] == "person"


def test_voc_values_outside_label_space_are_ignored(tmp_path):
    root, labels = make_voc(tmp_path)
    odd = labels[VOC_IDS[0]].copy()
    odd[0, 0], odd[0, 1] = 21, 200
    save_png(root / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_IDS[0]}.png", odd, voc_palette())
    label = open_benchmark("voc", root)[0].label
    assert label[0, 0] == 255 and label[0, 1] == 255
    np.testing.assert_array_equal(label[1:], labels[VOC_IDS[0]][1:])


def test_voc_missing_files_fail_with_one_line(tmp_path):
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("voc", tmp_path)
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in one_line(err)
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("voc", None)
    one_line(err)
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("voc", tmp_path / "nope")
    assert "nope" in one_line(err)

    root, _ = make_voc(tmp_path)
    (root / "VOCdevkit/VOC2012/SegmentationClass" / f"{VOC_IDS[1]}.png").unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("voc", root)
    assert f"SegmentationClass/{VOC_IDS[1]}.png" in one_line(err)
    assert len(open_benchmark("voc", root, limit=1)) == 1  # only the selected images are checked

    listing = root / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt"
    listing.unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("voc", root)
    assert str(listing) in one_line(err)
    for folder in ("SegmentationClass", "JPEGImages"):
        path = root / "VOCdevkit/VOC2012" / folder
        path.rename(path.with_name(folder + "_moved"))
        with pytest.raises(BenchmarkDataError) as err:
            open_benchmark("voc", root)
        assert str(path) in one_line(err) and "expected layout" in str(err.value)
        path.with_name(folder + "_moved").rename(path)
    with pytest.raises(ConfigError):
        open_benchmark("voc", root, limit=0)


# -------------------------------------------------------------------------------------------- Context
def test_context_background_is_class_zero(tmp_path):
    base = tmp_path / "VOCdevkit" / "VOC2010"
    raw = {"2008_000008": np.array([[0, 1, 2], [30, 59, 0]]), "2008_000002": np.array([[59, 60, 255], [0, 0, 7]])}
    for image_id, values in raw.items():
        save_jpg(base / "JPEGImages" / f"{image_id}.jpg", 3, 2)
        save_png(base / "SegmentationClassContext" / f"{image_id}.png", values)  # mmseg writes 'L' PNGs
    (base / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (base / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000008\n2008_000002\n")
    reader = open_benchmark("context", tmp_path)
    assert reader.image_ids == ("2008_000008", "2008_000002")
    assert reader.classes.num_classes == 60 and reader.classes.label_names[1] == "aeroplane"
    first, second = reader
    np.testing.assert_array_equal(first.label, [[0, 1, 2], [30, 59, 0]])  # raw 0 = background 0
    np.testing.assert_array_equal(second.label, [[59, 255, 255], [0, 0, 7]])  # 60 is not a class
    assert open_benchmark("context", base).image_ids == reader.image_ids
    (base / "SegmentationClassContext" / "2008_000002.png").unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("context", tmp_path)
    assert "SegmentationClassContext/2008_000002.png" in one_line(err)
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("context", tmp_path / "VOCdevkit" / "VOC2010" / "JPEGImages" / "x")
    one_line(err)


# ---------------------------------------------------------------------------------------- COCO-Object
# COCO thing category ids (detectron2 COCO_CATEGORIES isthing=1), independent of the project's tsv
COCO_THING_IDS = [*range(1, 12), *range(13, 26), 27, 28, *range(31, 45), *range(46, 66), 67, 70, *range(72, 83),
                  *range(84, 91)]


def expected_coco_object(png_value: int) -> int:
    thing_png_values = [i - 1 for i in COCO_THING_IDS]
    return thing_png_values.index(png_value) + 1 if png_value in thing_png_values else 0


def all_values_png() -> np.ndarray:
    return np.arange(256, dtype=np.uint8).reshape(16, 16)


def test_coco_object_maps_every_stuff_value(tmp_path):
    assert len(COCO_THING_IDS) == 80
    ids = ["000000000285", "000000000139"]
    labels_dir = tmp_path / "stuffthingmaps_trainval2017" / "val2017"
    values = {ids[0]: all_values_png(), ids[1]: np.full((16, 16), 255, np.uint8)}
    values[ids[1]][3:5, 3:5] = 0  # a person on unlabeled pixels
    for image_id in ids:
        save_jpg(tmp_path / "val2017" / f"{image_id}.jpg", 16, 16)
        save_png(labels_dir / f"{image_id}.png", values[image_id])
    reader = open_benchmark("coco-object", tmp_path)
    assert reader.image_ids == tuple(sorted(ids))
    by_id = {s.image_id: s.label for s in reader}
    expected = np.vectorize(expected_coco_object)(values[ids[0]])
    np.testing.assert_array_equal(by_id[ids[0]], expected)
    spot = by_id[ids[0]].reshape(-1)
    assert spot[0] == 1 and spot[11] == 0 and spot[12] == 12 and spot[89] == 80  # person, unused id, stop sign
    assert spot[90] == 0 and spot[91] == 0 and spot[181] == 0 and spot[255] == 0  # unused, stuff, unlabeled
    assert set(np.unique(by_id[ids[0]])) == set(range(81))
    assert by_id[ids[1]].sum() == 4 and by_id[ids[1]][3, 3] == 1
    assert len(open_benchmark("coco-object", tmp_path, limit=1)) == 1

    # prepared labels are written once and then preferred
    out = prepare_coco_object(tmp_path)
    assert out == labels_dir
    prepared = labels_dir / f"{ids[0]}_instanceTrainIds.png"
    np.testing.assert_array_equal(np.array(Image.open(prepared)), expected)
    save_png(prepared, np.full((16, 16), 7, np.uint8))
    assert (open_benchmark("coco-object", tmp_path)[1].label == 7).all()
    prepare_coco_object(tmp_path)  # keeps existing files
    assert (np.array(Image.open(prepared)) == 7).all()
    prepare_coco_object(tmp_path, overwrite=True)  # rebuilt from the raw PNG, not from itself
    np.testing.assert_array_equal(np.array(Image.open(prepared)), expected)
    elsewhere = prepare_coco_object(tmp_path, tmp_path / "prepared")
    reader = COCOObjectReader(tmp_path, prepared_dir=elsewhere)
    np.testing.assert_array_equal(reader[1].label, expected)


def test_coco_object_mmseg_layout_and_train_ids(tmp_path):
    image_id = "000000000632"
    save_jpg(tmp_path / "images" / "val2017" / f"{image_id}.jpg", 16, 16)
    train_ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    train_ids[train_ids > 170] = 255
    save_png(tmp_path / "annotations" / "val2017" / f"{image_id}_labelTrainIds.png", train_ids)
    label = open_benchmark("coco-object", tmp_path)[0].label
    expected = np.where(train_ids < 80, train_ids.astype(np.int64) + 1, 0)
    np.testing.assert_array_equal(label, expected)
    # the raw COCO-Stuff PNG wins over mmseg's train ids when both are there
    save_png(tmp_path / "annotations" / "val2017" / f"{image_id}.png", all_values_png())
    np.testing.assert_array_equal(
        open_benchmark("coco-object", tmp_path)[0].label, np.vectorize(expected_coco_object)(all_values_png())
    )


def test_coco_object_missing_folders(tmp_path):
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("coco-object", tmp_path)
    assert str(tmp_path / "val2017") in one_line(err)
    save_jpg(tmp_path / "val2017" / "000000000001.jpg", 4, 4)
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("coco-object", tmp_path)
    assert str(tmp_path / "stuffthingmaps_trainval2017" / "val2017") in one_line(err)
    (tmp_path / "stuffthingmaps_trainval2017" / "val2017").mkdir(parents=True)
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("coco-object", tmp_path)
    assert "000000000001.png" in one_line(err)


# ----------------------------------------------------------------------------------------------- LVIS
LVIS_NAMES = benchmark_classes("lvis").names


def lvis_json(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    h, w = 20, 24
    big_polygon = [2.0, 2.0, 20.0, 2.0, 20.0, 16.0, 2.0, 16.0]
    small = np.zeros((h, w), np.uint8, order="F")
    small[5:9, 6:12] = 1
    small[12:18, 17:23] = 1  # partly outside the polygon
    rle = mask_utils.encode(small)
    rle["counts"] = rle["counts"].decode("ascii")
    corner = np.zeros((h, w), np.uint8, order="F")
    corner[18:, :3] = 1
    corner_rle = mask_utils.encode(corner)
    corner_rle["counts"] = corner_rle["counts"].decode("ascii")
    data = {
        "info": {},
        "categories": [{"id": i, "name": LVIS_NAMES[i - 1]} for i in (1, 3, 255, 1203)],
        "images": [  # json order is not id order; the two images live in different COCO folders
            {"id": 397133, "height": h, "width": w, "coco_url": "http://images.cocodataset.org/val2017/000000397133.jpg"},
            {"id": 9, "height": h, "width": w, "coco_url": "http://images.cocodataset.org/train2017/000000000009.jpg"},
            {"id": 30, "height": 8, "width": 8, "coco_url": "http://images.cocodataset.org/train2017/000000000030.jpg"},
        ],
        "annotations": [  # the small RLE instance comes first: painting order must not follow the json
            {"id": 1, "image_id": 9, "category_id": 255, "segmentation": rle, "area": float(small.sum())},
            {"id": 2, "image_id": 9, "category_id": 3, "segmentation": [big_polygon], "area": 252.0},
            {"id": 3, "image_id": 397133, "category_id": 1203, "segmentation": corner_rle, "area": 6.0},
            {"id": 4, "image_id": 397133, "category_id": 1, "segmentation": [[0.0, 0.0, 4.0, 0.0, 4.0, 3.0]]},
        ],
    }
    path = tmp_path / "lvis_v1_val.json"
    path.write_text(json.dumps(data))
    save_jpg(tmp_path / "train2017" / "000000000009.jpg", w, h)
    save_jpg(tmp_path / "train2017" / "000000000030.jpg", 8, 8)
    save_jpg(tmp_path / "val2017" / "000000397133.jpg", w, h)
    big = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([big_polygon], h, w))).astype(bool)
    return path, big, small.astype(bool)


def test_lvis_semantic_maps_keep_small_instances_on_top(tmp_path):
    _, big, small = lvis_json(tmp_path)
    assert 200 <= big.sum() <= 320 and (big & small).any() and (small & ~big).any()
    reader = open_benchmark("lvis", tmp_path)
    assert reader.image_ids == ("000000000009", "000000000030", "000000397133")  # sorted by image id
    assert reader.classes.num_classes == 1204
    first, empty, last = reader
    expected = np.zeros(big.shape, np.int64)
    expected[big] = 3
    expected[small] = 255  # smaller instance painted over the larger one; 255 is a class here
    assert first.label.dtype == np.int64
    np.testing.assert_array_equal(first.label, expected)
    assert (empty.label == 0).all() and empty.label.shape == (8, 8)
    assert (last.label[18:, :3] == 1203).all() and (last.label[:3, :4] == 1).any()
    assert set(np.unique(last.label)) == {0, 1, 1203}
    assert open_benchmark("lvis", tmp_path, limit=2).image_ids == reader.image_ids[:2]


def test_lvis_annotations_folder_and_missing_files(tmp_path):
    path, _, _ = lvis_json(tmp_path)
    (tmp_path / "annotations").mkdir()
    path.rename(tmp_path / "annotations" / "lvis_v1_val.json")
    assert len(open_benchmark("lvis", tmp_path)) == 3
    (tmp_path / "train2017" / "000000000030.jpg").unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("lvis", tmp_path)
    assert str(tmp_path / "train2017" / "000000000030.jpg") in one_line(err)
    (tmp_path / "annotations" / "lvis_v1_val.json").unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("lvis", tmp_path)
    assert str(tmp_path / "lvis_v1_val.json") in one_line(err)


def test_lvis_rejects_other_category_lists(tmp_path):
    path, _, _ = lvis_json(tmp_path)
    data = json.loads(path.read_text())
    data["categories"][0]["name"] = "person"
    path.write_text(json.dumps(data))
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("lvis", tmp_path)
    assert "aerosol_can" in one_line(err)


# ------------------------------------------------------------------------------------ OpenImages v7
def test_oiv7_points(tmp_path):
    root = make_oiv7(tmp_path)
    reader = open_benchmark("oiv7-points", root)
    classes = reader.classes
    assert classes.mids == ("/m/01yrx", "/m/05s2s", "/m/09xyz", "/m/0bt9lr")  # every label in the CSV, by MID
    assert classes.names == ("Cat", "Plant", "Mystery thing", "Dog") and classes.prompt_names == classes.names
    assert not classes.has_background and reader.unnamed_labels == ("/m/09xyz",)
    assert reader.image_ids == ("aaaa000000000001", "bbbb000000000002")
    a, b = reader
    assert a.label is None and a.points.dtype == np.int64 and a.image.size == (40, 30)
    np.testing.assert_array_equal(a.points, [[39, 29, 3, 1], [0, 15, 2, 0]])
    np.testing.assert_array_equal(b.points, [[20, 7, 0, 1], [39, 0, 3, 0]])  # unsure point skipped
    assert open_benchmark("oiv7-points", root, limit=1).image_ids == ("aaaa000000000001",)
    assert benchmark_classes("oiv7-points", data_root=root) == classes
    with pytest.raises(ConfigError) as err:
        open_benchmark("oiv7-points", root, prompt_names="TextLabel")
    assert "DisplayName" in one_line(err)


def test_oiv7_missing_and_malformed(tmp_path):
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("oiv7-points", tmp_path)
    assert str(tmp_path / "oidv7-val-annotations-point-labels.csv") in one_line(err)
    root = make_oiv7(tmp_path, extra_rows=("dddd000000000004,cloud,/m/01yrx,,0.5,0.5,yes,1,0,0",))
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("oiv7-points", root)
    assert str(root / "validation" / "dddd000000000004.jpg") in one_line(err)
    (root / "oidv7-class-descriptions.csv").unlink()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("oiv7-points", root)
    assert "oidv7-class-descriptions.csv" in one_line(err)


def test_oiv7_unknown_verdict_fails(tmp_path):
    root = make_oiv7(tmp_path, extra_rows=("aaaa000000000001,cloud,/m/01yrx,,0.5,0.5,maybe,1,0,0",))
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("oiv7-points", root)
    assert "maybe" in one_line(err) and "line 8" in str(err.value)
    (tmp_path / "other").mkdir()
    missing_images = make_oiv7(tmp_path / "other")
    (missing_images / "validation" / "aaaa000000000001.jpg").unlink()
    (missing_images / "validation" / "bbbb000000000002.jpg").unlink()
    (missing_images / "validation").rmdir()
    with pytest.raises(BenchmarkDataError) as err:
        open_benchmark("oiv7-points", missing_images)
    assert str(missing_images / "validation") in one_line(err)
