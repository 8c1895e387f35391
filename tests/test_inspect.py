"""`inspect` reports coverage and catches every way a shard can go bad, on a local folder and on S3."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.cli import main
from magicseg_models.dataset.inspect import inspect_dataset
from magicseg_models.dataset.storage import Storage


def test_healthy_dataset_report(synthetic_dataset, tiny_plan):
    spec, jobs = tiny_plan
    report = inspect_dataset(synthetic_dataset)
    assert report["ok"] and report["problems"] == []
    assert report["planned"] == len(jobs)
    assert report["samples"] + report["dropped_total"] == len(jobs)
    assert len(report["shards"]) == 4 and all(s["status"] == "ok" for s in report["shards"])

    # per-class coverage is counted from the kept rows themselves
    kept = {j.sample_id for j in jobs} - set(Storage(synthetic_dataset).read_json("manifest.json")["dropped_ids"])
    expected: dict[str, int] = {}
    for job in jobs:
        if job.sample_id in kept:
            for name in job.class_names:
                expected[name] = expected.get(name, 0) + 1
    assert report["per_class"] == dict(sorted(expected.items(), key=lambda kv: (-kv[1], kv[0])))
    assert report["coverage"]["min"] == min(expected.values())
    assert report["coverage"]["max"] == max(expected.values())
    assert report["coverage"]["classes_with_none"] == []


def _corrupt(uri: str, how: str) -> str:
    storage = Storage(uri)
    path = "shards/part-00001.parquet"
    if how == "truncated":
        data = storage.read_bytes(path)
        storage.write_bytes_atomic(path, data[: len(data) // 2])
    elif how == "wrong-schema":
        table = pq.read_table(storage.open(path)).drop_columns(["counterfactual_image"])
        table = table.set_column(table.schema.get_field_index("seed"), "seed", pa.array(["x"] * table.num_rows))
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        storage.write_bytes_atomic(path, sink.getvalue().to_pybytes())
    elif how == "unlisted":
        path = "shards/part-00099.parquet"
        storage.write_bytes_atomic(path, storage.read_bytes("shards/part-00000.parquet"))
    elif how == "missing":
        storage.remove(path)
    elif how == "bitflip":
        data = bytearray(storage.read_bytes(path))
        data[len(data) // 3] ^= 0xFF  # same size, different content: only the checksum can tell
        storage.write_bytes_atomic(path, bytes(data))
    return path


@pytest.mark.parametrize("how,status", [("truncated", "corrupt"), ("wrong-schema", "schema"),
                                        ("unlisted", "unlisted"), ("missing", "missing"), ("bitflip", "corrupt")])
def test_inspect_names_the_bad_shard(synthetic_dataset, how, status, capsys):
    path = _corrupt(synthetic_dataset, how)
    report = inspect_dataset(synthetic_dataset)
    assert not report["ok"]
    bad = [s for s in report["shards"] if s["status"] != "ok"]
    assert [(s["path"], s["status"]) for s in bad] == [(path, status)]
    assert len(report["problems"]) == 1 and path in report["problems"][0]

    # the CLI exits non-zero and names the shard on stderr
    assert main(["inspect", synthetic_dataset]) == 1
    err = capsys.readouterr().err
    assert path in err


def test_wrong_schema_names_the_fields(synthetic_dataset):
    _corrupt(synthetic_dataset, "wrong-schema")
    [problem] = inspect_dataset(synthetic_dataset)["problems"]
    assert "counterfactual_image" in problem and "seed" in problem


def test_inspect_reads_a_dataset_this_code_did_not_write(tmp_path):
    from tests.handmade import write_handmade_dataset

    root = write_handmade_dataset(str(tmp_path / "hand"), n=3)
    report = inspect_dataset(root)
    assert report["ok"], report["problems"]
    assert report["samples"] == 3
    assert sum(report["per_class"].values()) >= 3
    # schema 1: no quality columns, and the report says so rather than failing
    assert report["scores"]["clip_score"]["status"] == "not stored"
    assert report["scores"]["counterfactual_score"]["status"] == "ok"


def test_inspect_json_output(synthetic_dataset, capsys):
    import json

    assert main(["inspect", synthetic_dataset, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["samples"] > 0
    assert {"samples", "per_class", "shards", "dropped", "coverage"} <= set(report)


def test_inspect_and_preview_a_foreign_dataset_on_s3(tmp_path, s3_bucket):
    """A dataset copied to S3 by other tools (here: s3fs put) reads like one we wrote."""
    import fsspec

    from magicseg_models.dataset.preview import render_preview
    from tests.handmade import write_handmade_dataset

    root = write_handmade_dataset(str(tmp_path / "hand"), n=4)
    uri = f"{s3_bucket}/foreign"
    fs = fsspec.filesystem("s3")
    fs.put(root + "/", uri.removeprefix("s3://") + "/", recursive=True)
    report = inspect_dataset(uri)
    assert report["ok"], report["problems"]
    assert report["samples"] == 4
    out = render_preview(uri, str(tmp_path / "grid.png"), n=2)
    assert out["rows"] == 2 and (tmp_path / "grid.png").stat().st_size > 0


def test_file_url_is_a_dataset_root(tmp_path, tiny_plan):
    from magicseg_models.dataset import DatasetReader
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    uri = f"file://{tmp_path}/via-url"
    write_synthetic_dataset(uri, jobs[:6], list(spec.class_names), height=32, width=32)
    assert (tmp_path / "via-url" / "shards" / "part-00000.parquet").exists()
    assert len(DatasetReader(uri)) == inspect_dataset(uri)["samples"] > 0


def test_a_build_of_zero_samples_is_an_empty_dataset(dataset_root, capsys):
    """The run header brings a manifest with it: a dataset exists, with 0 shards, from the start of a run."""
    from magicseg_models.dataset import DatasetReader
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    write_synthetic_dataset(dataset_root, [], ["cat", "dog"])
    report = inspect_dataset(dataset_root)
    assert report["ok"] and report["samples"] == report["planned"] == 0 and report["shards"] == []
    assert report["coverage"]["classes_with_none"] == ["cat", "dog"]
    assert len(DatasetReader(dataset_root)) == 0
    assert main(["inspect", dataset_root]) == 0
    assert "Traceback" not in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- quality scores
def test_inspect_shows_the_distribution_of_each_score(tmp_path, capsys):
    import json
    import statistics

    from helpers_quality import write_scored_dataset

    clip = [0.31, 0.12, None, 0.28, 0.05, 0.22, 0.4, 0.19, 0.33]
    rows = write_scored_dataset(str(tmp_path / "ds"), n=9, clip_scores=clip)
    scores = inspect_dataset(str(tmp_path / "ds"))["scores"]

    stored = sorted(v for v in clip if v is not None)
    assert scores["clip_score"]["status"] == "ok"
    assert (scores["clip_score"]["values"], scores["clip_score"]["null"]) == (8, 1)
    assert scores["clip_score"]["min"] == pytest.approx(0.05) and scores["clip_score"]["max"] == pytest.approx(0.4)
    assert scores["clip_score"]["median"] == pytest.approx(statistics.median(stored), abs=1e-6)
    worst_cf = [max(r["counterfactual_scores"]) for r in rows]
    assert scores["counterfactual_score"]["max"] == pytest.approx(max(worst_cf))
    for name in ("predicted_iou", "stability_score", "box_fill"):
        values = [a[name] for r in rows for a in r["annotations"]]
        assert scores[name]["values"] == len(values)
        assert scores[name]["mean"] == pytest.approx(statistics.fmean(values), abs=1e-6)
    assert scores["context_annotations"] == {"status": "ok", "count": 3}  # samples 0, 3 and 6

    assert main(["inspect", str(tmp_path / "ds"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["scores"]["clip_score"]["p90"] == pytest.approx(scores["clip_score"]["p90"])
    assert main(["inspect", str(tmp_path / "ds")]) == 0
    out = capsys.readouterr().out
    assert "clip_score" in out and "box_fill" in out and "asked=false): 3" in out


def test_scores_a_build_did_not_compute_say_so(tmp_path, capsys):
    from helpers_quality import write_scored_dataset

    write_scored_dataset(str(tmp_path / "ds"), n=4, clip_scores=[None] * 4)  # quality.enabled=false
    scores = inspect_dataset(str(tmp_path / "ds"))["scores"]
    assert scores["clip_score"] == {"status": "not computed", "values": 0, "null": 4, "not_stored": 0}
    assert scores["box_fill"]["status"] == "ok"
    assert main(["inspect", str(tmp_path / "ds")]) == 0
    assert "not computed" in capsys.readouterr().out


def test_a_schema_1_dataset_has_its_scores_not_stored(tmp_path):
    """Columns a schema-1 writer never wrote read as "not stored", from the shard's own columns."""
    import pyarrow.parquet as pq

    from magicseg_models.dataset.inspect import shard_scores, score_report
    from tests.handmade import write_handmade_dataset

    root = write_handmade_dataset(str(tmp_path / "hand"), n=3)
    pf = pq.ParquetFile(f"{root}/shards/part-00000.parquet")
    scores = score_report([{"rows": 3, "scores": shard_scores(pf)}])
    for name in ("clip_score", "predicted_iou", "stability_score", "box_fill"):
        assert scores[name]["status"] == "not stored" and scores[name]["not_stored"] == 3
    assert scores["context_annotations"] == {"status": "not stored", "count": None}
    assert scores["counterfactual_score"]["status"] == "ok" and scores["counterfactual_score"]["values"] == 3
