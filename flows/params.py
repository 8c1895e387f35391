"""Flow parameters -> a validated config: a whole config object (the UI form), or a preset plus plain fields."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from magicseg_models.config import KINDS, BenchmarkName, load_config, redact
from magicseg_models.errors import ConfigError

# the choice lists of the flows' UI forms (a test keeps them equal to the presets shipped in the package)
BuildPreset = Literal["flux-schnell", "flux-schnell-random", "sd15", "sd15-random", "sdxl", "sdxl-random", "tiny"]
TrainPreset = Literal["tiny", "zegclip-vitb16", "zegclip-vitb16-plus"]
EvalPreset = Literal["tiny", "zegclip-vitb16"]
Benchmark = BenchmarkName


def refuse_storage_secrets(config: BaseModel) -> None:
    """A flow stores its parameters as given (and the UI shows them) before its body runs: refuse a config that
    holds a secret - credentials in ``storage.storage_options``, or a URL carrying userinfo or a signed query
    (``segmenter.checkpoint``, ``model.clip``, ...) - before any flow starts. Workers read the AWS_* environment
    (or the cluster's role) instead."""
    options = config.storage.storage_options
    if redact(options) != options:
        raise ConfigError("storage credentials in storage.storage_options would become flow parameters; use the "
                          "AWS_* environment (or the cluster's credentials) instead")
    data = config.model_dump(mode="json")
    leaked = _first_difference(data, redact(data))
    if leaked:
        raise ConfigError(f"config key '{leaked}' holds a secret (credentials in a URL or a secret-looking value) "
                          "that would become a flow parameter; put the file on storage the workers can read with "
                          "their own credentials (AWS_* environment, a cluster role) and give its plain URL")


def _first_difference(a, b, prefix: str = "") -> str | None:
    """The dotted key of the first value that differs between two JSON-like trees of the same shape."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a:
            found = _first_difference(a[key], b.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if a == b else prefix.rstrip(".")


def resolve_config(kind: str, config: BaseModel | dict | None, preset: str | None = None, **fields: Any):
    """``config`` (model or dict) with the non-None ``fields`` on top; without ``config``, the preset's."""
    if config is None:
        resolved = load_config(kind, preset, **fields)
    else:
        data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
        data.update({k: v for k, v in fields.items() if v is not None})
        if preset:
            data["preset"] = preset
        resolved = KINDS[kind].model_validate(data)
    refuse_storage_secrets(resolved)
    return resolved
