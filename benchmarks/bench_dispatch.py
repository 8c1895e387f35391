"""Dispatch policy under a slow actor: the same batches through three actors of which one is 5x slower.

Three engines, each over the same rows and the same stage (``tests``-free: a sleeping stage defined here, so only
dispatch is measured), on one local Ray:

- **round-robin** (the engine before #14): batches handed to actors in turn (``itertools.cycle``), collected in job
  order, with the same window of batches in flight as ours;
- **ours**: ``tasks.executor.RayExecutor`` fed by ``tasks.shard_work``'s windowed, in-order loop: each piece goes to
  the ready actor holding the fewest calls;
- **Ray Data**: ``map_batches`` over ``ray.data.from_items`` with ``ActorPoolStrategy(size=3)`` and
  ``preserve_order=True`` (a deterministic shard needs job order), rows converted to and from Ray Data's batches.
  Each dataset starts its own actor pool, so its figure is the marginal time of the rows: a run over the rows
  twice minus a run over them once (start-up and model loading cancel out).

Each engine also runs once with three equal actors (``even``): the cost of the policy when nobody is slow.

Last line::

    RESULT dispatch speedup=<round_robin_s / ours_s> ray_data_ratio=<ray_data_s / ours_s> ours_s=... rr_s=...

Usage: ``.venv/bin/python benchmarks/bench_dispatch.py [--pieces 120] [--piece-s 0.08] [--repeats 2]``
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time
from collections import deque

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import load_average, ratio_note, spread  # noqa: E402

BATCH = 4
ACTORS = 3
SLOW = 5.0


class SleepStage:
    """A stage whose first-built copy is ``slow`` times slower (rank claimed with an atomic file create)."""

    def __init__(self, seconds_per_row: float, rank_dir: str, slow: float):
        rank = 0
        while True:
            try:
                os.close(os.open(os.path.join(rank_dir, f"rank-{rank}"), os.O_CREAT | os.O_EXCL))
                break
            except FileExistsError:
                rank += 1
        self.delay = seconds_per_row * (slow if rank == 0 else 1.0)

    def __call__(self, rows):
        time.sleep(self.delay * len(rows))
        return [{**row, "done": True} for row in rows]


def sleep_stage(seconds_per_row: float, rank_dir: str, slow: float):
    return SleepStage(seconds_per_row, rank_dir, slow)


def _rows(n: int) -> list[dict]:
    return [{"sample_id": f"s{i}", "index": i} for i in range(n)]


def _spec(seconds_per_row: float, slow: float):
    from magicseg_models.config import StageResources
    from magicseg_models.pipeline import StageSpec

    rank_dir = tempfile.mkdtemp(prefix="ranks-")
    return StageSpec("work", sleep_stage, (seconds_per_row, rank_dir, slow),
                     StageResources(actors=ACTORS, num_gpus=0, num_cpus=0.5, batch_size=BATCH))


def run_ours(rows, seconds_per_row: float, slow: float) -> tuple[float, list]:
    from tasks.executor import RayExecutor

    with RayExecutor([_spec(seconds_per_row, slow)]) as executor:
        executor.start()
        _windowed(executor.submit, _rows(ACTORS * BATCH), executor.batches_in_flight)  # every actor answered
        began = time.perf_counter()
        out = _windowed(executor.submit, rows, executor.batches_in_flight)
        return time.perf_counter() - began, out


def run_round_robin(rows, seconds_per_row: float, slow: float, window: int) -> tuple[float, list]:
    import ray

    from tasks.stage_pool import StageActor

    spec = _spec(seconds_per_row, slow)
    actors = [StageActor.options(num_cpus=0.5).remote(spec) for _ in range(ACTORS)]
    ray.get([a.ready.remote() for a in actors])
    turn = itertools.cycle(actors)

    def submit(batch):
        _, rows_ref = next(turn).process.remote([(batch, 0, len(batch))])
        return rows_ref

    try:
        _windowed(submit, _rows(ACTORS * BATCH), window, get=ray.get)
        began = time.perf_counter()
        out = _windowed(submit, rows, window, get=ray.get)
        return time.perf_counter() - began, out
    finally:
        for actor in actors:
            ray.kill(actor)


def run_ray_data(rows, seconds_per_row: float, slow: float) -> tuple[float, list]:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    rank_dir = tempfile.mkdtemp(prefix="ranks-")

    class RayDataStage:
        def __init__(self):
            self.stage = SleepStage(seconds_per_row, rank_dir, slow)

        def __call__(self, batch):
            keys = list(batch)
            n = len(batch[keys[0]])
            out = self.stage([{k: batch[k][i] for k in keys} for i in range(n)])
            return {k: [row[k] for row in out] for k in out[0]}

    def once(items):
        ds = ray.data.from_items(items).repartition(max(1, len(items) // BATCH))
        ds = ds.map_batches(RayDataStage, batch_size=BATCH, num_cpus=0.5,
                            compute=ray.data.ActorPoolStrategy(size=ACTORS))
        return ds.take_all()

    # every dataset starts its own actor pool: the marginal time of the rows (run with them twice over minus once)
    # is what compares with engines whose actors are up already; a small run first pays Ray Data's imports
    once(_rows(ACTORS * BATCH))
    began = time.perf_counter()
    out = once(rows)
    single = time.perf_counter() - began
    began = time.perf_counter()
    once(rows + [{**row, "sample_id": row["sample_id"] + "-again"} for row in rows])
    return max(time.perf_counter() - began - single, 1e-9), out


def _windowed(submit, rows, window: int, get=None) -> list:
    """Batches out as in ``tasks.shard_work.build_shard``: at most ``window`` unwritten, written in job order."""
    batches = deque(rows[i:i + BATCH] for i in range(0, len(rows), BATCH))
    unwritten: deque = deque()
    out = []
    while batches or unwritten:
        while batches and len(unwritten) < window:
            unwritten.append(submit(batches.popleft()))
        head = unwritten.popleft()
        out.extend(get(head) if get else head.result())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pieces", type=int, default=120, help="batches of 4 rows")
    parser.add_argument("--piece-s", type=float, default=0.08, help="seconds per batch on a normal actor")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-ray-data", action="store_true")
    args = parser.parse_args()
    import ray

    from tasks.executor import RayExecutor

    print(f"# bench_dispatch start {load_average()} pieces={args.pieces} piece_s={args.piece_s} slow={SLOW}x")
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    rows = _rows(args.pieces * BATCH)
    per_row = args.piece_s / BATCH
    window = RayExecutor([_spec(per_row, 1.0)]).batches_in_flight
    times: dict[str, list[float]] = {}
    reference = None
    engines = {"ours": lambda s: run_ours(rows, per_row, s),
               "round_robin": lambda s: run_round_robin(rows, per_row, s, window)}
    if not args.skip_ray_data:
        engines["ray_data"] = lambda s: run_ray_data(rows, per_row, s)
    for _ in range(args.repeats):
        for name, run in engines.items():
            for slow in (SLOW, 1.0):
                seconds, out = run(slow)
                ids = [row["sample_id"] for row in out]
                if reference is None:
                    reference = ids
                assert ids == reference, f"{name} changed the output order"
                key = f"{name}_{'slow' if slow > 1 else 'even'}"
                times.setdefault(key, []).append(seconds)
                print(f"{key}: {seconds:.2f} s ({len(out) / seconds:.1f} rows/s)", flush=True)
    ray.shutdown()
    stats = {key: spread(values) for key, values in times.items()}
    for key, s in stats.items():
        print(f"{key}: best {s['best']:.2f} s, median {s['median']:.2f} s, spread {s['spread']:.0%} (n={s['n']})")
    ours, rr = stats["ours_slow"], stats["round_robin_slow"]
    speedup = rr["best"] / ours["best"]
    ideal = args.pieces * args.piece_s / (ACTORS - 1 + 1 / SLOW)
    extra = ""
    if "ray_data_slow" in stats:
        rd = stats["ray_data_slow"]
        extra = (f" ray_data_ratio={rd['best'] / ours['best']:.3f} ray_data_s={rd['best']:.2f}"
                 f" ray_data_even_s={stats['ray_data_even']['best']:.2f}")
    print(f"# bench_dispatch end {load_average()}")
    print(f"RESULT dispatch speedup={speedup:.3f} ours_s={ours['best']:.2f} rr_s={rr['best']:.2f} "
          f"ideal_s={ideal:.2f} ours_even_s={stats['ours_even']['best']:.2f} "
          f"rr_even_s={stats['round_robin_even']['best']:.2f}{extra} {ratio_note(rr, ours, speedup)} "
          f"{load_average()}")


if __name__ == "__main__":
    main()
