"""Flow parameters -> a validated config: a whole config object (the UI form), or a preset plus plain fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from magicseg_models.config import KINDS, load_config, redact
from magicseg_models.errors import ConfigError


def refuse_storage_secrets(config: BaseModel) -> None:
    """Credentials in ``storage.storage_options`` would be stored as flow parameters (and shown in the UI): refuse
    them before any flow starts. Workers read the AWS_* environment (or the cluster's role) instead."""
    options = config.storage.storage_options
    if redact(options) != options:
        raise ConfigError("storage credentials in storage.storage_options would become flow parameters; use the "
                          "AWS_* environment (or the cluster's credentials) instead")


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
