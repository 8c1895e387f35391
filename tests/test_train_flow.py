"""The `train` flow end to end: Ray Train with 2 CPU workers (gloo), checkpoints on an S3 server, resume, artifacts."""

from __future__ import annotations

import json

import pytest

from magicseg_models.config import load_config
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError
from magicseg_models.training import checkpoints as ckpt

pytestmark = pytest.mark.slow


def _artifacts() -> dict[str, object]:
    import asyncio

    from prefect.client.orchestration import get_client

    async def read():
        async with get_client() as client:
            return {a.key: a for a in await client.read_artifacts()}

    return asyncio.run(read())


def _artifact_keys() -> set[str]:
    return set(_artifacts())


def test_ray_train_two_workers_checkpoint_to_s3_and_resume(s3_bucket, local_ray, prefect_api, tiny_plan):
    from flows.train import train_flow
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    data, out = f"{s3_bucket}/ds", f"{s3_bucket}/train"
    write_synthetic_dataset(data, jobs[:12], list(spec.class_names), height=64, width=64, config={"preset": "t"})
    base = ["workers=2", "data_workers=1", "checkpoint_every=2", "log_every=1"]
    first = train_flow(config=load_config("train", "tiny", overrides=[*base, "steps=2"], data=data, out=out))
    assert first["step"] == 2 and first["workers"] == 2 and first["resumed_from"] is None
    storage = Storage(out)
    assert ckpt.list_checkpoints(storage) == [2]
    assert {"train-summary", "train-checkpoint", "train-loss-curve", "train-progress"} <= _artifact_keys()
    curve = _artifacts()["train-loss-curve"]  # the PNG's location on the bucket, not the PNG inlined as base64
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


def test_cli_train_then_eval_with_relative_paths(tmp_path, tiny_plan):
    """What a user types: relative local paths (Ray Train workers run elsewhere), then eval on the result."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from magicseg_models.dataset.synthetic import write_synthetic_dataset
    from tests.benchmark_data import make_voc

    spec, jobs = tiny_plan
    write_synthetic_dataset(str(tmp_path / "ds"), jobs[:6], list(spec.class_names), height=64, width=64)
    make_voc(tmp_path / "bench")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    env.pop("PREFECT_API_URL", None)
    env.pop("RAY_ADDRESS", None)
    magicseg = [sys.executable, "-m", "flows.cli"]
    train = subprocess.run([*magicseg, "train", "--data", "ds", "--out", "runs/t", "--steps", "2",
                            "--set", "data_workers=0"], cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "runs" / "t" / "checkpoints" / "latest.json").exists()
    assert "trained to step 2" in train.stderr
    evaluate = subprocess.run([*magicseg, "eval", "--checkpoint", "runs/t", "--benchmark", "voc", "--data-root",
                               "bench", "--limit", "2", "--out", "runs/e"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
    assert evaluate.returncode == 0, evaluate.stderr[-3000:]
    printed = json.loads(evaluate.stdout.strip().splitlines()[-1])
    written = json.loads((tmp_path / "runs" / "e" / "metrics.json").read_text())
    assert printed["miou"] == written["miou"] and written["num_images"] == 2
