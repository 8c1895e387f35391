"""Flow parameters -> a validated config: a whole config object (the UI form), or a preset plus plain fields."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from magicseg_models.config import KINDS, load_config


def resolve_config(kind: str, config: BaseModel | dict | None, preset: str | None = None, **fields: Any):
    """``config`` (model or dict) with the non-None ``fields`` on top; without ``config``, the preset's."""
    if config is None:
        return load_config(kind, preset, **fields)
    model = KINDS[kind]
    data = config.model_dump() if isinstance(config, BaseModel) else dict(config)
    data.update({k: v for k, v in fields.items() if v is not None})
    if preset:
        data["preset"] = preset
    return model.model_validate(data)
