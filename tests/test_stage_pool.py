"""Stage actors on a local Ray with the build's real tiny stages: the model loads once per actor, batches stream
through, drops pass through."""

from __future__ import annotations

from magicseg_models.config import load_config
from magicseg_models.dataset.codecs import decode_image
from magicseg_models.vocabulary import Vocabulary
from tasks.executor import RayExecutor
from tasks.ray_runtime import actor_options
from tasks.stage_factories import build_stages


def test_gpu_share_is_asked_for_unless_the_stage_was_placed_on_cpu():
    res = load_config("build", "sd15").generator.resources
    assert res.gpu == "required"
    assert actor_options(res)["num_gpus"] == res.num_gpus == 1.0
    assert actor_options(res, on_cpu=True)["num_gpus"] == 0


def test_pairs_stream_through_actor_pools(local_ray, tmp_path):
    config = load_config("build", "tiny", overrides=["prompts.backend=template", f"out={tmp_path}/ds",
                                                     "generator.resources.actors=2",
                                                     "generator.resources.batch_size=2"])
    prompts, pairs, *_ = build_stages(config)  # annotate and quality are not started here
    cat = Vocabulary.default().resolve("cat")
    rows = [{"sample_id": f"s0-{i}", "class_ids": [cat.id], "class_names": [cat.name], "seed": i, "variant": i}
            for i in range(6)]
    rows[2]["drop_reason"] = "already_dropped"
    with RayExecutor([prompts, pairs]) as executor:
        executor.start()
        out = [row for f in [executor.submit(rows[i:i + 2]) for i in range(0, 6, 2)] for row in f.result()]
        stats = executor.stats()["pairs"]
        assert [r["sample_id"] for r in out] == [r["sample_id"] for r in rows]
        assert out[2]["drop_reason"] == "already_dropped" and "image" not in out[2]  # passed through untouched
        for row in out[:2] + out[3:]:
            assert row["prompt"] == "a photo of cat." and row["counterfactual_prompt"] == "a photo of nothing."
            assert decode_image(row["image"]).size == (config.generator.width, config.generator.height)
        # two actors of one stage; which of them took which batch depends on when the second finished loading
        assert len(stats) == 2 and sum(s["rows"] for s in stats) == 6
        # the same actors serve later batches without reloading: their counters keep growing
        executor.submit(rows[:2]).result()
        assert sum(s["rows"] for s in executor.stats()["pairs"]) == 8
        assert len(executor.stats()["pairs"]) == 2
