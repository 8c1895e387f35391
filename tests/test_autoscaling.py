"""A build on an autoscaling Ray cluster that starts with no GPU node: the GPU stages ask for their share, the
autoscaler brings a GPU worker up from zero, and those stages run there (rows per node in the summary)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import server_run_env

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

SCRIPT = """
import json, sys
import ray
from ray_clusters import PrivateAutoscalingCluster
from flows.build_dataset import build_dataset
from magicseg_models.config import load_config

cluster = PrivateAutoscalingCluster(
    head_resources={"CPU": 3},
    worker_node_types={"gpu-worker": {"resources": {"CPU": 4, "GPU": 1}, "node_config": {},
                                      "min_workers": 0, "max_workers": 1}})
address = cluster.start()
try:
    ray.init(address=address, log_to_driver=False, configure_logging=False)
    before = [n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]]
    overrides = ["generator.resources.num_gpus=0.5", "generator.resources.gpu=required",
                 "generator.resources.num_cpus=1", "annotate.resources.num_gpus=0.5",
                 "annotate.resources.gpu=required", "ray.gpu_wait_s=120",
                 # the CPU-only quality stage is not under test: one actor less to start
                 "quality.enabled=false"]
    summary = build_dataset(config=load_config("build", "tiny", out=sys.argv[1], num_samples=8,
                                               overrides=overrides))
    nodes = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]}
    print("RESULT " + json.dumps({"summary": summary, "gpus_before": before, "nodes": nodes}))
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def test_gpu_stages_bring_a_gpu_worker_up_from_zero(tmp_path, prefect_api):
    uri = str(tmp_path / "autoscaled")
    env = server_run_env(tmp_path, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]),
                         RAY_AUTH_MODE="disabled")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, uri], env=env, capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
    assert result["gpus_before"] == [0]  # the head alone, no GPU anywhere when the build started
    gpu_nodes = {node for node, gpus in result["nodes"].items() if gpus > 0}
    assert len(gpu_nodes) == 1
    stages = result["summary"]["stages"]
    for name in ("pairs", "annotate"):
        rows = stages[name]["nodes"]
        assert set(rows) == gpu_nodes and sum(rows.values()) > 0, (name, rows)
    assert result["summary"]["kept"] + sum(result["summary"]["dropped"].values()) == 8
    assert not result["summary"].get("notes")  # nothing ran on CPU instead
