"""One stage's Ray actors: each holds the stage's model for the whole run; the pool grows and shrinks.

A :class:`StageActor` builds its stage (a plain ``magicseg_models`` class) once and then maps pieces of batches to
rows. It returns two objects per call: a small report (rows, seconds, the log records our loggers raised meanwhile)
that the driver fetches at once, and the rows, which stay in the object store until the next stage or the shard
writer needs them. A :class:`StagePool` is the driver's book of one stage's actors (how many calls each holds, since
when it is idle); the executor decides with it which actor gets the next piece.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray

from magicseg_models.pipeline import StageSpec, run_live
from tasks.ray_runtime import actor_options

# loggers whose records inside an actor reach the driver (and from there the flow run's log)
FORWARDED_LOGGERS = ("magicseg_models", "tasks")


class _Collect(logging.Handler):
    """Keeps ``(levelno, logger, message)`` of records at INFO and above until the next report takes them."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records: list[tuple[int, str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.records.append((record.levelno, record.name, record.getMessage()))
        except Exception:  # a record that cannot be formatted must not break the stage
            self.handleError(record)

    def take(self) -> list[tuple[int, str, str]]:
        records, self.records = self.records, []
        return records


# stats/settings/pid answer on their own thread: behind two queued batches of SD they would stall whoever asks
# (the run's health check asks after every shard); the stage itself runs one call at a time
@ray.remote(concurrency_groups={"control": 1})
class StageActor:
    """One stage's model, loaded once per actor (and again after a crash: Ray restarts the actor)."""

    def __init__(self, spec: StageSpec):
        self.logs = _Collect()
        for name in FORWARDED_LOGGERS:
            logging.getLogger(name).addHandler(self.logs)
            if logging.getLogger(name).getEffectiveLevel() > logging.INFO:
                logging.getLogger(name).setLevel(logging.INFO)
        self.busy_s = 0.0
        self.rows = 0
        self.error: Exception | None = None
        try:
            self.stage = spec.create()
        except Exception as err:  # kept and raised by every call: a broken config fails the run, not a restart loop
            self.error = err

    def ready(self) -> dict:
        """The stage is built (or raises why not); the records its construction logged."""
        if self.error is not None:
            raise self.error
        return {"logs": self.logs.take(), "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}

    @ray.method(num_returns=2)
    def process(self, pieces: list[tuple[Any, int, int]]) -> tuple[dict, list[dict]]:
        """The rows ``rows[lo:hi]`` of each piece (a list of rows, or a ref to one), through the stage."""
        if self.error is not None:
            raise self.error
        refs = [part for part, _, _ in pieces if isinstance(part, ray.ObjectRef)]
        fetched = dict(zip(refs, ray.get(refs))) if refs else {}
        rows = [row for part, lo, hi in pieces for row in (fetched[part] if isinstance(part, ray.ObjectRef)
                                                            else part)[lo:hi]]
        began = time.perf_counter()
        out = run_live(self.stage, rows)
        seconds = time.perf_counter() - began
        self.busy_s += seconds
        self.rows += len(rows)
        return {"rows": len(rows), "seconds": seconds, "logs": self.logs.take()}, out

    @ray.method(concurrency_group="control")
    def settings(self) -> dict:
        if self.error is not None:
            raise self.error
        return dict(getattr(self.stage, "settings", {}) or {})

    @ray.method(concurrency_group="control")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="control")
    def stats(self) -> dict:
        stage_stats = self.stage.stats() if self.error is None and hasattr(self.stage, "stats") else {}
        return {"busy_s": self.busy_s, "rows": self.rows, "stage": stage_stats,
                "node_id": ray.get_runtime_context().get_node_id(),
                "gpu_ids": [str(g) for g in ray.get_gpu_ids()]}


@dataclass
class ActorSlot:
    """The driver's record of one actor."""

    name: str
    handle: Any
    ready_ref: Any  # the pending ``ready()`` call; None once the actor has answered it
    in_flight: int = 0
    idle_since: float = field(default_factory=time.monotonic)
    calls: int = 0
    row_s: float | None = None  # moving average of seconds per row, from the actor's reports

    def observe(self, rows: int, seconds: float) -> None:
        if rows:
            sample = seconds / rows
            self.row_s = sample if self.row_s is None else 0.7 * self.row_s + 0.3 * sample

    @property
    def ready(self) -> bool:
        return self.ready_ref is None


class StagePool:
    """One stage's actors between ``min`` and ``max`` of ``resources.actors``; pieces go to the least busy one."""

    def __init__(self, spec: StageSpec, *, run_token: str | None = None, on_cpu: bool = False,
                 max_in_flight: int = 2, idle_actor_s: float = 60.0):
        self.spec = spec
        self.name = spec.name
        self.low, self.high = spec.resources.actor_range
        self.on_cpu = on_cpu
        self.options = actor_options(spec.resources, on_cpu=on_cpu)
        self.max_in_flight = max_in_flight
        self.idle_actor_s = idle_actor_s
        self.token = run_token or uuid.uuid4().hex[:8]
        self.slots: list[ActorSlot] = []
        self.retired: list[dict] = []  # stats of actors stopped while the run went on
        self._started = 0
        for _ in range(self.low):
            self.add_actor()

    def add_actor(self) -> ActorSlot:
        # named so that operators (and tests) find a stage's actors: magicseg/<stage>/<k>/<run token>
        name = f"magicseg/{self.name}/{self._started}/{self.token}"
        self._started += 1
        handle = StageActor.options(name=name, **self.options).remote(self.spec)
        slot = ActorSlot(name, handle, handle.ready.remote())
        self.slots.append(slot)
        return slot

    def pick(self) -> ActorSlot | None:
        """The ready actor holding the fewest calls (the lowest number on a tie), if any has room.

        An actor more than twice as slow per row as the fastest gets one call at a time: a second piece queued
        behind a slow one would be the oldest unwritten batch long after the others moved on.
        """
        known = [slot.row_s for slot in self.slots if slot.ready and slot.row_s]
        fastest = min(known) if known else None

        def room(slot: ActorSlot) -> int:
            slow = fastest is not None and slot.row_s is not None and slot.row_s > 2 * fastest
            return 1 if slow else self.max_in_flight

        free = [slot for slot in self.slots if slot.ready and slot.in_flight < room(slot)]
        return min(free, key=lambda slot: slot.in_flight) if free else None

    def wants_actor(self, backlog: int) -> bool:
        """Grow by one when pieces wait, every actor is full and none is still starting."""
        return (backlog > 0 and len(self.slots) < self.high and all(slot.ready for slot in self.slots)
                and self.pick() is None)

    def idle_surplus(self, now: float) -> list[ActorSlot]:
        """Actors above ``min`` that have had no work for ``idle_actor_s`` (the newest first)."""
        surplus = len(self.slots) - self.low
        idle = [slot for slot in reversed(self.slots)
                if slot.ready and slot.in_flight == 0 and now - slot.idle_since >= self.idle_actor_s]
        return idle[:max(surplus, 0)]

    def retire(self, slot: ActorSlot) -> None:
        try:
            self.retired.append({"name": slot.name, **ray.get(slot.handle.stats.remote(), timeout=30)})
        except Exception:  # a dead actor has no stats to give
            self.retired.append(_no_stats(slot.name))
        ray.kill(slot.handle)
        self.slots.remove(slot)

    @staticmethod
    def live_stats(slots: list[ActorSlot]) -> list[dict]:
        """One record per actor of ``slots`` (the pool's ``retired`` holds those already stopped)."""
        refs = [slot.handle.stats.remote() for slot in slots]  # asked all at once
        live = []
        for slot, ref in zip(slots, refs):
            try:
                live.append({"name": slot.name, **ray.get(ref, timeout=60)})
            except Exception:  # dead for good, or not answering: counted as having done nothing
                live.append(_no_stats(slot.name))
        return live

    def shutdown(self) -> None:
        for slot in self.slots:
            ray.kill(slot.handle)
        self.slots = []


def _no_stats(name: str) -> dict:
    return {"name": name, "busy_s": 0.0, "rows": 0, "stage": {}, "node_id": None, "gpu_ids": []}
