"""Benchmark scripts still run and print their RESULT line (figures are recorded in benchmarks/RESULTS.md)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_store_prints_its_result_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_store.py"), "--samples", "8", "--size", "64",
         "--repeats", "1", "--warmup", "0", "--backend", "both"],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout.strip().splitlines()
    assert re.fullmatch(r"RESULT store write_ratio=[\d.]+ read_ratio=[\d.]+ MBps=[\d.]+", out[-1]), out[-3:]


def test_bench_train_prints_its_result_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--samples", "12", "--size", "96",
         "--steps", "2", "--loader-workers", "1"],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout.strip().splitlines()
    assert re.match(r"RESULT train loader_ratio=[\d.]+ steps_per_s=[\d.]+ device=\S+", out[-1]), out[-3:]
