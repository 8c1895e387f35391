#!/usr/bin/env python
"""Factory overhead: the same N jobs through the stage classes in a plain loop vs the real Prefect + Ray flow.

Two paths run the same planned jobs (``load_config("build", preset, num_samples=N, overrides=--set ...)``) in this
process, on this machine:

- **(a) plain loop**: ``prompt_stage(config, api_key)``, ``pair_stage(config)`` and ``annotation_stage(config)``
  (``tasks.stage_factories``, what each Ray actor calls once) constructed in this process, then called in a plain
  loop over batches of ``generator.resources.batch_size`` job rows (``tasks.shard_work.job_row``): prompts ->
  pairs -> annotations, rows with a ``drop_reason`` passed through untouched (``magicseg_models.pipeline.run_live``,
  as the actors do). Nothing else is encoded or written (the stages' own JPEG/RLE encoding is all there is). The
  stages are rebuilt every round with a fresh ``out`` folder so the prompt cache starts cold, as in a fresh build;
  construction is timed apart (``a_load``). ``a_s`` = the best round's loop time.
- **(b) the flow**: ``flows.build_dataset.build_dataset(config=...)`` in Prefect local mode (``PREFECT_HOME`` a
  temp folder, no ``PREFECT_API_URL``: Prefect starts its temporary server in a subprocess) into a fresh temp
  folder each time: lock, run header, Ray actor pools (one model load per actor per build), batches streamed as
  object refs, Parquet shards committed, manifest, Prefect task runs, progress/table/markdown artifacts.

(b) is timed three ways:

- ``b_cold``: the first build of N in this process - Prefect's temporary server starts, the flow starts (and at the
  end shuts down) a local Ray, actors start worker processes, import torch and load their models, then compute;
- ``b_warm(N)`` and ``b_warm(2N)``: builds with Prefect's server already up and a local Ray started by this script
  beforehand with the flow's own settings (``tasks.ray_runtime.ensure_ray(config.ray)``; the flow joins it and
  leaves it up). The flow still creates its actor pools per build, so each warm build pays actor start-up and
  model loads (``actor_start`` below measures that alone);
- ``b_s`` (steady) = ``b_warm(2N) - b_warm(N)``: the marginal time of N more samples with everything started,
  i.e. (b) without any one-off start-up.

To show where time goes, the script also prints per-stage time ((a): inside each stage call; (b): the actors' busy
time from the flow's summary) and the CPU seconds used during each warm build by group - the stage actors, this
process (Prefect's flow engine and task threads, shard writing), Prefect's temporary server, and Ray's own
processes (GCS, raylet, agents, idle workers) - read from ``/proc`` for this process and all its descendants.

``RESULT factory overhead`` = ``b_s / a_s`` (steady throughput cost of the factory over the plain loop; goal
<= 1.15); ``overhead_cold`` = ``b_cold / a_first``, where ``a_first`` is the first plain round including its
imports and model construction (both sides pay their one-off costs there).

Preset: ``tiny`` with ``generator.height=256 generator.width=256 generator.steps=10`` by default. Measured (a) per
sample on the 2-core VM with one torch thread: the tiny preset as shipped (64x64, 2 steps) 0.10 s; 128x128, 8
steps 0.25 s; 192x192, 12 steps 0.57 s; 256x256, 10 steps 0.88 s (prompts 0.08, pairs 0.79, annotate 0.015). The
issue asks for at least 0.2 s/sample of model compute; the default goes well past it so that the generator
dominates, as it does in a real build, and so that N samples of compute stand clear of the noise in the 5-20 s of
per-build start-up that the steady figure subtracts. The script prints ``a_s / N`` and warns under 0.2 s/sample.

Threads: Ray sets ``OMP_NUM_THREADS`` to an actor's ``num_cpus`` (1 in the tiny preset), so each stage actor
computes on one thread while the three stages overlap; the script prints what an actor sees. (a) runs with
``--threads`` torch threads, by default 1 and 2: the first round runs (a) at each count and later rounds use the
faster, so (a) is the strongest plain loop on the machine at the time. Which one wins depends on the load: on the
idle 2-core VM two threads are 1.5x faster (256x256, 10 steps: 18.3 s vs 28.4 s for 32 samples), while other jobs
hold the cores two threads were 6-40x *slower* than one (OpenMP threads wait on each other: the shipped tiny preset
took 4.0 s/sample with 2 threads vs 0.10 s with 1). With the tiny preset's ``generator.resources.num_cpus: 1`` the
flow's pair actor (the dominant stage) computes on one thread, so on an idle machine (b) loses to a 2-thread plain
loop; ``--set generator.resources.num_cpus=2`` gives that actor both cores (see RESULTS.md).

Last line::

    RESULT factory overhead=<b_s/a_s> samples=<N> a_s=<...> b_s=<...> b_cold_s=<...> overhead_cold=<...> device=cpu

Usage: ``.venv/bin/python benchmarks/bench_factory.py [--samples 32] [--repeats 2] [--threads 1,2] [--preset tiny]
[--set key=value ...] [--no-default-sets] [--keep]``
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks._machine import cpu_model, load_average, ratio_note, spread  # noqa: E402

DEFAULT_SETS = ["generator.height=256", "generator.width=256", "generator.steps=10"]
STAGES = ("prompts", "pairs", "annotate")


# ------------------------------------------------------------------------------------------- environment
def prepare_environment(workdir: str) -> None:
    """Prefect local mode with a throwaway home; no network for models. Must run before prefect is imported."""
    os.environ["PREFECT_HOME"] = os.path.join(workdir, "prefect-home")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")  # a busy 2-core VM
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.pop("RAY_ADDRESS", None)  # a local Ray, as `magicseg build` on a laptop
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Ray workers import the project as installed; make sure they find it even if it is not
    os.environ["PYTHONPATH"] = ROOT + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")



# ------------------------------------------------------------------------------------------- CPU accounting
_CLK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(ppid, user + system CPU seconds) of a process from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()  # state ppid pgrp session tty tpgid flags minflt ... utime stime
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _CLK


def _group(pid: int, root: int) -> str | None:
    """Which group a process belongs to; None while that cannot be told (an exiting process has no cmdline)."""
    if pid == root:
        return "flow process (this one)"
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if not cmd:
        return None
    if cmd.startswith("ray::StageActor"):
        return "stage actors"
    if "uvicorn" in cmd or "prefect" in cmd:
        return "prefect server"
    return "ray system"  # gcs_server, raylet, log monitor, dashboard/runtime-env agents, idle workers


GROUPS = ("stage actors", "flow process (this one)", "prefect server", "ray system")


class CpuMeter(threading.Thread):
    """CPU seconds used by this process and all its descendants while running, by group (sampled every 0.25 s;
    a process is charged what it used since the meter started, up to the last time it was seen)."""

    def __init__(self, interval: float = 0.25):
        super().__init__(daemon=True)
        self.root, self.interval = os.getpid(), interval
        self.initial: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.done = threading.Event()

    def _descendants(self) -> dict[int, float]:
        info = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                st = _proc_stat(int(entry))
                if st:
                    info[int(entry)] = st
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in info.items():
            children.setdefault(ppid, []).append(pid)
        out, stack = {}, [self.root]
        while stack:
            pid = stack.pop()
            if pid in info and pid not in out:
                out[pid] = info[pid][1]
                stack.extend(children.get(pid, []))
        return out

    def _sample(self) -> None:
        for pid, cpu in self._descendants().items():
            # re-read each time: a Ray worker starts as ray::IDLE and takes its actor's name when it becomes one;
            # a killed actor keeps the group it was last seen in
            group = _group(pid, self.root)
            if group is None or self.last.get(pid, ("",))[0] == "stage actors":
                group = self.last.get(pid, ("ray system",))[0]
            self.last[pid] = (group, cpu)

    def start(self) -> "CpuMeter":
        self.initial = self._descendants()
        super().start()
        return self

    def run(self) -> None:
        while not self.done.wait(self.interval):
            self._sample()

    def stop(self) -> dict[str, float]:
        self.done.set()
        self.join()
        self._sample()
        used = dict.fromkeys(GROUPS, 0.0)
        for pid, (name, cpu) in self.last.items():
            used[name] = used.get(name, 0.0) + cpu - self.initial.get(pid, 0.0)
        return used


# ------------------------------------------------------------------------------------------- (a) plain loop
def plain_round(preset: str, sets: list[str], samples: int, out: str, threads: int) -> dict:
    """Build the three stages here (timed apart), then run every job through them in a plain loop (timed)."""
    from magicseg_models.config import load_config
    from magicseg_models.planning import plan_jobs, spec_from_config
    from magicseg_models.vocabulary import Vocabulary
    from tasks.shard_work import job_row
    from magicseg_models.pipeline import run_live

    config = load_config("build", preset, out=out, num_samples=samples, overrides=sets)
    vocabulary = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    rows = [job_row(job) for job in plan_jobs(spec_from_config(config, vocabulary))]
    batch = config.generator.resources.batch_size

    began = time.perf_counter()
    import torch

    from tasks.stage_factories import annotation_stage, pair_stage, prompt_stage

    torch.set_num_threads(threads)
    api_key = None
    if config.prompts.backend == "openai":
        from tasks.secrets import llm_api_key

        api_key = llm_api_key(config.prompts)
    stages = [prompt_stage(config, api_key), pair_stage(config), annotation_stage(config)]
    load_s = time.perf_counter() - began

    per_stage = dict.fromkeys(STAGES, 0.0)
    kept, dropped = 0, {}
    meter = CpuMeter().start()
    began = time.perf_counter()
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for name, stage in zip(STAGES, stages):
            t = time.perf_counter()
            chunk = run_live(stage, chunk)
            per_stage[name] += time.perf_counter() - t
        for row in chunk:
            if row.get("drop_reason"):
                dropped[row["drop_reason"]] = dropped.get(row["drop_reason"], 0) + 1
            else:
                kept += 1
    loop_s = time.perf_counter() - began
    cpu = meter.stop()
    del stages
    return {"load_s": load_s, "loop_s": loop_s, "per_stage": per_stage, "kept": kept, "dropped": dropped,
            "threads": threads, "cpu": cpu}


# ------------------------------------------------------------------------------------------- (b) the flow
def flow_build(preset: str, sets: list[str], samples: int, out: str) -> dict:
    from flows.build_dataset import build_dataset
    from magicseg_models.config import load_config

    config = load_config("build", preset, out=out, num_samples=samples, overrides=sets)
    meter = CpuMeter().start()
    began = time.perf_counter()
    summary = build_dataset(config=config)
    wall = time.perf_counter() - began
    cpu = meter.stop()
    if summary["planned"] != samples or summary["kept"] + sum(summary["dropped"].values()) != samples:
        raise SystemExit(f"flow build of {samples} samples at {out} does not add up: {summary}")
    return {"wall_s": wall, "flow_s": float(summary["seconds"]), "kept": summary["kept"],
            "dropped": dict(summary["dropped"]), "shards": summary["shards"],
            "busy": {name: summary["stages"][name]["busy_s"] for name in STAGES}, "cpu": cpu}


def actor_probe(config) -> dict:
    """What a stage actor sees (threads), and how long the flow's three pools take to start and load models."""
    import ray

    from tasks.executor import RayExecutor
    from tasks.stage_factories import build_stages

    @ray.remote(num_cpus=config.generator.resources.num_cpus, num_gpus=0)
    def threads() -> str:
        import torch

        return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}"

    seen = ray.get(threads.remote())
    began = time.perf_counter()
    with RayExecutor(build_stages(config), ray_config=config.ray) as executor:
        executor.start()  # returns once every stage has an actor with its model loaded
        start_s = time.perf_counter() - began
    return {"threads": seen, "actor_start_s": start_s}


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="jobs N (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (a), b_warm(N), b_warm(2N); best of each")
    parser.add_argument("--threads", default="1,2",
                        help="torch threads for (a), comma list (default 1,2); with several, round 1 runs each and "
                             "later rounds use the fastest")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="key=value",
                        help="config override, added after the default ones (repeatable)")
    parser.add_argument("--no-default-sets", action="store_true",
                        help=f"do not apply the default overrides ({' '.join(DEFAULT_SETS)})")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (datasets, Prefect home)")
    args = parser.parse_args(argv)
    sets = ([] if args.no_default_sets else list(DEFAULT_SETS)) + list(args.set)
    n = args.samples
    thread_counts = [int(t) for t in args.threads.split(",") if t.strip()]

    workdir = tempfile.mkdtemp(prefix="bench_factory_")
    prepare_environment(workdir)
    import prefect
    import ray

    from magicseg_models.config import load_config

    base = load_config("build", args.preset, num_samples=n, overrides=sets)
    g = base.generator
    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}, Python "
          f"{platform.python_version()}, ray {ray.__version__}, prefect {prefect.__version__}; "
          f"load average at start {load_average()}")
    print(f"workload: preset {args.preset} + {' '.join(sets) or 'no overrides'}: N={n} jobs, generator "
          f"{g.height}x{g.width}, {g.steps} steps, batch {g.resources.batch_size}; shard_size {base.shard_size}, "
          f"shards_per_task {base.shards_per_task}; ray.num_cpus {base.ray.num_cpus}; best of {args.repeats}",
          flush=True)

    try:
        # (b) cold: the very first Prefect flow run and Ray start of this process
        cold = flow_build(args.preset, sets, n, os.path.join(workdir, "b-cold"))
        print(f"  b_cold  N={n}: {cold['wall_s']:.2f}s wall (flow's own clock {cold['flow_s']:.2f}s), kept "
              f"{cold['kept']}, dropped {cold['dropped'] or 0}", flush=True)
        assert not ray.is_initialized(), "the flow should have shut down the Ray it started"

        from tasks.ray_runtime import ensure_ray

        t = time.perf_counter()
        ensure_ray(base.ray)  # the flow's own settings; it joins this Ray and leaves it up
        ray_init_s = time.perf_counter() - t
        probe = actor_probe(base)
        print(f"  ray init (flow settings) {ray_init_s:.2f}s; three stage pools start + load models in "
              f"{probe['actor_start_s']:.2f}s; a stage actor sees {probe['threads']}", flush=True)

        plain, warm_n, warm_2n = [], [], []
        for rep in range(args.repeats):
            order = ["a", "bN", "b2N"] if rep % 2 == 0 else ["b2N", "bN", "a"]
            for what in order:
                out = os.path.join(workdir, f"{what}-{rep}")
                if what == "a":
                    counts = thread_counts if rep == 0 else [min(plain, key=lambda r: r["loop_s"])["threads"]]
                    for threads in counts:
                        r = plain_round(args.preset, sets, n, f"{out}-t{threads}", threads)
                        plain.append(r)
                        print(f"  round {rep + 1}: (a) plain loop, {threads} torch thread(s): {r['loop_s']:.2f}s "
                              f"(+ {r['load_s']:.2f}s building the stages), kept {r['kept']}, dropped "
                              f"{r['dropped'] or 0}", flush=True)
                        shutil.rmtree(f"{out}-t{threads}", ignore_errors=True)
                else:
                    size = n if what == "bN" else 2 * n
                    r = flow_build(args.preset, sets, size, out)
                    (warm_n if what == "bN" else warm_2n).append(r)
                    print(f"  round {rep + 1}: (b) warm build N={size}: {r['wall_s']:.2f}s wall (flow's own clock "
                          f"{r['flow_s']:.2f}s), kept {r['kept']}, dropped {r['dropped'] or 0}", flush=True)
                shutil.rmtree(out, ignore_errors=True)
        ray.shutdown()
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    a_best = min(plain, key=lambda r: r["loop_s"])
    a_s = a_best["loop_s"]
    a_first = plain[0]["load_s"] + plain[0]["loop_s"]
    bn = min(warm_n, key=lambda r: r["wall_s"])
    b2n = min(warm_2n, key=lambda r: r["wall_s"])
    b_s = b2n["wall_s"] - bn["wall_s"]
    overhead = b_s / a_s
    overhead_cold = cold["wall_s"] / a_first
    per_sample = a_s / n

    print(f"\npaths (seconds; best of {args.repeats} except the cold build and (a)'s first round):")
    print(f"  {'path':<52} {'seconds':>9} {'s/sample':>9}")
    lines = [
        (f"(a) plain loop, stages built beforehand, {a_best['threads']} thread(s)", a_s, n),
        ("(a) first round: imports + building stages + loop", a_first, n),
        ("(b) cold build: Prefect server + Ray + actors + compute", cold["wall_s"], n),
        ("(b) warm build of N (actors + model loads per build)", bn["wall_s"], n),
        ("(b) warm build of 2N", b2n["wall_s"], 2 * n),
        ("(b) steady = warm(2N) - warm(N)", b_s, n),
    ]
    for label, seconds, count in lines:
        print(f"  {label:<52} {seconds:>9.2f} {seconds / count:>9.3f}")
    fixed = bn["wall_s"] - b_s
    print(f"  one-off costs: per warm build {fixed:.2f}s (pools start + model loads measured alone: "
          f"{probe['actor_start_s']:.2f}s; Prefect flow run outside the flow's own clock "
          f"{bn['wall_s'] - bn['flow_s']:.2f}s); cold extra over warm {cold['wall_s'] - bn['wall_s']:.2f}s "
          f"(Ray init alone {ray_init_s:.2f}s)")

    print(f"\nper stage over N={n} (seconds): (a) time in the stage call (best round) | (b) actor busy time "
          f"(best warm N build, 1 actor each)")
    for name in STAGES:
        print(f"  {name:<9} (a) {a_best['per_stage'][name]:>8.2f}   (b) {bn['busy'][name]:>8.2f}")
    print(f"  sum       (a) {sum(a_best['per_stage'].values()):>8.2f}   (b) {sum(bn['busy'].values()):>8.2f}"
          f"   <- (b) overlaps its stages on {os.cpu_count()} CPUs")

    print("\nCPU seconds by process group (user+system time of this process and every descendant; best rounds; "
          "during (a) Prefect's server and Ray are up but idle):")
    print(f"  {'group':<26} {'(a) loop':>9} {'warm N':>8} {'warm 2N':>8} {'steady':>8}")
    for name in GROUPS:
        x, y = bn["cpu"].get(name, 0.0), b2n["cpu"].get(name, 0.0)
        print(f"  {name:<26} {a_best['cpu'].get(name, 0.0):>9.2f} {x:>8.2f} {y:>8.2f} {y - x:>8.2f}")
    ta, tn, t2n = (sum(r["cpu"].values()) for r in (a_best, bn, b2n))
    print(f"  {'total':<26} {ta:>9.2f} {tn:>8.2f} {t2n:>8.2f} {t2n - tn:>8.2f}   <- steady/(a) = "
          f"{(t2n - tn) / ta:.3f}")
    med = {k: statistics.median(v) for k, v in
           {"a": [r["loop_s"] for r in plain if r["threads"] == a_best["threads"]],
            "bN": [r["wall_s"] for r in warm_n], "b2N": [r["wall_s"] for r in warm_2n]}.items()}
    print(f"same ratio from medians instead of best rounds: ({med['b2N']:.2f} - {med['bN']:.2f}) / {med['a']:.2f} = "
          f"{(med['b2N'] - med['bN']) / med['a']:.3f}")

    same = a_best["kept"] == bn["kept"] and a_best["dropped"] == bn["dropped"]
    print(f"\noutcomes: (a) kept {a_best['kept']} dropped {a_best['dropped'] or 0}; (b) kept {bn['kept']} dropped "
          f"{bn['dropped'] or 0}" + ("" if same else "   <- differ"))
    spreads = {f"a({t}t)": [r["loop_s"] for r in plain if r["threads"] == t] for t in thread_counts}
    spreads = {k: v for k, v in spreads.items() if v}
    spreads.update({"bN": [r["wall_s"] for r in warm_n], "b2N": [r["wall_s"] for r in warm_2n]})
    print("spread over rounds: " + ", ".join(f"{k} {min(v):.1f}-{max(v):.1f}s (median {statistics.median(v):.1f})"
                                              for k, v in spreads.items()))
    print(f"model compute (a) per sample: {per_sample:.3f}s" +
          ("" if per_sample >= 0.2 else "   <- under the 0.2 s/sample the issue asks for: raise the settings"))
    print(f"load average at end {load_average()} (a 2-core VM shared with other jobs: expect noise)")
    print("overhead = b_s / a_s (steady, goal <= 1.15); overhead_cold = b_cold / a_first")
    # b_s is a difference of two builds: its noise is at least the wider of their spreads
    a_spread = spread([r["loop_s"] for r in plain if r["threads"] == a_best["threads"]])
    b_spread = spread([r["wall_s"] for r in warm_2n])
    b_spread["spread"] = max(b_spread["spread"], spread([r["wall_s"] for r in warm_n])["spread"])
    print(f"RESULT factory overhead={overhead:.3f} samples={n} a_s={a_s:.2f} b_s={b_s:.2f} "
          f"b_cold_s={cold['wall_s']:.2f} overhead_cold={overhead_cold:.3f} a_spread={a_spread['spread']:.3f} "
          f"b_spread={b_spread['spread']:.3f} {ratio_note(b_spread, a_spread, overhead)} {load_average()} device=cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
