"""Paired image generation: an image + counterfactual image from the same latents (SD 1.5, SDXL or FLUX).

``PairGenerator(config.generator)`` (:mod:`.pair_stage`) is the stage (rows in, rows out); under it the
tensor-level diffusers pipeline of ``generator.family``: ``PairedStableDiffusionPipeline`` (:mod:`.pair_pipeline`),
``PairedStableDiffusionXLPipeline`` (:mod:`.sdxl_pair_pipeline`) or ``PairedFluxPipeline``
(:mod:`.flux_pair_pipeline`, imported on use); ``components`` builds or loads the models (``tiny``, ``random``,
``pretrained``) and the schedulers.
"""

from magicseg_models.generation.components import (
    Components,
    WeightsError,
    build_tiny_t5_tokenizer,
    build_tiny_tokenizer,
    known_schedulers,
    load_components,
    make_scheduler,
)
from magicseg_models.generation.pair_common import GenerationInputError, PairPipelineOutput
from magicseg_models.generation.pair_pipeline import PairedStableDiffusionPipeline, load_pair_pipeline
from magicseg_models.generation.pair_stage import DROP_REASONS, PairGenerator

__all__ = [
    "DROP_REASONS",
    "Components",
    "GenerationInputError",
    "PairGenerator",
    "PairPipelineOutput",
    "PairedStableDiffusionPipeline",
    "WeightsError",
    "build_tiny_t5_tokenizer",
    "build_tiny_tokenizer",
    "known_schedulers",
    "load_components",
    "load_pair_pipeline",
    "make_scheduler",
]
