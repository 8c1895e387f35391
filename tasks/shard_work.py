"""One shard through the stage pools into the store: the unit of work, naming and commit.

Batches of the shard's jobs are chained through the pools as object refs (prompts -> pairs -> annotations), with at
most ``max_in_flight`` batches alive at once, and collected in job order into a :class:`ShardWriter`, which
publishes the shard only when all of it is there. Rows a stage dropped become the shard's recorded drops.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, Sequence

import ray

from magicseg_models.dataset.schema import SCHEMA
from magicseg_models.dataset.store import DatasetStore, ShardInfo
from magicseg_models.planning import Job, PlanSpec, shard_jobs
from tasks.stage_pool import StagePool

_FIELDS = SCHEMA.names


def job_row(job: Job) -> dict:
    return {"sample_id": job.sample_id, "index": job.index, "class_ids": list(job.class_ids),
            "class_names": list(job.class_names), "seed": job.seed, "variant": job.variant}


def build_shard(store: DatasetStore, spec: PlanSpec, shard: int, pools: Sequence[StagePool], *,
                batch_size: int, max_in_flight: int, settings: dict | None = None,
                on_rows: Callable[[int, int], None] | None = None) -> ShardInfo:
    """Run every job of ``shard`` through ``pools`` and commit the shard; ``on_rows(kept, dropped)`` per batch."""
    jobs = shard_jobs(spec, shard)
    rows = [job_row(job) for job in jobs]
    batches = deque(rows[i:i + batch_size] for i in range(0, len(rows), batch_size))
    in_flight: deque = deque()

    def launch() -> None:
        ref = batches.popleft()
        for pool in pools:
            ref = pool.submit(ref)
        in_flight.append(ref)

    dropped: dict[str, str] = {}
    with store.open_shard(shard, settings=settings) as writer:
        while batches and len(in_flight) < max_in_flight:
            launch()
        while in_flight:
            done = ray.get(in_flight.popleft())  # in job order: the shard's rows are deterministic
            if batches:
                launch()
            kept = [{k: row[k] for k in _FIELDS} for row in done if not row.get("drop_reason")]
            for row in done:
                if row.get("drop_reason"):
                    dropped[row["sample_id"]] = row["drop_reason"]
            writer.write(kept)
            if on_rows:
                on_rows(len(kept), len(done) - len(kept))
        return writer.commit(planned=len(jobs), dropped=dropped)
