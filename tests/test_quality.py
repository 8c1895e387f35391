"""The quality stage (CLIP image-prompt score, threshold, dedup fingerprints) and the near-duplicate rule, with the
real tiny models; dedup end to end through ``build_shard`` on a local Ray, twice."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from magicseg_models.config import load_config
from magicseg_models.dataset.codecs import encode_image
from magicseg_models.errors import ConfigError
from magicseg_models.quality import DROP_DUPLICATE, DedupRule, ShardDeduplicator, later_copies
from magicseg_models.quality.clip_score import DROP_LOW_CLIP_SCORE, QualityScorer, clip_pixels
from magicseg_models.quality.dedup import FINGERPRINT, phash
from tasks.stage_factories import build_stages

CLIP = DedupRule("clip", 0.95)
PHASH = DedupRule("phash", 4)


def _unit(*values: float) -> np.ndarray:
    v = np.asarray(values, dtype=np.float32)
    return v / np.linalg.norm(v)


def _picture(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    waves = [np.sin(xx / rng.uniform(3, 9) + rng.uniform(0, 6)) * np.cos(yy / rng.uniform(3, 9)) for _ in range(3)]
    return (np.stack(waves, -1) * 110 + 128).astype(np.uint8)


def _rows(prompts: list[str], seeds: list[int]) -> list[dict]:
    return [{"sample_id": f"s{i}", "prompt": p, "image": encode_image(_picture(s), "png")}
            for i, (p, s) in enumerate(zip(prompts, seeds))]


# ------------------------------------------------------------------------------------------- the dedup rule
@pytest.mark.parametrize("rule, fingerprints, earlier, expected", [
    # cosine at or above the threshold is a copy; the first match in order is named
    (CLIP, [_unit(1, 0), _unit(1, 0.2), _unit(0, 1)], [], [None, 0, None]),
    (CLIP, [_unit(0, 1), _unit(1, 0.33)], [_unit(1, 0.32)], [None, 0]),
    (CLIP, [_unit(1, 0.34)], [_unit(1, 0)], [None]),  # cos 0.947 < 0.95: different images
    # a copy of a copy is measured against the image that stays, not against the dropped one: the third is
    # close to the second (cos 0.97) but not to the first (0.86), so it is new
    (CLIP, [_unit(1, 0), _unit(1, 0.3), _unit(1, 0.6)], [], [None, 0, None]),
    (CLIP, [_unit(1, 0), _unit(0, 1), _unit(0.1, 1)], [], [None, None, 1]),
    # phash: Hamming distance at or below the threshold
    (PHASH, [0xFF0E, 0x000F, 0x001F], [0xFF0F], [0, None, 1]),
    (PHASH, [0, 0b11111, 0b1111], [], [None, None, 0]),  # 5 bits apart: new; 4 bits: a copy
])
def test_later_copies_names_the_earlier_image(rule, fingerprints, earlier, expected):
    assert later_copies(fingerprints, earlier, rule) == expected


def test_thresholds_default_from_the_config_and_a_cosine_above_one_is_refused():
    quality = load_config("build", "tiny", overrides=["quality.dedup.method=phash"]).quality
    assert DedupRule.from_config(quality.dedup) == DedupRule("phash", 4.0)
    quality = load_config("build", "tiny", overrides=["quality.dedup.method=clip"]).quality
    assert DedupRule.from_config(quality.dedup) == DedupRule("clip", 0.95)
    assert DedupRule.from_config(load_config("build", "tiny").quality.dedup) is None
    bad = load_config("build", "tiny", overrides=["quality.dedup.method=clip", "quality.dedup.threshold=4"])
    with pytest.raises(ConfigError, match="quality.dedup.threshold"):
        build_stages(bad)


def test_the_shard_deduplicator_keeps_first_copies_across_batches():
    dedup = ShardDeduplicator(PHASH)
    first = [{"sample_id": "a", FINGERPRINT: 0}, {"sample_id": "b", "drop_reason": "class_not_detected:cat"},
             {"sample_id": "c", FINGERPRINT: 0xF0F0}]
    assert dedup.drop_copies(first) == 0
    second = [{"sample_id": "d", FINGERPRINT: 1}, {"sample_id": "e", FINGERPRINT: 0xFFFF_0000}]
    assert dedup.drop_copies(second) == 1
    assert [r.get("drop_reason") for r in first + second] == [None, "class_not_detected:cat", None,
                                                             DROP_DUPLICATE, None]
    assert list(dedup.kept) == [0, 0xF0F0, 0xFFFF_0000]
    with pytest.raises(Exception, match="no phash fingerprint"):
        dedup.drop_copies([{"sample_id": "f"}])


def test_phash_sees_a_recompressed_copy_and_tells_pictures_apart():
    import io

    picture = Image.fromarray(_picture(1, 128, 128))
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=70)
    copy = Image.open(buf).convert("RGB")
    assert bin(phash(picture) ^ phash(copy)).count("1") <= 4
    assert bin(phash(picture) ^ phash(Image.fromarray(_picture(2, 128, 128)))).count("1") > 10


# ------------------------------------------------------------------------------------------- the stage
@pytest.fixture(scope="module")
def scorer() -> QualityScorer:
    return QualityScorer(load_config("build", "tiny").quality)


def test_pixels_match_clips_own_preprocessing():
    from transformers import CLIPImageProcessor

    images = [_picture(3, 300, 400), _picture(4, 300, 400), _picture(5, 256, 200)]  # two sizes in one batch
    ours = clip_pixels(images, 224, torch.device("cpu"))
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    reference = processor(images=[Image.fromarray(im) for im in images], return_tensors="pt")["pixel_values"]
    # the processor rounds to uint8 after resizing; that rounding is the whole difference
    assert ours.shape == reference.shape
    assert (ours - reference).abs().max() < 0.03 and (ours - reference).abs().mean() < 0.005


def test_clip_score_is_the_image_prompt_cosine_of_the_clip_model(scorer):
    rows = _rows(["a cat on a sofa", "a red bus in the rain", "a dog"], [1, 2, 3])
    out = scorer(rows)
    images = [_picture(s) for s in (1, 2, 3)]
    with torch.no_grad():
        pixels = clip_pixels(images, scorer.image_size, torch.device("cpu"))
        image = torch.nn.functional.normalize(scorer.visual_projection(scorer.vision(pixel_values=pixels)
                                                                       .pooler_output), dim=-1)
        ids = scorer.text.tokenizer([r["prompt"] for r in rows], padding=True, return_tensors="pt")["input_ids"]
        text = torch.nn.functional.normalize(scorer.text.text_projection(
            scorer.text.text_model(input_ids=ids).pooler_output), dim=-1)
    expected = (image * text).sum(-1).numpy()
    scores = np.array([row["clip_score"] for row in out], dtype=np.float32)
    assert all(isinstance(row["clip_score"], float) and -1 <= row["clip_score"] <= 1 for row in out)
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert FINGERPRINT not in out[0]  # dedup off: no fingerprint travels with the rows
    assert scorer.stats()["scored"] >= 3


def test_a_prompt_past_77_tokens_is_scored_on_its_first_77(scorer):
    long = "a cat " + " ".join(["on a red sofa under a brass lamp"] * 30)
    tokenizer = scorer.text.tokenizer
    ids = tokenizer(long)["input_ids"]
    assert len(ids) > 77
    cut = tokenizer.decode(ids[1:76])  # what fits between the start and end tokens
    [a, b] = scorer(_rows([long, cut], [7, 7]))
    assert a["clip_score"] == pytest.approx(b["clip_score"], abs=1e-5)


def test_a_score_below_the_minimum_drops_the_sample_and_dropped_rows_pass_untouched(scorer):
    rows = _rows(["a cat on a sofa", "a red bus in the rain", "a dog"], [1, 2, 3])
    scores = sorted(row["clip_score"] for row in scorer(rows))
    config = load_config("build", "tiny", overrides=[f"quality.clip_score_min={(scores[0] + scores[1]) / 2}"])
    strict = QualityScorer(config.quality)
    rows.append({"sample_id": "gone", "drop_reason": "class_not_detected:cat"})
    out = strict(rows)
    assert [r.get("drop_reason") for r in out].count(DROP_LOW_CLIP_SCORE) == 1
    assert min(out[:3], key=lambda r: r["clip_score"])["drop_reason"] == DROP_LOW_CLIP_SCORE
    assert out[3] == {"sample_id": "gone", "drop_reason": "class_not_detected:cat"}
    assert strict.stats()["dropped"] == {DROP_LOW_CLIP_SCORE: 1}
    assert strict.settings["clip_score_min"] == config.quality.clip_score_min


# ------------------------------------------------------------------------------------------- the pipeline
def test_the_stage_follows_annotate_and_leaves_with_quality_enabled_false():
    assert [s.name for s in build_stages(load_config("build", "tiny"))] == ["prompts", "pairs", "annotate",
                                                                           "quality"]
    off = load_config("build", "tiny", overrides=["quality.enabled=false"])
    assert [s.name for s in build_stages(off)] == ["prompts", "pairs", "annotate"]


@pytest.mark.parametrize("override", ["quality.dedup.method=phash", "quality.clip_score_min=0.2"])
def test_dedup_or_a_threshold_without_the_stage_is_refused_in_one_line(override):
    config = load_config("build", "tiny", overrides=["quality.enabled=false", override])
    with pytest.raises(ConfigError) as err:
        build_stages(config)
    assert "needs quality.enabled=true" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("method", ["clip", "phash"])
def test_the_stage_gives_each_kept_row_its_fingerprint(method):
    config = load_config("build", "tiny", overrides=[f"quality.dedup.method={method}"])
    scorer = QualityScorer(config.quality)
    rows = _rows(["a cat", "a cat", "a dog"], [1, 1, 2])
    rows[2]["drop_reason"] = "class_not_detected:dog"
    a, b, dropped = scorer(rows)
    assert FINGERPRINT not in dropped
    if method == "clip":
        assert a[FINGERPRINT].shape == (scorer.visual_projection.out_features,)
        assert float(np.linalg.norm(a[FINGERPRINT])) == pytest.approx(1.0, abs=1e-5)
        assert float(a[FINGERPRINT] @ b[FINGERPRINT]) == pytest.approx(1.0, abs=1e-5)
    else:
        assert a[FINGERPRINT] == b[FINGERPRINT] == phash(Image.fromarray(_picture(1)))
    assert scorer.settings["dedup"] == DedupRule.from_config(config.quality.dedup).as_dict()


@pytest.mark.slow
def test_two_identical_generations_keep_the_first_and_drop_the_second_on_every_run(local_ray, tmp_path):
    """Jobs 1 and 3 share seed, classes and variant: the same prompt and the same image. Through the real tiny
    stages the later one is a ``duplicate``, in two separate builds of the shard; the others stay. (phash: random
    tiny CLIP embeds all noise images alike, cosines near 0.99, so ``clip`` would say little here.)"""
    from magicseg_models.dataset.store import DatasetStore
    from magicseg_models.planning import Job, Shard
    from tasks.executor import RayExecutor
    from tasks.shard_work import build_shard

    method = "phash"
    config = load_config("build", "tiny", overrides=["prompts.backend=template", f"quality.dedup.method={method}"])
    seeds = [11, 22, 33, 22, 44]
    jobs = tuple(Job(i, f"dup-{i}", (0,), ("cat",), seed, 0) for i, seed in enumerate(seeds))
    outcomes = []
    with RayExecutor(build_stages(config)) as executor:
        executor.start()
        settings = executor.settings()
        assert settings["quality"]["dedup"]["method"] == method
        for run in range(2):
            seen: list[dict] = []
            info = build_shard(DatasetStore(str(tmp_path / f"run{run}")), Shard(0, jobs), executor,
                               settings=settings, on_batch=seen.extend)
            outcomes.append((info.dropped, sorted(r["sample_id"] for r in seen if not r.get("drop_reason"))))
            # the run's counters see the drop (on_batch comes after the decision)
            assert {r["sample_id"]: r["drop_reason"] for r in seen if r.get("drop_reason")} == info.dropped
    first, second = outcomes
    assert first == second
    dropped, kept = first
    assert dropped.get("dup-3") == DROP_DUPLICATE and "dup-1" in kept
    assert not [sid for sid, reason in dropped.items() if reason == DROP_DUPLICATE and sid != "dup-3"]
