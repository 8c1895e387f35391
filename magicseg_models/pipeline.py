"""The build pipeline as data: stages that map a batch of rows to a batch of rows, declared with their resources.

A stage is a plain class (no Ray, no Prefect here): an executor builds it once per worker from its
:class:`StageSpec` (so a model loads once per worker for the whole run), calls it with batches of rows, and asks
it for ``stats()`` (what it did) and ``settings`` (what it is: the provenance written into the manifest and every
shard). Rows a previous stage dropped (``drop_reason`` set) are not handed to a stage; an executor passes them on.
The build's stage list comes from one function, ``tasks.stage_factories.build_stages(config)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

from magicseg_models.config import StageResources

Row = dict[str, Any]

__all__ = ["Row", "Stage", "StageSpec", "run_live"]


@runtime_checkable
class Stage(Protocol):
    """What every build stage offers an executor."""

    def __call__(self, rows: list[Row]) -> list[Row]:
        """Map live rows to the same rows, in order, with this stage's fields added (or ``drop_reason`` set)."""

    def stats(self) -> dict[str, Any]:
        """Counters since the stage was built (calls, drops by reason, cache hits, ...); JSON-serialisable."""

    @property
    def settings(self) -> dict[str, Any]:
        """What this stage is (models, revisions, dtypes, sampler settings); JSON-serialisable, no secrets."""


@dataclass(frozen=True)
class StageSpec:
    """A stage as declared before any worker exists: how to build it and what each worker needs."""

    name: str
    build: Callable[..., Stage]  # a module-level function: executors on other processes pickle it by name
    args: tuple = ()
    resources: StageResources = field(default_factory=StageResources)
    config_key: str | None = None  # where the stage's settings live in the config (named in error messages)

    @property
    def batch_size(self) -> int:
        return self.resources.batch_size

    def create(self) -> Stage:
        return self.build(*self.args)


def run_live(stage: Callable[[list[Row]], list[Row]], rows: list[Row]) -> list[Row]:
    """``stage`` over the rows no earlier stage dropped; dropped rows keep their place, untouched."""
    live = [i for i, row in enumerate(rows) if not row.get("drop_reason")]
    if not live:
        return list(rows)
    processed = stage([rows[i] for i in live])
    if len(processed) != len(live):
        raise RuntimeError(f"a stage returned {len(processed)} rows for {len(live)}: stages map rows one to one")
    out = list(rows)
    for i, row in zip(live, processed):
        out[i] = row
    return out
