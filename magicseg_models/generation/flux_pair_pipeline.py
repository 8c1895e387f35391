"""Paired FLUX.1: an image and its counterfactual from the same noise, in one transformer batch.

FLUX is a rectified-flow transformer: the prompt reaches it as a T5-XXL token sequence (``max_sequence_length``
tokens: 256 for FLUX.1-schnell, as trained; 512 for dev) that joint attention mixes with the image tokens, plus
CLIP ViT-L's pooled vector (77 tokens read) that modulates every block. Latents are 16-channel, 8x downsampled and
packed into 2x2 patches, one token each (sides must divide by 16), with rotary position ids; the flow-matching
Euler scheduler walks sigmas from 1 to 1/steps.

FLUX.1-schnell has no classifier-free guidance (it is guidance-distilled: no unconditional branch, no guidance
input; dev takes the scale as an embedding instead), so a pair is 2 branches, ``[image 1..N | counterfactual
1..N]``, one transformer call per step. Batching does not save FLOPs there, as it does not for any pair: every
branch is a full forward pass. What it buys is the pair's shared fixed costs: the 12B transformer's weights are
read from memory once per step for both images instead of twice (the whole cost at small sizes, where a single
sequence leaves the GPU bandwidth-bound), half the kernel launches, one T5 and one CLIP call for both prompts, and
one scheduler walk; at 1024x1024 (4096 image tokens + 256 text tokens) one sequence already keeps the GPU's
matrix units busy, so the gain there is small and the pair costs about two single images (docs/generators.md).
``__call__`` is numerically diffusers' ``FluxPipeline`` run once per image on the same latents.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FluxPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from magicseg_models.generation.pair_common import (
    GenerationInputError,
    PairPipelineOutput,
    check_pair_inputs,
    convert_images,
    decode_in_chunks,
    finish_pairs,
    seeded_noise,
)


class PairedFluxPipeline(DiffusionPipeline):
    """FLUX.1 text-to-image for (prompt, counterfactual prompt, seed) jobs, paired in one batch.

    Components are diffusers' ``FluxPipeline`` ones, so ``PairedFluxPipeline(**flux.components)`` works on a
    loaded pipeline. ``max_sequence_length``: T5 tokens per prompt (256 for schnell, 512 for dev).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->transformer->vae"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, transformer, scheduler,
                 max_sequence_length: int = 256, **unused_components):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, transformer=transformer, scheduler=scheduler)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.max_sequence_length = max_sequence_length
        self.vae_decode_batch = 16
        self.source: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    # ------------------------------------------------------------------------------------------ helpers
    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(T5 hidden states (B, L, D), CLIP pooled (B, P), text position ids (L, 3)) of ``texts``."""
        texts = list(texts)
        clip_ids = self.tokenizer(texts, padding="max_length", max_length=self.tokenizer.model_max_length,
                                  truncation=True, return_tensors="pt").input_ids
        pooled = self.text_encoder(clip_ids.to(self.device), output_hidden_states=False).pooler_output
        t5_ids = self.tokenizer_2(texts, padding="max_length", max_length=self.max_sequence_length,
                                  truncation=True, return_tensors="pt").input_ids
        hidden = self.text_encoder_2(t5_ids.to(self.device), output_hidden_states=False)[0]
        text_ids = torch.zeros(hidden.shape[1], 3, device=self.device, dtype=self.text_encoder.dtype)
        return hidden.to(self.text_encoder_2.dtype), pooled.to(self.text_encoder.dtype), text_ids

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """Latent height and width (even: 2x2 patches)."""
        return 2 * (height // (self.vae_scale_factor * 2)), 2 * (width // (self.vae_scale_factor * 2))

    def check_inputs(self, prompt, counterfactual_prompt, seeds, height, width, num_inference_steps,
                     guidance_scale, latents=None, output_type="pt") -> None:
        """Raise :class:`GenerationInputError` (one line) for anything the pipeline would otherwise fix silently."""
        check_pair_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps, guidance_scale,
                          output_type, self.vae_scale_factor * 2, "the VAE's downsampling x 2x2 latent patches")
        if latents is not None:
            h, w = self.latent_size(height, width)
            expected = (len(prompt), (h // 2) * (w // 2), self.transformer.config.in_channels)
            if tuple(latents.shape) != expected:
                raise GenerationInputError(f"latents must have the packed shape {expected}, got "
                                           f"{tuple(latents.shape)}")

    # --------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: Sequence[str], counterfactual_prompt: Sequence[str], seeds: Sequence[int],
                 height: int = 1024, width: int = 1024, num_inference_steps: int = 4, guidance_scale: float = 0.0,
                 latents: torch.Tensor | None = None, output_type: str = "pt") -> PairPipelineOutput:
        """Generate ``len(prompt)`` pairs: image i from ``prompt[i]``, its counterfactual from
        ``counterfactual_prompt[i]``, both from the noise of ``seeds[i]`` (or the packed ``latents[i]``).

        ``guidance_scale`` goes to a guidance-embedding transformer (dev) and is ignored by schnell, which has
        none. ``initial_latents`` in the output are packed (N, tokens, 4 x channels), as ``FluxPipeline`` takes them.
        """
        # 1. Check inputs; raise rather than fix
        self.check_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps,
                          guidance_scale, latents, output_type)
        n = len(prompt)
        device = self.device

        # 2. Encode prompts: the 2N texts in one T5 and one CLIP call, [img | cf] order; no unconditional branch
        hidden, pooled, text_ids = self.encode_prompt([*prompt, *counterfactual_prompt])

        # 3. Prepare latents: each job's noise from its own seeded generator, packed into 2x2 patches; shared by
        #    the image and its counterfactual
        channels = self.transformer.config.in_channels // 4
        h, w = self.latent_size(height, width)
        if latents is None:
            noise, _ = seeded_noise(seeds, (channels, h, w), device, hidden.dtype)
            initial = FluxPipeline._pack_latents(noise, n, channels, h, w)
        else:
            initial = latents.to(device=device, dtype=hidden.dtype)
        image_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, device, hidden.dtype)
        x = torch.cat([initial, initial])  # [images | counterfactuals]

        # 4. Prepare timesteps: sigmas 1 .. 1/steps, shifted by image size where the scheduler asks for it
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        sigmas = None if scheduler.config.get("use_flow_sigmas") else \
            np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(initial.shape[1], scheduler.config.get("base_image_seq_len", 256),
                             scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                             scheduler.config.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(scheduler, num_inference_steps, device, sigmas=sigmas, mu=mu)
        scheduler.set_begin_index(0)
        guidance = None
        if self.transformer.config.guidance_embeds:  # dev: the scale is an input, not a second branch
            guidance = torch.full([2 * n], guidance_scale, device=device, dtype=torch.float32)

        # 5. Denoising loop: ONE transformer call per timestep for the 2N branches
        calls = 0
        for t in self.progress_bar(timesteps):
            with self.transformer.cache_context("cond"):
                velocity = self.transformer(hidden_states=x, timestep=t.expand(2 * n).to(x.dtype) / 1000,
                                            guidance=guidance, pooled_projections=pooled,
                                            encoder_hidden_states=hidden, txt_ids=text_ids, img_ids=image_ids,
                                            joint_attention_kwargs={}, return_dict=False)[0]
            calls += 1
            x = scheduler.step(velocity, t, x, return_dict=False)[0]

        if output_type == "latent":
            return PairPipelineOutput(x[:n], x[n:], initial, [(True, True)] * n, None, calls)

        # 6. Unpack and decode all 2N images
        x = FluxPipeline._unpack_latents(x, height, width, self.vae_scale_factor)
        x = (x / self.vae.config.scaling_factor + self.vae.config.shift_factor).to(self.vae.dtype)
        images, finite = finish_pairs(decode_in_chunks(self.vae, x, self.vae_decode_batch), n)

        # 7. Convert the output (FLUX ships no safety checker: nsfw is None)
        images = convert_images(images, output_type)
        return PairPipelineOutput(images[:n], images[n:], initial, finite, None, calls)
