"""Stable Diffusion single-file checkpoints: one ``.safetensors`` / ``.ckpt`` in the original layout.

Most SD 1.5 and SDXL fine-tunes (and the files A1111 and ComfyUI load) are a single file in the layout of the
original CompVis / Stability code: ``model.diffusion_model.*`` (the UNet), ``first_stage_model.*`` (the VAE) and
the text encoders (``cond_stage_model.transformer.*`` for SD 1.x; ``conditioner.embedders.0.transformer.*`` and,
in OpenCLIP's names, ``conditioner.embedders.1.model.*`` for SDXL). diffusers' ``from_single_file`` converts it.
The file holds weights only, so the architecture, the tokenizers and the scheduler come from a diffusers repo
(``generator.single_file_config``, by default the family's base model): only that repo's small files are read.

How a load goes, so an offline cluster never waits on the network or loads something it did not name:

1. The file: a local path, or a URL fetched once per node into the checkpoint cache
   (:func:`magicseg_models.weights.fetch.local_checkpoint`; ``hf://`` files go to the Hugging Face cache).
2. The config repo resolves to a local folder first: a folder as it is; a hub id through ``snapshot_download``
   of its config, tokenizer and scheduler files (with ``HF_HUB_OFFLINE=1``, the cached snapshot, or a one-line
   error with the ``hf download`` command). diffusers is then given that folder, so it makes no hub call of
   its own (left alone, it retries online when the cache misses).
3. The file's SHA-256 is recorded with the settings: file names of fine-tunes are not unique, their contents
   are (the first 10 hex digits are the "AutoV2" hash civitai shows).
4. diffusers' pipeline ``from_single_file`` reads the file once and converts every component in it. The safety
   checker is no part of such files: with ``generator.safety_checker`` it loads from the config repo.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import torch

from magicseg_models.errors import MagicSegError, one_line
from magicseg_models.weights.fetch import local_checkpoint
from magicseg_models.weights.hub import CONFIG_PATTERNS, FAMILY_BASE_MODELS, download_command, local_folder, looks_local

logger = logging.getLogger(__name__)


class SingleFileError(MagicSegError):
    """A single-file checkpoint or the diffusers repo describing it cannot be found or read."""


def file_sha256(path: str, chunk: int = 1 << 24) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def config_folder(repo: str) -> str:
    """The diffusers repo describing a single file, as a local folder (see the module docstring, step 2)."""
    if looks_local(repo):
        path = local_folder(repo)
        if not os.path.isfile(os.path.join(path, "model_index.json")):
            raise SingleFileError(f"generator.single_file_config: {repo!r} is not a diffusers folder "
                                  f"(no model_index.json)")
        return path
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo, allow_patterns=list(CONFIG_PATTERNS))
    except Exception as err:  # offline and not cached, unknown repo, gated: say what fetches it
        raise SingleFileError(f"generator.single_file_config {repo!r}: its configs and tokenizers are not here; "
                              f"fetch them with: {download_command(repo, None, CONFIG_PATTERNS)} "
                              f"({one_line(err, limit=160)})") from None


def load_single_file(model: str, single_file_config: str | None, family: str, dtype: torch.dtype,
                     safety: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pipeline components in ``model`` (a single file of ``family``), and what was loaded (for the settings).

    Returns diffusers' component names -> modules (the scheduler is the config repo's; the caller may swap it).
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    checkpoint = local_checkpoint(model, label="generator.model")
    repo = single_file_config or FAMILY_BASE_MODELS[family]
    folder = config_folder(repo)
    pipeline_cls = StableDiffusionPipeline if family == "sd15" else StableDiffusionXLPipeline
    extra = {"safety_checker": None, "feature_extractor": None} if family == "sd15" else {}
    try:
        pipeline = pipeline_cls.from_single_file(checkpoint.path, config=folder, torch_dtype=dtype,
                                                 local_files_only=True, **extra)
    except Exception as err:  # not a checkpoint, another family's file, truncated: one line for the user
        raise SingleFileError(f"generator.model {model!r} could not be read as a {family} single-file checkpoint "
                              f"described by {repo!r}: {one_line(err)}") from None
    parts = {name: module for name, module in pipeline.components.items() if module is not None}
    if safety:
        parts.update(_safety_checker(folder, repo, dtype))
    source = {"single_file": os.path.basename(checkpoint.source.split("?", 1)[0]),
              "sha256": file_sha256(checkpoint.path), "single_file_config": repo}
    return parts, source


def _safety_checker(folder: str, repo: str, dtype: torch.dtype) -> dict[str, Any]:
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPImageProcessor

    where = folder if looks_local(repo) else repo  # the snapshot above holds no weights: the hub cache may
    try:
        return {"safety_checker": StableDiffusionSafetyChecker.from_pretrained(where, subfolder="safety_checker",
                                                                               torch_dtype=dtype),
                "feature_extractor": CLIPImageProcessor.from_pretrained(folder, subfolder="feature_extractor")}
    except Exception as err:
        raise SingleFileError(f"generator.safety_checker: no safety checker in {repo!r} to go with the single "
                              f"file: {one_line(err)}") from None
