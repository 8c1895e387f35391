"""One shard through the executor into the store: the unit of work, naming and commit.

The shard's jobs go to the executor in batches, with a bounded window of batches alive at once (memory), and are
written in job order into a :class:`ShardWriter`, which publishes the shard only when all of it is there. Rows a
stage dropped become the shard's recorded drops.

Near duplicates (``quality.dedup``) are decided here, because only here is the whole job order of a shard known:
each batch's kept rows are compared with the rows this shard has already written, and a later copy becomes a
``duplicate`` drop before ``on_batch`` counts the batch (:mod:`magicseg_models.quality.dedup`; copies in
different shards are not decided).
"""

from __future__ import annotations

import concurrent.futures
from collections import deque
from typing import Callable

from magicseg_models.dataset.schema import SCHEMA
from magicseg_models.dataset.store import DatasetStore, ShardInfo
from magicseg_models.planning import Job, Shard
from magicseg_models.quality.dedup import DedupRule, ShardDeduplicator

_FIELDS = SCHEMA.names


def job_row(job: Job) -> dict:
    return {"sample_id": job.sample_id, "index": job.index, "class_ids": list(job.class_ids),
            "class_names": list(job.class_names), "seed": job.seed, "variant": job.variant}


def build_shard(store: DatasetStore, shard: Shard, executor, *, max_in_flight: int | None = None,
                settings: dict | None = None, on_batch: Callable[[list[dict]], None] | None = None,
                before_commit: Callable[[], None] | None = None) -> ShardInfo:
    """Run every job of ``shard`` through ``executor`` and commit the shard.

    ``on_batch(rows)`` sees each batch's rows (kept and dropped) as they are written; ``before_commit()`` runs once
    all are in and may raise to keep the shard unpublished (the run's health check does). The dedup rule is the
    one the quality stage declares in ``settings`` (so the shard's provenance says what was applied).

    Up to ``max_in_flight`` batches (default: twice what fills the executor's actors) are out at once, counted from
    the oldest one not yet written: batches are written in job order (the shard is deterministic), and the window is
    wide enough that the other actors keep working while a slow one holds the oldest batch.
    """
    rows = [job_row(job) for job in shard.jobs]
    size = executor.batch_size
    window = max_in_flight or executor.batches_in_flight
    batches = deque(rows[i:i + size] for i in range(0, len(rows), size))
    unwritten: deque[concurrent.futures.Future] = deque()
    dropped: dict[str, str] = {}
    rule = DedupRule.from_settings(settings)
    dedup = ShardDeduplicator(rule) if rule else None
    with store.open_shard(shard.index, settings=settings) as writer:
        while batches or unwritten:
            while batches and len(unwritten) < window:
                unwritten.append(executor.submit(batches.popleft()))
            concurrent.futures.wait([unwritten[0]])
            while unwritten and unwritten[0].done():
                done = unwritten.popleft().result()
                if dedup:
                    dedup.drop_copies(done)
                kept = [{k: row[k] for k in _FIELDS} for row in done if not row.get("drop_reason")]
                for row in done:
                    if row.get("drop_reason"):
                        dropped[row["sample_id"]] = row["drop_reason"]
                writer.write(kept)
                if on_batch:
                    on_batch(done)
        if before_commit:
            before_commit()
        return writer.commit(planned=shard.planned, dropped=dropped)
