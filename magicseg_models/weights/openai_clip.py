"""OpenAI's CLIP checkpoints (``ViT-B-16.pt`` ...) as a transformers ``CLIPModel``.

ZegCLIP's configs name OpenAI's release files. Two formats hold the same tensors under the same names:

- the TorchScript archive OpenAI publishes (``clip.load(..., jit=True)``'s file, fp16);
- a plain state dict (``torch.save(model.state_dict())`` of the ``clip`` package's model, or the archive's
  ``state_dict()`` saved once).

**Trust model.** A plain state dict is read with ``torch.load(weights_only=True)``: tensors only, no pickled code.
A TorchScript archive cannot be read that way; it is opened with ``torch.jit.load`` and only its
``state_dict()`` is kept (no method of it is called). ``torch.jit.load`` runs no Python pickle code, but it does
compile the archive's TorchScript and a crafted archive could run TorchScript operations while loading; open
archives only from a source you trust (OpenAI's release URLs carry the file's SHA-256 in their path), or convert
once on a trusted machine with ``torch.save(torch.jit.load(path).state_dict(), "ViT-B-16.state_dict.pt")``.

The mapping is the one of OpenAI's ``build_model`` (sizes read off the tensors; ``heads = width // 64``; QuickGELU;
LayerNorm eps 1e-5; the text feature taken at the end-of-text token, the highest id of OpenAI's vocabulary):
each fused ``attn.in_proj_weight`` splits into q, k, v; ``ln_1/ln_2/c_fc/c_proj`` become
``layer_norm1/layer_norm2/fc1/fc2``; the projections ``visual.proj`` and ``text_projection`` (applied as
``x @ P``) become the transposed weights of ``visual_projection`` and ``text_projection`` (``Linear``). A test
compares image and text features with open_clip's implementation of OpenAI's model.
"""

from __future__ import annotations

import os
import warnings
import zipfile
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from magicseg_models.errors import MagicSegError, one_line

if TYPE_CHECKING:
    import torch

# entries of OpenAI's TorchScript archives that are sizes, not weights (dropped by OpenAI's build_model too)
_NOT_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
OPENAI_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
OPENAI_TOKENIZER = "openai/clip-vit-base-patch16"  # OpenAI's BPE (49,408 tokens), shared by all OpenAI CLIPs


class OpenAICLIPError(MagicSegError):
    """A file that is not an OpenAI-format ViT CLIP checkpoint, or cannot be read safely."""


def is_openai_file(name: str) -> bool:
    """Whether ``model.clip`` names a single checkpoint file (an OpenAI ``.pt``) rather than a folder or hub id."""
    path = name.removeprefix("file://")
    # a URL may carry a query (a presigned S3 link): the suffix is the path's
    return urlsplit(path).path.lower().endswith(OPENAI_SUFFIXES) or os.path.isfile(os.path.expanduser(path))


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """The tensors of an OpenAI CLIP file (TorchScript archive or plain state dict), float32, sizes dropped."""
    import torch

    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():  # "torch.jit.load is deprecated": still the only reader of the format
                warnings.simplefilter("ignore", FutureWarning)
                state = torch.jit.load(path, map_location="cpu").state_dict()
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unreadable or unsafe: one line naming the file
        raise OpenAICLIPError(f"model.clip '{path}' cannot be read as an OpenAI CLIP checkpoint: "
                              f"{one_line(err, 200)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise OpenAICLIPError(f"model.clip '{path}' holds no state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items() if k not in _NOT_WEIGHTS}
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def _heads(width: int, what: str) -> int:
    if width % 64:
        raise OpenAICLIPError(f"OpenAI CLIP {what} width {width} is not a multiple of 64 (heads = width // 64)")
    return width // 64


def config_from_state_dict(state: dict[str, torch.Tensor], *, bos_token_id: int | None = None,
                           eos_token_id: int | None = None, pad_token_id: int | None = None):
    """The ``CLIPConfig`` of an OpenAI ViT CLIP state dict (OpenAI's ``build_model`` rules)."""
    from transformers import CLIPConfig

    if "visual.proj" not in state:
        if any(k.startswith("visual.layer1.") for k in state):
            raise OpenAICLIPError("a ResNet CLIP (RN50, RN101, ...) cannot back ZegCLIP; use a ViT CLIP such as "
                                  "ViT-B-16.pt")
        raise OpenAICLIPError("not an OpenAI CLIP state dict (no visual.proj)")
    vision_width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    vocab = state["token_embedding.weight"].shape[0]
    embed_dim = state["text_projection"].shape[1]
    common = {"hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "projection_dim": embed_dim}
    vision = {**common, "hidden_size": vision_width, "patch_size": patch, "image_size": patch * grid,
              "intermediate_size": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
              "num_hidden_layers": _count(state, "visual.transformer.resblocks."),
              "num_attention_heads": _heads(vision_width, "vision")}
    # OpenAI pools text at the highest token id (end of text); eos = vocab - 1 does the same in transformers
    text = {**common, "hidden_size": text_width, "vocab_size": vocab,
            "max_position_embeddings": state["positional_embedding"].shape[0],
            "intermediate_size": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0],
            "num_hidden_layers": _count(state, "transformer.resblocks."),
            "num_attention_heads": _heads(text_width, "text"),
            "bos_token_id": vocab - 2 if bos_token_id is None else bos_token_id,
            "eos_token_id": vocab - 1 if eos_token_id is None else eos_token_id,
            "pad_token_id": 0 if pad_token_id is None else pad_token_id}
    return CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)


def _blocks(state: dict, src: str, dst: str, layers: int, out: dict[str, torch.Tensor]) -> None:
    names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
             "attn.out_proj": "self_attn.out_proj"}
    for i in range(layers):
        s, d = f"{src}.{i}", f"{dst}.{i}"
        for part in ("weight", "bias"):
            q, k, v = state[f"{s}.attn.in_proj_{part}"].chunk(3)
            out.update({f"{d}.self_attn.q_proj.{part}": q, f"{d}.self_attn.k_proj.{part}": k,
                        f"{d}.self_attn.v_proj.{part}": v})
            for old, new in names.items():
                out[f"{d}.{new}.{part}"] = state[f"{s}.{old}.{part}"]


def convert_state_dict(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """OpenAI names -> transformers ``CLIPModel`` names (see the module docstring)."""
    out: dict[str, torch.Tensor] = {"logit_scale": state["logit_scale"]}
    v, t = "vision_model", "text_model"
    out[f"{v}.embeddings.class_embedding"] = state["visual.class_embedding"]
    out[f"{v}.embeddings.patch_embedding.weight"] = state["visual.conv1.weight"]
    out[f"{v}.embeddings.position_embedding.weight"] = state["visual.positional_embedding"]
    for old, new in (("visual.ln_pre", f"{v}.pre_layrnorm"), ("visual.ln_post", f"{v}.post_layernorm"),
                     ("ln_final", f"{t}.final_layer_norm")):
        out[f"{new}.weight"], out[f"{new}.bias"] = state[f"{old}.weight"], state[f"{old}.bias"]
    _blocks(state, "visual.transformer.resblocks", f"{v}.encoder.layers",
            config.vision_config.num_hidden_layers, out)
    _blocks(state, "transformer.resblocks", f"{t}.encoder.layers", config.text_config.num_hidden_layers, out)
    out[f"{t}.embeddings.token_embedding.weight"] = state["token_embedding.weight"]
    out[f"{t}.embeddings.position_embedding.weight"] = state["positional_embedding"]
    out["visual_projection.weight"] = state["visual.proj"].t().contiguous()
    out["text_projection.weight"] = state["text_projection"].t().contiguous()
    return out


def clip_from_state_dict(state: dict[str, torch.Tensor], tokenizer: Any = None):
    """A transformers ``CLIPModel`` (float32, eval) holding an OpenAI state dict's weights.

    ``tokenizer`` (optional) supplies the special token ids; OpenAI's tokenizer has them at the top of the
    vocabulary, which is also the default.
    """
    from transformers import CLIPModel

    ids = {} if tokenizer is None else {"bos_token_id": tokenizer.bos_token_id,
                                        "eos_token_id": tokenizer.eos_token_id,
                                        "pad_token_id": tokenizer.pad_token_id}
    config = config_from_state_dict(state, **ids)
    try:
        converted = convert_state_dict(state, config)
    except KeyError as err:
        raise OpenAICLIPError(f"OpenAI CLIP state dict lacks {err.args[0]!r}") from None
    model = CLIPModel(config)
    result = model.load_state_dict(converted, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]  # buffers, rebuilt by the model
    if missing:
        raise OpenAICLIPError(f"OpenAI CLIP state dict misses weights for {missing[0]!r}")
    return model.eval()


def load_openai_clip(path: str, tokenizer: Any = None):
    """``ViT-B-16.pt`` (TorchScript archive or plain state dict) -> transformers ``CLIPModel``."""
    return clip_from_state_dict(read_state_dict(path), tokenizer)
