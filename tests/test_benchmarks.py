"""Benchmark scripts still run and print their RESULT line (figures are recorded in benchmarks/RESULTS.md)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_bench_store_prints_its_result_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_store.py"), "--samples", "8", "--size", "64",
         "--repeats", "1", "--warmup", "0", "--backend", "both"],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout.strip().splitlines()
    assert re.fullmatch(r"RESULT store write_ratio=[\d.]+ read_ratio=[\d.]+ MBps=[\d.]+ write_spread=[\d.]+ "
                        r"write_meaningful=(yes|no) read_spread=[\d.]+ read_meaningful=(yes|no) load=\S+",
                        out[-1]), out[-3:]
    assert out[0].startswith("load average at start: load=")
    assert re.search(r"write_ratio \(raw/ours time\) = [\d.]+: (meaningful|not-meaningful)", "\n".join(out))


def test_bench_train_prints_its_result_line():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_train.py"), "--samples", "12", "--size", "96",
         "--steps", "2", "--loader-workers", "1"],
        capture_output=True, text=True, timeout=300, env=env, check=True,
    ).stdout.strip().splitlines()
    assert re.match(r"RESULT train loader_speedup=[\d.]+ loader_samples_per_s=[\d.]+ .*steps_per_s=[\d.]+ .*device=\S+", out[-1]), out[-3:]


LOADED_RESULT = r" spread=[\d.]+ meaningful=(yes|no) load=[\d.]+/[\d.]+/[\d.]+"


@pytest.mark.slow
@pytest.mark.parametrize("script, args, result", [
    # DDIM: one UNet call per step per pair (the line must say so)
    ("bench_pairs.py", ["--pairs", "2", "--batch", "2", "--steps", "2", "--size", "32", "--repeats", "2",
                        "--scheduler", "ddim"],
     r"RESULT pairs speedup=[\d.]+ unet_calls_per_pair=2 steps=2 pairs_per_s=[\d.]+ device=\S+"),
    ("bench_annotate.py", ["--samples", "4", "--repeats", "2"],
     r"RESULT annotate speedup=[\d.]+ images_per_s=[\d.]+ device=\S+"),
    # the new per-sample work of issue 16 (context classes + the quality stage) against annotate alone
    ("bench_quality.py", ["--samples", "4", "--repeats", "2"],
     r"RESULT quality overhead=[\d.]+ cpu_overhead=[\d.]+ annotate_ms=[\d.]+ context_ms=[\d.]+ "
     r"quality_ms=[\d.]+ device=\S+"),
    ("bench_eval.py", ["--maps", "8", "--map-size", "64", "--images", "1", "--size", "64", "--crop", "64",
                       "--stride", "48", "--repeats", "2"],
     r"RESULT eval metric_speedup=[\d.]+ windows_per_s=[\d.]+ device=\S+"),
    # OWLv2 against Grounding DINO and SAM 2 against SAM, with FLOPs per image of each
    ("bench_annotators.py", ["--images", "2", "--repeats", "2", "--warmup", "0"],
     r"RESULT annotators detector_speedup=[\d.]+ segmenter_speedup=[\d.]+ gd_ms=[\d.]+ owlv2_ms=[\d.]+ "
     r"sam_ms=[\d.]+ sam2_ms=[\d.]+ gd_gflop=[\d.]+ owlv2_gflop=[\d.]+ sam_gflop=[\d.]+ sam2_gflop=[\d.]+ "
     r"device=\S+"),
])
def test_benchmarks_report_load_and_the_spread_of_their_repeats(script, args, result):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                         timeout=300, env=env, check=True).stdout.strip().splitlines()
    assert out[0].startswith("load average at start: load="), out[:2]
    assert out[-2].startswith("load average at end: load="), out[-3:]
    assert re.fullmatch(result + LOADED_RESULT, out[-1]), out[-3:]
    # the best figure comes with its spread, and the ratio says whether the spread lets it mean anything
    assert re.search(r"best [\d.e+-]+ s \(median [\d.e+-]+, spread \d+% over 2\)", "\n".join(out))
    assert script == "bench_eval.py" or re.search(r"(speedup|overhead) [\d.]+: (meaningful|not-meaningful)",
                                                  "\n".join(out))
    assert script != "bench_annotate.py" or "batched == loop: True" in "\n".join(out)


# ------------------------------------------------------------------------------------------- the GPU suite
def test_card_peaks_cover_the_listed_cards_and_only_those():
    from benchmarks.gpu_suite import peak_tflops

    assert peak_tflops("NVIDIA H100 80GB HBM3") == (989.0, "H100 SXM")
    assert peak_tflops("NVIDIA H200")[0] == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert peak_tflops("NVIDIA L4")[0] == 121.0 and peak_tflops("NVIDIA A10G")[0] == 125.0
    # other variants have other peaks: no ratio rather than a wrong one
    assert peak_tflops("NVIDIA H100 PCIe") is None and peak_tflops("NVIDIA H200 NVL") is None
    assert peak_tflops("NVIDIA L40S") is None


def test_busy_fraction_counts_overlapping_kernels_once():
    from benchmarks.gpu_suite import busy_fraction

    assert busy_fraction([(0, 2), (1, 3), (5, 6)], 10) == 0.4
    assert busy_fraction([(0, 10), (2, 3)], 10) == 1.0
    assert busy_fraction([], 10) == 0.0


def test_a_lever_within_the_spread_keeps_todays_default():
    from benchmarks.gpu_suite import lever_verdict, rate

    off = rate(10, [1.0, 1.02, 1.01])
    assert lever_verdict(rate(10, [0.5, 0.51, 0.5]), off)["verdict"].startswith("faster on")
    assert lever_verdict(rate(10, [2.0, 2.01, 2.0]), off)["verdict"].startswith("slower on")
    noisy = lever_verdict(rate(10, [0.9, 1.5, 1.2]), off)
    assert noisy["note"].startswith("not-meaningful") and "keep today's default" in noisy["verdict"]


def test_suite_skips_what_no_longer_fits_the_budget_and_says_so(tmp_path, capsys):
    import torch

    from benchmarks.gpu_suite import SMOKE, Suite

    suite = Suite(SMOKE, torch.device("cpu"), budget_s=20, out_dir=str(tmp_path), smoke=True)
    figures = {"config": {"model": "m", "windows_per_image": 2, "image": "64x85"},
               "windows_per_s": {"best": 1.0, "median": 1.0, "spread": 0.0, "n": 1}}
    suite.run("eval", lambda: figures)
    suite.run("pairs.compile", lambda: pytest.fail("an item that cannot fit must not start"))
    assert "eval" in suite.results and "pairs.compile" in suite.skipped
    assert "SKIPPED (budget" in capsys.readouterr().out
    saved = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert saved["skipped"]["pairs.compile"].startswith("budget") and "eval" in saved["items"]


@pytest.mark.slow
def test_gpu_suite_smoke_runs_every_item_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHON": sys.executable, "OUT_DIR": str(tmp_path)}
    began = time.monotonic()
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke"], capture_output=True,
                          text=True, timeout=400, env=env)
    wall = time.monotonic() - began
    out = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall < 240, wall  # the budget (150 s) holds with start-up
    assert re.fullmatch(r"RESULT gpu_suite card=cpu\S* pairs_per_s=[\d.]+ flop_ratio=na annotate_samples_per_s="
                        r"[\d.]+ gpu_share=na keep_up_share=[\d.]+ train_steps_per_s=[\d.]+ "
                        r"eval_windows_per_s=[\d.]+ skipped=\d+ wall_s=[\d.]+", out[-1]), out[-3:]
    assert out[0].startswith("load average at start: load=") and out[-2].startswith("load average at end: load=")
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert (tmp_path / "gpu_suite.log").read_text().strip().splitlines()[-1] == out[-1]
    items = report["items"]
    for name in ("pairs", "annotate", "train", "eval"):
        assert name in items and "error" not in items[name], (name, items.get(name))
    assert items["pairs"]["flops"]["per_pair"] > items["pairs"]["flops"]["unet"] > 0
    assert "no FLOP ratio" in items["pairs"]["flop_bound_note"]  # a CPU has no entry in the peak table
    # compiling takes minutes on a CPU: the budget skips it, and says why; every other lever that ran has a verdict
    assert report["skipped"].get("pairs.compile", "").startswith("budget")
    levers = [name for name in items if "." in name]
    assert levers and all("verdict" in items[name]["lever"] for name in levers)
