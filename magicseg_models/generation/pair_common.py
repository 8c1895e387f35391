"""What the paired pipelines of every family share (SD 1.5, SDXL, FLUX): input checks, per-job seeded noise,
scheduler step arguments, VAE decode in chunks, NaN/inf flags and output conversion, and their output type.

Kept apart from the pipelines so that each family's pipeline module imports it and none imports another.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from magicseg_models.errors import MagicSegError

MAX_SEED = 2**64  # torch generators take seeds in [0, 2**64)
OUTPUT_TYPES = ("pt", "np", "uint8", "latent")


class GenerationInputError(MagicSegError):
    """A generation request is malformed: bad size, step count, guidance, prompts or seeds."""


@dataclass
class PairPipelineOutput:
    """What a paired pipeline (:class:`PairedStableDiffusionPipeline` and the SDXL and FLUX ones) returns for N
    pairs.

    ``images`` / ``counterfactual_images``: ``pt`` (N, 3, H, W) float in [0, 1] on the pipeline's device; ``np``
    (N, H, W, 3) float32 in [0, 1]; ``uint8`` (N, H, W, 3) uint8 arrays; ``latent`` the final latents.
    ``initial_latents``: (N, C, H/8, W/8), the noise pair i started from (before ``init_noise_sigma``).
    ``finite``: per pair, whether (image, counterfactual) decoded without NaN/inf.
    ``nsfw``: per pair, the safety checker's flags, or None when no checker is loaded.
    ``unet_calls``: denoiser calls made (the UNet's, or FLUX's transformer's), whatever the number of pairs.
    The SDXL and FLUX pipelines return the same output (FLUX's ``initial_latents`` are packed 2x2 patches).
    """

    images: Any
    counterfactual_images: Any
    initial_latents: torch.Tensor
    finite: list[tuple[bool, bool]]
    nsfw: list[tuple[bool, bool]] | None
    unet_calls: int


def is_integer(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


# ------------------------------------------------------------------- shared by the SD 1.5, SDXL and FLUX pipelines
def check_pair_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps, guidance_scale,
                      output_type, multiple: int, why: str) -> None:
    """Raise :class:`GenerationInputError` (one line) for a malformed paired request; sizes must divide by
    ``multiple`` (``why`` says what imposes it)."""
    for name, texts in (("prompt", prompt), ("counterfactual_prompt", counterfactual_prompt)):
        if isinstance(texts, str) or not isinstance(texts, Sequence):
            raise GenerationInputError(f"{name} must be a list of strings, got {type(texts).__name__}")
        bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
        if bad is not None:
            raise GenerationInputError(f"{name}[{bad}] must be a string, got {type(texts[bad]).__name__}")
    if not prompt:
        raise GenerationInputError("no jobs: prompt is an empty list")
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise GenerationInputError(f"seeds must be a list of integers, got {type(seeds).__name__}")
    if not len(prompt) == len(counterfactual_prompt) == len(seeds):
        raise GenerationInputError(f"{len(prompt)} prompts, {len(counterfactual_prompt)} counterfactual "
                                   f"prompts and {len(seeds)} seeds: one of each per job")
    for i, seed in enumerate(seeds):
        if not is_integer(seed) or not 0 <= int(seed) < MAX_SEED:
            raise GenerationInputError(f"seeds[{i}] must be an integer in [0, 2**64), got {seed!r}")
    for name, size in (("height", height), ("width", width)):
        if not is_integer(size) or size < multiple or size % multiple:
            raise GenerationInputError(f"{name} must be a positive multiple of {multiple} ({why}), got {size!r}")
    if not is_integer(num_inference_steps) or num_inference_steps < 1:
        raise GenerationInputError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) \
            or not np.isfinite(guidance_scale) or guidance_scale < 0:
        raise GenerationInputError(f"guidance_scale must be a finite number >= 0, got {guidance_scale!r}")
    if output_type not in OUTPUT_TYPES:
        raise GenerationInputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")


def seeded_noise(seeds: Sequence[int], shape_of_one: tuple[int, ...], device, dtype):
    """One CPU generator per job, seeded with its seed alone: job i's noise does not depend on the batch.

    Drawn like diffusers' ``randn_tensor`` with that generator (on the CPU, then moved), so a plain pipeline given
    ``generator=torch.Generator().manual_seed(seed)`` draws the same noise. Returns the noise and the generators
    (advanced past the draw; stochastic schedulers continue from them).
    """
    generators = [torch.Generator(device="cpu").manual_seed(int(seed)) for seed in seeds]
    return randn_tensor((len(seeds), *shape_of_one), generator=generators, device=device, dtype=dtype), generators


def decode_in_chunks(vae, latents: torch.Tensor, batch: int) -> torch.Tensor:
    """VAE decode of already unscaled latents, ``batch`` images per call (bounds activation memory)."""
    return torch.cat([vae.decode(chunk, return_dict=False)[0] for chunk in latents.split(batch)])


def finish_pairs(decoded: torch.Tensor, n: int) -> tuple[torch.Tensor, list[tuple[bool, bool]]]:
    """Images in [0, 1] from VAE output in [-1, 1], and per pair whether both decoded finite (checked before the
    clamp hides NaN/inf)."""
    flags = torch.isfinite(decoded).flatten(1).all(1).tolist()
    return (decoded / 2 + 0.5).clamp(0, 1), list(zip(flags[:n], flags[n:]))


def extra_step_kwargs(scheduler, generators: list[torch.Generator], eta: float) -> dict:
    """``eta`` and per-branch generators for schedulers that take them.

    Branch order is [images 1..N, counterfactuals 1..N]; a counterfactual gets a copy of its image's generator,
    so ancestral schedulers add the same noise to both images of a pair, and each image gets exactly the noise
    a plain pipeline seeded with the job's seed would add.
    """
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generators + [_clone_generator(g) for g in generators]
    return kwargs


def convert_images(images: torch.Tensor, output_type: str):
    """``pt`` as is, ``np`` float32 NHWC, ``uint8`` NHWC rounded like diffusers' numpy_to_pil (on the device:
    4x less to copy)."""
    if output_type == "np":
        return images.float().permute(0, 2, 3, 1).cpu().numpy()
    if output_type == "uint8":
        images = images.nan_to_num(0.0).float().mul(255).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()
    return images
