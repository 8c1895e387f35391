"""The `train` flow end to end: Ray Train with 2 CPU workers (gloo), checkpoints on an S3 server, resume, artifacts."""

from __future__ import annotations

import json

import pytest

from magicseg_models.config import load_config
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError
from magicseg_models.training import checkpoints as ckpt

pytestmark = pytest.mark.slow


def _artifacts(flow_run_id=None) -> dict[str, object]:
    """The latest artifact of each key (of one flow run when given)."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])) if flow_run_id else None

    async def read():
        async with get_client() as client:
            return {a.key: a for a in await client.read_latest_artifacts(flow_run_filter=runs)}

    return asyncio.run(read())


def _run_log(flow_run_id) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return [log.message for log in logs]


def _below(uri: str, column: str, threshold: float) -> tuple[int, int]:
    """(samples, samples whose ``column`` is below ``threshold``), read straight from the shards."""
    import pyarrow.parquet as pq

    storage = Storage(uri)
    values = [v for shard in storage.read_json("manifest.json")["shards"]
              for v in pq.read_table(storage.open(shard["path"]), columns=[column]).column(0).to_pylist()]
    return len(values), sum(v < threshold for v in values)


def test_ray_train_two_workers_checkpoint_to_s3_and_resume(s3_bucket, local_ray, prefect_api, tiny_plan):
    """Also train.filter through Prefect and Ray Train: its counts in the run log before training, in the
    outcome and in the summary table (one run carries both, a Ray Train run costs tens of seconds)."""
    from flows.train import train_flow
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    data, out = f"{s3_bucket}/ds", f"{s3_bucket}/train"
    write_synthetic_dataset(data, jobs[:12], list(spec.class_names), height=64, width=64, config={"preset": "t"})
    total, removed = _below(data, "clip_score", 0.25)
    assert 0 < removed < total - 2  # the filter has work to do and leaves both workers samples
    base = ["workers=2", "data_workers=1", "checkpoint_every=2", "log_every=1", "filter.clip_score_min=0.25"]
    state = train_flow(config=load_config("train", "tiny", overrides=[*base, "steps=2"], data=data, out=out),
                       return_state=True)
    first = state.result()
    assert first["step"] == 2 and first["workers"] == 2 and first["resumed_from"] is None
    assert first["data_filter"]["removed"] == {"clip_score_min": removed}
    assert first["data_filter"]["kept"] == total - removed
    run_id = state.state_details.flow_run_id
    line = f"train.filter removed {removed} of {total} samples (clip_score_min 0.25: {removed}); " \
           f"{total - removed} remain"
    assert line in _run_log(run_id)
    storage = Storage(out)
    assert ckpt.list_checkpoints(storage) == [2]
    artifacts = _artifacts(run_id)
    assert {"train-summary", "train-checkpoint", "train-loss-curve", "train-progress"} <= set(artifacts)
    table = str(artifacts["train-summary"].data)
    assert "filter.clip_score_min removed" in table and f"{total - removed} of {total}" in table
    curve = artifacts["train-loss-curve"]  # the PNG's location on the bucket, not the PNG inlined as base64
    assert "base64" not in curve.data and f"{out}/loss_curve.png" in curve.data

    with pytest.raises(ConfigError, match="--resume"):
        train_flow(config=load_config("train", "tiny", overrides=[*base, "steps=4"], data=data, out=out))

    second = train_flow(config=load_config("train", "tiny", overrides=[*base, "steps=4", "resume=true"],
                                           data=data, out=out))
    assert second["resumed_from"] == 2 and second["step"] == 4
    records = [json.loads(line) for line in storage.read_bytes("metrics.jsonl").decode().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # continued at the next step, nothing logged twice
    assert ckpt.list_checkpoints(storage) == [2, 4]
    loaded = ckpt.load_checkpoint(ckpt.resolve_checkpoint(out))
    assert loaded["state"]["step"] == 4 and loaded["meta"]["train"]["workers"] == 2
    assert storage.read_bytes("loss_curve.png")[:4] == b"\x89PNG"


def test_cli_train_then_eval_with_relative_paths(tmp_path, tiny_plan, monkeypatch, capsys, prefect_api, local_ray):
    """What a user types: relative local paths (Ray Train workers run elsewhere: the session's Ray started them
    in another folder), then eval on the result. Both commands in this process, from the dataset's folder: a
    process of their own would only pay Python's, Prefect's and Ray's start-up again."""
    from flows.cli import main
    from magicseg_models.dataset.synthetic import write_synthetic_dataset
    from tests.benchmark_data import make_voc

    spec, jobs = tiny_plan
    write_synthetic_dataset(str(tmp_path / "ds"), jobs[:6], list(spec.class_names), height=64, width=64)
    make_voc(tmp_path / "bench")
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    code = main(["train", "--data", "ds", "--out", "runs/t", "--steps", "2", "--set", "data_workers=0"])
    train = capsys.readouterr()
    assert code == 0, train.err[-3000:]
    assert (tmp_path / "runs" / "t" / "checkpoints" / "latest.json").exists()
    assert "trained to step 2" in train.err
    code = main(["eval", "--checkpoint", "runs/t", "--benchmark", "voc", "--data-root", "bench", "--limit", "2",
                 "--out", "runs/e"])
    evaluate = capsys.readouterr()
    assert code == 0, evaluate.err[-3000:]
    printed = json.loads(evaluate.out.strip().splitlines()[-1])
    written = json.loads((tmp_path / "runs" / "e" / "metrics.json").read_text())
    assert printed["miou"] == written["miou"] and written["num_images"] == 2
