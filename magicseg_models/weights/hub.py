"""Hugging Face hub ids and local folders: which files a model needs, which are here, which weights variant exists.

Everything asks ``huggingface_hub``'s cache API (``try_to_load_from_cache``, ``get_cached_repo_tree``) rather
than guessing paths inside the cache, so the answers are what ``from_pretrained`` will find with
``HF_HUB_OFFLINE=1``. A *requirement* is a tuple of alternative file names, one of which must be present (a
model's weights may be ``model.safetensors`` or ``pytorch_model.bin``, sharded or not).
"""

from __future__ import annotations

import json
import os
import re
from typing import Sequence

Requirement = tuple[str, ...]

TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                        "pytorch_model.bin.index.json")
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
                     "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "tokenizer.model", "spiece.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# the components of an SD 1.x diffusers folder that hold weights, and the file names of their weights
SD_WEIGHTED_COMPONENTS = {"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS,
                          "safety_checker": TRANSFORMERS_WEIGHTS}
# per generator family: the weighted components of its diffusers folder (and their weight file names), and every
# subfolder the paired pipeline loads (the SD 1.x safety checker is optional, so it is not among them)
FAMILY_WEIGHTED = {
    "sd15": SD_WEIGHTED_COMPONENTS,
    "sdxl": {"unet": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS,
             "text_encoder_2": TRANSFORMERS_WEIGHTS},
    "flux": {"transformer": DIFFUSERS_WEIGHTS, "vae": DIFFUSERS_WEIGHTS, "text_encoder": TRANSFORMERS_WEIGHTS,
             "text_encoder_2": TRANSFORMERS_WEIGHTS},
}
FAMILY_FOLDERS = {"sd15": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
                  "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
                  "flux": ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                           "scheduler")}
FAMILY_NAMES = {"sd15": "Stable Diffusion 1.x", "sdxl": "Stable Diffusion XL", "flux": "FLUX.1"}
# each family's base model on the hub: the example in error messages, and the diffusers repo whose configs,
# tokenizers and scheduler describe a single-file checkpoint when generator.single_file_config is unset
FAMILY_BASE_MODELS = {"sd15": "stable-diffusion-v1-5/stable-diffusion-v1-5",
                      "sdxl": "stabilityai/stable-diffusion-xl-base-1.0", "flux": "black-forest-labs/FLUX.1-schnell"}
# single-file checkpoints (the original CompVis / Stability layout that A1111, ComfyUI and most fine-tunes ship)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SINGLE_FILE_FAMILIES = ("sd15", "sdxl")
# what a diffusers repo must hold to describe a single file's architecture (configs, tokenizers, scheduler):
# (huggingface_hub's patterns match across folders), none of them weights
CONFIG_PATTERNS = ("*.json", "*.txt", "*.model")
HF_SAM_IDS = {"vit_h": "facebook/sam-vit-huge", "vit_l": "facebook/sam-vit-large", "vit_b": "facebook/sam-vit-base"}
# SAM 2.1 by Hiera size (segmenter.sam2_size): Meta's repos hold transformers weights (a sam2_video config,
# which Sam2Model reads for the image path) beside the official .pt files
HF_SAM2_IDS = {size: f"facebook/sam2.1-hiera-{size}" for size in ("tiny", "small", "base-plus", "large")}


def groundingdino_config_file() -> str | None:
    """groundingdino-py's ``GroundingDINO_SwinT_OGC.py``, found without importing the package; None if absent."""
    import importlib.util

    spec = importlib.util.find_spec("groundingdino")
    if spec is None or not spec.submodule_search_locations:
        return None
    return os.path.join(list(spec.submodule_search_locations)[0], "config", "GroundingDINO_SwinT_OGC.py")


def looks_local(name: str) -> bool:
    """A folder rather than a hub id: an explicit path, an existing one, or more than ``org/name``."""
    return (name.startswith(("/", "./", "../", "~", "file://")) or os.path.exists(os.path.expanduser(name))
            or name.count("/") > 1 or "\\" in name)


def is_single_file(model: str) -> bool:
    """``generator.model`` names one checkpoint file (a path or URL ending in .safetensors / .ckpt), not a
    diffusers folder or hub id."""
    return model.split("?", 1)[0].lower().endswith(SINGLE_FILE_SUFFIXES)


def local_folder(name: str) -> str:
    return os.path.expanduser(name.removeprefix("file://"))


def with_variant(filename: str, variant: str | None) -> str:
    """``model.safetensors`` + ``fp16`` -> ``model.fp16.safetensors`` (diffusers' and transformers' naming)."""
    if not variant:
        return filename
    if filename.endswith(".index.json"):
        stem = filename[: -len(".index.json")]
        base, ext = os.path.splitext(stem)
        return f"{base}.{variant}{ext}.index.json"
    base, ext = os.path.splitext(filename)
    return f"{base}.{variant}{ext}"


def model_files(weights: Sequence[str] = TRANSFORMERS_WEIGHTS, subfolder: str = "",
                variant: str | None = None) -> list[Requirement]:
    """``config.json`` and one weights file of a transformers or diffusers model (in ``subfolder``)."""
    prefix = f"{subfolder}/" if subfolder else ""
    return [(f"{prefix}config.json",), tuple(prefix + with_variant(w, variant) for w in weights)]


def _cached(repo_id: str, filename: str, revision: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, revision=revision)
    return found if isinstance(found, str) else None


def find_file(source: str, filename: str, revision: str | None = None) -> str | None:
    """The local file ``filename`` of a folder or of a hub repo in the Hugging Face cache; None when absent."""
    if looks_local(source):
        path = os.path.join(local_folder(source), filename)
        return path if os.path.isfile(path) else None
    return _cached(source, filename, revision)


def _shards(index_path: str, prefix: str) -> list[str]:
    try:
        with open(index_path) as f:
            return sorted({prefix + name for name in json.load(f)["weight_map"].values()})
    except (OSError, ValueError, KeyError, AttributeError):
        return []


def missing_files(source: str, requirements: Sequence[Requirement], revision: str | None = None) -> list[str]:
    """The requirements of ``source`` (folder or hub id) not met right now: for each, its first alternative.

    A sharded checkpoint counts only when its index and every shard it lists are here.
    """
    missing = []
    for alternatives in requirements:
        met = False
        for name in alternatives:
            path = find_file(source, name, revision)
            if path is None:
                continue
            if name.endswith(".index.json"):
                prefix = name.rsplit("/", 1)[0] + "/" if "/" in name else ""
                shards = _shards(path, prefix)
                if not shards or any(find_file(source, s, revision) is None for s in shards):
                    continue
            met = True
            break
        if not met:
            missing.append(alternatives[0])
    return missing


def repo_files(repo_id: str, revision: str | None = None, *, online: bool = True) -> list[str] | None:
    """The file names of a hub repo: the tree listing cached by a snapshot download, else (``online`` and not
    ``HF_HUB_OFFLINE``) the hub's listing; None when neither is available."""
    from huggingface_hub.constants import is_offline_mode

    try:
        from huggingface_hub import get_cached_repo_tree  # huggingface_hub 2.x

        return [entry.path for entry in get_cached_repo_tree(repo_id, revision=revision)]
    except Exception:  # noqa: BLE001 - no cached listing: ask the hub when allowed
        pass
    if not online or is_offline_mode():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi().list_repo_files(repo_id, revision=revision)
    except Exception:  # noqa: BLE001 - unreachable: the loader then reports its own one-line error
        return None


def has_variant(source: str, subfolder: str, variant: str, weights: Sequence[str],
                revision: str | None = None, *, online: bool = True) -> bool | None:
    """Whether a folder or hub repo holds ``variant`` weights (``*.fp16.safetensors`` ...) for ``subfolder``;
    None when that cannot be known right now (a hub id, offline, never listed, its variant files not cached).

    For a hub id: its file listing (cached by a snapshot download, or asked online), else the Hugging Face cache.
    """
    wanted = {with_variant(w, variant) for w in weights}
    if looks_local(source):
        folder = os.path.join(local_folder(source), subfolder)
        return os.path.isdir(folder) and bool(wanted & set(os.listdir(folder)))
    names = repo_files(source, revision, online=online)
    if names is not None:
        return any(f"{subfolder}/{name}" in names for name in wanted)
    if any(_cached(source, f"{subfolder}/{name}", revision) for name in wanted):
        return True
    return None


def download_command(repo_id: str, revision: str | None, patterns: Sequence[str]) -> str:
    """The ``hf download`` line (huggingface_hub's CLI) that fetches what a model needs into the cache."""
    parts = ["hf download", repo_id]
    if revision:
        parts += ["--revision", revision]
    parts += [f'--include "{p}"' for p in patterns]
    return " ".join(parts)


def include_patterns(requirements: Sequence[Requirement]) -> list[str]:
    """``--include`` globs for requirements: small text files by extension, weights by their first name and
    that name's shards (so a repo holding both fp16 and fp32 files sends only the ones that load, and a sharded
    FLUX transformer or T5 encoder arrives whole)."""
    patterns = ["*.json", "*.txt"]
    for alternatives in requirements:
        name = alternatives[0]
        if re.search(r"\.(json|txt)$", name):
            continue
        if name.endswith(".model"):
            patterns.append("*.model")
            continue
        patterns.append(name)
        stem, dot, ext = name.rpartition(".")
        if ext in ("safetensors", "bin"):  # large models ship sharded: name-00001-of-00003.ext (+ a json index)
            patterns.append(f"{stem}-*-of-*{dot}{ext}")
    return list(dict.fromkeys(patterns))
