"""Paired Stable Diffusion XL: an image and its counterfactual from the same latents, in one UNet batch.

The SD 1.5 pairing (:mod:`magicseg_models.generation.pair_pipeline`) carried over to SDXL's conditioning: two CLIP
text towers (ViT-L/14 and OpenCLIP ViT-bigG/14, each reading 77 tokens) whose penultimate hidden states are
concatenated into the UNet's cross-attention input, the second tower's pooled projection, and the size/crop ids
(``original_size``, ``crops_coords_top_left``, ``target_size``) as the UNet's ``added_cond_kwargs``. With
classifier-free guidance one UNet call per step holds the 4N branches of N pairs::

    [uncond image 1..N | uncond counterfactual 1..N | cond image 1..N | cond counterfactual 1..N]

The unconditional branches are zeros, as diffusers' pipeline does for SDXL base (``force_zeros_for_empty_prompt``)
when no negative prompt is given; otherwise the empty prompt's embedding, computed once per model load.
``__call__`` is numerically diffusers' ``StableDiffusionXLPipeline`` run once per image on the same latents
(without its invisible watermark, which alters pixels and is no part of the sample).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from magicseg_models.generation.pair_common import (
    GenerationInputError,
    PairPipelineOutput,
    check_pair_inputs,
    convert_images,
    decode_in_chunks,
    extra_step_kwargs,
    finish_pairs,
    seeded_noise,
)


class PairedStableDiffusionXLPipeline(DiffusionPipeline):
    """SDXL text-to-image for (prompt, counterfactual prompt, seed) jobs, paired in one batch.

    Components are diffusers' ``StableDiffusionXLPipeline`` ones, so ``PairedStableDiffusionXLPipeline(
    **sdxl.components)`` works on a loaded pipeline (``image_encoder``/``feature_extractor`` are not used).
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"

    def __init__(self, vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler,
                 force_zeros_for_empty_prompt: bool = True, **unused_components):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
                              tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._negative: tuple[torch.Tensor, torch.Tensor] | None = None
        self._negative_lock = threading.Lock()
        self.vae_decode_batch = 16
        self.source: dict[str, Any] = {}

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    # ------------------------------------------------------------------------------------------ helpers
    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states (B, 77, D1 + D2), pooled (B, P)) of ``texts``: both towers' penultimate layers, the
        second tower's projected pooled output, each tokenizer padding and truncating to its own 77 tokens."""
        hidden, pooled = [], None
        for tokenizer, encoder in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tokenizer(list(texts), padding="max_length", max_length=tokenizer.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            out = encoder(ids.to(self.device), output_hidden_states=True)
            if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds first
                pooled = out[0]
            hidden.append(out.hidden_states[-2])
        dtype = self.text_encoder_2.dtype
        return torch.cat(hidden, dim=-1).to(dtype=dtype), pooled.to(dtype=dtype)

    @property
    def negative_prompt_embeds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The unconditional (hidden states (1, 77, D), pooled (1, P)): zeros for SDXL base, else the empty
        prompt's; computed on first use, then reused for every batch."""
        if self._negative is None:
            with self._negative_lock:
                if self._negative is None:
                    hidden, pooled = self.encode_prompt([""])
                    if self.config.force_zeros_for_empty_prompt:
                        hidden, pooled = torch.zeros_like(hidden), torch.zeros_like(pooled)
                    self._negative = hidden, pooled
        return self._negative

    def add_time_ids(self, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """SDXL's micro-conditioning (1, 6): original size = target size = the image, no crop."""
        ids = [height, width, 0, 0, height, width]
        expected = self.unet.add_embedding.linear_1.in_features
        passed = self.unet.config.addition_time_embed_dim * len(ids) + self.text_encoder_2.config.projection_dim
        if expected != passed:
            raise GenerationInputError(f"the UNet expects added embeddings of width {expected}, the text encoder "
                                       f"and time ids give {passed}: unet and text_encoder_2 do not belong together")
        return torch.tensor([ids], dtype=dtype, device=self.device)

    def check_inputs(self, prompt, counterfactual_prompt, seeds, height, width, num_inference_steps,
                     guidance_scale, latents=None, output_type="pt") -> None:
        """Raise :class:`GenerationInputError` (one line) for anything the pipeline would otherwise fix silently."""
        check_pair_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps, guidance_scale,
                          output_type, self.vae_scale_factor, "the VAE's downsampling")
        if latents is not None:
            scale = self.vae_scale_factor
            expected = (len(prompt), self.unet.config.in_channels, height // scale, width // scale)
            if tuple(latents.shape) != expected:
                raise GenerationInputError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    # --------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: Sequence[str], counterfactual_prompt: Sequence[str], seeds: Sequence[int],
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 30,
                 guidance_scale: float = 5.0, latents: torch.Tensor | None = None, output_type: str = "pt",
                 eta: float = 0.0) -> PairPipelineOutput:
        """Generate ``len(prompt)`` pairs: image i from ``prompt[i]``, its counterfactual from
        ``counterfactual_prompt[i]``, both from the latents of ``seeds[i]`` (or ``latents[i]`` when given)."""
        # 0. Default height and width to the UNet's sample size
        height = self.unet.config.sample_size * self.vae_scale_factor if height is None else height
        width = self.unet.config.sample_size * self.vae_scale_factor if width is None else width

        # 1. Check inputs; raise rather than fix
        self.check_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps,
                          guidance_scale, latents, output_type)
        n = len(prompt)
        device = self.device
        do_cfg = guidance_scale > 1.0

        # 2. Encode prompts: the 2N conditional texts in one call per tower; [img | cf] order
        hidden, pooled = self.encode_prompt([*prompt, *counterfactual_prompt])
        time_ids = self.add_time_ids(height, width, hidden.dtype)
        if do_cfg:
            neg_hidden, neg_pooled = self.negative_prompt_embeds
            hidden = torch.cat([neg_hidden.expand(2 * n, -1, -1), hidden])
            pooled = torch.cat([neg_pooled.expand(2 * n, -1), pooled])
        added_cond_kwargs = {"text_embeds": pooled, "time_ids": time_ids.repeat(hidden.shape[0], 1)}

        # 3. Prepare timesteps on a fresh copy of the scheduler (schedulers keep per-run state)
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)

        # 4. Prepare latents: one seeded generator per job; image and counterfactual share them
        shape = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        initial, generators = seeded_noise(seeds, shape, device, hidden.dtype)
        if latents is not None:
            initial = latents.to(device=device, dtype=hidden.dtype)
        x = torch.cat([initial, initial]) * scheduler.init_noise_sigma  # [images | counterfactuals]

        # 5. Prepare extra step kwargs (eta, per-branch generators for stochastic schedulers)
        step_kwargs = extra_step_kwargs(scheduler, generators, eta)

        # 6. Denoising loop: ONE UNet call per timestep for all 4N branches
        calls = 0
        for t in self.progress_bar(scheduler.timesteps):
            model_input = scheduler.scale_model_input(torch.cat([x, x]) if do_cfg else x, t)
            noise = self.unet(model_input, t, encoder_hidden_states=hidden, added_cond_kwargs=added_cond_kwargs,
                              return_dict=False)[0]
            calls += 1
            if do_cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            x = scheduler.step(noise, t, x, **step_kwargs, return_dict=False)[0]

        if output_type == "latent":
            return PairPipelineOutput(x[:n], x[n:], initial, [(True, True)] * n, None, calls)

        # 7. Decode all 2N images; the VAE may be kept in float32 (SDXL's overflows in float16: force_upcast)
        x = x.to(self.vae.dtype)
        mean, std = getattr(self.vae.config, "latents_mean", None), getattr(self.vae.config, "latents_std", None)
        if mean is not None and std is not None:
            view = (1, len(mean), 1, 1)
            x = x * torch.tensor(std, device=device).view(view).to(x.dtype) / self.vae.config.scaling_factor \
                + torch.tensor(mean, device=device).view(view).to(x.dtype)
        else:
            x = x / self.vae.config.scaling_factor
        images, finite = finish_pairs(decode_in_chunks(self.vae, x, self.vae_decode_batch), n)

        # 8. Convert the output (SDXL ships no safety checker: nsfw is None)
        images = convert_images(images, output_type)
        return PairPipelineOutput(images[:n], images[n:], initial, finite, None, calls)
