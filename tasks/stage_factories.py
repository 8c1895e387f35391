"""The build's stages, listed from config in one place, and how each is built inside its worker.

The ``*_stage`` functions are top-level so that Ray pickles them by name; each worker calls one once and keeps the
result, so a model loads once per worker for the whole run. ``build_stages`` is the pipeline: its order is the
order rows flow through.
"""

from __future__ import annotations

from magicseg_models.config import BuildConfig
from magicseg_models.pipeline import StageSpec
from magicseg_models.quality import check_quality_config
from magicseg_models.quality.dedup import QUALITY_STAGE


def build_stages(config: BuildConfig, api_key: str | None = None) -> list[StageSpec]:
    """prompts -> image pairs -> annotations -> quality scores (``quality.enabled``), each with its own resources
    and batch size. A quality section that cannot run is refused here, before any actor starts."""
    check_quality_config(config.quality)
    stages = [StageSpec("prompts", prompt_stage, (config, api_key), config.prompts.resources, "prompts"),
              StageSpec("pairs", pair_stage, (config,), config.generator.resources, "generator"),
              StageSpec("annotate", annotation_stage, (config,), config.annotate.resources, "annotate")]
    if config.quality.enabled:
        stages.append(StageSpec(QUALITY_STAGE, quality_stage, (config,), config.quality.resources, "quality"))
    return stages


def prompt_stage(config: BuildConfig, api_key: str | None):
    from magicseg_models.prompts.cache import PromptCache
    from magicseg_models.prompts.stage import PromptWriter, generator_token_counter
    from magicseg_models.vocabulary import Vocabulary

    cache = PromptCache(config.prompts.cache or config.out, config.storage.storage_options)
    return PromptWriter(config.prompts, Vocabulary.load(config.vocabulary.file), seed=config.seed, cache=cache,
                        token_counter=generator_token_counter(config.generator), api_key=api_key)


def pair_stage(config: BuildConfig):
    from magicseg_models.generation.pair_stage import PairGenerator

    return PairGenerator(config.generator)


def annotation_stage(config: BuildConfig):
    from magicseg_models.annotation.stage import Annotator
    from magicseg_models.vocabulary import Vocabulary

    return Annotator(config.annotate, Vocabulary.load(config.vocabulary.file))


def quality_stage(config: BuildConfig):
    from magicseg_models.quality.clip_score import QualityScorer

    return QualityScorer(config.quality)
