"""The stage protocol's shared pieces: drops pass through, stages map one to one, a shard knows when it is done."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from magicseg_models.config import load_config
from magicseg_models.pipeline import run_live
from magicseg_models.planning import PlanSpec, plan_shard, shard_jobs
from tasks.stage_factories import build_stages


def test_dropped_rows_keep_their_place_and_skip_the_stage():
    seen = []

    def stage(rows):
        seen.extend(r["id"] for r in rows)
        return [{**r, "done": True} for r in rows]

    rows = [{"id": 0}, {"id": 1, "drop_reason": "no_detection"}, {"id": 2}]
    out = run_live(stage, rows)
    assert seen == [0, 2]
    assert [r.get("done") for r in out] == [True, None, True] and out[1] is rows[1]


def test_a_stage_that_loses_rows_is_refused():
    with pytest.raises(RuntimeError, match="one to one"):
        run_live(lambda rows: rows[:1], [{"id": 0}, {"id": 1}])


def test_a_shard_is_complete_only_under_the_plan_it_was_committed_for():
    spec = PlanSpec((1, 2, 3), ("a", "b", "c"), num_samples=10, seed=0, shard_size=4, two_class_fraction=0.5)
    last = plan_shard(spec, 2)
    assert [j.index for j in last.jobs] == [j.index for j in shard_jobs(spec, 2)] == [8, 9]
    assert last.is_complete(SimpleNamespace(planned=2)) and not last.is_complete(None)
    grown = PlanSpec((1, 2, 3), ("a", "b", "c"), num_samples=12, seed=0, shard_size=4, two_class_fraction=0.5)
    assert not plan_shard(grown, 2).is_complete(SimpleNamespace(planned=2))  # short shard redone when grown


def test_build_stages_follow_the_config_in_pipeline_order():
    config = load_config("build", "tiny", overrides=["annotate.resources.batch_size=3"])
    stages = build_stages(config)
    assert [s.name for s in stages] == ["prompts", "pairs", "annotate", "quality"]
    assert stages[2].batch_size == 3 and stages[1].resources == config.generator.resources
    assert stages[3].resources == config.quality.resources
    config.quality.enabled = False
    assert [s.name for s in build_stages(config)] == ["prompts", "pairs", "annotate"]
