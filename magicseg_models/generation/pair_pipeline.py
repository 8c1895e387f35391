"""Paired Stable Diffusion: an image and its counterfactual from the same latents, in one UNet batch.

MagicSeg's counterfactual pair must differ only by the object, so both images start from the SAME initial
latents, drawn from a generator seeded with the job's seed alone (reproducible whatever else is in the batch).
After the first step the two trajectories differ, so each keeps its own latents and its own unconditional
branch of classifier-free guidance. For N pairs one UNet call per timestep holds the 4N branches::

    [uncond image 1..N | uncond counterfactual 1..N | cond image 1..N | cond counterfactual 1..N]

so a pair costs ``len(timesteps)`` UNet calls (``steps``; PNDM adds one warm-up call) instead of twice that, and
the N pairs share each call. The empty-prompt embedding is computed once per pipeline (per model load).

Two layers, as in diffusers:

- :class:`PairedStableDiffusionPipeline`: a ``DiffusionPipeline`` over tensors. ``check_inputs`` raises one-line
  :class:`GenerationInputError` s instead of silently fixing inputs; ``__call__`` runs in numbered steps and is
  numerically the plain ``StableDiffusionPipeline`` run on the same latents (its image of prompt p with latents z
  is the plain pipeline's image of p from z, to float tolerance).
- :func:`load_pair_pipeline`: that pipeline for a ``GeneratorConfig``, its models loaded once, with the config's
  speed options applied. The row stage over it, :class:`~magicseg_models.generation.pair_stage.PairGenerator`,
  lives in :mod:`magicseg_models.generation.pair_stage`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import DiffusionPipeline

from magicseg_models.devices import resolve_device, resolve_dtype
from magicseg_models.generation.components import Components, load_components
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

class PairedStableDiffusionPipeline(DiffusionPipeline):
    """Stable Diffusion 1.x text-to-image for (prompt, counterfactual prompt, seed) jobs, paired in one batch.

    Components are diffusers' ``StableDiffusionPipeline`` ones, so ``PairedStableDiffusionPipeline(**sd.components)``
    works on a loaded pipeline (extra components such as ``image_encoder`` are not used).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["safety_checker", "feature_extractor"]

    def __init__(self, vae, text_encoder, tokenizer, unet, scheduler, safety_checker=None, feature_extractor=None,
                 **unused_components):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                              scheduler=scheduler, safety_checker=safety_checker,
                              feature_extractor=feature_extractor)
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self._negative_embeds: torch.Tensor | None = None
        self._negative_lock = threading.Lock()
        self.vae_decode_batch = 16  # images per VAE decode call (bounds activation memory at 512x512)
        self.source: dict[str, Any] = {}  # what was loaded (weights, model, revision): load_pair_pipeline sets it

    # ------------------------------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @torch.no_grad()
    def encode_prompt(self, texts: Sequence[str]) -> torch.Tensor:
        """CLIP last hidden states (len(texts), 77, D) of ``texts``, padded and truncated to the tokenizer's length."""
        tokens = self.tokenizer(list(texts), padding="max_length", max_length=self.tokenizer.model_max_length,
                                truncation=True, return_tensors="pt")
        mask = None
        if getattr(self.text_encoder.config, "use_attention_mask", False):
            mask = tokens.attention_mask.to(self.device)
        embeds = self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]
        return embeds.to(dtype=self.dtype, device=self.device)

    @property
    def negative_prompt_embeds(self) -> torch.Tensor:
        """The empty prompt's embedding (1, 77, D): computed on first use, then reused for every batch."""
        if self._negative_embeds is None:
            with self._negative_lock:
                if self._negative_embeds is None:
                    self._negative_embeds = self.encode_prompt([""])
        return self._negative_embeds

    def check_inputs(self, prompt, counterfactual_prompt, seeds, height, width, num_inference_steps,
                     guidance_scale, latents=None, output_type="pt") -> None:
        """Raise :class:`GenerationInputError` (one line) for anything the pipeline would otherwise fix silently."""
        check_pair_inputs(prompt, counterfactual_prompt, seeds, height, width, num_inference_steps, guidance_scale,
                          output_type, self.vae_scale_factor, "the VAE's downsampling")
        scale = self.vae_scale_factor
        if latents is not None:
            expected = (len(prompt), self.unet.config.in_channels, height // scale, width // scale)
            if tuple(latents.shape) != expected:
                raise GenerationInputError(f"latents must have shape {expected}, got {tuple(latents.shape)}")

    def prepare_latents(self, seeds: Sequence[int], height: int, width: int, dtype: torch.dtype):
        """The initial latents of each job from its own seeded generator (:func:`seeded_noise`), and the
        generators."""
        shape = (self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return seeded_noise(seeds, shape, self.device, dtype)

    def prepare_extra_step_kwargs(self, scheduler, generators: list[torch.Generator], eta: float) -> dict:
        """:func:`extra_step_kwargs` (kept as a method: diffusers pipelines have one)."""
        return extra_step_kwargs(scheduler, generators, eta)

    # --------------------------------------------------------------------------------------------- call
    @torch.no_grad()
    def __call__(self, prompt: Sequence[str], counterfactual_prompt: Sequence[str], seeds: Sequence[int],
                 height: int | None = None, width: int | None = None, num_inference_steps: int = 20,
                 guidance_scale: float = 7.5, latents: torch.Tensor | None = None, output_type: str = "pt",
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
        device, dtype = self.device, self.dtype
        do_cfg = guidance_scale > 1.0

        # 2. Encode prompts: the 2N conditional texts in one text-encoder call; the empty prompt comes from the
        #    cache. Hidden states follow the branch order [uncond img | uncond cf | cond img | cond cf].
        cond = self.encode_prompt([*prompt, *counterfactual_prompt])
        if do_cfg:
            uncond = self.negative_prompt_embeds.expand(2 * n, -1, -1)
            encoder_hidden_states = torch.cat([uncond, cond])
        else:
            encoder_hidden_states = cond

        # 3. Prepare timesteps on a fresh copy of the scheduler (schedulers keep per-run state)
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = scheduler.timesteps

        # 4. Prepare latents: one seeded generator per job; image and counterfactual share them
        initial, generators = self.prepare_latents(seeds, height, width, dtype)
        if latents is not None:
            initial = latents.to(device=device, dtype=dtype)
        x = torch.cat([initial, initial]) * scheduler.init_noise_sigma  # [images | counterfactuals]

        # 5. Prepare extra step kwargs (eta, per-branch generators for stochastic schedulers)
        extra_step_kwargs = self.prepare_extra_step_kwargs(scheduler, generators, eta)
        timestep_cond = None
        if self.unet.config.time_cond_proj_dim is not None:  # guidance-distilled UNets (LCM)
            from diffusers import StableDiffusionPipeline

            w = torch.tensor(guidance_scale - 1).repeat(2 * n)
            timestep_cond = StableDiffusionPipeline.get_guidance_scale_embedding(
                self, w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=dtype)

        # 6. Denoising loop: ONE UNet call per timestep for all 4N branches
        calls = 0
        for t in self.progress_bar(timesteps):
            model_input = torch.cat([x, x]) if do_cfg else x
            model_input = scheduler.scale_model_input(model_input, t)
            noise = self.unet(model_input, t, encoder_hidden_states=encoder_hidden_states,
                              timestep_cond=timestep_cond, return_dict=False)[0]
            calls += 1
            if do_cfg:
                noise_uncond, noise_cond = noise.chunk(2)
                noise = noise_uncond + guidance_scale * (noise_cond - noise_uncond)
            x = scheduler.step(noise, t, x, **extra_step_kwargs, return_dict=False)[0]

        if output_type == "latent":
            return PairPipelineOutput(x[:n], x[n:], initial, [(True, True)] * n, None, calls)

        # 7. Decode all 2N images (in chunks of vae_decode_batch) and flag NaN/inf before clamping hides them
        decoded = decode_in_chunks(self.vae, x / self.vae.config.scaling_factor, self.vae_decode_batch)
        images, finite = finish_pairs(decoded, n)

        # 8. Safety checker (optional): flags only; the caller decides what to drop
        nsfw = None
        if self.safety_checker is not None:
            flags = self.run_safety_checker(images)
            nsfw = list(zip(flags[:n], flags[n:]))

        # 9. Convert the output
        images = convert_images(images, output_type)
        return PairPipelineOutput(images[:n], images[n:], initial, finite, nsfw, calls)

    def run_safety_checker(self, images: torch.Tensor) -> list[bool]:
        """Safety-checker flags for images (B, 3, H, W) in [0, 1]; images are not altered."""
        arrays = images.nan_to_num(0.0).float().mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        clip_input = self.feature_extractor(list(arrays), return_tensors="pt").pixel_values
        clip_input = clip_input.to(device=self.device, dtype=next(self.safety_checker.parameters()).dtype)
        # the checker blanks flagged images in the array it is given: hand it a placeholder, keep the flags
        _, flags = self.safety_checker(images=torch.zeros(len(arrays), 1), clip_input=clip_input)
        return [bool(flag) for flag in flags]


# ---------------------------------------------------------------------------------------------- loading
def load_pair_pipeline(config, device: str | torch.device | None = None):
    """The paired pipeline of a ``GeneratorConfig`` on ``device`` (None: the first GPU, else the CPU), loaded once.

    ``config.family`` picks it: ``sd15`` :class:`PairedStableDiffusionPipeline`, ``sdxl``
    :class:`~magicseg_models.generation.sdxl_pair_pipeline.PairedStableDiffusionXLPipeline`, ``flux``
    :class:`~magicseg_models.generation.flux_pair_pipeline.PairedFluxPipeline`. float16 is for GPUs: a CPU runs
    it in float32. The config's speed options (SDPA attention, channels_last, torch.compile, VAE decode batch) are
    applied and the empty-prompt embedding computed, so the first batch pays for nothing but the compile;
    ``pipeline.source`` says what was loaded.
    """
    device = resolve_device(device)
    components: Components = load_components(config, device, resolve_dtype(config.dtype, device))
    family = getattr(config, "family", "sd15")
    if family == "sdxl":
        from magicseg_models.generation.sdxl_pair_pipeline import PairedStableDiffusionXLPipeline as cls
    elif family == "flux":
        from magicseg_models.generation.flux_pair_pipeline import PairedFluxPipeline as cls
    else:
        cls = PairedStableDiffusionPipeline
    pipeline = cls(**components.as_kwargs())
    pipeline.source = components.source
    pipeline.set_progress_bar_config(disable=True)
    apply_speed_options(pipeline, config)
    pipeline.vae_decode_batch = config.vae_decode_batch
    if family == "flux":
        pipeline.max_sequence_length = config.max_sequence_length
    else:
        pipeline.negative_prompt_embeds  # noqa: B018 - computed once per model load
    return pipeline


def apply_speed_options(pipeline, config) -> None:
    """Attention processor, channels_last and torch.compile on the denoiser (UNet or transformer) and the VAE."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    denoiser = pipeline.unet if getattr(pipeline, "unet", None) is not None else pipeline.transformer
    convolutional = [m for m in (getattr(pipeline, "unet", None), pipeline.vae) if m is not None]
    for module in convolutional:  # FLUX's transformer keeps its own (SDPA) joint-attention processor
        module.set_attn_processor(AttnProcessor2_0() if config.attention == "sdpa" else AttnProcessor())
    if config.channels_last:
        for module in convolutional:
            module.to(memory_format=torch.channels_last)
    if config.compile:  # in place: the pipeline, hooks and settings keep seeing the same modules
        denoiser.compile()
        pipeline.vae.decoder.compile()
