"""Stage actors on a local Ray: the model loads once per actor, batches stream through, drops pass through."""

from __future__ import annotations

import ray

from magicseg_models.config import load_config
from magicseg_models.dataset.codecs import decode_image
from magicseg_models.vocabulary import Vocabulary
from tasks.ray_runtime import actor_options
from tasks.stage_factories import pair_stage, prompt_stage
from tasks.stage_pool import StagePool


def test_gpu_share_only_where_the_cluster_has_gpus():
    res = load_config("build", "sd15").generator.resources
    assert actor_options(res, gpus_available=0)["num_gpus"] == 0
    assert actor_options(res, gpus_available=8)["num_gpus"] == res.num_gpus == 1.0


def test_pairs_stream_through_actor_pools(local_ray, tmp_path):
    config = load_config("build", "tiny", overrides=["prompts.backend=template", f"out={tmp_path}/ds"])
    prompts = StagePool.for_stage("prompts", prompt_stage, (config, None), config.prompts.resources, 0)
    pairs = StagePool(name="pairs", factory=pair_stage, args=(config,), actors=2,
                      options=actor_options(config.generator.resources, 0))
    cat = Vocabulary.default().resolve("cat")
    rows = [{"sample_id": f"s0-{i}", "class_ids": [cat.id], "class_names": [cat.name], "seed": i, "variant": i}
            for i in range(6)]
    rows[2]["drop_reason"] = "already_dropped"
    refs = [pairs.submit(prompts.submit(rows[i:i + 2])) for i in range(0, 6, 2)]
    out = [row for batch in ray.get(refs) for row in batch]
    assert [r["sample_id"] for r in out] == [r["sample_id"] for r in rows]
    assert out[2]["drop_reason"] == "already_dropped" and "image" not in out[2]  # passed through untouched
    for row in out[:2] + out[3:]:
        assert row["prompt"] == "a photo of cat." and row["counterfactual_prompt"] == "a photo of nothing."
        assert decode_image(row["image"]).size == (config.generator.width, config.generator.height)
    stats = pairs.stats()
    assert sum(s["rows"] for s in stats) == 6 and all(s["rows"] > 0 for s in stats)  # both actors worked
    # the same actors serve later batches without reloading: their counters keep growing
    ray.get(pairs.submit(prompts.submit(rows[:2])))
    assert sum(s["rows"] for s in pairs.stats()) == 8
    pairs.shutdown()
    prompts.shutdown()
