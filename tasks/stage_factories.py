"""How each build stage is constructed inside its Ray actor (top-level functions: Ray pickles them by name).

Every stage is a plain ``magicseg_models`` class; the actor calls one of these once and keeps the result, so a
model loads once per actor for the whole run.
"""

from __future__ import annotations

from magicseg_models.config import BuildConfig


def prompt_stage(config: BuildConfig, api_key: str | None):
    from magicseg_models.prompts.cache import PromptCache
    from magicseg_models.prompts.stage import PromptWriter, generator_token_counter
    from magicseg_models.vocabulary import Vocabulary

    cache = PromptCache(config.prompts.cache or config.out, config.storage.storage_options)
    return PromptWriter(config.prompts, Vocabulary.load(config.vocabulary.file), seed=config.seed, cache=cache,
                        token_counter=generator_token_counter(config.generator), api_key=api_key)


def pair_stage(config: BuildConfig):
    from magicseg_models.generation.pair_pipeline import PairGenerator

    return PairGenerator(config.generator)


def annotation_stage(config: BuildConfig):
    from magicseg_models.annotation.stage import Annotator
    from magicseg_models.vocabulary import Vocabulary

    return Annotator(config.annotate, Vocabulary.load(config.vocabulary.file))
