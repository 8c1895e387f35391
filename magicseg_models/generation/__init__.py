"""Paired image generation: Stable Diffusion 1.x image + counterfactual image from the same latents.

``PairGenerator(config.generator)`` (:mod:`.pair_stage`) is the stage (rows in, rows out);
``PairedStableDiffusionPipeline`` (:mod:`.pair_pipeline`) is the tensor-level diffusers pipeline under it;
``components`` builds or loads the models (``tiny``, ``random``, ``pretrained``) and the schedulers.
"""

from magicseg_models.generation.components import (
    Components,
    WeightsError,
    build_tiny_tokenizer,
    known_schedulers,
    load_components,
    make_scheduler,
)
from magicseg_models.generation.pair_pipeline import (
    GenerationInputError,
    PairedStableDiffusionPipeline,
    PairPipelineOutput,
    load_pair_pipeline,
)
from magicseg_models.generation.pair_stage import DROP_REASONS, PairGenerator

__all__ = [
    "DROP_REASONS",
    "Components",
    "GenerationInputError",
    "PairGenerator",
    "PairPipelineOutput",
    "PairedStableDiffusionPipeline",
    "WeightsError",
    "build_tiny_tokenizer",
    "known_schedulers",
    "load_components",
    "load_pair_pipeline",
    "make_scheduler",
]
