"""Every model a config will load, where from, in which format, and whether it is here right now.

``list_models(config)`` (a build, train or eval config) gives one :class:`ModelEntry` per model - the data behind
``magicseg models``. *Here right now* means usable without network: a local path that exists, a URL already in
this node's checkpoint cache (:mod:`magicseg_models.weights.fetch`), or hub files in the Hugging Face cache
(``huggingface_hub``'s cache API, i.e. what ``from_pretrained`` finds with ``HF_HUB_OFFLINE=1``). Weights built in
code (``tiny``, ``random``) are always here. An entry that is not here names the files it lacks and the command
that fetches them (``hf download ...``), or the URL.

Nothing here touches the network or builds a model: the listing works on an offline login node in seconds.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from magicseg_models.weights.fetch import cached_checkpoint, hub_download_command, is_url, parse_hf_url
from magicseg_models.weights.hub import (
    FAMILY_BASE_MODELS, FAMILY_FOLDERS, FAMILY_WEIGHTED, HF_SAM_IDS, PROCESSOR_FILES, TOKENIZER_FILES,
    TRANSFORMERS_WEIGHTS, Requirement, download_command, groundingdino_config_file, has_variant, include_patterns,
    is_single_file, local_folder, looks_local, missing_files, model_files, with_variant,
)
from magicseg_models.weights.openai_clip import OPENAI_TOKENIZER, is_openai_file

HERE, MISSING, REMOTE = "yes", "no", "remote"


@dataclass
class ModelEntry:
    """One model of a config: ``available`` is ``yes``, ``no`` or ``remote`` (a server; not checked)."""

    role: str
    source: str
    format: str
    dtype: str
    available: str
    revision: str | None = None
    missing: list[str] = field(default_factory=list)
    fetch: str | None = None  # the command (or URL) that makes it available
    kind: str = ""  # build | train | eval

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _built(role: str, what: str, dtype: str) -> ModelEntry:
    return ModelEntry(role, "built in code", what, dtype, HERE)


def _hub_model(role: str, source: str, revision: str | None, fmt: str, dtype: str,
               requirements: list[Requirement]) -> ModelEntry:
    """A transformers/diffusers model by hub id or folder, checked file by file."""
    missing = missing_files(source, requirements, revision)
    if not missing:
        return ModelEntry(role, source, fmt, dtype, HERE, revision)
    if looks_local(source):
        fetch = f"a folder holding {', '.join(missing)}" if os.path.isdir(local_folder(source)) \
            else f"no such folder {source}"
        return ModelEntry(role, source, fmt, dtype, MISSING, revision, missing, fetch)
    return ModelEntry(role, source, fmt, dtype, MISSING, revision, missing,
                      download_command(source, revision, include_patterns(requirements)))


def _file(role: str, value: str, fmt: str, dtype: str) -> ModelEntry:
    """A single checkpoint file: a local path, an ``hf://`` file, or any other URL (the checkpoint cache)."""
    if not is_url(value):
        path = os.path.expanduser(value.removeprefix("file://"))
        if os.path.isfile(path):
            return ModelEntry(role, value, fmt, dtype, HERE)
        return ModelEntry(role, value, fmt, dtype, MISSING, missing=[os.path.basename(path)],
                          fetch=f"no such file {value}")
    hub = parse_hf_url(value)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub.repo_id, hub.filename, revision=hub.revision, repo_type=hub.repo_type)
        if isinstance(cached, str):
            return ModelEntry(role, value, fmt, dtype, HERE, hub.revision)
        return ModelEntry(role, value, fmt, dtype, MISSING, hub.revision, [hub.filename], hub_download_command(hub))
    if cached_checkpoint(value):
        return ModelEntry(role, value, fmt, dtype, HERE)
    return ModelEntry(role, value, fmt, dtype, MISSING, missing=[os.path.basename(value.split("?")[0])],
                      fetch=f"python -m magicseg_models.weights.fetch {value}  (or let the first run fetch it on "
                            f"each node)")


def _transformers(role: str, source: str, revision: str | None, fmt: str, dtype: str, *,
                  tokenizer: bool = False, processor: bool = False) -> ModelEntry:
    requirements = model_files(TRANSFORMERS_WEIGHTS)
    if processor:
        requirements.append(PROCESSOR_FILES)
    if tokenizer:
        requirements.append(TOKENIZER_FILES)
    return _hub_model(role, source, revision, fmt, dtype, requirements)


# ---------------------------------------------------------------------------------------------- build
def _prompts(config) -> list[ModelEntry]:
    c = config.prompts
    if c.backend == "template":
        return [ModelEntry("prompts", "template", f"template {c.template!r} (no model)", "-", HERE)]
    if c.backend == "openai":
        where = c.base_url or "https://api.openai.com/v1"
        return [ModelEntry("prompts", f"{c.model} at {where}", "OpenAI-compatible API", "-", REMOTE)]
    if c.weights != "pretrained":
        return [_built("prompts", "tiny Llama (2 layers, random init) + local tokenizer", "float32")]
    return [_transformers("prompts", c.model, None, "transformers causal LM + tokenizer (chat template)",
                          "bfloat16 on GPU, else float32", tokenizer=True)]


def generator_requirements(model: str, revision: str | None, variant: str | None, safety: bool,
                           family: str = "sd15") -> tuple[list[Requirement], list[str]]:
    """The files a diffusers model of ``family`` (sd15 | sdxl | flux) loads, and the components whose ``variant``
    files it lacks."""
    requirements: list[Requirement] = []
    plain = []
    for name, weights in FAMILY_WEIGHTED[family].items():
        if name == "safety_checker" and not safety:
            continue
        state = has_variant(model, name, variant, weights, revision, online=False) if variant else False
        if variant and state is False:
            plain.append(name)
        names = [with_variant(w, variant) for w in weights] if state is not False else []
        if state is not True:  # no variant, or unknown yet: the plain files serve too
            names += list(weights)
        requirements += [(f"{name}/config.json",), tuple(f"{name}/{n}" for n in names)]
    return requirements + _unweighted_files(family, safety), plain


def _unweighted_files(family: str, safety: bool) -> list[Requirement]:
    """A diffusers generator folder's files besides its models: tokenizers, scheduler, the checker's processor."""
    tokenizers = [folder for folder in FAMILY_FOLDERS[family] if folder.startswith("tokenizer")]
    requirements = [tuple(f"{folder}/{n}" for n in TOKENIZER_FILES) for folder in tokenizers]
    requirements.append(("scheduler/scheduler_config.json",))
    if safety:
        requirements.append(("feature_extractor/preprocessor_config.json",))
    return requirements


GENERATOR_KINDS = {  # per family: its short name, and what its tiny and random weights built in code are
    "sd15": ("SD 1.x", "tiny UNet + VAE + CLIP text encoder", "SD 1.5 architecture"),
    "sdxl": ("SDXL", "tiny SDXL UNet + VAE + two CLIP text encoders", "SDXL base architecture"),
    "flux": ("FLUX.1", "tiny FLUX transformer + VAE + CLIP and T5 text encoders", "FLUX.1-schnell architecture"),
}


def _generator(config) -> list[ModelEntry]:
    c = config.generator
    short, tiny, full = GENERATOR_KINDS[c.family]
    if c.weights == "tiny":
        return [_built("generator", f"{tiny} (random init), local tokenizers", "float32")]
    if c.weights == "random":
        return [_built("generator", f"{full} (random init), local tokenizers", c.dtype)]
    if is_single_file(c.model):
        return _single_file_generator(c, short)
    requirements, plain = generator_requirements(c.model, c.revision, c.variant, c.safety_checker, c.family)
    fmt = f"diffusers {short} folder" + (f", {c.variant} variant" if c.variant else "")
    if plain:
        fmt += f" (plain files for {', '.join(plain)})"
    return [_hub_model("generator", c.model, c.revision, fmt, c.dtype, requirements)]


def _single_file_generator(c, short: str) -> list[ModelEntry]:
    """A single-file checkpoint, and the diffusers repo whose configs, tokenizers and scheduler describe it."""
    repo = c.single_file_config or FAMILY_BASE_MODELS[c.family]
    requirements = [("model_index.json",)]
    requirements += [(f"{name}/config.json",) for name in FAMILY_WEIGHTED[c.family] if name != "safety_checker"]
    if c.safety_checker:  # no part of a single file: its weights come from the config repo
        requirements += model_files(TRANSFORMERS_WEIGHTS, "safety_checker")
    requirements += _unweighted_files(c.family, c.safety_checker)
    return [_file("generator", c.model, f"single-file {short} checkpoint (original layout)", c.dtype),
            _hub_model("generator config", repo, None, f"diffusers {short} configs, tokenizers, scheduler", "-",
                       requirements)]


def _gpu_dtype(dtype: str) -> str:
    return "float32" if dtype == "float32" else f"float32 weights, {dtype} autocast on GPU"


def _detector(c) -> list[ModelEntry]:
    if c.backend == "owlv2":
        if c.weights != "pretrained":
            return [_built("detector", f"OWLv2 ({c.weights}, random init), local tokenizer", "float32")]
        return [_transformers("detector", c.model, None, "transformers Owlv2ForObjectDetection + processor",
                              _gpu_dtype(c.dtype), processor=True, tokenizer=True)]
    if c.backend == "transformers":
        if c.weights != "pretrained":
            return [_built("detector", f"Grounding DINO ({c.weights}, random init), local tokenizer", "float32")]
        return [_transformers("detector", c.model, None, "transformers GroundingDino + processor",
                              _gpu_dtype(c.dtype), processor=True, tokenizer=True)]
    entries = [_official_config(c)]
    if c.weights == "random" and c.text_encoder is None:
        entries.append(_built("detector", "groundingdino-py SwinT + BERT-base shapes (random init)", "float32"))
        return entries
    if c.weights == "pretrained":
        entries.append(_file("detector", c.checkpoint or "(detector.checkpoint not set)", "groundingdino-py .pth",
                             _gpu_dtype(c.dtype)))
    encoder = c.text_encoder or "bert-base-uncased"
    if c.weights == "pretrained":
        entries.append(_transformers("detector text encoder", encoder, None, "transformers BERT + tokenizer",
                                     "float32", tokenizer=True))
    else:  # random weights in the text encoder's architecture: its config and tokenizer only
        entries.append(_hub_model("detector text encoder", encoder, None, "BERT config + tokenizer (random init)",
                                  "float32", [("config.json",), TOKENIZER_FILES]))
    return entries


def _official_config(c) -> ModelEntry:
    path = c.config_file or groundingdino_config_file()
    if path:
        return _file("detector config", path, "groundingdino-py config (.py)", "-")
    from magicseg_models.annotation.official import INSTALL_LINE

    return ModelEntry("detector config", "GroundingDINO_SwinT_OGC.py (groundingdino-py)", "groundingdino-py",
                      "-", MISSING, missing=["groundingdino-py"], fetch=INSTALL_LINE)


def _segmenter(c) -> list[ModelEntry]:
    dtype = _gpu_dtype(c.dtype)
    if c.weights != "pretrained":
        size = "tiny" if c.weights == "tiny" else (f"2.1 hiera-{c.sam2_size}" if c.backend == "sam2" else c.model_type)
        return [_built("segmenter", f"SAM {size} ({c.backend}, random init)", "float32")]
    if c.backend == "sam2":
        return [_transformers("segmenter", c.sam2_source, None, "transformers Sam2Model + processor", dtype,
                              processor=True)]
    if c.backend == "transformers":
        name = c.checkpoint if c.checkpoint and not c.checkpoint.endswith(".pth") else HF_SAM_IDS[c.model_type]
        return [_transformers("segmenter", name, None, "transformers SamModel + processor", dtype, processor=True)]
    return [_file("segmenter", c.checkpoint_source,
                  f"segment-anything {c.model_type} .pth", dtype)]


def _annotate(annotate) -> list[ModelEntry]:
    return _detector(annotate.detector) + _segmenter(annotate.segmenter)


# ---------------------------------------------------------------------------------------- train, eval
def _clip(model) -> list[ModelEntry]:
    if model.weights != "pretrained":
        what = "tiny CLIP" if model.weights == "tiny" else "CLIP ViT-B/16 architecture"
        return [_built("clip", f"{what} (random init), local tokenizer", "float32")]
    if is_openai_file(model.clip) and (is_url(model.clip) or not os.path.isdir(local_folder(model.clip))):
        tokenizer = model.tokenizer or OPENAI_TOKENIZER
        return [_file("clip", model.clip, "OpenAI CLIP file (TorchScript archive or state dict)", "float32"),
                _hub_model("clip tokenizer", tokenizer, None, "CLIP tokenizer", "-", [TOKENIZER_FILES])]
    entries = [_transformers("clip", model.clip, None, "transformers CLIPModel", "float32",
                             tokenizer=model.tokenizer is None)]
    if model.tokenizer is not None:
        entries.append(_hub_model("clip tokenizer", model.tokenizer, None, "CLIP tokenizer", "-", [TOKENIZER_FILES]))
    return entries


def _zegclip_checkpoint(uri: str) -> ModelEntry:
    fmt = "ZegCLIP checkpoint (magicseg train output)"
    if is_url(uri):
        return ModelEntry("zegclip checkpoint", uri, fmt, "float32", REMOTE)
    here = os.path.exists(os.path.expanduser(uri.removeprefix("file://")))
    return ModelEntry("zegclip checkpoint", uri, fmt, "float32", HERE if here else MISSING,
                      missing=[] if here else [uri], fetch=None if here else f"no such path {uri}")


def list_models(config) -> list[ModelEntry]:
    """The models ``config`` will load (see the module docstring), in the order the run loads them."""
    from magicseg_models.config import BuildConfig, EvalConfig, TrainConfig

    if isinstance(config, BuildConfig):
        entries, kind = _prompts(config) + _generator(config) + _annotate(config.annotate), "build"
    elif isinstance(config, TrainConfig):
        entries, kind = _clip(config.model), "train"
    elif isinstance(config, EvalConfig):
        kind = "eval"
        if config.baseline == "grounded-sam":
            entries = _annotate(config.annotate)
        elif config.predictions:
            entries = []  # scoring saved label maps loads no model
        else:
            entries = ([_zegclip_checkpoint(config.checkpoint)] if config.checkpoint else []) + _clip(config.model)
    else:
        raise TypeError(f"not a magicseg config: {type(config).__name__}")
    for entry in entries:
        entry.kind = kind
    return entries
