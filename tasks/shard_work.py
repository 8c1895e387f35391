"""One shard through the executor into the store: the unit of work, naming and commit.

The shard's jobs go to the executor in batches, with at most ``max_in_flight`` batches alive at once (memory), and
come back in job order into a :class:`ShardWriter`, which publishes the shard only when all of it is there. Rows a
stage dropped become the shard's recorded drops.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from magicseg_models.dataset.schema import SCHEMA
from magicseg_models.dataset.store import DatasetStore, ShardInfo
from magicseg_models.planning import Job, Shard

_FIELDS = SCHEMA.names


def job_row(job: Job) -> dict:
    return {"sample_id": job.sample_id, "index": job.index, "class_ids": list(job.class_ids),
            "class_names": list(job.class_names), "seed": job.seed, "variant": job.variant}


def build_shard(store: DatasetStore, shard: Shard, executor, *, max_in_flight: int, settings: dict | None = None,
                on_rows: Callable[[int, int], None] | None = None) -> ShardInfo:
    """Run every job of ``shard`` through ``executor`` and commit the shard; ``on_rows(kept, dropped)`` per batch."""
    rows = [job_row(job) for job in shard.jobs]
    size = executor.batch_size
    batches = deque(rows[i:i + size] for i in range(0, len(rows), size))
    in_flight: deque = deque()
    dropped: dict[str, str] = {}
    with store.open_shard(shard.index, settings=settings) as writer:
        while batches and len(in_flight) < max_in_flight:
            in_flight.append(executor.submit(batches.popleft()))
        while in_flight:
            done = in_flight.popleft().result()  # in job order: the shard's rows are deterministic
            if batches:
                in_flight.append(executor.submit(batches.popleft()))
            kept = [{k: row[k] for k in _FIELDS} for row in done if not row.get("drop_reason")]
            for row in done:
                if row.get("drop_reason"):
                    dropped[row["sample_id"]] = row["drop_reason"]
            writer.write(kept)
            if on_rows:
                on_rows(len(kept), len(done) - len(kept))
        return writer.commit(planned=shard.planned, dropped=dropped)
