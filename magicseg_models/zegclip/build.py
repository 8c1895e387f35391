"""Build a ZegCLIP model, its frozen text encoder and its image normalisation from a ``ZegCLIPConfig``.

``model.weights`` picks where CLIP comes from:

- ``pretrained``: ``model.clip`` as a hub id (``openai/clip-vit-base-patch16``) or a local folder of a transformers
  ``CLIPModel`` and its tokenizer, or OpenAI's own checkpoint file (``ViT-B-16.pt``, TorchScript archive or plain
  state dict; a path or URL fetched once per node), mapped onto the same ``CLIPModel``
  (:mod:`magicseg_models.weights.openai_clip`). The tokenizer is ``model.tokenizer``, else ``model.clip``'s own,
  else (an OpenAI file carries none) ``openai/clip-vit-base-patch16``'s - OpenAI's BPE, the same for every
  OpenAI CLIP. Offline and not cached, or a wrong folder or file: one-line :class:`CLIPWeightsError`.
- ``random``: CLIP ViT-B/16 at full size (the published ``openai/clip-vit-base-patch16`` config, embedded below)
  with random weights - parameter counts and GPU throughput, where FLOPs matter and weights do not. The tokenizer
  is the local one of the generator (its ids lie inside CLIP's 49,408-token vocabulary).
- ``tiny``: a CLIP a few hundred kB in size (width 32, 2 layers, patch 8, pretrained grid 4 x 4 so the position
  embedding is resized as for the real model) with the local tokenizer; its projection width is ``decoder_dim``.

Everything is initialised under a fixed seed (the global RNG is left as it was), so ``tiny`` and ``random`` give
the same weights in every process, and the trainable parts of ``pretrained`` start the same on every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from magicseg_models.errors import ConfigError, MagicSegError, one_line
from magicseg_models.weights.fetch import CheckpointFetchError, is_url, local_checkpoint
from magicseg_models.weights.hub import local_folder, looks_local
from magicseg_models.weights.openai_clip import OPENAI_TOKENIZER, OpenAICLIPError, is_openai_file, load_openai_clip
from magicseg_models.zegclip.model import (CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, PromptedCLIPVisionEncoder, ZegCLIP,
                                           ZegCLIPDecoder, ZegCLIPError)
from magicseg_models.zegclip.text import CLIPTextEncoder

INIT_SEED = 0
MAX_TOKENS = 77
TINY_PROJECTION_DIM = 32  # the tiny CLIP's output width where no decoder sets it


class CLIPWeightsError(ZegCLIPError):
    """CLIP weights cannot be found or loaded (offline hub, missing folder, not a CLIP checkpoint)."""


# openai/clip-vit-base-patch16's config.json (vision_config / text_config)
VIT_B16_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
    "image_size": 224, "patch_size": 16, "projection_dim": 512, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
VIT_B16_TEXT_CONFIG: dict[str, Any] = {
    "vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
    "num_attention_heads": 8, "max_position_embeddings": MAX_TOKENS, "projection_dim": 512,
    "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
VIT_B16_PROJECTION_DIM = 512

TINY_VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "image_size": 32, "patch_size": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}
TINY_TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": MAX_TOKENS, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5,
}


@dataclass
class ZegCLIPBundle:
    """What training and evaluation need: the model, a class-name embedder and the input normalisation.

    ``image_mean``/``image_std`` apply to images scaled to [0, 1] (CLIP's values; ZegCLIP's 0-255 config is the
    same numbers x 255).
    """

    model: ZegCLIP
    text_encoder: CLIPTextEncoder
    tokenizer: Any
    image_mean: tuple[float, float, float] = CLIP_IMAGE_MEAN
    image_std: tuple[float, float, float] = CLIP_IMAGE_STD
    source: dict[str, Any] = field(default_factory=dict)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """B x 3 x H x W in [0, 1] -> CLIP-normalised (the same transform for an image and its counterfactual)."""
        mean = torch.tensor(self.image_mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images - mean) / std

    def class_embeddings(self, names, templates=None) -> torch.Tensor:
        """C x D text embeddings of class names (cached; see :mod:`magicseg_models.zegclip.text`)."""
        return self.text_encoder.embed(names, templates)

    def to(self, device: str | torch.device) -> ZegCLIPBundle:
        self.model.to(device)
        self.text_encoder.to(device)
        return self

    def summary(self) -> str:
        return parameter_summary(self.model)


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_summary(model: ZegCLIP) -> str:
    """E.g. ``ZegCLIP (ViT-B/16, 10 prompt tokens): 10,666,240 trainable of 96,858,880 parameters``."""
    total = sum(p.numel() for p in model.parameters())
    name = model.info.get("name", "ZegCLIP")
    return (f"ZegCLIP ({name}, {model.encoder.num_prompts} prompt tokens): "
            f"{trainable_parameters(model):,} trainable of {total:,} parameters")


def _backbone_name(vision_config: Any) -> str:
    sizes = {(768, 12): "ViT-B", (1024, 24): "ViT-L", (1280, 32): "ViT-H"}
    base = sizes.get((vision_config.hidden_size, vision_config.num_hidden_layers))
    if base is None:
        return (f"ViT width {vision_config.hidden_size}, {vision_config.num_hidden_layers} layers, "
                f"patch {vision_config.patch_size}")
    return f"{base}/{vision_config.patch_size}"


def _check_decoder(config) -> None:
    if config.decoder_layers < 1:
        raise ConfigError(f"invalid config value for 'model.decoder_layers': must be at least 1 "
                          f"(got {config.decoder_layers})")
    if config.decoder_heads < 1 or config.decoder_dim % config.decoder_heads:
        raise ConfigError(f"invalid config value for 'model.decoder_heads': must divide model.decoder_dim "
                          f"{config.decoder_dim} (got {config.decoder_heads})")
    if not 0 <= config.prompt_dropout < 1:
        raise ConfigError(f"invalid config value for 'model.prompt_dropout': must be in [0, 1) "
                          f"(got {config.prompt_dropout})")


def clip_from_configs(vision: dict, text: dict, projection_dim: int, tokenizer) -> nn.Module:
    from transformers import CLIPConfig, CLIPModel

    text = {**text, "vocab_size": text.get("vocab_size", len(tokenizer)), "projection_dim": projection_dim,
            "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id}
    vision = {**vision, "projection_dim": projection_dim}
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim))


def _load_tokenizer(name: str, key: str = "model"):
    from transformers import CLIPTokenizer

    try:
        return CLIPTokenizer.from_pretrained(local_folder(name) if looks_local(name) else name)
    except Exception as err:  # noqa: BLE001 - offline hub, missing files
        raise CLIPWeightsError(f"cannot load the CLIP tokenizer {name!r}: {one_line(err)} (set {key}.tokenizer to "
                               f"a local folder when offline)") from None


def _load_openai_file(name: str, tokenizer_name: str | None, key: str = "model"):
    try:
        path = local_checkpoint(name, label=f"{key}.clip").path
        tokenizer = _load_tokenizer(tokenizer_name or OPENAI_TOKENIZER, key)
        return load_openai_clip(path, tokenizer), tokenizer
    except (CheckpointFetchError, OpenAICLIPError) as err:
        raise CLIPWeightsError(str(err)) from None


def _load_pretrained(name: str, tokenizer_name: str | None = None, key: str = "model"):
    from transformers import CLIPModel

    if is_openai_file(name) and (is_url(name) or not os.path.isdir(local_folder(name))):
        return _load_openai_file(name, tokenizer_name, key)
    if looks_local(name):
        path = local_folder(name)
        if not os.path.isdir(path):
            raise CLIPWeightsError(f"{key}.clip: no such folder {name!r} (give a transformers CLIP folder, a hub "
                                   f"id such as openai/clip-vit-base-patch16, or OpenAI's ViT-B-16.pt)")
        name = path
    try:
        clip = CLIPModel.from_pretrained(name, dtype=torch.float32)
    except MagicSegError:
        raise
    except Exception as err:  # offline hub, missing files, unreadable weights: one line for the user
        raise CLIPWeightsError(f"cannot load CLIP weights {name!r}: {one_line(err)} "
                               f"(offline? download it once or give a local folder)") from None
    return clip, _load_tokenizer(tokenizer_name or name, key)


def load_clip(clip: str, tokenizer: str | None = None, weights: str = "pretrained",
              device: str | torch.device | None = None, *, tiny_projection_dim: int = TINY_PROJECTION_DIM,
              seed: int = INIT_SEED, key: str = "model") -> tuple[nn.Module, Any, dict[str, Any]]:
    """A transformers ``CLIPModel`` (float32, on ``device``), its tokenizer and where it came from.

    ``weights`` as in the module docstring: ``pretrained`` reads ``clip`` (hub id, transformers folder or an
    OpenAI ``.pt``; ``tokenizer`` overrides its tokenizer), ``random`` builds ViT-B/16 at full size, ``tiny`` the
    small CLIP with ``tiny_projection_dim`` outputs; both built under ``seed``, the global RNG left as it was.
    ``key`` is the config section named in error messages (``model`` for ZegCLIP, ``quality`` for the quality
    stage). Raises :class:`CLIPWeightsError` for weights that cannot load.
    """
    from magicseg_models.devices import resolve_device

    device = resolve_device(device)
    model, tok, source = _build_clip(clip, tokenizer, weights, device, tiny_projection_dim, seed, key)
    return model.to(device), tok, source


def _build_clip(clip: str, tokenizer: str | None, weights: str, device: torch.device, tiny_projection_dim: int,
                seed: int, key: str = "model") -> tuple[nn.Module, Any, dict[str, Any]]:
    """:func:`load_clip` with the model left where it was made: the CPU, except ``random`` (on ``device``)."""
    from magicseg_models.weights.tiny_tokenizers import build_tiny_tokenizer

    if weights == "pretrained":
        model, tok = _load_pretrained(clip, tokenizer, key)
        return model, tok, {"weights": "pretrained", "model": clip}
    tok = build_tiny_tokenizer()
    if weights == "tiny":
        vision, text, projection = TINY_VISION_CONFIG, TINY_TEXT_CONFIG, tiny_projection_dim
        build_device = torch.device("cpu")  # tiny: CPU init is instant and identical everywhere
    else:
        vision, text, projection = VIT_B16_VISION_CONFIG, VIT_B16_TEXT_CONFIG, VIT_B16_PROJECTION_DIM
        build_device = device  # full size: initialising on the GPU takes seconds instead of a CPU minute
    with torch.random.fork_rng(devices=_rng_devices(device)), torch.device(build_device):
        torch.manual_seed(seed)
        model = clip_from_configs(vision, text, projection, tok)
    return model, tok, {"weights": weights, "model": f"{weights} (built in code)", "init_seed": seed}


def _rng_devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def build_zegclip(config, device: str | torch.device | None = None, *, seed: int = INIT_SEED) -> ZegCLIPBundle:
    """A :class:`ZegCLIPBundle` for a :class:`~magicseg_models.config.ZegCLIPConfig`, on ``device``.

    ``device`` None: the first CUDA GPU when there is one, else the CPU. ``seed`` fixes the initialisation of the
    trainable parts (and of all weights for ``tiny``/``random``) without touching the global RNG.
    Raises :class:`ConfigError` for inconsistent sizes and :class:`CLIPWeightsError` for weights that cannot load.
    """
    from magicseg_models.devices import resolve_device

    device = resolve_device(device)
    _check_decoder(config)
    rng_devices = _rng_devices(device)
    clip, tokenizer, source = _build_clip(config.clip, config.tokenizer, config.weights, device, config.decoder_dim,
                                          seed)

    vision_config = clip.config.vision_config
    projection_dim = clip.visual_projection.out_features
    if config.decoder_dim != projection_dim:
        raise ConfigError(f"invalid config value for 'model.decoder_dim': must equal the CLIP projection width "
                          f"{projection_dim} of {source['model']} (got {config.decoder_dim})")
    if config.image_size % vision_config.patch_size:
        raise ConfigError(f"invalid config value for 'model.image_size': must be a multiple of the patch size "
                          f"{vision_config.patch_size} (got {config.image_size})")

    name = _backbone_name(vision_config)
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        encoder = PromptedCLIPVisionEncoder(
            clip.vision_model, clip.visual_projection, image_size=config.image_size,
            prompt_tokens=config.prompt_tokens, prompt_dropout=config.prompt_dropout,
            pos_interpolation=config.pos_interpolation, double_class_embedding=config.double_class_embedding)
        decoder = ZegCLIPDecoder(config.decoder_dim, config.decoder_heads, config.decoder_ffn, config.decoder_layers,
                                 config.decoder_dropout, unused_self_attn=config.original_unused_self_attn)
    model = ZegCLIP(encoder, decoder, info={"name": name, **source})
    text_encoder = CLIPTextEncoder(
        clip.text_model, clip.text_projection, tokenizer, templates=config.text_templates,
        identity=f"{source['model']}|{name}|seed={source.get('init_seed', '-')}",
        cache_dir=config.text_cache_dir, max_length=MAX_TOKENS)
    bundle = ZegCLIPBundle(model=model, text_encoder=text_encoder, tokenizer=tokenizer, source=source)
    return bundle.to(device)
