"""The build flow end to end on the tiny preset: Prefect + local Ray + shards on an S3 server; resume after a
SIGKILL of the whole process tree; growing a dataset; refusing a different config on the same URI; provenance
from the stages; run health stopping a run before anything commits; ``magicseg build --json``.

Each build pays seconds of actor start-up (every stage's model loads in its own Ray worker) and a build in a
subprocess pays Python's, Prefect's and Ray's start-up on top: where one run can carry the checks of two, it does.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import server_run_env

from magicseg_models.config import load_config
from magicseg_models.dataset.inspect import inspect_dataset
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError, HealthError
from magicseg_models.planning import iter_jobs, spec_from_config
from magicseg_models.vocabulary import Vocabulary
from tests.fake_openai import FakeOpenAI
from tests.helpers import varied_responder

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _planned_ids(config) -> set[str]:
    vocab = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    return {job.sample_id for job in iter_jobs(spec_from_config(config, vocab))}


def _dataset_ids(uri: str) -> tuple[list[str], list[str]]:
    import pyarrow.parquet as pq

    storage = Storage(uri)
    manifest = storage.read_json("manifest.json")
    kept = [sid for shard in manifest["shards"]
            for sid in pq.read_table(storage.open(shard["path"]), columns=["sample_id"]).column(0).to_pylist()]
    return kept, manifest["dropped_ids"]


def _assert_exact(uri: str, config) -> dict:
    kept, dropped = _dataset_ids(uri)
    assert len(kept) == len(set(kept)), "duplicate samples"
    assert set(kept) | set(dropped) == _planned_ids(config) and not set(kept) & set(dropped)
    report = inspect_dataset(uri)
    assert report["ok"], report["problems"]
    return report


def test_tiny_build_on_s3_with_prefect_and_ray(s3_bucket, prefect_api, local_ray, tmp_path):
    from flows.build_dataset import build_dataset
    from magicseg_models.dataset.preview import render_preview

    uri = f"{s3_bucket}/tiny"
    config = load_config("build", "tiny", out=uri)
    summary = build_dataset(config=config)
    report = _assert_exact(uri, config)
    assert summary["planned"] == 16 and report["samples"] == summary["kept"] > 0
    assert set(summary["stages"]) == {"prompts", "pairs", "annotate", "quality"}
    # the quality stage scored every kept sample (inspect reads the clip_score column of every shard)
    report = inspect_dataset(uri)
    assert report["ok"] and report["samples"] == summary["kept"], report["problems"]
    clip = report["scores"]["clip_score"]
    assert clip["status"] == "ok" and clip["values"] == report["samples"] and clip["null"] == 0
    assert -1 <= clip["min"] <= clip["max"] <= 1
    manifest = Storage(uri).read_json("manifest.json")
    assert manifest["counts"]["kept"] + sum(manifest["counts"]["dropped"].values()) == 16
    assert render_preview(uri, str(tmp_path / "grid.png"), n=4)["rows"] == 4
    [prompt_stats] = summary["stages"]["prompts"]["stage"]
    assert prompt_stats["llm"]["calls"] > 0  # the tiny local LM was asked (its junk then fell back to templates)
    assert sum(prompt_stats["outcomes"].values()) == 16
    _assert_provenance_is_the_stages_settings(uri, config)

    # a rerun does nothing, and starts no stage (no model is loaded): every shard is committed
    again = build_dataset(config=config)
    assert again["stages"] == {} and again["kept"] == summary["kept"] and again["shards"] == summary["shards"]
    assert again["notes"] == ["nothing to build: all 2 planned shards are committed; no stage was started"]
    assert Storage(uri).read_json("manifest.json")["models"] == manifest["models"]  # the provenance stays

    # (growing a dataset is the killed build's rerun below: one build less)

    # another content-changing config on the same URI is refused, naming the keys
    with pytest.raises(ConfigError, match="generator.steps"):
        build_dataset(config=load_config("build", "tiny", out=uri, overrides=["generator.steps=3"]))


def _assert_provenance_is_the_stages_settings(uri: str, config) -> None:
    """Manifest ``models`` and every shard's ``settings`` are what the stages say they are."""
    import pyarrow.parquet as pq

    from magicseg_models.dataset.schema import META_SETTINGS
    from tasks.stage_factories import build_stages

    expected = {spec.name: spec.create().settings for spec in build_stages(config)}
    assert set(expected) == {"prompts", "pairs", "annotate", "quality"}
    expected = json.loads(json.dumps(expected))  # as stored: JSON
    storage = Storage(uri)
    manifest = storage.read_json("manifest.json")
    assert manifest["models"] == expected
    # what the old hand-built records held is still there
    assert manifest["models"]["prompts"]["backend"] == "hf" and manifest["models"]["prompts"]["model"] == "tiny-llama"
    assert manifest["models"]["pairs"]["weights"] == "tiny" and manifest["models"]["pairs"]["steps"] == 2
    assert manifest["models"]["annotate"]["detector_weights"] == "tiny"
    assert manifest["models"]["annotate"]["model_type"] == "vit_b"
    for shard in manifest["shards"]:
        meta = pq.read_schema(storage.open(shard["path"])).metadata
        assert json.loads(meta[META_SETTINGS]) == expected


def test_killed_build_resumes_and_grows_to_the_exact_plan_and_its_json_rerun_prints_only_the_summary(
        tmp_path, prefect_api):
    """A SIGKILL of the whole process tree after the first commit, then the rerun as a user types it with
    ``--json`` and a larger ``--num-samples``: it does only the missing shards and the new jobs, the shards
    committed before the kill stay byte-identical, stdout holds the run summary alone (logs, progress bar and
    per-shard lines go to stderr). One rerun carries the resume, the growth and ``--json``: each real build
    process pays Python's, Prefect's and Ray's start-up again."""
    import datasets  # the built folder is a Hugging Face dataset (its README.md card)

    uri = str(tmp_path / "killed")
    env = server_run_env(tmp_path)
    cmd = [sys.executable, "-m", "flows.cli", "build", "--preset", "tiny", "--out", uri, "--set", "shard_size=4"]
    proc = subprocess.Popen([*cmd, "--num-samples", "32"], env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    commits = tmp_path / "killed" / "_magicseg" / "commits"
    deadline = time.time() + 300
    while time.time() < deadline and not (commits.exists() and any(commits.iterdir())):
        time.sleep(0.2)
    assert commits.exists() and any(commits.iterdir()), "the build committed nothing before the deadline"
    os.killpg(proc.pid, signal.SIGKILL)  # the flow, its Ray and everything they started
    proc.wait(timeout=60)
    before = {r["path"]: r["sha256"] for r in (json.loads(p.read_text()) for p in commits.iterdir())}
    done_before = len(before)
    assert done_before < 8, "killed too late to test a resume"
    redone = 36 - 4 * done_before  # the 8 planned shards less the committed ones, and one new shard of 4

    # the rerun draws its terminal progress bar (forced: stderr is a pipe here) over the missing rows only
    rerun = subprocess.run([*cmd, "--num-samples", "36", "--json"], env={**env, "MAGICSEG_PROGRESS": "1"},
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "building samples" in rerun.stderr and f"/{redone}" in rerun.stderr.replace(" ", "")
    config = load_config("build", "tiny", out=uri, num_samples=36, overrides=["shard_size=4"])
    _assert_exact(uri, config)
    records = [json.loads(p.read_text()) for p in commits.iterdir()]
    assert len(records) == 9
    after = {s["path"]: s["sha256"] for s in Storage(uri).read_json("manifest.json")["shards"]}
    assert all(after[path] == sha for path, sha in before.items())  # what was committed stays as it was

    summary = json.loads(rerun.stdout)  # nothing else on stdout
    assert summary["planned"] == 36 and summary["kept"] + sum(summary["dropped"].values()) == 36
    assert set(summary["stages"]) == {"prompts", "pairs", "annotate", "quality"}
    assert summary["stages"]["pairs"]["rows"] == redone  # only the missing and the new jobs ran
    # the quality stage scored every kept sample (inspect reads the clip_score column of every shard)
    report = inspect_dataset(uri)
    assert report["ok"] and report["samples"] == summary["kept"], report["problems"]
    clip = report["scores"]["clip_score"]
    assert clip["status"] == "ok" and clip["values"] == report["samples"] and clip["null"] == 0
    assert -1 <= clip["min"] <= clip["max"] <= 1
    # tiny's GPU stages are optional: on this GPU-less machine they ran on CPU, and the summary says so
    assert [note.split(":")[0] for note in summary["notes"]] == ["stage pairs runs on CPU",
                                                                 "stage annotate runs on CPU"]
    # the rerun's rows through each of the 4 stages (tiny drops nothing)
    assert sum(summary["nodes"].values()) == sum(s["rows"] for s in summary["stages"].values()) == 4 * redone
    figures = {f["figure"]: f for f in summary["health"]}
    assert {"drop_rate.all", "drop_rate.prompt_failed", "llm_prompt_share"} <= set(figures)
    assert not any(f["checked"] for f in figures.values())  # tiny: health off, figures still reported
    assert figures["llm_prompt_share"]["value"] == 0.0  # the tiny LM's junk fell back to templates
    assert re.search(r"shard \d+ committed: kept", rerun.stderr)
    ds = datasets.load_dataset(uri, split="train")
    assert len(ds) == summary["kept"] and ds.features["class_ids"].feature.names == json.loads(
        (tmp_path / "killed" / "manifest.json").read_text())["classes"]
    card = (tmp_path / "killed" / "README.md").read_text()
    assert "license: other" in card and "tiny weights" in card  # random tiny models: no licence claimed


def test_a_flaky_llm_and_a_killed_ray_actor_still_complete_to_the_exact_plan(tmp_path, prefect_api, local_ray):
    """Two faults a long build meets, in one run (each run pays for its actors' start-up): the LLM server answers
    429, 500, 503, a timeout and junk for a while, and a pairs actor dies in the middle of the run (Ray restarts it
    and retries the calls it held). The run completes with exactly the planned ids and keeps the key out."""
    import threading

    import ray

    from flows.build_dataset import build_dataset

    uri = str(tmp_path / "faults")
    commits = tmp_path / "faults" / "_magicseg" / "commits"
    result: dict = {}

    def build(config) -> None:
        try:
            result["summary"] = build_dataset(config=config)
        except BaseException as err:  # noqa: BLE001 - reported by the assertion below
            result["error"] = err

    with FakeOpenAI(responder=varied_responder()) as srv:
        srv.faults.extend([("429", 1), ("500",), ("503", None), ("500",), ("timeout", 3.0), ("malformed",)])
        config = load_config("build", "tiny", out=uri, num_samples=32, overrides=[
            "shard_size=4", "prompts.backend=openai", f"prompts.base_url={srv.base_url}", "prompts.model=fake-llm",
            "prompts.timeout_s=1", "prompts.max_retries=8"])
        os.environ["OPENAI_API_KEY"] = "sk-test-flow-key-123"
        runner = threading.Thread(target=build, args=(config,))
        try:
            runner.start()
            deadline = time.time() + 300
            while time.time() < deadline and not (commits.exists() and any(commits.iterdir())):
                time.sleep(0.1)
            # the engine names its actors magicseg/<stage>/<k>/<token>: an operator finds them the same way
            pairs = [a for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith("magicseg/pairs/")]
            assert pairs, f"no actor named magicseg/pairs/...: {ray.util.list_named_actors(all_namespaces=True)}"
            victim = ray.get_actor(pairs[0]["name"], namespace=pairs[0]["namespace"])
            ray.kill(victim, no_restart=False)  # a worker crash in the middle of the run: Ray restarts the actor
            runner.join(timeout=600)
        finally:
            os.environ.pop("OPENAI_API_KEY")
    assert "summary" in result, f"the flow did not finish: {result.get('error')!r}"
    assert len(list(commits.iterdir())) == 8
    _assert_exact(uri, config)
    [prompt_stats] = result["summary"]["stages"]["prompts"]["stage"]
    assert prompt_stats["llm"]["retries"] >= 6 and prompt_stats["outcomes"].get("llm", 0) > 0
    assert "sk-test-flow-key-123" not in Path(uri, "manifest.json").read_text()


def test_prefect_retries_crashes_but_not_user_errors():
    import asyncio

    from prefect.states import exception_to_failed_state

    from tasks.build_tasks import build_shards

    def retried(err: BaseException) -> bool:
        state = asyncio.run(exception_to_failed_state(err))
        return build_shards.retry_condition_fn(build_shards, None, state)

    assert retried(RuntimeError("actor died")) and retried(OSError("storage blip"))
    assert not retried(HealthError("run health: ...")) and not retried(ConfigError("bad key"))


def _flow_run_of(uri: str):
    """The latest build-dataset flow run whose config wrote to ``uri``, read back from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(sort=FlowRunSort.START_TIME_DESC, limit=20)
    return next(run for run in runs if (run.parameters.get("config") or {}).get("out") == uri)


def test_an_llm_failing_every_call_stops_the_run_on_sd15s_health_in_one_line_with_nothing_committed(
        tmp_path, capsys, prefect_api, local_ray):
    """``magicseg build --json`` under sd15's health with an LLM that fails every call: exit 2, nothing on stdout,
    one line naming the breached figure and its key on stderr, the flow run FAILED with that message, nothing
    committed. In this process (the session's Prefect and Ray): the stdout of a real ``build --json`` process is
    checked by the killed-build test above."""
    from flows.cli import main

    uri = str(tmp_path / "llm-down")
    health = tmp_path / "sd15-health.yaml"
    health.write_text(yaml.safe_dump({"health": load_config("build", "sd15").health.model_dump(mode="json")}))
    with FakeOpenAI(responder=varied_responder()) as srv:
        srv.faults.extend([("500",)] * 100_000)
        os.environ["OPENAI_API_KEY"] = "sk-test-health-key"
        capsys.readouterr()
        try:
            # 64 samples in one shard: past sd15's min_samples, so the first shard is checked before it commits
            code = main(["build", "--preset", "tiny", "--config", str(health), "--out", uri, "--num-samples", "64",
                         "--json", "--set", "shard_size=64", "--set", "prompts.backend=openai",
                         "--set", f"prompts.base_url={srv.base_url}", "--set", "prompts.model=fake-llm",
                         "--set", "prompts.max_retries=0", "--set", "prompts.timeout_s=2",
                         # every sample is dropped before it: the quality stage's actor would idle
                         "--set", "prompts.on_failure=drop", "--set", "quality.enabled=false"])
        finally:
            os.environ.pop("OPENAI_API_KEY")
        assert srv.chat_requests, "the LLM was never asked"
    bad = capsys.readouterr()
    assert code == 2, bad.err[-3000:]
    assert bad.out == ""
    [line] = [line for line in bad.err.splitlines() if line.startswith("magicseg: error:")]
    assert line.startswith("magicseg: error: run health: drop_rate.prompt_failed is 1.000"), line
    assert "build.health.max_drop_rate.prompt_failed" in line, line
    state = _flow_run_of(uri).state
    assert state.is_failed() and "drop_rate.prompt_failed is 1.000" in (state.message or ""), state
    commits = tmp_path / "llm-down" / "_magicseg" / "commits"
    assert not commits.exists() or not any(commits.iterdir()), "a shard was committed although health failed"
    assert not (tmp_path / "llm-down" / "shards").exists() or not any((tmp_path / "llm-down" / "shards").iterdir())


TWO_NODE_SCRIPT = """
import json, sys
import ray
from ray.cluster_utils import Cluster
from flows.build_dataset import build_dataset
from magicseg_models.config import load_config

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
cluster.add_node(num_cpus=3)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
try:
    # 4 logical CPUs per stage set (prompts 1 + pairs 2 + annotate 1) on nodes of 2 and 3: neither holds them
    # all, Ray must use both (the quality stage takes no CPU, so it would place anywhere: not started here)
    summary = build_dataset(config=load_config("build", "tiny", out=sys.argv[1], num_samples=8,
                                               overrides=["quality.enabled=false"]))
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    print("RESULT " + json.dumps({"summary": summary, "nodes": nodes}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_two_ray_nodes_both_do_work(tmp_path, prefect_api):
    uri = str(tmp_path / "two-nodes")
    env = server_run_env(tmp_path)
    proc = subprocess.run([sys.executable, "-c", TWO_NODE_SCRIPT, uri], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert len(result["nodes"]) == 2
    rows_per_node: dict[str, int] = {}
    for stage in result["summary"]["stages"].values():
        for node, rows in stage["nodes"].items():
            rows_per_node[node] = rows_per_node.get(node, 0) + rows
    assert set(rows_per_node) == set(result["nodes"]), rows_per_node
    assert all(rows > 0 for rows in rows_per_node.values()), rows_per_node
    _assert_exact(uri, load_config("build", "tiny", out=uri, num_samples=8, overrides=["quality.enabled=false"]))
