#!/usr/bin/env python
"""Peak memory of a whole build - the flow process plus Prefect's server and Ray's processes - for N and 4N samples.

Each build runs in a fresh subprocess, exactly as a user runs it::

    python -m flows.cli build --preset tiny --out DIR --num-samples N --set shard_size=K [--set ...]

in Prefect local mode (``PREFECT_HOME`` a fresh temp folder per build, no ``PREFECT_API_URL``: the CLI's flow starts
Prefect's temporary server as a subprocess) with a local Ray started by the flow (``RAY_ADDRESS`` unset). The
subprocess gets its own session (``start_new_session``).

A thread samples the process tree every ``--interval`` seconds (0.2): every process descending from the build
process (Prefect's server, Ray's GCS, raylet, log monitor, the stage actors' workers, ...) or sharing its session
id, read straight from ``/proc`` (``psutil`` is not installed in this venv: Ray is installed without its
``[default]`` extra, which is what pulls it in). For each process it reads ``/proc/PID/smaps_rollup``: PSS
(proportional set size: shared pages such as torch's libraries or Ray's shared-memory object store divided
among the processes that map them, so the sum is what the tree really holds) and RSS (what ``ps`` shows; a sum of
RSS counts every shared page once per process). The peak of each sum over the build is reported; the ratio uses
PSS. MB = 10^6 bytes. A peak shorter than the interval can be missed.

Defaults: the ``tiny`` preset as shipped (memory does not depend on the compute per sample), N=16 and
``shard_size=4``, so that N already has 4 shards - the flow runs up to 4 chunk tasks at once (its thread pool) and
both sizes reach the same concurrency: the ratio then shows how memory grows with the length of the build (the
issue's "bounded memory"), not the ramp-up to full concurrency. With ``--repeats R`` each size's peak is the highest
of R builds (order N, 4N, 4N, N, ...).

Last line::

    RESULT factory_memory ratio=<peak_4N/peak_N> peak_N_mb=<...> peak_4N_mb=<...> metric=pss rss_ratio=<...>

Goal: ratio <= 1.10.

Usage: ``.venv/bin/python benchmarks/bench_factory_memory.py [--samples 16] [--shard-size 4] [--preset tiny]
[--set key=value ...] [--repeats 1] [--interval 0.2] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import cpu_model, load_average, ratio_note, spread  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------- /proc sampling
def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, session id) of a process, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp session ...
    return int(fields[1]), int(fields[3])


def _memory_kb(pid: int) -> tuple[int, int] | None:
    """(PSS, RSS) in kB from smaps_rollup (RSS from status, PSS = RSS, where smaps_rollup is unavailable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            values = {}
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss"):
                    values[key] = int(rest.split()[0])
            if "Rss" in values:
                return values.get("Pss", values["Rss"]), values["Rss"]
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    return rss, rss
    except OSError:
        pass
    return None


def _name(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            parts = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
    except OSError:
        return "?"
    if not parts:
        return "?"
    if parts[0].startswith("ray::"):  # Ray names its workers by what they run
        return parts[0][:40]
    exe = os.path.basename(parts[0])
    if exe.startswith("python"):
        args = iter(parts[1:])
        for arg in args:
            if arg == "-m":
                return f"python -m {next(args, '')}"[:40]
            if not arg.startswith("-"):
                return f"python {os.path.basename(arg)}"[:40]
    return exe[:40]


def tree(root: int) -> list[int]:
    """The root, its descendants, and anything else in its session."""
    info = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st:
                info[int(entry)] = st
    if root not in info:
        return []
    session = info[root][1]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in info.items():
        children.setdefault(ppid, []).append(pid)
    members, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid not in members:
            members.add(pid)
            stack.extend(children.get(pid, []))
    members.update(pid for pid, (_, sid) in info.items() if sid == session)
    return sorted(members)


class TreeSampler(threading.Thread):
    """Samples the summed PSS and RSS of a process tree until stopped; keeps the peaks."""

    def __init__(self, root: int, interval: float):
        super().__init__(daemon=True)
        self.root, self.interval = root, interval
        self.stop_event = threading.Event()
        self.peak_pss = self.peak_rss = 0  # kB
        self.peak_procs: list[tuple[str, int]] = []  # (name, PSS kB) at the PSS peak
        self.samples = 0
        self.max_processes = 0
        self.names: dict[int, str] = {}  # last name seen (an exiting process has an empty cmdline)

    def run(self) -> None:
        while not self.stop_event.is_set():
            began = time.perf_counter()
            per = []
            for pid in tree(self.root):
                mem = _memory_kb(pid)
                if mem:
                    per.append((pid, *mem))
            for pid, _, _ in per:
                name = _name(pid)
                if name != "?" or pid not in self.names:
                    self.names[pid] = name
            if per:
                pss = sum(p for _, p, _ in per)
                rss = sum(r for _, _, r in per)
                self.samples += 1
                self.max_processes = max(self.max_processes, len(per))
                self.peak_rss = max(self.peak_rss, rss)
                if pss > self.peak_pss:
                    self.peak_pss = pss
                    self.peak_procs = sorted(((self.names[pid], p) for pid, p, _ in per), key=lambda x: -x[1])
            self.stop_event.wait(max(0.0, self.interval - (time.perf_counter() - began)))

    def stop(self) -> None:
        self.stop_event.set()
        self.join()


# ------------------------------------------------------------------------------------------- one build
def run_build(workdir: str, tag: str, preset: str, samples: int, shard_size: int, sets: list[str],
              interval: float) -> dict:
    out = os.path.join(workdir, f"ds-{tag}")
    env = {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + os.environ["PYTHONPATH"]
                                              if os.environ.get("PYTHONPATH") else ""),
           "PREFECT_HOME": os.path.join(workdir, f"prefect-{tag}"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180"}
    env.setdefault("HF_HUB_OFFLINE", "1")
    for key in ("PREFECT_API_URL", "RAY_ADDRESS"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "flows.cli", "build", "--preset", preset, "--out", out, "--num-samples",
           str(samples), "--set", f"shard_size={shard_size}"]
    for item in sets:
        cmd += ["--set", item]
    log_path = os.path.join(workdir, f"log-{tag}.txt")
    began = time.perf_counter()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sampler = TreeSampler(proc.pid, interval)
        sampler.start()
        try:
            rc = proc.wait(timeout=3600)
        finally:
            sampler.stop()
            if proc.poll() is None:  # interrupted or timed out: the build goes with us
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.perf_counter() - began
    try:  # anything of this build's session still alive (a Ray process the flow failed to stop) goes now
        os.killpg(proc.pid, signal.SIGKILL)
        leftovers_note = " (killed processes it left in its process group)"
    except ProcessLookupError:
        leftovers_note = ""
    if rc != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-3000:]
        raise SystemExit(f"build of {samples} samples failed with exit code {rc}:\n{tail}")
    with open(os.path.join(out, "manifest.json")) as f:
        counts = json.load(f)["counts"]
    if counts["planned"] != samples or counts["kept"] + sum(counts["dropped"].values()) != samples:
        raise SystemExit(f"build of {samples} samples does not add up: {counts}")
    shards = len(os.listdir(os.path.join(out, "shards"))) if os.path.isdir(os.path.join(out, "shards")) else 0
    return {"samples": samples, "wall_s": wall, "peak_pss_mb": sampler.peak_pss * 1024 / 1e6,
            "peak_rss_mb": sampler.peak_rss * 1024 / 1e6, "procs": sampler.peak_procs,
            "max_processes": sampler.max_processes, "samples_taken": sampler.samples, "kept": counts["kept"],
            "dropped": counts["dropped"], "shards": shards, "note": leftovers_note}


# ------------------------------------------------------------------------------------------- main

def mem_total_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024 / 2**30
    except OSError:
        pass
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=16, help="N (default 16); the second build has 4N")
    parser.add_argument("--shard-size", type=int, default=4, help="rows per shard (default 4)")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="key=value", help="config override")
    parser.add_argument("--repeats", type=int, default=1, help="builds per size; the peak is the highest")
    parser.add_argument("--interval", type=float, default=0.2, help="sampling period in seconds (default 0.2)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (datasets, logs)")
    args = parser.parse_args(argv)
    if not os.path.exists("/proc/self/stat"):
        raise SystemExit("this benchmark reads /proc (Linux)")

    n = args.samples
    sizes = {"N": n, "4N": 4 * n}
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {mem_total_gb():.0f} GiB RAM, {platform.platform()}, "
          f"Python {platform.python_version()}; at start {load_average()}")
    print(f"workload: `python -m flows.cli build --preset {args.preset} --num-samples N|4N --set shard_size="
          f"{args.shard_size}{''.join(' --set ' + s for s in args.set)}` with N={n}; process tree sampled every "
          f"{args.interval}s (PSS and RSS from /proc/PID/smaps_rollup); {args.repeats} build(s) per size", flush=True)

    workdir = tempfile.mkdtemp(prefix="bench_factory_memory_")
    results: dict[str, list[dict]] = {"N": [], "4N": []}
    try:
        for rep in range(args.repeats):
            order = ["N", "4N"] if rep % 2 == 0 else ["4N", "N"]
            for key in order:
                r = run_build(workdir, f"{key}-{rep}", args.preset, sizes[key], args.shard_size, args.set,
                              args.interval)
                results[key].append(r)
                print(f"  build {key}={sizes[key]}: {r['wall_s']:.1f}s, {r['shards']} shards, kept {r['kept']}, "
                      f"dropped {r['dropped'] or 0}; peak PSS {r['peak_pss_mb']:.0f} MB, peak RSS sum "
                      f"{r['peak_rss_mb']:.0f} MB, up to {r['max_processes']} processes, {r['samples_taken']} "
                      f"samples{r['note']}", flush=True)
                if not args.keep:
                    shutil.rmtree(os.path.join(workdir, f"ds-{key}-{rep}"), ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    peak = {k: max(v, key=lambda r: r["peak_pss_mb"]) for k, v in results.items()}
    peak_rss = {k: max(r["peak_rss_mb"] for r in v) for k, v in results.items()}
    print(f"\n  {'build':<8} {'samples':>8} {'shards':>7} {'wall s':>8} {'peak PSS MB':>12} {'peak RSS-sum MB':>16}")
    for key in ("N", "4N"):
        r = peak[key]
        print(f"  {key:<8} {r['samples']:>8} {r['shards']:>7} {r['wall_s']:>8.1f} {r['peak_pss_mb']:>12.0f} "
              f"{peak_rss[key]:>16.0f}")
    for key in ("N", "4N"):
        procs = peak[key]["procs"]
        print(f"\n  processes at the {key} PSS peak (MB PSS): " +
              ", ".join(f"{name} {kb * 1024 / 1e6:.0f}" for name, kb in procs[:10]) +
              (f", ... {len(procs) - 10} more" if len(procs) > 10 else ""))
    ratio = peak["4N"]["peak_pss_mb"] / peak["N"]["peak_pss_mb"]
    rss_ratio = peak_rss["4N"] / peak_rss["N"]
    spreads = {k: spread([r["peak_pss_mb"] for r in v]) for k, v in results.items()}
    print(f"\nratio = peak PSS of 4N / peak PSS of N (goal <= 1.10); RSS-sum ratio {rss_ratio:.3f}; repeats spread "
          f"N {spreads['N']['spread']:.1%}, 4N {spreads['4N']['spread']:.1%}; at end {load_average()}")
    print(f"RESULT factory_memory ratio={ratio:.3f} peak_N_mb={peak['N']['peak_pss_mb']:.0f} "
          f"peak_4N_mb={peak['4N']['peak_pss_mb']:.0f} metric=pss rss_ratio={rss_ratio:.3f} "
          f"{ratio_note(spreads['4N'], spreads['N'], ratio)} {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
