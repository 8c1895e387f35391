"""Exports for other tools: COCO instances (pycocotools loads and scores them), semantic label maps (equal to the
masks under the documented overlap rule), WebDataset tars (the webdataset package reads them back); resumable."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from magicseg_models.dataset.codecs import decode_image, decode_mask
from magicseg_models.dataset.export import export_dataset
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.errors import ConfigError


def _rows(uri: str) -> list[dict]:
    return list(DatasetReader(uri).iter_rows())


def _expected_labels(row: dict) -> np.ndarray:
    """Written out pixel by pixel: the smallest mask covering a pixel names it (first in the row on a tie)."""
    h, w = row["height"], row["width"]
    masks = [(a["area"], i, decode_mask(a["mask_rle"], h, w), a["class_id"]) for i, a in enumerate(row["annotations"])]
    out = np.zeros((h, w), np.int64)
    for y in range(h):
        for x in range(w):
            covering = [(area, -i, cid) for area, i, mask, cid in masks if mask[y, x]]
            if covering:
                # the exporter draws largest first and, on equal areas, later annotations last
                out[y, x] = min(covering, key=lambda c: (c[0], c[1]))[2] + 1
    return out


def test_coco_export_loads_and_scores_itself_perfectly(synthetic_dataset, tmp_path):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    out = tmp_path / "coco"
    result = export_dataset(synthetic_dataset, str(out), "coco")
    rows = _rows(synthetic_dataset)
    gt = COCO(str(out / "annotations" / "instances.json"))
    assert len(gt.getImgIds()) == len(rows) == result["images"]
    anns = gt.loadAnns(gt.getAnnIds())
    assert len(anns) == sum(len(r["annotations"]) for r in rows) == result["annotations"]
    assert sorted(a["area"] for a in anns) == sorted(a["area"] for r in rows for a in r["annotations"])
    first = rows[0]["annotations"][0]
    ann = gt.loadAnns(gt.getAnnIds(imgIds=[1]))[0]
    x0, y0, x1, y1 = first["box"]
    assert ann["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])  # xywh
    assert (gt.annToMask(ann) == decode_mask(first["mask_rle"], rows[0]["height"], rows[0]["width"])).all()
    assert {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())} == dict(enumerate(DatasetReader(
        synthetic_dataset).classes))
    image = gt.loadImgs([1])[0]
    assert decode_image((out / image["file_name"]).read_bytes()).size == (image["width"], image["height"])
    detections = gt.loadRes([{**a, "score": 1.0} for a in anns])
    evaluation = COCOeval(gt, detections, "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)


def test_semantic_labels_equal_the_masks_under_the_documented_rule(synthetic_dataset, tmp_path):
    out = tmp_path / "semantic"
    result = export_dataset(synthetic_dataset, str(out), "semantic", split_counterfactual=True)
    rows = _rows(synthetic_dataset)
    classes = (out / "classes.txt").read_text().splitlines()
    assert classes == ["background", *DatasetReader(synthetic_dataset).classes]
    assert result["images"] == 2 * len(rows) and result["label_dtype"] == "uint8"
    overlapping = 0
    for row in rows:
        labels = np.asarray(Image.open(out / "labels" / f"{row['sample_id']}.png"))
        assert labels.dtype == np.uint8
        np.testing.assert_array_equal(labels, _expected_labels(row))
        overlapping += sum(1 for a, b in zip(row["annotations"], row["annotations"][1:])
                           if (decode_mask(a["mask_rle"], row["height"], row["width"])
                               & decode_mask(b["mask_rle"], row["height"], row["width"])).any())
        cf = np.asarray(Image.open(out / "labels" / f"{row['sample_id']}_cf.png"))
        assert not cf.any()  # the counterfactual shows no asked class: all background
        assert (out / "images" / f"{row['sample_id']}_cf.jpg").read_bytes() == row["counterfactual_image"]
    assert overlapping > 0  # the overlap rule was exercised


def test_webdataset_export_reads_back_with_the_webdataset_package(synthetic_dataset, tmp_path):
    import webdataset as wds

    out = tmp_path / "wds"
    result = export_dataset(synthetic_dataset, str(out), "webdataset")
    rows = {r["sample_id"]: r for r in _rows(synthetic_dataset)}
    urls = [str(out / tar) for tar in result["tars"]]
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False):
        meta = json.loads(sample["json"])
        seen[sample["__key__"]] = meta
        row = rows[sample["__key__"]]
        assert sample["jpg"] == row["image"] and sample["counterfactual.jpg"] == row["counterfactual_image"]
        assert meta["class_names"] == row["class_names"] and len(meta["annotations"]) == len(row["annotations"])
        labels = np.asarray(Image.open(io.BytesIO(sample["seg.png"])))
        assert set(np.unique(labels)) <= {0, *(c + 1 for c in row["class_ids"])}
    assert set(seen) == set(rows)


def test_an_export_resumes_and_reruns_only_what_changed(synthetic_dataset, tmp_path):
    out = tmp_path / "coco"
    first = export_dataset(synthetic_dataset, str(out), "coco")
    instances = (out / "annotations" / "instances.json").read_bytes()
    shards = first["shards_exported"]
    assert shards == len(DatasetReader(synthetic_dataset).shards) > 1
    again = export_dataset(synthetic_dataset, str(out), "coco")
    assert (again["shards_exported"], again["shards_skipped"]) == (0, shards)
    markers = sorted((out / "_export" / "coco").iterdir())
    os.remove(markers[1])  # as if the export had been killed while that shard was written
    resumed = export_dataset(synthetic_dataset, str(out), "coco")
    assert (resumed["shards_exported"], resumed["shards_skipped"]) == (1, shards - 1)
    assert (out / "annotations" / "instances.json").read_bytes() == instances  # same ids, same file


def test_export_to_object_storage(synthetic_dataset, s3_bucket, tmp_path):
    from pycocotools.coco import COCO

    from magicseg_models.dataset.storage import Storage

    out = f"{s3_bucket}/exports/coco"
    export_dataset(synthetic_dataset, out, "coco")
    local = tmp_path / "instances.json"
    local.write_bytes(Storage(out).read_bytes("annotations/instances.json"))
    assert len(COCO(str(local)).getImgIds()) == len(_rows(synthetic_dataset))


def test_an_unknown_format_is_one_line(synthetic_dataset, tmp_path):
    with pytest.raises(ConfigError, match="^unknown export format 'voc'; choose one of coco, semantic, webdataset$"):
        export_dataset(synthetic_dataset, str(tmp_path / "x"), "voc")


def test_the_export_command(synthetic_dataset, tmp_path, capsys):
    from flows.cli import main

    out = tmp_path / "semantic"
    assert main(["export", synthetic_dataset, "--format", "semantic", "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["format"] == "semantic" and result["images"] == len(_rows(synthetic_dataset))
    assert main(["export", synthetic_dataset, "--format", "semantic", "--out", str(out)]) == 0
    assert "0 shards exported" in capsys.readouterr().out  # the rerun found everything there
    assert main(["export", synthetic_dataset, "--format", "voc", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "invalid choice: 'voc'" in err and len(err.splitlines()) == 1
