"""Stable Diffusion "single-file" checkpoints written from diffusers models, for tests.

The original CompVis / Stability layout (what A1111, ComfyUI and civitai users hold: one ``.safetensors`` or
``.ckpt``) cannot be downloaded in tests, so tests write it from the tiny diffusers models. This module is an
independent diffusers -> original converter: the test suite reads its files back through diffusers' own
``from_single_file`` readers and checks every tensor, so a mistake here cannot hide behind a matching mistake in
the reader.

Layout written (prefixes as in the released SD 1.5 and SDXL base files):

- UNet under ``model.diffusion_model.``: ``time_embed.{0,2}``, ``label_emb.0.{0,2}`` (SDXL's size / pooled-text
  embedding), ``input_blocks.N.{0,1}`` (conv_in at 0, then per down block ``layers_per_block`` resnet
  [+ transformer] entries and one ``.0.op`` downsampler), ``middle_block.{0,1,2}``, ``output_blocks.N.{0,1,2}``
  (``layers_per_block + 1`` entries per up block, the upsampler after the transformer when there is one),
  ``out.{0,2}``. Resnets carry the original names (``in_layers``, ``emb_layers``, ``out_layers``,
  ``skip_connection``); transformer subtrees are named alike in both layouts.
- VAE under ``first_stage_model.``: ``encoder.down.N.block.M`` / ``downsample``, ``decoder.up.N`` in the
  original's reversed order (``up.0`` is the block nearest the image), ``mid.block_{1,2}``, ``mid.attn_1`` with
  ``q/k/v/proj_out`` as 1x1 conv weights, ``nin_shortcut``, ``norm_out``, ``quant_conv``, ``post_quant_conv``.
- CLIP ViT-L text model in Hugging Face names (``...transformer.text_model.*``): under ``cond_stage_model.`` for
  SD 1.x, ``conditioner.embedders.0.`` for SDXL.
- SDXL's second text encoder under ``conditioner.embedders.1.model.`` in OpenCLIP names (fused ``in_proj``
  attention weights, ``text_projection`` stored as ``x @ P``, i.e. the transpose of HF's linear weight).

Only the models' own tensors are written (no EMA copies, no ``position_ids`` or ``logit_scale``), so every
tensor appears exactly once.
"""

from __future__ import annotations

from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

# diffusers ResnetBlock2D (UNet) -> ldm ResBlock submodule names
_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
# the VAE's resnets keep diffusers' names except the shortcut
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_VAE_CONV_WEIGHTS = ("q.weight", "k.weight", "v.weight", "proj_out.weight")


# ------------------------------------------------------------------------------------------ renaming core
def _inner(rest: str, names: dict[str, str] | None) -> str:
    """``rest`` with its leading submodule renamed by ``names`` (longest match wins: ``to_out.0`` before ``to``)."""
    for old in sorted(names or {}, key=len, reverse=True):
        if rest == old or rest.startswith(old + "."):
            return names[old] + rest[len(old):]
    return rest


def _renamed(state: dict[str, torch.Tensor], rules: list[tuple[str, str, dict | None]]) -> dict[str, torch.Tensor]:
    """Each key of ``state`` under the rule with the longest matching diffusers prefix.

    A rule is ``(diffusers_prefix, ldm_prefix, inner_names)``; prefixes end with a dot. A key no rule covers is an
    error rather than silently dropped: the converter must account for every tensor of the model.
    """
    ordered = sorted(rules, key=lambda rule: len(rule[0]), reverse=True)
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        rule = next((r for r in ordered if key.startswith(r[0])), None)
        if rule is None:
            raise KeyError(f"no original-layout name for {key!r}")
        new = rule[1] + _inner(key[len(rule[0]):], rule[2])
        if new in out:
            raise KeyError(f"two tensors map to {new!r}")
        out[new] = tensor
    return out


def _has(state: dict, prefix: str) -> bool:
    return any(key.startswith(prefix) for key in state)


# -------------------------------------------------------------------------------------------------- UNet
def _unet_rules(state: dict, config) -> list[tuple[str, str, dict | None]]:
    """Prefix rules for a ``UNet2DConditionModel`` of any depth (one int ``layers_per_block``, as the original
    layout and diffusers' reader assume)."""
    layers = config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError("the original UNet layout has one layers_per_block for every block")
    rules = [("conv_in.", "input_blocks.0.0.", None),
             ("time_embedding.linear_1.", "time_embed.0.", None), ("time_embedding.linear_2.", "time_embed.2.", None),
             ("add_embedding.linear_1.", "label_emb.0.0.", None), ("add_embedding.linear_2.", "label_emb.0.2.", None),
             ("class_embedding.linear_1.", "label_emb.0.0.", None),
             ("class_embedding.linear_2.", "label_emb.0.2.", None),
             ("conv_norm_out.", "out.0.", None), ("conv_out.", "out.2.", None)]
    blocks = len(config.down_block_types)
    for b in range(blocks):
        # input_blocks: conv_in, then (layers resnet[+attention] entries + 1 downsampler) per block
        first = 1 + b * (layers + 1)
        for i in range(layers):
            rules.append((f"down_blocks.{b}.resnets.{i}.", f"input_blocks.{first + i}.0.", _UNET_RESNET))
            rules.append((f"down_blocks.{b}.attentions.{i}.", f"input_blocks.{first + i}.1.", None))
        rules.append((f"down_blocks.{b}.downsamplers.0.conv.", f"input_blocks.{first + layers}.0.op.", None))
    for b in range(blocks):
        # output_blocks: layers + 1 entries per block; the upsampler follows the entry's transformer if any
        first = b * (layers + 1)
        for i in range(layers + 1):
            rules.append((f"up_blocks.{b}.resnets.{i}.", f"output_blocks.{first + i}.0.", _UNET_RESNET))
            rules.append((f"up_blocks.{b}.attentions.{i}.", f"output_blocks.{first + i}.1.", None))
        slot = 2 if _has(state, f"up_blocks.{b}.attentions.{layers}.") else 1
        rules.append((f"up_blocks.{b}.upsamplers.0.conv.", f"output_blocks.{first + layers}.{slot}.conv.", None))
    # middle_block: resnet, transformer, resnet
    for i in range(2):
        rules.append((f"mid_block.resnets.{i}.", f"middle_block.{2 * i}.", _UNET_RESNET))
    rules.append(("mid_block.attentions.0.", "middle_block.1.", None))
    return rules


def unet_state_dict(unet) -> dict[str, torch.Tensor]:
    """The UNet's tensors in the original layout, without the ``model.diffusion_model.`` prefix."""
    state = unet.state_dict()
    return _renamed(state, _unet_rules(state, unet.config))


# --------------------------------------------------------------------------------------------------- VAE
def _vae_rules(config) -> list[tuple[str, str, dict | None]]:
    rules = [(f"{part}.{name}.", f"{part}.{name}.", None) for part in ("encoder", "decoder")
             for name in ("conv_in", "conv_out")]
    rules += [(f"{part}.conv_norm_out.", f"{part}.norm_out.", None) for part in ("encoder", "decoder")]
    rules += [("quant_conv.", "quant_conv.", None), ("post_quant_conv.", "post_quant_conv.", None)]
    for part in ("encoder", "decoder"):
        rules += [(f"{part}.mid_block.resnets.{i}.", f"{part}.mid.block_{i + 1}.", _VAE_RESNET) for i in range(2)]
        rules.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", _VAE_ATTENTION))
    for b in range(len(config.down_block_types)):
        rules += [(f"encoder.down_blocks.{b}.resnets.{i}.", f"encoder.down.{b}.block.{i}.", _VAE_RESNET)
                  for i in range(config.layers_per_block)]
        rules.append((f"encoder.down_blocks.{b}.downsamplers.0.", f"encoder.down.{b}.downsample.", None))
    ups = len(config.up_block_types)
    for b in range(ups):
        # the original counts decoder levels from the image side: diffusers' first up block is its last
        rules += [(f"decoder.up_blocks.{b}.resnets.{i}.", f"decoder.up.{ups - 1 - b}.block.{i}.", _VAE_RESNET)
                  for i in range(config.layers_per_block + 1)]
        rules.append((f"decoder.up_blocks.{b}.upsamplers.0.", f"decoder.up.{ups - 1 - b}.upsample.", None))
    return rules


def vae_state_dict(vae) -> dict[str, torch.Tensor]:
    """The VAE's tensors in the original layout, without the ``first_stage_model.`` prefix; the mid-block
    attention's projections as the original's 1x1 conv weights ``[C, C, 1, 1]``."""
    out = _renamed(vae.state_dict(), _vae_rules(vae.config))
    for key, tensor in out.items():
        if ".mid.attn_1." in key and key.endswith(_VAE_CONV_WEIGHTS) and tensor.ndim == 2:
            out[key] = tensor[:, :, None, None]
    return out


# --------------------------------------------------------------------------------------------- text models
def clip_hf_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIP text model's tensors in Hugging Face names as SD files hold them (``text_model.*``): recent
    transformers build ``CLIPTextModel`` without the ``text_model`` wrapper, the released files have it."""
    out = {}
    for key, tensor in text_encoder.state_dict().items():
        top_level = key.startswith("text_model.") or key.startswith("text_projection.")
        out[key if top_level else "text_model." + key] = tensor
    return out


_OPEN_CLIP_TOP = {"embeddings.token_embedding.weight": "token_embedding.weight",
                  "embeddings.position_embedding.weight": "positional_embedding",
                  "final_layer_norm.weight": "ln_final.weight", "final_layer_norm.bias": "ln_final.bias"}
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def open_clip_state_dict(text_encoder) -> dict[str, torch.Tensor]:
    """A ``CLIPTextModelWithProjection`` in OpenCLIP names (no prefix): q/k/v fused into ``in_proj_*`` (q, k, v
    stacked on dim 0, as ``nn.MultiheadAttention`` holds them) and ``text_projection`` as the matrix the pooled
    output is right-multiplied by (HF's ``text_projection.weight`` transposed)."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in text_encoder.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        if key == "text_projection.weight":
            out["text_projection"] = tensor.T.contiguous()
        elif key in _OPEN_CLIP_TOP:
            out[_OPEN_CLIP_TOP[key]] = tensor
        elif key.startswith("encoder.layers."):
            _open_clip_layer_tensor(key, tensor, state, out)
        else:
            raise KeyError(f"no OpenCLIP name for {key!r}")
    return out


def _open_clip_layer_tensor(key: str, tensor: torch.Tensor, state: dict, out: dict) -> None:
    layer, rest = key[len("encoder.layers."):].split(".", 1)
    block = f"transformer.resblocks.{layer}."
    if rest.startswith("self_attn.") and rest.split(".")[1] in ("q_proj", "k_proj", "v_proj"):
        if rest.startswith("self_attn.q_proj."):  # written once, from the q entry, with k and v beside it
            kind = rest.rsplit(".", 1)[1]
            parts = [state[f"encoder.layers.{layer}.self_attn.{p}_proj.{kind}"] for p in "qkv"]
            out[f"{block}attn.in_proj_{kind}"] = torch.cat(parts, dim=0)
        return
    renamed = _inner(rest, _OPEN_CLIP_LAYER)
    if renamed == rest:
        raise KeyError(f"no OpenCLIP name for {key!r}")
    out[block + renamed] = tensor


# ------------------------------------------------------------------------------------------ whole files
def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor for key, tensor in state.items()}


def sd15_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """An SD 1.x original single-file state dict (UNet, VAE, CLIP text encoder)."""
    return {**_prefixed(UNET_PREFIX, unet_state_dict(unet)), **_prefixed(VAE_PREFIX, vae_state_dict(vae)),
            **_prefixed(SD15_CLIP_PREFIX, clip_hf_state_dict(text_encoder))}


def sdxl_state_dict(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """An SDXL original single-file state dict: CLIP-L as embedder 0 (HF names), the projected second encoder
    as embedder 1 (OpenCLIP names)."""
    return {**_prefixed(UNET_PREFIX, unet_state_dict(unet)), **_prefixed(VAE_PREFIX, vae_state_dict(vae)),
            **_prefixed(SDXL_CLIP_PREFIX, clip_hf_state_dict(text_encoder)),
            **_prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_state_dict(text_encoder_2))}


def save_single_file(state_dict: dict[str, torch.Tensor], path: str | Path) -> Path:
    """``.safetensors`` (contiguous, detached CPU copies: safetensors refuses views and shared storage) or the
    old ``.ckpt`` pickle, ``{"state_dict": ...}`` as the CompVis training code saved it."""
    path = Path(path)
    tensors = {key: tensor.detach().cpu().contiguous().clone() for key, tensor in state_dict.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(path))
    elif path.suffix == ".ckpt":
        torch.save({"state_dict": tensors}, path)
    else:
        raise ValueError(f"single-file checkpoints are .safetensors or .ckpt, got {path.name!r}")
    return path
