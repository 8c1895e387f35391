"""Ray actor pools that hold the stage models for the whole run.

Each actor builds its stage (a plain ``magicseg_models`` class) once in ``__init__`` and then maps batches of rows
to batches of rows. Rows a previous stage dropped (``drop_reason`` set) pass through untouched. Batches flow from
pool to pool as object refs, so the stages of different batches run at the same time (streaming), while the
caller bounds how many batches are in flight (memory).
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any, Callable, Sequence

import ray

from magicseg_models.pipeline import run_live
from tasks.ray_runtime import actor_options


@ray.remote
class StageActor:
    """One stage's model, loaded once per actor."""

    def __init__(self, factory: Callable[..., Any], args: tuple, kwargs: dict):
        self.stage = factory(*args, **kwargs)
        self.busy_s = 0.0
        self.rows = 0

    def process(self, rows: list[dict]) -> list[dict]:
        began = time.perf_counter()
        out = run_live(self.stage, rows)
        self.busy_s += time.perf_counter() - began
        self.rows += len(rows)
        return out

    def settings(self) -> dict:
        return dict(getattr(self.stage, "settings", {}) or {})

    def pid(self) -> int:
        return os.getpid()

    def stats(self) -> dict:
        stage_stats = self.stage.stats() if hasattr(self.stage, "stats") else {}
        return {"busy_s": self.busy_s, "rows": self.rows, "stage": stage_stats,
                "node_id": ray.get_runtime_context().get_node_id()}


class StagePool:
    """``actors`` copies of a stage; ``submit`` hands a batch (or a ref to one) to the next actor in turn."""

    def __init__(self, name: str, factory: Callable[..., Any], args: Sequence[Any] = (), kwargs: dict | None = None,
                 *, actors: int = 1, options: dict | None = None):
        self.name = name
        self.actors = [StageActor.options(**(options or {})).remote(factory, tuple(args), dict(kwargs or {}))
                       for _ in range(actors)]
        self._next = itertools.cycle(self.actors)

    @classmethod
    def for_stage(cls, name: str, factory: Callable[..., Any], args: Sequence[Any], resources,
                  gpus_available: float, kwargs: dict | None = None) -> "StagePool":
        return cls(name, factory, args, kwargs, actors=resources.actors,
                   options=actor_options(resources, gpus_available))

    def submit(self, rows) -> ray.ObjectRef:
        return next(self._next).process.remote(rows)

    def stats(self) -> list[dict]:
        return ray.get([actor.stats.remote() for actor in self.actors])

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
