#!/usr/bin/env python
"""Factory overhead: the same N jobs through the stage classes in a plain loop vs the real Prefect + Ray flow.

Two paths run the same planned jobs (``load_config("build", preset, num_samples=N, overrides=--set ...)``) in this
process, on this machine:

- **(a) plain loop**: ``prompt_stage(config, api_key)``, ``pair_stage(config)`` and ``annotation_stage(config)``
  (``tasks.stage_factories``, what each Ray actor calls once) constructed in this process, then called in a plain
  loop over batches of ``generator.resources.batch_size`` job rows (``tasks.shard_work.job_row``): prompts ->
  pairs -> annotations, rows with a ``drop_reason`` passed through untouched (``tasks.stage_pool._passthrough_drops``,
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

``RESULT factory overhead`` = ``b_s / a_s`` (steady throughput cost of the factory over the plain loop; goal
<= 1.15); ``overhead_cold`` = ``b_cold / a_first``, where ``a_first`` is the first plain round including its
imports and model construction (both sides pay their one-off costs there).

Preset: ``tiny`` with ``generator.height=128 generator.width=128 generator.steps=8`` by default (the tiny
preset's own 64x64, 2 steps leaves the generator at ~0.08 s/sample, below the 0.2 s/sample the issue asks of the
model compute; at 128x128, 8 steps the generator alone measured ~0.7 s/sample and the three stages ~2 s/sample
steady on the 2-core VM). The script prints ``a_s / N`` and warns when it is under 0.2 s/sample.

Note on threads: in (a) torch uses all of this process's threads (``torch.get_num_threads()``); Ray sets
``OMP_NUM_THREADS`` to an actor's ``num_cpus`` (1 in the tiny preset), so each stage actor computes on one thread
while the three stages overlap. The script prints what an actor sees.

Last line::

    RESULT factory overhead=<b_s/a_s> samples=<N> a_s=<...> b_s=<...> b_cold_s=<...> overhead_cold=<...> device=cpu

Usage: ``.venv/bin/python benchmarks/bench_factory.py [--samples 32] [--repeats 2] [--preset tiny]
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
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

DEFAULT_SETS = ["generator.height=128", "generator.width=128", "generator.steps=8"]
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


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------------------- (a) plain loop
def plain_round(preset: str, sets: list[str], samples: int, out: str) -> dict:
    """Build the three stages here (timed apart), then run every job through them in a plain loop (timed)."""
    from magicseg_models.config import load_config
    from magicseg_models.planning import plan_jobs, spec_from_config
    from magicseg_models.vocabulary import Vocabulary
    from tasks.shard_work import job_row
    from tasks.stage_pool import _passthrough_drops

    config = load_config("build", preset, out=out, num_samples=samples, overrides=sets)
    vocabulary = Vocabulary.load(config.vocabulary.file, config.vocabulary.classes)
    rows = [job_row(job) for job in plan_jobs(spec_from_config(config, vocabulary))]
    batch = config.generator.resources.batch_size

    began = time.perf_counter()
    from tasks.stage_factories import annotation_stage, pair_stage, prompt_stage

    api_key = None
    if config.prompts.backend == "openai":
        from tasks.secrets import llm_api_key

        api_key = llm_api_key(config.prompts)
    stages = [prompt_stage(config, api_key), pair_stage(config), annotation_stage(config)]
    load_s = time.perf_counter() - began

    per_stage = dict.fromkeys(STAGES, 0.0)
    kept, dropped = 0, {}
    began = time.perf_counter()
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        for name, stage in zip(STAGES, stages):
            t = time.perf_counter()
            chunk = _passthrough_drops(stage, chunk)
            per_stage[name] += time.perf_counter() - t
        for row in chunk:
            if row.get("drop_reason"):
                dropped[row["drop_reason"]] = dropped.get(row["drop_reason"], 0) + 1
            else:
                kept += 1
    loop_s = time.perf_counter() - began
    del stages
    return {"load_s": load_s, "loop_s": loop_s, "per_stage": per_stage, "kept": kept, "dropped": dropped}


# ------------------------------------------------------------------------------------------- (b) the flow
def flow_build(preset: str, sets: list[str], samples: int, out: str) -> dict:
    from flows.build_dataset import build_dataset
    from magicseg_models.config import load_config

    config = load_config("build", preset, out=out, num_samples=samples, overrides=sets)
    began = time.perf_counter()
    summary = build_dataset(config=config)
    wall = time.perf_counter() - began
    if summary["planned"] != samples or summary["kept"] + sum(summary["dropped"].values()) != samples:
        raise SystemExit(f"flow build of {samples} samples at {out} does not add up: {summary}")
    return {"wall_s": wall, "flow_s": float(summary["seconds"]), "kept": summary["kept"],
            "dropped": dict(summary["dropped"]), "shards": summary["shards"],
            "busy": {name: summary["stages"][name]["busy_s"] for name in STAGES}}


def actor_probe(config) -> dict:
    """What a stage actor sees (threads), and how long the flow's three pools take to start and load models."""
    import ray

    from tasks.ray_runtime import cluster_gpus
    from tasks.stage_factories import annotation_stage, pair_stage, prompt_stage
    from tasks.stage_pool import StagePool

    @ray.remote(num_cpus=config.generator.resources.num_cpus, num_gpus=0)
    def threads() -> str:
        import torch

        return f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}"

    seen = ray.get(threads.remote())
    gpus = cluster_gpus()
    began = time.perf_counter()
    pools = [StagePool.for_stage("prompts", prompt_stage, (config, None), config.prompts.resources, gpus),
             StagePool.for_stage("pairs", pair_stage, (config,), config.generator.resources, gpus),
             StagePool.for_stage("annotate", annotation_stage, (config,), config.annotate.resources, gpus)]
    for pool in pools:
        pool.stats()  # returns once every actor of the pool has run __init__ (model loaded)
    start_s = time.perf_counter() - began
    for pool in pools:
        pool.shutdown()
    return {"threads": seen, "actor_start_s": start_s}


# ------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="jobs N (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="rounds of (a), b_warm(N), b_warm(2N); best of each")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--set", action="append", default=[], metavar="key=value",
                        help="config override, added after the default ones (repeatable)")
    parser.add_argument("--no-default-sets", action="store_true",
                        help=f"do not apply the default overrides ({' '.join(DEFAULT_SETS)})")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (datasets, Prefect home)")
    args = parser.parse_args(argv)
    sets = ([] if args.no_default_sets else list(DEFAULT_SETS)) + list(args.set)
    n = args.samples

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
                    r = plain_round(args.preset, sets, n, out)
                    plain.append(r)
                    print(f"  round {rep + 1}: (a) plain loop {r['loop_s']:.2f}s (+ {r['load_s']:.2f}s building "
                          f"the stages), kept {r['kept']}, dropped {r['dropped'] or 0}", flush=True)
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
        ("(a) plain loop, stages built beforehand", a_s, n),
        ("(a) first round: imports + building stages + loop", a_first, n),
        ("(b) cold build: Prefect server + Ray + actors + compute", cold["wall_s"], n),
        ("(b) warm build of N (actors + model loads per build)", bn["wall_s"], n),
        ("(b) warm build of 2N", b2n["wall_s"], 2 * n),
        ("(b) steady = warm(2N) - warm(N)", b_s, n),
    ]
    for label, seconds, count in lines:
        print(f"  {label:<52} {seconds:>9.2f} {seconds / count:>9.3f}")
    fixed = bn["wall_s"] - b_s
    print(f"  one-off costs: per warm build {fixed:.2f}s (of which pools start + model loads ~"
          f"{probe['actor_start_s']:.2f}s, Prefect flow run outside the flow's own clock "
          f"{bn['wall_s'] - bn['flow_s']:.2f}s); cold extra over warm {cold['wall_s'] - bn['wall_s']:.2f}s "
          f"(Ray init alone {ray_init_s:.2f}s)")

    print(f"\nper stage over N={n} (seconds): (a) time in the stage call (best round) | (b) actor busy time "
          f"(best warm N build, 1 actor each)")
    for name in STAGES:
        print(f"  {name:<9} (a) {a_best['per_stage'][name]:>8.2f}   (b) {bn['busy'][name]:>8.2f}")
    print(f"  sum       (a) {sum(a_best['per_stage'].values()):>8.2f}   (b) {sum(bn['busy'].values()):>8.2f}"
          f"   <- (b) overlaps its stages on {os.cpu_count()} CPUs")

    same = a_best["kept"] == bn["kept"] and a_best["dropped"] == bn["dropped"]
    print(f"\noutcomes: (a) kept {a_best['kept']} dropped {a_best['dropped'] or 0}; (b) kept {bn['kept']} dropped "
          f"{bn['dropped'] or 0}" + ("" if same else "   <- differ"))
    spreads = {"a": [r["loop_s"] for r in plain], "bN": [r["wall_s"] for r in warm_n],
               "b2N": [r["wall_s"] for r in warm_2n]}
    print("spread over rounds: " + ", ".join(f"{k} {min(v):.1f}-{max(v):.1f}s (median {statistics.median(v):.1f})"
                                              for k, v in spreads.items()))
    print(f"model compute (a) per sample: {per_sample:.3f}s" +
          ("" if per_sample >= 0.2 else "   <- under the 0.2 s/sample the issue asks for: raise the settings"))
    print(f"load average at end {load_average()} (a 2-core VM shared with other jobs: expect noise)")
    print(f"overhead = b_s / a_s (steady, goal <= 1.15); overhead_cold = b_cold / a_first")
    print(f"RESULT factory overhead={overhead:.3f} samples={n} a_s={a_s:.2f} b_s={b_s:.2f} "
          f"b_cold_s={cold['wall_s']:.2f} overhead_cold={overhead_cold:.3f} device=cpu")
    return 0


if __name__ == "__main__":
    sys.exit(main())
