"""The shard store on a local folder and on an S3 server: contract, atomic commit, concurrency, kills, secrets."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from magicseg_models.dataset import SCHEMA, DatasetReader, DatasetStore, decode_mask
from magicseg_models.dataset.schema import schema_problems
from magicseg_models.dataset.storage import Storage
from magicseg_models.dataset.store import STALE_STAGED_S
from magicseg_models.dataset.synthetic import synthetic_row
from magicseg_models.errors import ShardError, StorageError

CONTRACT_FIELDS = ["sample_id", "class_names", "class_ids", "prompt", "counterfactual_prompt", "seed", "image",
                   "counterfactual_image", "height", "width", "annotations", "counterfactual_scores",
                   "context_class_ids", "clip_score"]
ANNOTATION_FIELDS = ["class_id", "class_name", "box", "score", "mask_rle", "area", "asked", "predicted_iou",
                     "stability_score", "box_fill"]


def _rows(n: int, start: int = 0, size: int = 32) -> list[dict]:
    return [synthetic_row(f"s0-{i:09d}", [i % 5], [f"class{i % 5}"], seed=i, height=size, width=size)
            for i in range(start, start + n)]


def _all_bytes(storage: Storage) -> bytes:
    """Every byte stored under the dataset root (to search for leaked secrets)."""
    blob = b""
    for path in storage.fs.find(storage.root):
        blob += storage.fs.cat_file(path)
    return blob


def test_round_trip_follows_the_contract(dataset_root):
    store = DatasetStore(dataset_root)
    store.write_run_header(config={"preset": "t"}, planned=7, classes=[f"class{i}" for i in range(5)])
    rows = _rows(6)
    with store.open_shard(0, settings={"generator": {"steps": 2}}) as writer:
        writer.write(rows[:4])
        writer.write(rows[4:])
        info = writer.commit(planned=7, dropped={"s0-000000006": "class_not_detected:class1"})
    assert info.rows == 6

    pf = pq.ParquetFile(Storage(dataset_root).open("shards/part-00000.parquet"))
    schema = pf.schema_arrow
    assert schema.names == CONTRACT_FIELDS
    assert [f.name for f in schema.field("annotations").type.value_type] == ANNOTATION_FIELDS
    meta = schema.metadata
    assert json.loads(meta[b"magicseg.schema_version"]) == 2
    assert json.loads(meta[b"magicseg.settings"]) == {"generator": {"steps": 2}}

    manifest = store.read_manifest()
    assert manifest["counts"] == {"planned": 7, "kept": 6, "dropped": {"class_not_detected:class1": 1}}
    assert manifest["dropped_ids"] == ["s0-000000006"]
    [entry] = manifest["shards"]
    assert entry["path"] == "shards/part-00000.parquet"  # relative to the URI
    data = Storage(dataset_root).read_bytes(entry["path"])
    assert entry["bytes"] == len(data) and entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["config"] == {"preset": "t"} and manifest["code_version"]

    reader = DatasetReader(dataset_root)
    assert len(reader) == 6
    got = list(reader.iter_rows())
    assert [r["sample_id"] for r in got] == [r["sample_id"] for r in rows]
    assert got[3]["annotations"][0]["mask_rle"] == rows[3]["annotations"][0]["mask_rle"]
    assert got[3]["image"] == rows[3]["image"]


def test_reader_selects_columns_and_decodes(synthetic_dataset):
    reader = DatasetReader(synthetic_dataset)
    table = reader.read_table(columns=["sample_id", "class_ids"])
    assert table.column_names == ["sample_id", "class_ids"]
    assert table.num_rows == len(reader) == reader.manifest["counts"]["kept"]

    row = next(reader.iter_rows(decode=True))
    assert row["image"].size == (row["width"], row["height"])
    for ann in row["annotations"]:
        mask = ann["mask"]
        assert mask.shape == (row["height"], row["width"]) and mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == pytest.approx(ann["box"])


def test_rle_matches_pycocotools_counts():
    from pycocotools import mask as mask_utils

    from magicseg_models.dataset import encode_mask

    mask = np.zeros((40, 30), bool)
    mask[5:20, 3:17] = True
    counts, area = encode_mask(mask)
    assert area == 15 * 14
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    assert counts == rle["counts"].decode()
    assert (decode_mask(counts, 40, 30) == mask).all()


@pytest.mark.parametrize("counts", ["", "0", "b035000f", "b035000f05", "\x7f", "caf\u00e9"])
def test_malformed_rle_is_refused(counts):
    """pycocotools decodes such strings into uninitialised memory (or past its buffer): check before."""
    from magicseg_models.dataset import encode_mask

    mask = np.zeros((8, 8), bool)
    mask[2:5, 2:5] = True
    assert encode_mask(mask)[0] == "b035000f0"
    with pytest.raises(ValueError):
        decode_mask(counts, 8, 8)


def test_rows_that_break_the_schema_fail_and_publish_nothing(tmp_path):
    store = DatasetStore(str(tmp_path / "ds"))
    bad = dict(_rows(1)[0], seed="not-a-number")
    with pytest.raises(ShardError, match="part-00000"):
        with store.open_shard(0) as writer:
            writer.write([bad])
            writer.commit()
    assert not (tmp_path / "ds" / "shards" / "part-00000.parquet").exists()
    assert not os.listdir(tmp_path / "ds" / "_magicseg" / "tmp")  # the staged file was removed


@pytest.mark.parametrize("change,named", [
    (lambda r: r.pop("counterfactual_scores"), "missing counterfactual_scores"),
    (lambda r: r.update(sede=3), "unknown sede"),
    (lambda r: (r.pop("seed"), r.update(sede=3)), "missing seed; unknown sede"),
])
def test_dict_rows_need_exactly_the_contract_fields(tmp_path, change, named):
    store = DatasetStore(str(tmp_path / "ds"))
    row = _rows(1)[0]
    change(row)
    with pytest.raises(ShardError) as err:
        with store.open_shard(0) as writer:
            writer.write([row])
            writer.commit()
    assert named in str(err.value) and "part-00000" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ds" / "shards").exists()


@pytest.mark.parametrize("as_table", [False, True])
def test_null_contract_values_are_refused(tmp_path, as_table):
    store = DatasetStore(str(tmp_path / "ds"))
    rows = [dict(_rows(1)[0], counterfactual_image=None)]
    nullable = pa.schema([f.with_nullable(True) for f in SCHEMA])
    with pytest.raises(ShardError, match="counterfactual_image"):
        with store.open_shard(0) as writer:
            writer.write(pa.Table.from_pylist(rows, schema=nullable) if as_table else rows)
            writer.commit()
    assert not (tmp_path / "ds" / "shards").exists()


def test_tables_with_unknown_columns_are_refused(tmp_path):
    table = pa.Table.from_pylist(_rows(2), schema=SCHEMA).append_column("note", pa.array(["a", "b"]))
    with pytest.raises(ShardError, match="unknown note"):
        with DatasetStore(str(tmp_path / "ds")).open_shard(0) as writer:
            writer.write(table)


def test_nullable_fields_from_other_writers_still_read(tmp_path):
    """Shards with nullable fields (other tools, older writers) pass the schema check and read with ours."""
    nullable = pa.schema([f.with_nullable(True) for f in SCHEMA])
    assert schema_problems(nullable) == []
    uri = str(tmp_path / "ds")
    store = DatasetStore(uri)
    for shard in (0, 1):
        with store.open_shard(shard) as writer:
            writer.write(_rows(2, start=2 * shard))
            writer.commit()
    path = tmp_path / "ds" / "shards" / "part-00001.parquet"
    pq.write_table(pq.read_table(path).cast(nullable), path)
    assert DatasetReader(uri).read_table().num_rows == 4


def test_published_shard_is_as_readable_as_other_files(tmp_path):
    old_umask = os.umask(0o022)  # what most systems use; mkstemp's 0600 differs from it
    try:
        store = DatasetStore(str(tmp_path / "ds"))
        with store.open_shard(0) as writer:
            writer.write(_rows(1))
            writer.commit()
        (tmp_path / "plain").write_bytes(b"")
    finally:
        os.umask(old_umask)
    modes = {name: stat.S_IMODE(os.stat(tmp_path / name).st_mode)
             for name in ("plain", "ds/manifest.json", "ds/shards/part-00000.parquet")}
    assert set(modes.values()) == {0o644}, modes


def test_missing_shard_is_a_shard_error(synthetic_dataset):
    Storage(synthetic_dataset).remove("shards/part-00001.parquet")
    with pytest.raises(ShardError, match=r"shard shards/part-00001.parquet is missing") as err:
        list(DatasetReader(synthetic_dataset).iter_rows())
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("manifest", [[1, 2], {"shards": "x"}, {"shards": [{"path": 3}]}, {"counts": {}}])
def test_malformed_manifest_is_one_error_everywhere(tmp_path, manifest):
    from magicseg_models.dataset.inspect import inspect_dataset

    uri = str(tmp_path / "ds")
    Storage(uri).write_json_atomic("manifest.json", manifest)
    for read in (DatasetReader, inspect_dataset, lambda u: DatasetStore(u).read_manifest()):
        with pytest.raises(StorageError, match=r"manifest.json has no valid 'shards' list$"):
            read(uri)


def test_writes_arrow_tables_too(tmp_path):
    store = DatasetStore(str(tmp_path / "ds"))
    table = pa.Table.from_pylist(_rows(3), schema=SCHEMA)
    with store.open_shard(2) as writer:
        writer.write(table)
        writer.commit()
    assert DatasetReader(str(tmp_path / "ds")).read_table().num_rows == 3
    assert store.committed()[2].rows == 3


_WRITER = textwrap.dedent("""
    import sys, time
    from magicseg_models.dataset import DatasetStore
    from magicseg_models.dataset.synthetic import synthetic_row
    uri, first, count, wait_for = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    store = DatasetStore(uri)
    while time.time() < wait_for:   # line up with the other writers so commits really overlap
        time.sleep(0.005)
    for shard in range(first, first + count):
        with store.open_shard(shard) as w:
            w.write([synthetic_row(f"s0-{shard:05d}-{i}", [1], ["a"], seed=i, height=16, width=16) for i in range(3)])
            w.commit(planned=3)
""")


@pytest.mark.parametrize("writers", [6])
def test_concurrent_writers_lose_no_manifest_entry(dataset_root, writers):
    start_at = time.time() + 3.0
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, dataset_root, str(w * 3), "3", str(start_at)],
                              env=os.environ.copy()) for w in range(writers)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    manifest = DatasetStore(dataset_root).read_manifest()
    assert [s["path"] for s in manifest["shards"]] == [f"shards/part-{i:05d}.parquet" for i in range(writers * 3)]
    assert manifest["counts"]["kept"] == writers * 3 * 3


def test_manifest_refresh_survives_a_stale_listing(dataset_root):
    """Writer A lists the commits, then B commits completely, then A writes its (stale) manifest.

    The interleaving that loses entries when a writer trusts its first listing: A must notice and rewrite.
    """

    class ListsThenWaits(DatasetStore):
        def committed(self):
            records = super().committed()
            if self.between is not None:
                between, self.between = self.between, None
                between()
            return records

    def b_commits():
        with DatasetStore(dataset_root).open_shard(1) as writer:
            writer.write(_rows(2, start=10))
            writer.commit()

    a = ListsThenWaits(dataset_root)
    a.between = b_commits
    with a.open_shard(0) as writer:
        writer.write(_rows(3))
        writer.commit()
    manifest = DatasetStore(dataset_root).read_manifest()
    assert [s["path"] for s in manifest["shards"]] == ["shards/part-00000.parquet", "shards/part-00001.parquet"]
    assert manifest["counts"]["kept"] == 5


_SLOW_WRITER = textwrap.dedent("""
    import sys, time
    from magicseg_models.dataset import DatasetStore
    from magicseg_models.dataset.synthetic import synthetic_row
    store = DatasetStore(sys.argv[1])
    with store.open_shard(1) as w:
        for i in range(10_000):
            w.write([synthetic_row(f"s0-1-{i}", [1], ["a"], seed=i, height=16, width=16)])
            if i == 300:
                print("mid-shard", flush=True)
            time.sleep(0.001)
        w.commit()
""")


def test_sigkill_mid_shard_leaves_no_visible_shard_and_an_intact_manifest(dataset_root):
    store = DatasetStore(dataset_root)
    store.write_run_header(planned=20, classes=["a", "b"])
    with store.open_shard(0) as writer:
        writer.write(_rows(4))
        writer.commit(planned=4)
    before = store.read_manifest()

    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, dataset_root], stdout=subprocess.PIPE,
                            env=os.environ.copy())
    assert proc.stdout.readline().strip() == b"mid-shard"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    storage = Storage(dataset_root)
    assert storage.list("shards") == ["part-00000.parquet"]
    after = store.read_manifest()
    assert after["shards"] == before["shards"] and after["counts"] == before["counts"]
    assert list(store.committed()) == [0]
    assert len(DatasetReader(dataset_root)) == 4

    from magicseg_models.dataset.inspect import inspect_dataset

    assert inspect_dataset(dataset_root)["ok"]

    if dataset_root.startswith("s3://"):
        return  # object stores stage in the machine's temp folder, not under the URI
    staged = os.path.join(dataset_root, "_magicseg", "tmp")
    [leftover] = [name for name in os.listdir(staged) if name.endswith(".parquet.tmp")]
    store.write_run_header(planned=20, classes=["a", "b"])  # the next run starts
    assert os.listdir(staged) == [leftover]  # young: it might belong to a live writer
    old = time.time() - STALE_STAGED_S - 60
    os.utime(os.path.join(staged, leftover), (old, old))
    store.write_run_header(planned=20, classes=["a", "b"])
    assert os.listdir(staged) == []


def test_no_credential_reaches_manifest_or_metadata(s3_bucket, s3_server):
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    access = os.environ["AWS_ACCESS_KEY_ID"]
    api_key = "sk-test-DO-NOT-LEAK-1234567890"
    options = {"key": access, "secret": secret, "client_kwargs": {"endpoint_url": s3_server}}
    uri = f"{s3_bucket}/secret-check"
    config = {"storage": {"storage_options": options}, "prompts": {"api_key": api_key, "api_key_secret": "openai"},
              "out": f"s3://{access}:{secret}@bucket/x"}
    store = DatasetStore(uri, storage_options=options)
    store.write_run_header(config=config, planned=1, classes=["a"], models={"llm_token": api_key})
    with store.open_shard(0, settings=config) as writer:
        writer.write(_rows(1))
        writer.commit()
    blob = _all_bytes(Storage(uri, options))
    for value in (secret, access, api_key):
        assert value.encode() not in blob
    assert store.read_manifest()["config"]["prompts"]["api_key_secret"] == "openai"  # a block name, not a secret


def test_unreachable_storage_is_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StorageError) as err:
        DatasetReader("s3://nowhere/ds")
    assert "s3://nowhere/ds" in str(err.value) and "\n" not in str(err.value)


def test_missing_dataset_is_one_line_error(tmp_path):
    with pytest.raises(StorageError, match="manifest.json not found"):
        DatasetReader(str(tmp_path / "nothing-here"))


def test_schema_2_fields_round_trip_with_their_nulls(tmp_path):
    """Context annotations (asked false), SAM scores null where a segmenter has none, clip_score null until the
    quality stage ran: written and read back as they were; a null where the schema requires a value is refused."""
    store = DatasetStore(str(tmp_path / "v2"))
    store.write_run_header(config={}, planned=2, classes=[f"class{i}" for i in range(5)])
    first, second = _rows(2)
    context = {**first["annotations"][0], "class_id": 3, "class_name": "class3", "asked": False,
               "predicted_iou": None, "stability_score": None}
    first = {**first, "context_class_ids": [3, 4], "clip_score": None,
             "annotations": [*first["annotations"], context]}
    with store.open_shard(0) as writer:
        writer.write([first, second])
        writer.commit()
    back = list(DatasetReader(store.uri).iter_rows())
    assert back[0]["context_class_ids"] == [3, 4] and back[0]["clip_score"] is None
    stored = back[0]["annotations"][-1]
    assert {k: stored[k] for k in ("class_id", "mask_rle", "area", "asked", "predicted_iou", "stability_score")} == \
        {"class_id": 3, "mask_rle": context["mask_rle"], "area": context["area"], "asked": False,
         "predicted_iou": None, "stability_score": None}
    assert stored["box_fill"] == pytest.approx(context["box_fill"]) and stored["box"] == pytest.approx(context["box"])
    assert back[1]["clip_score"] == pytest.approx(second["clip_score"]) and back[1]["context_class_ids"] == []
    with store.open_shard(1) as writer, pytest.raises(ShardError, match="do not match the schema"):
        writer.write([{**second, "context_class_ids": None}])
        writer.commit()
