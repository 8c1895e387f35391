"""Small stages for executor tests: they do what a real stage does to rows, plus one behaviour under test.

Ray workers cannot import test modules (only installed code), so this module is pickled by value.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import ray.cloudpickle

from magicseg_models.errors import ConfigError

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

logger = logging.getLogger("magicseg_models.tests.stage_doubles")


def _claim_rank(folder: str) -> int:
    """0, 1, 2, ... in the order the stage's actors are built (an atomic file create per rank)."""
    rank = 0
    while True:
        try:
            os.close(os.open(os.path.join(folder, f"rank-{rank}"), os.O_CREAT | os.O_EXCL))
            return rank
        except FileExistsError:
            rank += 1


class TaggingStage:
    """Adds ``tag_<name>`` = the row's index times ``factor``; the actor built first is ``slow_factor`` slower."""

    def __init__(self, name: str, seconds_per_row: float = 0.0, *, rank_dir: str | None = None,
                 slow_factor: float = 1.0, warn: str | None = None):
        self.name = name
        self.rank = _claim_rank(rank_dir) if rank_dir else 0
        self.delay = seconds_per_row * (slow_factor if self.rank == 0 else 1.0)
        self.calls = 0
        self.warn = warn
        logger.info("stage %s built (rank %d)", name, self.rank)

    def __call__(self, rows):
        self.calls += 1
        if self.warn:
            logger.warning("%s: %d rows", self.warn, len(rows))
        time.sleep(self.delay * len(rows))
        return [{**row, f"tag_{self.name}": row["index"] * 10, f"by_{self.name}": self.rank} for row in rows]

    def stats(self):
        return {"calls": self.calls, "rank": self.rank}

    @property
    def settings(self):
        return {"name": self.name, "delay": self.delay}


def tagging_stage(name: str, seconds_per_row: float = 0.0, rank_dir: str | None = None, slow_factor: float = 1.0,
                  warn: str | None = None):
    return TaggingStage(name, seconds_per_row, rank_dir=rank_dir, slow_factor=slow_factor, warn=warn)


def refusing_stage(message: str):
    """Builds fine, then refuses every batch the way a stage refuses bad input."""

    class Refusing(TaggingStage):
        def __call__(self, rows):
            raise ConfigError(message)

    return Refusing("refusing")


def unbuildable_stage(message: str):
    raise ConfigError(message)
