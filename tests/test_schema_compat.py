"""Schema 1 stays readable: a dataset written before context classes and quality scores (or by another tool, per
the schema-1 contract; tests/handmade.py) is checked, read, decoded, exported and loaded with the documented
schema-2 defaults: ``context_class_ids`` [], ``clip_score`` null, ``asked`` true, the mask scores null."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magicseg_models.dataset.card import features, render_card
from magicseg_models.dataset.export import export_dataset
from magicseg_models.dataset.inspect import inspect_dataset
from magicseg_models.dataset.reader import DatasetReader, decode_row
from magicseg_models.dataset.schema import (
    SCHEMA, SCHEMA_VERSION, V2_ANNOTATION_FIELDS, V2_FIELDS, schema_problems, upgrade_batch,
)
from tests.handmade import CLASSES, handmade_row, write_handmade_dataset

DEFAULTS = {"asked": True, "predicted_iou": None, "stability_score": None, "box_fill": None}


@pytest.fixture
def old_dataset(tmp_path) -> str:
    return write_handmade_dataset(str(tmp_path / "v1"), n=4)


def _shard_schema(root: str) -> pa.Schema:
    return pq.read_schema(f"{root}/shards/part-00000.parquet")


def test_schema_1_is_compatible_and_a_wrong_v2_field_is_not(old_dataset):
    schema = _shard_schema(old_dataset)
    assert not set(V2_FIELDS) & set(schema.names)  # really schema 1
    assert schema_problems(schema) == []
    assert schema_problems(SCHEMA) == []
    wrong = schema.append(pa.field("clip_score", pa.string()))
    assert schema_problems(wrong) == ["field 'clip_score' is string, expected float"]
    no_masks = schema.set(schema.get_field_index("annotations"), pa.field("annotations", pa.list_(pa.struct([
        ("class_id", pa.int64()), ("class_name", pa.string()), ("box", pa.list_(pa.float64())),
        ("score", pa.float64()), ("area", pa.int64()), ("asked", pa.string())]))))
    assert schema_problems(no_masks) == ["field 'annotations' has no 'mask_rle'",
                                         "field 'annotations.asked' is string, expected bool"]
    assert schema_problems(schema.remove(schema.get_field_index("seed"))) == ["missing field 'seed'"]


def test_reader_fills_the_schema_2_defaults(old_dataset):
    reader = DatasetReader(old_dataset)
    rows = list(reader.iter_rows())
    assert [r["sample_id"] for r in rows] == [handmade_row(i)["sample_id"] for i in range(4)]
    for i, row in enumerate(rows):
        assert row["context_class_ids"] == [] and row["clip_score"] is None
        original = handmade_row(i)["annotations"]
        assert row["annotations"] == [{**ann, **DEFAULTS} for ann in original]
    # a column selection that names schema-2 fields, in the caller's order
    some = list(reader.iter_rows(columns=["clip_score", "sample_id", "context_class_ids"]))
    assert some[1] == {"clip_score": None, "sample_id": "hand-0001", "context_class_ids": []}
    table = reader.read_table()
    assert table.schema.field("context_class_ids").type == pa.list_(pa.int32())
    assert table.schema.field("clip_score").type == pa.float32()
    annotation = table.schema.field("annotations").type.value_type
    assert [annotation.field(n).type for n in V2_ANNOTATION_FIELDS] == [pa.bool_(), *[pa.float32()] * 3]
    decoded = next(reader.iter_rows(decode=True))
    assert decoded["annotations"][0]["mask"].shape == (48, 64) and decoded["annotations"][0]["asked"] is True


def test_upgrade_leaves_schema_2_alone_and_handles_sliced_batches(old_dataset):
    table = pq.read_table(f"{old_dataset}/shards/part-00000.parquet")
    sliced = table.slice(1, 2).to_batches()[0]  # a batch whose list offsets do not start at 0
    upgraded = upgrade_batch(sliced)
    assert [[a["class_id"] for a in anns] for anns in upgraded.column("annotations").to_pylist()] == \
        [[a["class_id"] for a in handmade_row(i)["annotations"]] for i in (1, 2)]
    assert upgraded.column("annotations").to_pylist()[0][0]["asked"] is True
    again = upgrade_batch(upgraded)
    assert again.schema == upgraded.schema and again.to_pylist() == upgraded.to_pylist()


def test_decode_row_of_a_schema_1_dict():
    row = decode_row(handmade_row(3))
    assert row["context_class_ids"] == [] and row["clip_score"] is None
    assert all({k: a[k] for k in DEFAULTS} == DEFAULTS for a in row["annotations"])
    assert row["image"].size == (64, 48)
    kept = decode_row({**handmade_row(1), "context_class_ids": [2], "clip_score": 0.3})
    assert kept["context_class_ids"] == [2] and kept["clip_score"] == 0.3


def test_inspect_and_export_a_schema_1_dataset(old_dataset, tmp_path):
    report = inspect_dataset(old_dataset)
    assert report["ok"], report["problems"]
    assert report["schema_version"] == 1 and report["samples"] == 4
    export_dataset(old_dataset, str(tmp_path / "coco"), "coco")
    coco = json.loads((tmp_path / "coco" / "annotations" / "instances.json").read_text())
    assert coco["annotations"] and all({k: a[k] for k in DEFAULTS} == DEFAULTS for a in coco["annotations"])
    result = export_dataset(old_dataset, str(tmp_path / "wds"), "webdataset")
    assert result["samples"] == 4


def test_the_card_of_a_schema_1_dataset_describes_its_shards_and_loads(old_dataset):
    import datasets

    v1 = [f["name"] for f in features(list(CLASSES), 1)]
    v2 = [f["name"] for f in features(list(CLASSES))]
    assert SCHEMA_VERSION == 2 and v2 == SCHEMA.names and v1 == [n for n in SCHEMA.names if n not in V2_FIELDS]
    manifest = json.load(open(f"{old_dataset}/manifest.json"))
    with open(f"{old_dataset}/README.md", "w") as f:
        f.write(render_card({**manifest, "classes": list(CLASSES)}, {}, old_dataset))
    ds = datasets.load_dataset(old_dataset, split="train")
    assert len(ds) == 4 and "clip_score" not in ds.features
    assert [a["class_id"] for a in ds[1]["annotations"]] == [a["class_id"] for a in handmade_row(1)["annotations"]]
