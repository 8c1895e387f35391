"""Run health figures against build.health: pure arithmetic, the presets' choices, and the one-line error."""

from __future__ import annotations

import pytest

from magicseg_models.config import HealthConfig, load_config
from magicseg_models.errors import ConfigError, HealthError, MagicSegError
from magicseg_models.health import check, figures, llm_prompt_share


def _by_name(found):
    return {f.name: f for f in found}


def test_drop_rates_are_shares_of_processed_rows_and_all_sums_every_reason():
    config = HealthConfig(min_samples=10, max_drop_rate={"all": 0.5, "class_not_detected": 0.3})
    found = _by_name(figures(config, 20, {"class_not_detected": 4, "nsfw": 2}))
    assert found["drop_rate.class_not_detected"].value == pytest.approx(0.2)
    assert found["drop_rate.all"].value == pytest.approx(0.3)
    assert all(f.checked and f.ok for f in found.values())


def test_a_named_reason_is_reported_before_the_total():
    config = HealthConfig(min_samples=1, max_drop_rate={"all": 0.5, "prompt_failed": 0.1})
    with pytest.raises(HealthError, match="drop_rate.prompt_failed is 1.000"):
        check(config, 10, {"prompt_failed": 10})


def test_a_breach_raises_one_line_naming_the_figure_and_its_limit():
    config = HealthConfig(min_samples=8, max_drop_rate={"prompt_failed": 0.1})
    with pytest.raises(HealthError) as err:
        check(config, 8, {"prompt_failed": 8})
    message = str(err.value)
    assert isinstance(err.value, MagicSegError) and "\n" not in message
    assert "drop_rate.prompt_failed is 1.000" in message and "0.1" in message
    assert "build.health.max_drop_rate.prompt_failed" in message


def test_nothing_is_held_against_the_run_before_min_samples():
    config = HealthConfig(min_samples=50, max_drop_rate={"prompt_failed": 0.1})
    found = check(config, 49, {"prompt_failed": 49})  # no raise
    assert not found[0].checked and found[0].value == pytest.approx(1.0)
    with pytest.raises(HealthError):
        check(config, 50, {"prompt_failed": 50})


def test_llm_prompt_share_counts_fallbacks_not_chosen_templates():
    assert llm_prompt_share({"llm": 9, "template_fallback": 1}) == pytest.approx(0.9)
    assert llm_prompt_share({"template": 16}) is None  # the template backend asked no LLM
    assert llm_prompt_share({}) is None
    config = HealthConfig(min_samples=1, max_drop_rate={}, min_llm_prompt_share=0.9)
    with pytest.raises(HealthError, match=r"llm_prompt_share is 0\.000 .* below its minimum 0\.9 "
                                          r"\(build\.health\.min_llm_prompt_share\)"):
        check(config, 16, {}, {"template_fallback": 16})
    assert check(config, 16, {}, {"template": 16})[0].ok  # nothing to measure is not a breach


def test_disabled_health_reports_figures_but_never_raises():
    config = HealthConfig(enabled=False, min_samples=1)
    found = check(config, 100, {"class_not_detected": 100}, {"template_fallback": 100})
    assert found and not any(f.checked for f in found)
    assert {f.name for f in found} >= {"drop_rate.all", "drop_rate.class_not_detected", "llm_prompt_share"}
    assert found[0].as_dict()["ok"] is True


def test_presets_turn_health_on_for_sd15_and_off_for_random_weights():
    sd15 = load_config("build", "sd15").health
    assert sd15.enabled and sd15.min_llm_prompt_share == 0.9 and sd15.max_drop_rate["prompt_failed"] == 0.1
    assert not load_config("build", "tiny").health.enabled
    assert not load_config("build", "sd15-random").health.enabled


def test_ceilings_must_be_shares():
    with pytest.raises(ConfigError, match="max_drop_rate"):
        load_config("build", "tiny", overrides=["health.max_drop_rate={all: 1.5}"])


@pytest.mark.parametrize("preset", ["sd15", "sdxl", "flux-schnell"])
def test_every_quality_drop_has_its_own_ceiling_in_the_healthy_presets(preset):
    """A clip_score_min set off CLIP's scale drops a third of a run: the run stops naming low_clip_score, long
    before 'all' (0.7) would notice; so do mask thresholds and a prompt stage that repeats itself (duplicates)."""
    from magicseg_models.annotation import DROP_LOW_MASK_QUALITY
    from magicseg_models.quality.clip_score import DROP_LOW_CLIP_SCORE
    from magicseg_models.quality.dedup import DROP_DUPLICATE

    health = load_config("build", preset).health
    assert health.max_drop_rate == HealthConfig().max_drop_rate  # the presets spell out the defaults
    for reason, drops in ((DROP_LOW_MASK_QUALITY, 31), (DROP_LOW_CLIP_SCORE, 31), (DROP_DUPLICATE, 11)):
        with pytest.raises(HealthError, match=f"drop_rate.{reason} is"):
            check(health, 100, {reason: drops})
        check(health, 100, {reason: drops - 2})  # just under the ceiling: healthy
