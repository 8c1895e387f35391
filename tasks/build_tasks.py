"""The build's Prefect task: a chunk of shards through the executor into the store, with health checked live.

Everything the task needs comes in as arguments (the executor and the store wrapped in ``quote`` by the flow, so
Prefect neither hashes nor walks them); its counters live in a :class:`RunProgress` the flow reads for the
progress artifact and the summary. Health is checked when a shard's last batch is back and before that shard
commits (``build_shard``'s ``before_commit``), so a shard that breaks ``build.health`` is never published, nor is
any shard after it.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from magicseg_models.config import HealthConfig
from magicseg_models.errors import MagicSegError
from magicseg_models.health import Figure, check, figures
from magicseg_models.planning import PlanSpec, plan_shard


class RunStopped(MagicSegError):
    """The run already failed elsewhere (another chunk broke health or failed): this chunk stops, unretried."""


class RunProgress:
    """Thread-safe counters of one build run, shared by its chunk tasks and read by the flow."""

    def __init__(self, health: HealthConfig):
        self.health = health
        self._lock = threading.Lock()
        self.rows = 0
        self.kept = 0
        self.drops: Counter[str] = Counter()
        self.shards_done = 0
        self.failure: str | None = None

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def add(self, rows: list[dict]) -> None:
        reasons = [row["drop_reason"] for row in rows if row.get("drop_reason")]
        with self._lock:
            self.rows += len(rows)
            self.kept += len(rows) - len(reasons)
            self.drops.update(reasons)

    def shard_done(self) -> None:
        with self._lock:
            self.shards_done += 1

    def stop(self, reason: str) -> None:
        with self._lock:
            self.failure = self.failure or reason

    def check_health(self, prompt_outcomes: dict[str, int]) -> None:
        """Raises HealthError (and stops the run) when a checked figure is outside its limit."""
        if self.failure:
            raise RunStopped(self.failure)
        with self._lock:
            rows, drops = self.rows, dict(self.drops)
        try:
            check(self.health, rows, drops, prompt_outcomes)
        except MagicSegError as err:
            self.stop(str(err))
            raise

    def figures(self, prompt_outcomes: dict[str, int]) -> list[Figure]:
        with self._lock:
            return figures(self.health, self.rows, dict(self.drops), prompt_outcomes)


def prompt_outcomes(stats: dict[str, list[dict]]) -> dict[str, int]:
    """The prompt stage's outcome counters summed over its actors (llm, template_fallback, dropped, ...)."""
    total: Counter[str] = Counter()
    for actor in stats.get("prompts", []):
        total.update((actor.get("stage") or {}).get("outcomes", {}))
    return dict(total)


def _not_a_user_error(task, task_run, state) -> bool:
    """Prefect's retry condition: a MagicSegError (bad input, broken health) fails the same way on every retry."""
    try:
        state.result()
    except MagicSegError:
        return False
    except BaseException:  # noqa: BLE001 - a crash (actor lost, storage blip) is what retries are for
        return True
    return True


@task(name="build-shards", retries=2, retry_delay_seconds=[5, 30], cache_policy=NO_CACHE,
      retry_condition_fn=_not_a_user_error, task_run_name="shards {shards}")
def build_shards(shards: list[int], spec: PlanSpec, store: Any, executor: Any, settings: dict,
                 progress: RunProgress) -> list[dict]:
    """Build and commit a chunk of shards; a retry redoes only those of its shards that did not commit."""
    from tasks.shard_work import build_shard

    logger = get_run_logger()
    done = store.committed()
    infos = []
    try:
        for index in shards:
            shard = plan_shard(spec, index)
            if shard.is_complete(done.get(index)):
                continue
            if progress.failure:
                raise RunStopped(progress.failure)
            began = time.perf_counter()
            info = build_shard(store, shard, executor, settings=settings, on_batch=progress.add,
                               before_commit=lambda: progress.check_health(prompt_outcomes(executor.stats())))
            progress.shard_done()
            logger.info(shard_line(index, info.rows, info.dropped, time.perf_counter() - began))
            infos.append(info.manifest_entry())
    except Exception as err:
        if progress.failure and not isinstance(err, MagicSegError):  # actors went with the stopped run
            raise RunStopped(progress.failure) from None
        raise
    return infos


def shard_line(index: int, kept: int, dropped: dict[str, str], seconds: float) -> str:
    """One log line per committed shard: kept, dropped by reason, seconds, samples/s."""
    reasons = Counter(dropped.values())
    by_reason = ", ".join(f"{reason} {n}" for reason, n in sorted(reasons.items())) or "none"
    done = kept + len(dropped)
    return (f"shard {index} committed: kept {kept}, dropped {len(dropped)} ({by_reason}), {seconds:.1f} s, "
            f"{done / max(seconds, 1e-9):.2f} samples/s")
