"""The elastic executor on a local Ray: load-aware dispatch, per-stage pieces, growing and shrinking pools, GPU
placement, errors and logs that reach the driver."""

from __future__ import annotations

import logging
import time

import pytest
import ray

from magicseg_models.config import RayConfig, StageResources
from magicseg_models.errors import ClusterError, ConfigError
from magicseg_models.pipeline import StageSpec
from stage_doubles import refusing_stage, tagging_stage, unbuildable_stage
from tasks.executor import RayExecutor, cut_pieces

CPU = dict(num_gpus=0, num_cpus=0.5)


def _rows(n: int) -> list[dict]:
    return [{"sample_id": f"s{i}", "index": i} for i in range(n)]


def _run(executor: RayExecutor, rows: list[dict], batch: int) -> list[dict]:
    futures = [executor.submit(rows[i:i + batch]) for i in range(0, len(rows), batch)]
    return [row for future in futures for row in future.result(timeout=120)]


def test_pieces_cut_parts_in_order():
    parts = [("a", 3), ("b", 4)]
    assert cut_pieces(parts, 2) == [[("a", 0, 2)], [("a", 2, 3), ("b", 0, 1)], [("b", 1, 3)], [("b", 3, 4)]]
    assert cut_pieces(parts, 10) == [[("a", 0, 3), ("b", 0, 4)]]


def test_rows_pass_every_stage_in_order_with_per_stage_batch_sizes(local_ray):
    specs = [StageSpec("first", tagging_stage, ("first",), StageResources(batch_size=3, **CPU)),
             StageSpec("second", tagging_stage, ("second",), StageResources(batch_size=2, actors=2, **CPU))]
    rows = _rows(23)
    rows[5]["drop_reason"] = "already_dropped"
    with RayExecutor(specs) as executor:
        assert executor.start() == []
        assert executor.batch_size == 3
        out = _run(executor, rows, 7)  # batches that no stage's size divides
        stats = executor.stats()
        settings = executor.settings()
    assert [row["sample_id"] for row in out] == [row["sample_id"] for row in rows]
    assert "tag_first" not in out[5] and out[5]["drop_reason"] == "already_dropped"
    assert all(row["tag_first"] == row["tag_second"] == row["index"] * 10 for row in out if row is not out[5])
    # piece sizes are each stage's own: 23 rows in batches of 7 -> first stage pieces of <= 3, second of <= 2
    assert sum(s["stage"]["calls"] for s in stats["first"]) == 10  # batches 7, 7, 7, 2 -> pieces 3+3+1 (x3), 2
    assert sum(s["rows"] for s in stats["second"]) == 23
    assert settings == {"first": {"name": "first", "delay": 0.0}, "second": {"name": "second", "delay": 0.0}}
    assert all(s["name"].startswith("magicseg/second/") for s in stats["second"])


@pytest.mark.slow
def test_a_slow_actor_does_not_hold_up_the_other_two(local_ray, tmp_path):
    """Three actors, one 5x slower: the run goes at the pace of the other two, output unchanged."""
    rows = _rows(96)

    def timed(slow_factor: float) -> tuple[float, list[dict], dict]:
        ranks = tmp_path / f"ranks-{slow_factor}"
        ranks.mkdir()
        spec = StageSpec("work", tagging_stage, ("work", 0.05, str(ranks), slow_factor),
                         StageResources(batch_size=4, actors=3, **CPU))
        with RayExecutor([spec]) as executor:
            executor.start()
            _run(executor, rows[:12], 4)  # warm: every actor has answered once
            began = time.perf_counter()
            out = _run(executor, rows, 4)
            return time.perf_counter() - began, out, executor.stats()

    even_s, even, _ = timed(1.0)
    slow_s, slow, stats = timed(5.0)
    strip = [{k: v for k, v in row.items() if not k.startswith("by_")} for row in even]
    assert [{k: v for k, v in row.items() if not k.startswith("by_")} for row in slow] == strip
    by_rank = {s["stage"]["rank"]: s["rows"] for s in stats["work"]}
    assert by_rank[0] < by_rank[1] / 2  # the slow actor got fewer pieces: the others were not kept waiting
    # all three equal: 96 rows / 3 actors; the slow one ideally costs 1/3 + a little (2 actors of 3 left)
    assert slow_s < even_s * 2.0, (slow_s, even_s)


def test_a_pool_grows_with_its_backlog_and_shrinks_when_idle(local_ray, tmp_path):
    spec = StageSpec("work", tagging_stage, ("work", 0.1), StageResources(batch_size=2, actors=[1, 3], **CPU))
    with RayExecutor([spec], ray_config=RayConfig(idle_actor_s=1.0)) as executor:
        executor.start()
        assert len(executor.pools[0].slots) == 1
        out = _run(executor, _rows(120), 2)  # 12 s for one actor: time for two more to start and take work
        grown = executor.stats()["work"]
        assert len(grown) == 3 and all(s["rows"] > 0 for s in grown)
        assert [row["index"] for row in out] == list(range(120))
        deadline = time.monotonic() + 30
        while len(executor.pools[0].slots) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(executor.pools[0].slots) == 1
        names = {name for name in ray.util.list_named_actors() if name.startswith("magicseg/work/")}
        assert len(names) == 1
        # the stopped actors' work is still counted: stats cover every actor the run used
        assert sum(s["rows"] for s in executor.stats()["work"]) == 120


def test_a_stage_error_comes_out_as_its_own_one_line(local_ray):
    specs = [StageSpec("first", tagging_stage, ("first",), StageResources(**CPU)),
             StageSpec("refusing", refusing_stage, ("bad input: class 'unicorn' is unknown",),
                       StageResources(**CPU))]
    with RayExecutor(specs) as executor:
        executor.start()
        future = executor.submit(_rows(3))
        with pytest.raises(ConfigError) as caught:
            future.result(timeout=60)
    assert str(caught.value) == "bad input: class 'unicorn' is unknown"


def test_a_stage_that_cannot_be_built_fails_start(local_ray):
    spec = StageSpec("broken", unbuildable_stage, ("checkpoint /nope/sam.pth not found",), StageResources(**CPU))
    executor = RayExecutor([spec])
    with pytest.raises(ConfigError, match=r"^checkpoint /nope/sam.pth not found$"):
        executor.start()
    assert not [n for n in ray.util.list_named_actors() if n.startswith("magicseg/broken/")]


def test_stages_that_need_more_cpus_than_the_cluster_has_refuse_instead_of_waiting(local_ray):
    total = ray.cluster_resources()["CPU"]
    specs = [StageSpec("pairs", tagging_stage, ("pairs",), StageResources(num_gpus=0, num_cpus=total)),
             StageSpec("quality", tagging_stage, ("quality",), StageResources(num_gpus=0, num_cpus=0.25))]
    began = time.perf_counter()
    with pytest.raises(ClusterError, match=rf"^the stages' first actors ask for {total + 0.25:g} CPUs "
                                           rf"\(pairs {total:g}, quality 0.25\) and the Ray cluster has {total:g}: "):
        RayExecutor(specs).start()
    with pytest.raises(ClusterError, match=rf"^stage big asks for {total + 1:g} CPUs per actor and the largest"):
        RayExecutor([StageSpec("big", tagging_stage, ("big",), StageResources(num_gpus=0, num_cpus=total + 1))]
                    ).start()
    assert time.perf_counter() - began < 30
    assert not [n for n in ray.util.list_named_actors() if n.startswith(("magicseg/pairs/", "magicseg/big/"))]


def test_actor_log_records_reach_the_driver(local_ray):
    spec = StageSpec("loud", tagging_stage, ("loud", 0.0, None, 1.0, "LLM call failed, template used"),
                     StageResources(**CPU))
    records = []
    with RayExecutor([spec], on_log=lambda stage, level, msg: records.append((stage, level, msg))) as executor:
        executor.start()
        executor.submit(_rows(2)).result(timeout=60)
    assert ("loud", logging.INFO, "stage loud built (rank 0)") in records
    assert ("loud", logging.WARNING, "LLM call failed, template used: 2 rows") in records


def test_a_required_gpu_stage_refuses_on_a_cluster_without_gpus(local_ray):
    specs = [StageSpec("pairs", tagging_stage, ("pairs",), StageResources(num_gpus=0.5, num_cpus=0.5),
                       "generator")]
    began = time.perf_counter()
    with pytest.raises(ClusterError) as caught:
        RayExecutor(specs).start()
    message = str(caught.value)
    assert "\n" not in message and "GPU required by stage pairs (generator.resources)" in message
    assert "no GPU and no autoscaler" in message
    assert time.perf_counter() - began < 10  # decided at once: nothing could start a GPU node here
    assert not [n for n in ray.util.list_named_actors() if n.startswith("magicseg/pairs/")]


def test_an_optional_gpu_stage_runs_on_cpu_and_says_so(local_ray):
    specs = [StageSpec("pairs", tagging_stage, ("pairs",),
                       StageResources(num_gpus=0.5, num_cpus=0.5, gpu="optional"), "generator")]
    with RayExecutor(specs) as executor:
        notes = executor.start()
        out = executor.submit(_rows(2)).result(timeout=60)
        stats = executor.stats()["pairs"]
    assert notes == ["stage pairs runs on CPU: the Ray cluster has no GPU and no autoscaler that could start one "
                     "(generator.resources.gpu is optional)"]
    assert [row["tag_pairs"] for row in out] == [0, 10]
    assert stats[0]["on_cpu"] is True and stats[0]["gpu_ids"] == []


def test_training_follows_the_same_gpu_rule(local_ray):
    from magicseg_models.config import load_config
    from tasks.train_ray import training_device

    base = load_config("train", "tiny")
    assert training_device(base.model_copy(update={"use_gpu": False})) == (False, [])
    use_gpu, notes = training_device(base.model_copy(update={"use_gpu": None}))
    assert use_gpu is False and notes == ["training runs on CPU: the Ray cluster has no GPU and no autoscaler that "
                                          "could start one (use_gpu unset; true would refuse instead)"]
    with pytest.raises(ClusterError, match="^use_gpu=true, but the Ray cluster has no GPU"):
        training_device(base.model_copy(update={"use_gpu": True}))


DASHBOARD_SCRIPT = """
import json, logging, sys, urllib.request
import ray
import ray._private.worker as worker
from magicseg_models.config import RayConfig
from tasks.ray_runtime import ensure_ray

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
assert ensure_ray(RayConfig(num_cpus=1, dashboard=True))
url = worker._global_node.webui_url
version = json.loads(urllib.request.urlopen(f"http://{url}/api/version", timeout=30).read())
print("RESULT " + json.dumps({"url": url, "served": version["session_name"],
                              "ours": worker._global_node.session_name}))
ray.shutdown()
"""


@pytest.mark.slow
def test_ray_dashboard_switch_serves_the_local_dashboard(tmp_path):
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, "-c", DASHBOARD_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["url"].startswith("127.0.0.1:") and result["served"] == result["ours"]
    assert f"Ray dashboard at http://{result['url']}" in proc.stderr


def test_stats_answer_while_the_actors_are_busy(local_ray):
    """The run's health check reads stats after every shard: it must not wait behind queued batches."""
    spec = StageSpec("busy", tagging_stage, ("busy", 1.0), StageResources(batch_size=2, **CPU))
    with RayExecutor([spec]) as executor:
        executor.start()
        futures = [executor.submit(_rows(2)) for _ in range(2)]  # 4 s of work queued on the one actor
        time.sleep(0.5)
        began = time.perf_counter()
        stats = executor.stats()["busy"]
        assert time.perf_counter() - began < 1.5 and len(stats) == 1
        assert [len(f.result(timeout=60)) for f in futures] == [2, 2]
