"""The build's executor: rows through every stage of the pipeline on Ray actors.

INTERIM implementation (round-robin pools, one batch size) that fixes the interface the flow and shard code use;
the elastic load-aware engine replaces the internals without changing it:

- ``RayExecutor(specs, on_log=...)``; ``start()`` builds each stage's actors and returns notes for the run log
  (e.g. a GPU stage running on CPU); it raises a one-line ``MagicSegError`` before any work when a stage cannot run.
- ``submit(rows) -> concurrent.futures.Future`` of the same rows through every stage, in order; thread-safe.
- ``settings()`` per stage (provenance); ``stats()`` per stage, one dict per actor; ``shutdown()``.
- ``on_log(stage, levelno, message)`` is called on the driver for log records raised inside stage workers.
"""

from __future__ import annotations

import concurrent.futures
from typing import Callable, Sequence

import ray

from magicseg_models.pipeline import Row, StageSpec
from tasks.stage_pool import StagePool

LogSink = Callable[[str, int, str], None]


class RayExecutor:
    def __init__(self, specs: Sequence[StageSpec], *, on_log: LogSink | None = None):
        self.specs = list(specs)
        self.on_log = on_log
        self.pools: list[StagePool] = []

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def start(self) -> list[str]:
        from tasks.ray_runtime import cluster_gpus

        gpus = cluster_gpus()
        self.pools = [StagePool.for_stage(spec.name, spec.build, spec.args, spec.resources, gpus)
                      for spec in self.specs]
        return []

    @property
    def batch_size(self) -> int:
        """Rows per submitted batch (interim: the largest stage batch)."""
        return max(spec.batch_size for spec in self.specs)

    def submit(self, rows: list[Row]) -> concurrent.futures.Future:
        ref = rows
        for pool in self.pools:
            ref = pool.submit(ref)
        return ref.future()

    def settings(self) -> dict[str, dict]:
        return {pool.name: ray.get(pool.actors[0].settings.remote()) for pool in self.pools}

    def stats(self) -> dict[str, list[dict]]:
        return {pool.name: pool.stats() for pool in self.pools}

    def shutdown(self) -> None:
        for pool in self.pools:
            pool.shutdown()
        self.pools = []

