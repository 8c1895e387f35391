"""The build's executor: batches of rows through every stage of the pipeline, on elastic Ray actor pools.

- ``RayExecutor(specs, on_log=..., ray_config=...)``; ``start()`` decides where GPU stages run (asking the cluster
  for GPUs, see :mod:`tasks.ray_runtime`), checks that a fixed cluster has the CPUs for every stage's first
  actors (an actor Ray cannot place would wait forever, silently), starts each stage's minimum of actors, waits until every stage has one
  actor built, and returns notes for the run log (a GPU stage running on CPU). It raises a one-line
  ``MagicSegError`` before any work when a stage cannot run.
- ``submit(rows) -> concurrent.futures.Future`` of the same rows through every stage, in order; thread-safe.
- ``settings()`` per stage (provenance); ``stats()`` per stage, one record per actor ever used; ``shutdown()``.
- ``on_log(stage, levelno, message)`` is called on the driver for each record our loggers raised inside an actor.

How work moves: a submitted batch is cut, per stage, into pieces of that stage's ``batch_size``; each piece goes to
the stage's ready actor holding the fewest calls (at most ``ray.max_in_flight`` each), so a slow or restarting
actor holds only its own pieces while the others go on. A batch moves to the next stage when all its pieces are
back, as object refs (rows travel between actors through the object store, not the driver), and its future holds
the rows in submitted order: the result never depends on which actor did what. A pool with ``actors: [min, max]``
adds an actor while pieces wait and every actor is full, and stops one that has idled ``ray.idle_actor_s``.
One dispatcher thread owns all of this; callers only submit and wait on futures. docs/operations.md has the
comparison with Ray Data that chose this design.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import ray

from magicseg_models.config import RayConfig
from magicseg_models.errors import ClusterError, MagicSegError
from magicseg_models.pipeline import Row, StageSpec
from tasks.stage_pool import ActorSlot, StagePool

logger = logging.getLogger(__name__)

LogSink = Callable[[str, int, str], None]


def user_error(err: BaseException) -> BaseException:
    """A ``MagicSegError`` raised inside an actor as itself (one line), not wrapped in Ray's traceback."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, MagicSegError):
        return cause
    return err


@dataclass
class _Batch:
    """One submitted batch on its way through the stages."""

    future: concurrent.futures.Future
    parts: list[tuple[Any, int]]  # the current stage's input: (rows or a ref to rows, how many)
    stage: int = -1
    outputs: list = field(default_factory=list)  # per piece of the current stage: (ref to rows, how many)
    remaining: int = 0

    @property
    def failed(self) -> bool:
        return self.future.done()


@dataclass
class _Call:
    pool: StagePool
    slot: ActorSlot
    batch: _Batch
    piece: int
    rows_ref: Any
    size: int


def cut_pieces(parts: list[tuple[Any, int]], size: int) -> list[list[tuple[Any, int, int]]]:
    """``parts`` (in order) cut into pieces of ``size`` rows, each a list of ``(part, lo, hi)`` slices."""
    pieces: list[list[tuple[Any, int, int]]] = []
    current: list[tuple[Any, int, int]] = []
    room = size
    for part, count in parts:
        lo = 0
        while lo < count:
            take = min(room, count - lo)
            current.append((part, lo, lo + take))
            lo += take
            room -= take
            if room == 0:
                pieces.append(current)
                current, room = [], size
    if current:
        pieces.append(current)
    return pieces


class RayExecutor:
    def __init__(self, specs: Sequence[StageSpec], *, on_log: LogSink | None = None,
                 ray_config: RayConfig | None = None):
        self.specs = list(specs)
        self.on_log = on_log
        self.ray_config = ray_config or RayConfig()
        self.pools: list[StagePool] = []
        self.notes: list[str] = []
        self._inbox: queue.SimpleQueue[_Batch] = queue.SimpleQueue()
        self._queues: dict[str, list[tuple[_Batch, int, list]]] = {}
        self._calls: dict[Any, _Call] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._fatal: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._collector = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="magicseg-collect")

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    # ------------------------------------------------------------------------------------------ start
    def start(self) -> list[str]:
        on_cpu = self._place_gpu_stages()
        self._check_cpus()
        token = uuid.uuid4().hex[:8]
        self.pools = [StagePool(spec, run_token=token, on_cpu=spec.name in on_cpu,
                                max_in_flight=self.ray_config.max_in_flight,
                                idle_actor_s=self.ray_config.idle_actor_s) for spec in self.specs]
        self._queues = {pool.name: [] for pool in self.pools}
        for pool in self.pools:  # every stage proven buildable before any work
            first = pool.slots[0]
            try:
                ray.wait([first.ready_ref], timeout=None)
                self._on_ready(pool, first)
            except BaseException:
                self.shutdown()
                raise
        self._thread = threading.Thread(target=self._loop, name="magicseg-dispatch", daemon=True)
        self._thread.start()
        return list(self.notes)

    def _check_cpus(self) -> None:
        """Refuse a pipeline whose minimum actors cannot all be placed (Ray would wait for them forever)."""
        from tasks.ray_runtime import cpu_shortfall

        needs = [(spec.name, spec.resources.num_cpus * spec.resources.actor_range[0]) for spec in self.specs]
        reason = cpu_shortfall(needs)
        if reason:
            raise ClusterError(f"{reason}: lower resources.num_cpus or resources.actors of a stage, or give Ray "
                               "more CPUs (ray.num_cpus, or join a larger cluster)")

    def _place_gpu_stages(self) -> set[str]:
        """Names of GPU stages that run on CPU (``gpu: optional``, no GPU to be had); raises for ``required``."""
        from tasks.ray_runtime import gpu_unavailable

        wanting = [spec for spec in self.specs if spec.resources.num_gpus > 0]
        if not wanting:
            return set()
        reason = gpu_unavailable([spec.resources.num_gpus for spec in wanting],
                                 wait_s=self.ray_config.gpu_wait_s)
        if reason is None:
            return set()
        required = [spec for spec in wanting if spec.resources.gpu == "required"]
        if required:
            names = ", ".join(f"{spec.name} ({spec.config_key or spec.name}.resources)" for spec in required)
            raise ClusterError(f"GPU required by stage {names}, but {reason}: run on a cluster with GPU nodes, "
                               "or set resources.gpu=optional there to run on CPU")
        for spec in wanting:
            note = (f"stage {spec.name} runs on CPU: {reason} ({spec.config_key or spec.name}.resources.gpu "
                    "is optional)")
            logger.warning(note)
            self.notes.append(note)
        return {spec.name for spec in wanting}

    # ------------------------------------------------------------------------------------------ interface
    @property
    def batch_size(self) -> int:
        """Rows per submitted batch: the largest stage batch (smaller stages cut it into pieces)."""
        return max(spec.batch_size for spec in self.specs)

    @property
    def batches_in_flight(self) -> int:
        """Batches a caller should keep submitted to fill every actor of every stage twice over."""
        rows = sum(spec.resources.actor_range[1] * self.ray_config.max_in_flight * spec.batch_size
                   for spec in self.specs)
        return math.ceil(2 * rows / self.batch_size) + 1

    def submit(self, rows: list[Row]) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        if self._fatal is not None:
            future.set_exception(self._fatal)
            return future
        if not rows:
            future.set_result([])
            return future
        self._inbox.put(_Batch(future, [(list(rows), len(rows))]))
        self._wake.set()
        return future

    def settings(self) -> dict[str, dict]:
        out = {}
        for pool in self.pools:
            slot = next(slot for slot in pool.slots if slot.ready)
            out[pool.name] = ray.get(slot.handle.settings.remote())
        return out

    def stats(self) -> dict[str, list[dict]]:
        with self._lock:  # which actors exist; their answers are awaited outside, the dispatcher goes on meanwhile
            snapshot = [(pool, list(pool.slots), list(pool.retired)) for pool in self.pools]
        return {pool.name: [dict(record, on_cpu=pool.on_cpu) for record in retired + pool.live_stats(slots)]
                for pool, slots, retired in snapshot}

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        with self._lock:
            for pool in self.pools:
                pool.shutdown()
        self._collector.shutdown(wait=True)
        for call in self._calls.values():
            _fail(call.batch.future, RuntimeError("the executor was shut down"))
        self._calls.clear()

    # ------------------------------------------------------------------------------------------ dispatcher
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._step()
            except BaseException as err:  # a bug here must fail the waiting callers, not hang them
                logger.exception("the dispatcher stopped")
                self._fail_all(err)
                return

    def _step(self) -> None:
        while True:
            try:
                batch = self._inbox.get_nowait()
            except queue.Empty:
                break
            self._enter_stage(batch, 0)
        with self._lock:
            self._scale(time.monotonic())
        self._dispatch()
        starting = {slot.ready_ref: (pool, slot) for pool in self.pools for slot in pool.slots if not slot.ready}
        waiting = list(self._calls) + list(starting)
        if not waiting:
            self._wake.wait(0.05)
            self._wake.clear()
            return
        done, _ = ray.wait(waiting, num_returns=1, timeout=0.05)
        if done:
            done, _ = ray.wait(waiting, num_returns=len(waiting), timeout=0)
        for ref in done:
            if ref in starting:
                pool, slot = starting[ref]
                try:
                    self._on_ready(pool, slot)
                except BaseException as err:
                    self._fail_all(user_error(err))
                    return
            else:
                self._on_call_done(ref, self._calls.pop(ref))

    def _enter_stage(self, batch: _Batch, stage: int) -> None:
        if stage == len(self.pools):
            self._collector.submit(self._collect, batch)
            return
        pool = self.pools[stage]
        pieces = cut_pieces(batch.parts, pool.spec.batch_size)
        batch.stage, batch.outputs, batch.remaining = stage, [None] * len(pieces), len(pieces)
        self._queues[pool.name].extend((batch, i, piece) for i, piece in enumerate(pieces))

    def _dispatch(self) -> None:
        for pool in self.pools:
            waiting = self._queues[pool.name]
            while waiting:
                if waiting[0][0].failed:
                    waiting.pop(0)
                    continue
                slot = pool.pick()
                if slot is None:
                    break
                batch, index, piece = waiting.pop(0)
                meta, rows = slot.handle.process.remote(piece)
                slot.in_flight += 1
                slot.calls += 1
                self._calls[meta] = _Call(pool, slot, batch, index, rows, sum(hi - lo for _, lo, hi in piece))

    def _scale(self, now: float) -> None:
        for pool in self.pools:
            if pool.wants_actor(len(self._queues[pool.name])):
                slot = pool.add_actor()
                logger.info("stage %s: starting actor %s (%d waiting pieces)", pool.name, slot.name,
                            len(self._queues[pool.name]))
            for slot in pool.idle_surplus(now):
                logger.info("stage %s: stopping idle actor %s", pool.name, slot.name)
                pool.retire(slot)

    def _on_ready(self, pool: StagePool, slot: ActorSlot) -> None:
        try:
            report = ray.get(slot.ready_ref)
        except Exception as err:
            raise user_error(err) from None
        slot.ready_ref = None
        slot.idle_since = time.monotonic()
        self._forward(pool.name, report["logs"])

    def _on_call_done(self, meta: Any, call: _Call) -> None:
        call.slot.in_flight -= 1
        if call.slot.in_flight == 0:
            call.slot.idle_since = time.monotonic()
        try:
            report = ray.get(meta)
        except Exception as err:
            _fail(call.batch.future, user_error(err))
            return
        call.slot.observe(report["rows"], report["seconds"])
        self._forward(call.pool.name, report["logs"])
        batch = call.batch
        if batch.failed:
            return
        batch.outputs[call.piece] = (call.rows_ref, call.size)
        batch.remaining -= 1
        if batch.remaining == 0:
            batch.parts = batch.outputs
            self._enter_stage(batch, batch.stage + 1)

    def _collect(self, batch: _Batch) -> None:
        try:
            parts = ray.get([ref for ref, _ in batch.parts])
            batch.future.set_result([row for part in parts for row in part])
        except Exception as err:
            _fail(batch.future, user_error(err))

    def _forward(self, stage: str, records: list[tuple[int, str, str]]) -> None:
        for levelno, name, message in records:
            if self.on_log is not None:
                self.on_log(stage, levelno, message)
            else:
                logging.getLogger(name).log(levelno, "[%s] %s", stage, message)

    def _fail_all(self, err: BaseException) -> None:
        self._fatal = err
        pending = [call.batch for call in self._calls.values()]
        pending += [batch for waiting in self._queues.values() for batch, _, _ in waiting]
        while True:
            try:
                pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        for batch in pending:
            _fail(batch.future, err)


def _fail(future: concurrent.futures.Future, err: BaseException) -> None:
    try:
        future.set_exception(err)
    except concurrent.futures.InvalidStateError:  # settled already (an earlier piece failed first)
        pass
