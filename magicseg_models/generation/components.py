"""The generator's models: built from configs in code (``tiny``, ``random``) or loaded (``pretrained``).

Three ways to get Stable Diffusion 1.x components, picked by ``generator.weights``:

- ``tiny``: a UNet, VAE and CLIP text encoder a few hundred kB in size, built from the configs below with a fixed
  init seed, and a CLIP tokenizer trained here (byte-level BPE on the builtin vocabulary's names plus common
  words). Nothing is downloaded; images are noise, but every tensor shape, the scheduler and the whole paired
  pipeline are the real ones. The tiny VAE downsamples by 8 like SD's, so latents are ``image / 8``.
- ``random``: the SD 1.5 architecture at full size (its published ``unet``, ``vae`` and ``text_encoder``
  configs, embedded below) with random weights, for throughput measurements where FLOPs, not weights, matter.
  The tokenizer is the local one (token ids lie inside CLIP's 49408-token vocabulary; prompts still fill the
  77-token sequence the UNet cross-attends to).
- ``pretrained``: any SD 1.x diffusers folder, as a hub id or a local path (``generator.model``), at
  ``generator.revision``. With ``generator.variant`` (``fp16`` in the ``sd15`` presets) each weighted component
  (``unet``, ``vae``, ``text_encoder``, ``safety_checker``) loads its ``*.fp16.*`` files, half the download of the
  fp32 ones; a component without such files loads its plain files instead, said in one log line and recorded in
  the settings (``variants``). Models load with low CPU memory (diffusers through ``accelerate``: built on the
  meta device, weights assigned straight from the file, no random initialisation first).
  ``tiny`` and ``random`` load nothing, so ``generator.variant`` does not apply to them. ``generator.model`` may
  also be a single-file checkpoint (``.safetensors`` / ``.ckpt``, SD 1.x or SDXL, the layout fine-tunes ship):
  :mod:`magicseg_models.weights.single_file` loads it.

The scheduler is the model's own (PNDM for SD 1.5) or any compatible diffusers scheduler, by class name or a
short alias (``dpm-solver++``, ``euler``, ``ddim``, ...), built from the model's scheduler config.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from magicseg_models.devices import resolve_device, resolve_dtype
from magicseg_models.errors import ConfigError, MagicSegError, one_line
from magicseg_models.generation import architectures as arch
from magicseg_models.weights import TINY_INIT_SEED
from magicseg_models.weights.tiny_tokenizers import build_tiny_t5_tokenizer, build_tiny_tokenizer  # noqa: F401
from magicseg_models.weights.hub import (
    FAMILY_BASE_MODELS, FAMILY_FOLDERS, FAMILY_NAMES, FAMILY_WEIGHTED, has_variant, is_single_file, local_folder,
    looks_local,
)
from magicseg_models.weights.hub import SD_WEIGHTED_COMPONENTS as WEIGHTED_COMPONENTS

logger = logging.getLogger(__name__)
MAX_TOKENS = 77  # CLIP's context: tokens past 77 (BOS and EOS included) are invisible to the UNet


class WeightsError(MagicSegError):
    """Generator weights cannot be found or loaded (missing folder, not a diffusers layout, offline hub)."""


# ------------------------------------------------------------------------------------- SD 1.5 configs
# The published configs of stable-diffusion-v1-5 (unet/, vae/, text_encoder/ and scheduler/ config.json).
SD15_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}

SD15_VAE_CONFIG: dict[str, Any] = arch.SD15_VAE_CONFIG

# CLIP ViT-L/14's text tower (openai/clip-vit-large-patch14), as SD 1.5's text_encoder/config.json: the same tower
# SDXL and FLUX use as their first text encoder
SD15_TEXT_CONFIG: dict[str, Any] = arch.CLIP_L_TEXT_CONFIG

SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "skip_prk_steps": True,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}
SD15_SCHEDULER_CLASS = "PNDMScheduler"

# ------------------------------------------------------------------------------------------ tiny configs
# Same block types as SD 1.5, a few channels each. Two UNet levels; four VAE levels so that the VAE downsamples
# by 8 like SD's (latents are image / 8, and the "multiple of 8" rule means the same thing in every preset).
TINY_UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (32, 64),
    "layers_per_block": 1,
    "norm_num_groups": 32,
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
}

TINY_VAE_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "scaling_factor": 0.18215,
}

TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "projection_dim": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# ----------------------------------------------------------------------------------------------- schedulers
# Short names users type; any compatible diffusers scheduler class name works too.
SCHEDULER_ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "pndm": ("PNDMScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "dpm-solver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpm-solver++-karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "dpm-solver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "deis": ("DEISMultistepScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}),
    "euler-ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}
# Epsilon-prediction schedulers over SD's discrete 1000-step training schedule (diffusers' KarrasDiffusionSchedulers).
_COMPATIBLE = (
    "PNDMScheduler", "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
    "DPMSolverSDEScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler", "EulerDiscreteScheduler",
    "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "LMSDiscreteScheduler", "KDPM2DiscreteScheduler",
    "KDPM2AncestralDiscreteScheduler",
)


def _norm_name(name: str) -> str:
    return re.sub(r"[^a-z0-9+]", "", name.lower())


def known_schedulers() -> list[str]:
    return ["default", *SCHEDULER_ALIASES, *_COMPATIBLE]


def make_scheduler(name: str, base):
    """The scheduler called ``name`` ("default" = ``base`` itself), built from ``base``'s config.

    ``base`` is the model's own scheduler (its betas, timestep spacing and offset carry over).
    """
    import diffusers

    if name == "default":
        return base
    key = _norm_name(name)
    aliases = {_norm_name(alias): target for alias, target in SCHEDULER_ALIASES.items()}
    classes = {_norm_name(cls): (cls, {}) for cls in _COMPATIBLE}
    classes.update({_norm_name(cls.removesuffix("Scheduler")): (cls, {}) for cls in _COMPATIBLE})
    target = aliases.get(key) or classes.get(key)
    if target is None:
        raise ConfigError(f"invalid config value for 'generator.scheduler': unknown scheduler {name!r}; "
                          f"known: {', '.join(['default', *SCHEDULER_ALIASES])} or a diffusers class name "
                          f"({', '.join(_COMPATIBLE)})")
    cls_name, overrides = target
    try:
        cls = getattr(diffusers, cls_name)
        return cls.from_config(base.config, **overrides)
    except ImportError as err:  # diffusers' placeholder classes say which library is missing
        library = re.search(r"requires the (\S+) library", str(err))
        need = f"pip install {library.group(1)}" if library else one_line(err)
        raise ConfigError(f"scheduler {name!r} ({cls_name}) needs a missing library: {need}") from None


def default_scheduler(family: str = "sd15"):
    """The scheduler a family's model ships with (SD 1.5: PNDM; SDXL: Euler; FLUX: flow-matching Euler)."""
    import diffusers

    name, config = {"sd15": (SD15_SCHEDULER_CLASS, SD15_SCHEDULER_CONFIG),
                    "sdxl": (arch.SDXL_SCHEDULER_CLASS, arch.SDXL_SCHEDULER_CONFIG),
                    "flux": (arch.FLUX_SCHEDULER_CLASS, arch.FLUX_SCHNELL_SCHEDULER_CONFIG)}[family]
    return getattr(diffusers, name).from_config(config)


# ------------------------------------------------------------------------------------------ device / dtype
# ------------------------------------------------------------------------------------------------- loading
@dataclass
class Components:
    """What a generator pipeline is made of (the names are diffusers' component names).

    SD 1.x fills ``unet`` .. ``feature_extractor``; SDXL adds ``text_encoder_2``/``tokenizer_2``; FLUX has a
    ``transformer`` instead of the UNet.
    """

    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    unet: Any = None
    safety_checker: Any = None
    feature_extractor: Any = None
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    transformer: Any = None
    source: dict[str, Any] = field(default_factory=dict)  # what was loaded: weights, model, revision

    def as_kwargs(self) -> dict[str, Any]:
        names = ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker", "feature_extractor",
                 "text_encoder_2", "tokenizer_2", "transformer")
        return {name: getattr(self, name) for name in names
                if getattr(self, name) is not None or name in ("safety_checker", "feature_extractor")}

    def modules(self) -> list[Any]:
        """The weighted modules (what moves to the device and dtype)."""
        names = ("unet", "transformer", "vae", "text_encoder", "text_encoder_2", "safety_checker")
        return [getattr(self, name) for name in names if getattr(self, name) is not None]


def _text_encoder(config: dict[str, Any], tokenizer):
    from transformers import CLIPTextModel

    return CLIPTextModel(_clip_config(config, tokenizer))


def _safety_checker(size: str):
    """A randomly initialised safety checker (tiny or ViT-L/14) and its CLIP image processor."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    if size == "tiny":
        vision = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
                  "image_size": 32, "patch_size": 8, "projection_dim": 32}
        text = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4,
                "projection_dim": 32}
        config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=32)
        crop = 32
    else:  # CLIP ViT-L/14, as SD 1.5's safety_checker/config.json
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "image_size": 224, "patch_size": 14, "projection_dim": 768}
        config = CLIPConfig(text_config={"hidden_size": 768, "projection_dim": 768}, vision_config=vision,
                            projection_dim=768)
        crop = 224
    extractor = CLIPImageProcessor(size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    return StableDiffusionSafetyChecker(config), extractor


def _build_from_configs(size: str, safety: bool, device: torch.device) -> Components:
    from diffusers import AutoencoderKL, UNet2DConditionModel

    tokenizer = build_tiny_tokenizer()
    unet_cfg, vae_cfg, text_cfg = ((TINY_UNET_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_CONFIG) if size == "tiny" else
                                   (SD15_UNET_CONFIG, SD15_VAE_CONFIG, SD15_TEXT_CONFIG))

    def build():  # the checker last: the other models' weights must not depend on whether it is built
        models = (UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg), _text_encoder(text_cfg, tokenizer))
        return (*models, *(_safety_checker(size) if safety else (None, None)))

    unet, vae, text_encoder, checker, extractor = _seeded_build(device, build)
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      scheduler=default_scheduler(), safety_checker=checker, feature_extractor=extractor)


def _seeded_build(device: torch.device, build, dtype: torch.dtype = torch.float32):
    """``build()`` under the fixed init seed, on ``device``: the same weights in every process, whatever ran
    before (the global RNG is restored afterwards). ``dtype``: the parameters' dtype from the start (FLUX's 17B
    parameters in float32 would take 68 GB before the cast)."""
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    before = torch.get_default_dtype()
    with torch.random.fork_rng(devices=rng_devices), torch.device(device):
        torch.manual_seed(TINY_INIT_SEED)
        torch.set_default_dtype(dtype)
        try:
            return build()
        finally:
            torch.set_default_dtype(before)


def _clip_config(config: dict[str, Any], tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**{"vocab_size": len(tokenizer), **config}, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def _build_sdxl(size: str, device: torch.device, dtype: torch.dtype = torch.float32) -> Components:
    """SDXL from configs: tiny (tests) or the published architecture (``random``)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    tiny = size == "tiny"
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_tokenizer(pad_token="!")
    unet_cfg = arch.TINY_SDXL_UNET_CONFIG if tiny else arch.SDXL_UNET_CONFIG
    vae_cfg = arch.tiny_vae_config(TINY_VAE_CONFIG, latent_channels=4) if tiny else arch.SDXL_VAE_CONFIG
    text_cfg = arch.TINY_CLIP_TEXT_CONFIG if tiny else arch.CLIP_L_TEXT_CONFIG
    text_2_cfg = arch.TINY_SDXL_TEXT_2_CONFIG if tiny else arch.SDXL_TEXT_2_CONFIG

    def build():
        return (UNet2DConditionModel(**unet_cfg), AutoencoderKL(**vae_cfg),
                CLIPTextModel(_clip_config(text_cfg, tokenizer)),
                CLIPTextModelWithProjection(_clip_config(text_2_cfg, tokenizer_2)))

    unet, vae, text_encoder, text_encoder_2 = _seeded_build(device, build, dtype)
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      scheduler=default_scheduler("sdxl"), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def _build_flux(size: str, device: torch.device, max_sequence_length: int,
                dtype: torch.dtype = torch.float32) -> Components:
    """FLUX.1-schnell from configs: tiny (tests) or the published architecture (``random``)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    tiny = size == "tiny"
    tokenizer, tokenizer_2 = build_tiny_tokenizer(), build_tiny_t5_tokenizer(max_sequence_length)
    transformer_cfg = arch.TINY_FLUX_TRANSFORMER_CONFIG if tiny else arch.FLUX_SCHNELL_TRANSFORMER_CONFIG
    vae_cfg = arch.tiny_vae_config(TINY_VAE_CONFIG, latent_channels=4, flux=True) if tiny else arch.FLUX_VAE_CONFIG
    text_cfg = arch.TINY_CLIP_TEXT_CONFIG if tiny else arch.CLIP_L_TEXT_CONFIG
    t5_cfg = ({**arch.TINY_T5_ENCODER_CONFIG, "vocab_size": len(tokenizer_2)} if tiny
              else arch.T5_XXL_ENCODER_CONFIG)

    def build():
        return (FluxTransformer2DModel(**transformer_cfg), AutoencoderKL(**vae_cfg),
                CLIPTextModel(_clip_config(text_cfg, tokenizer)), T5EncoderModel(T5Config(**t5_cfg)))

    transformer, vae, text_encoder, text_encoder_2 = _seeded_build(device, build, dtype)
    return Components(transformer=transformer, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                      scheduler=default_scheduler("flux"), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)


def _checked_model(model: str, family: str) -> str:
    """``model`` as given (a hub id) or as an absolute folder that holds the family's subfolders."""
    if not looks_local(model):
        return model
    path = local_folder(model)
    label = FAMILY_NAMES[family]
    if not os.path.isdir(path):
        raise WeightsError(f"generator.model: no such folder {model!r} (give a {label} diffusers folder or a hub "
                           f"id such as {FAMILY_BASE_MODELS[family]})")
    missing = [sub for sub in FAMILY_FOLDERS[family] if not os.path.isdir(os.path.join(path, sub))]
    if missing:
        raise WeightsError(f"generator.model: {model!r} is not a {label} diffusers folder "
                           f"(missing {', '.join(sub + '/' for sub in missing)})")
    return path


def _load_pretrained_family(model: str, revision: str | None, dtype: torch.dtype, variant: str | None,
                            family: str) -> Components:
    """SDXL or FLUX from a diffusers folder or hub id (each component loaded once, low CPU memory)."""
    import diffusers
    from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, T5EncoderModel

    model = _checked_model(model, family)
    kw = {"revision": revision} if revision else {}
    try:
        variants = resolve_variants(model, revision, variant, False, FAMILY_WEIGHTED[family])

        def weights(name: str) -> dict:
            return {"variant": variants[name], **kw} if variants[name] else kw

        denoiser_cls, denoiser = ((UNet2DConditionModel, "unet") if family == "sdxl"
                                  else (FluxTransformer2DModel, "transformer"))
        parts = {denoiser: denoiser_cls.from_pretrained(model, subfolder=denoiser, torch_dtype=dtype,
                                                        low_cpu_mem_usage=True, **weights(denoiser))}
        parts["vae"] = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype,
                                                     low_cpu_mem_usage=True, **weights("vae"))
        parts["text_encoder"] = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype,
                                                              **weights("text_encoder"))
        second = CLIPTextModelWithProjection if family == "sdxl" else T5EncoderModel
        parts["text_encoder_2"] = second.from_pretrained(model, subfolder="text_encoder_2", dtype=dtype,
                                                         **weights("text_encoder_2"))
        parts["tokenizer"] = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        parts["tokenizer_2"] = AutoTokenizer.from_pretrained(model, subfolder="tokenizer_2", **kw)
        sched_cfg = diffusers.DDIMScheduler.load_config(model, subfolder="scheduler", **kw)
        parts["scheduler"] = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
    except MagicSegError:
        raise
    except Exception as err:  # hub offline, missing files, unreadable weights: one line for the user
        raise WeightsError(f"cannot load generator weights {model!r}"
                           f"{f' (revision {revision})' if revision else ''}: {one_line(err)}") from None
    return Components(**parts, source={"variants": variants})


def _load_single_file(config, family: str, dtype: torch.dtype) -> Components:
    """A single-file checkpoint (:mod:`magicseg_models.weights.single_file`); ``variant`` picks among a diffusers
    repo's files, so it has nothing to choose here: the file loads as it is, in ``generator.dtype``."""
    from magicseg_models.weights.single_file import load_single_file

    if config.variant:
        logger.info("generator.variant=%s does not apply to the single file %s: it loads as it is, cast to %s",
                    config.variant, config.model, config.dtype)
    parts, source = load_single_file(config.model, config.single_file_config, family, dtype, config.safety_checker)
    known = {f.name for f in fields(Components)} - {"source"}
    return Components(**{k: v for k, v in parts.items() if k in known}, source=source)


def resolve_variants(model: str, revision: str | None, variant: str | None, safety: bool,
                     weighted: dict[str, Any] = WEIGHTED_COMPONENTS) -> dict[str, str | None]:
    """Per weighted component (``weighted``: name -> weight file names), the variant to load: ``variant`` where
    the model has its files, else None (plain files, said in one log line)."""
    names = [c for c in weighted if safety or c != "safety_checker"]
    if not variant:
        return dict.fromkeys(names)
    state = {c: has_variant(model, c, variant, weighted[c], revision) for c in names}
    # unknown (offline, nothing listed or cached) counts as absent: the plain files are what may be here
    found = {c: variant if state[c] else None for c in names}
    plain = [c for c, v in found.items() if v is None]
    if plain:
        why = "has no" if all(state[c] is False for c in plain) else "has (or, offline and not cached, may have) no"
        logger.warning("generator.variant=%s: %s %s %s files for %s; loading the plain files instead",
                       variant, model, why, variant, ", ".join(plain))
    return found


def _load_pretrained(model: str, revision: str | None, dtype: torch.dtype, safety: bool,
                     variant: str | None = None) -> Components:
    import diffusers
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    model = _checked_model(model, "sd15")
    kw = {"revision": revision} if revision else {}
    try:
        variants = resolve_variants(model, revision, variant, safety)
        low_memory = {"low_cpu_mem_usage": True}  # diffusers: meta-device init through accelerate

        def weights(name: str) -> dict:
            return {"variant": variants[name], **kw} if variants[name] else kw

        unet = UNet2DConditionModel.from_pretrained(model, subfolder="unet", torch_dtype=dtype, **low_memory,
                                                    **weights("unet"))
        vae = AutoencoderKL.from_pretrained(model, subfolder="vae", torch_dtype=dtype, **low_memory,
                                            **weights("vae"))
        text_encoder = CLIPTextModel.from_pretrained(model, subfolder="text_encoder", dtype=dtype,
                                                     **weights("text_encoder"))
        tokenizer = CLIPTokenizer.from_pretrained(model, subfolder="tokenizer", **kw)
        sched_cfg = diffusers.DDIMScheduler.load_config(model, subfolder="scheduler", **kw)
        scheduler = getattr(diffusers, sched_cfg["_class_name"]).from_config(sched_cfg)
        checker = extractor = None
        if safety:
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPImageProcessor

            checker = StableDiffusionSafetyChecker.from_pretrained(model, subfolder="safety_checker",
                                                                   torch_dtype=dtype, **weights("safety_checker"))
            extractor = CLIPImageProcessor.from_pretrained(model, subfolder="feature_extractor", **kw)
    except MagicSegError:
        raise
    except Exception as err:  # hub offline, missing files, unreadable weights: one line for the user
        raise WeightsError(f"cannot load generator weights {model!r}"
                           f"{f' (revision {revision})' if revision else ''}: {one_line(err)}") from None
    return Components(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                      safety_checker=checker, feature_extractor=extractor, source={"variants": variants})


def load_components(config, device: torch.device | None = None, dtype: torch.dtype | None = None) -> Components:
    """Components for a :class:`~magicseg_models.config.GeneratorConfig`, on ``device`` in ``dtype``.

    ``random`` builds the full-size models directly on ``device`` (seconds on a GPU instead of a minute of CPU
    initialisation). Raises :class:`ConfigError` for an unknown scheduler and :class:`WeightsError` when weights
    cannot be found or loaded.
    """
    device = resolve_device(device)
    dtype = dtype or resolve_dtype(config.dtype, device)
    family = getattr(config, "family", "sd15")
    if family != "sd15":
        return _load_family_components(config, family, device, dtype)
    # check the scheduler name before anything heavy is built
    make_scheduler(config.scheduler, default_scheduler())
    if config.weights == "pretrained":
        components = (_load_single_file(config, "sd15", dtype) if is_single_file(config.model) else
                      _load_pretrained(config.model, config.revision, dtype, config.safety_checker, config.variant))
        source = {"weights": "pretrained", "model": config.model, "revision": config.revision,
                  **components.source}
    elif config.weights == "tiny":
        components = _build_from_configs("tiny", config.safety_checker, torch.device("cpu"))
        source = {"weights": "tiny", "model": "tiny (built in code)", "init_seed": TINY_INIT_SEED}
    else:
        components = _build_from_configs("sd15", config.safety_checker, device)
        source = {"weights": "random", "model": "sd15 architecture (random init)", "init_seed": TINY_INIT_SEED}
    components.scheduler = make_scheduler(config.scheduler, components.scheduler)
    components.source = source
    for module in components.modules():
        _move(module, device, dtype)
    return components


FLOW_SCHEDULERS = ("default", "FlowMatchEulerDiscreteScheduler")


def _load_family_components(config, family: str, device: torch.device, dtype: torch.dtype) -> Components:
    """SDXL or FLUX components for a ``GeneratorConfig`` (``tiny``, ``random`` or ``pretrained``)."""
    if family == "flux" and config.scheduler not in FLOW_SCHEDULERS:  # flow matching: its own scheduler only
        raise ConfigError(f"invalid config value for 'generator.scheduler': family flux samples with its own "
                          f"flow-matching scheduler (default), got {config.scheduler!r}")
    if family == "sdxl":  # check the scheduler name before anything heavy is built
        make_scheduler(config.scheduler, default_scheduler("sdxl"))
    architecture = {"sdxl": "sdxl architecture", "flux": "flux.1-schnell architecture"}[family]
    if config.weights == "pretrained":
        components = (_load_single_file(config, family, dtype) if is_single_file(config.model) else
                      _load_pretrained_family(config.model, config.revision, dtype, config.variant, family))
        source = {"weights": "pretrained", "model": config.model, "revision": config.revision,
                  **components.source}
    else:
        size = "tiny" if config.weights == "tiny" else "full"
        # tiny: float32 on the CPU (its weights are the same on every machine); full size: straight in the dtype
        build_device, build_dtype = (torch.device("cpu"), torch.float32) if size == "tiny" else (device, dtype)
        components = (_build_sdxl(size, build_device, build_dtype) if family == "sdxl"
                      else _build_flux(size, build_device, config.max_sequence_length, build_dtype))
        model = f"tiny {family} (built in code)" if size == "tiny" else f"{architecture} (random init)"
        source = {"weights": config.weights, "model": model, "init_seed": TINY_INIT_SEED}
    if family == "sdxl":
        components.scheduler = make_scheduler(config.scheduler, components.scheduler)
    components.source = {"family": family, **source}
    for module in components.modules():
        _move(module, device, dtype)
    if family == "sdxl" and dtype == torch.float16 and components.vae.config.force_upcast:
        _move(components.vae, device, torch.float32)  # SDXL's VAE overflows in float16 (diffusers upcasts it too)
    return components


def _move(module, device: torch.device, dtype: torch.dtype) -> None:
    """``module.to(device, dtype)``, eval mode, no grads; without diffusers' warning about casting after load
    (SD 1.x models keep no modules in float32, so the cast is exact)."""
    from diffusers.utils import logging as diffusers_logging

    logger = diffusers_logging.get_logger("diffusers.models.modeling_utils")
    level = logger.level
    logger.setLevel(diffusers_logging.ERROR)
    try:
        module.to(device=device, dtype=dtype)
    finally:
        logger.setLevel(level)
    module.eval().requires_grad_(False)


def parameter_count(module) -> int:
    return sum(p.numel() for p in module.parameters())
