"""Layered loading: preset -> ``--config FILE.yaml`` -> ``--set key.path=value`` -> explicit flags, validated
into one config of a kind, with errors as one line naming the key."""

from __future__ import annotations

import difflib
from importlib import resources
from typing import Any, Literal, Sequence, get_args, get_origin

import fsspec
import yaml
from pydantic import BaseModel, ValidationError

from magicseg_models.config.base import Section
from magicseg_models.config.build import BuildConfig
from magicseg_models.config.eval import EvalConfig
from magicseg_models.config.train import TrainConfig
from magicseg_models.errors import ConfigError


KINDS: dict[str, type[Section]] = {"build": BuildConfig, "train": TrainConfig, "eval": EvalConfig}


def available_presets(kind: str) -> list[str]:
    folder = resources.files("magicseg_models") / "presets" / kind
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(kind: str, name: str) -> dict:
    path = resources.files("magicseg_models") / "presets" / kind / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind} preset '{name}'; available: {', '.join(available_presets(kind))}")
    return yaml.safe_load(path.read_text()) or {}


def _read_yaml_file(path: str) -> dict:
    try:
        with fsspec.open(path, "rt") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {type(err).__name__}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(item: str, model: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """``"generator.steps=30"`` -> (["generator", "steps"], 30); values are YAML (numbers, bools, lists).

    With ``model``, a key whose field is a string (``str`` or ``str | None``) takes the text as written, so that
    ``prompts.model=3.5`` or ``prompts.template={classes}`` stay strings; ``null``/``~``/empty still mean None
    for an optional one. A key whose field is a choice of names takes the name as written
    (``train.labels.context=off``).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key.path=value, got '{item}'")
    path = key.split(".")
    annotation = _annotation(model, path) if model is not None else None
    if annotation is str:
        return path, raw
    if get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
        return path, raw.strip()  # a choice of names: YAML would read "off" / "on" / "no" as booleans
    if annotation == str | None:
        return path, None if raw.strip() in ("", "~", "null", "Null", "NULL") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # unparseable YAML is taken as a plain string
    return path, value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def _format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        hint = _closest_key(model, [str(p) for p in first["loc"]])
        return f"unknown config key '{path}'" + (f"; did you mean '{hint}'?" if hint else "")
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"invalid config value for '{path}': {first['msg']}{got_text}{tail}"


def _annotation(model: type[BaseModel], path: list[str]) -> Any:
    """The type of the config field at ``path`` (``model`` itself for []), or None past the typed models."""
    current: Any = model
    i = 0
    while i < len(path):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None  # inside a free-form value (e.g. storage_options)
        field = current.model_fields.get(path[i])
        if field is None:
            return None
        current = field.annotation
        if get_origin(current) is dict and i + 1 < len(path):  # dict[str, X]: the next part is a free key
            current = get_args(current)[1]
            i += 1
        i += 1
    return current


def _closest_key(model: type[BaseModel], loc: list[str]) -> str | None:
    current = _annotation(model, loc[:-1])
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    match = difflib.get_close_matches(loc[-1], list(current.model_fields), n=1)
    return ".".join(loc[:-1] + match) if match else None


def load_config(kind: str, preset: str | None = None, config_file: str | None = None,
                overrides: Sequence[str] = (), **fields: Any):
    """Build a validated config of ``kind`` (build | train | eval) from its layers.

    ``fields`` are explicit CLI flags (``out=..., num_samples=...``); ``None`` values are skipped.
    """
    model = KINDS[kind]
    file_layer = _read_yaml_file(config_file) if config_file else {}
    parsed = [parse_override(item, model) for item in overrides]
    set_preset = [value for path, value in parsed if path == ["preset"]]
    name = preset or (set_preset[-1] if set_preset else None) or file_layer.get("preset") \
        or model.model_fields["preset"].default
    if not isinstance(name, str):
        raise ConfigError(f"invalid config value for 'preset': expected a preset name, got {name!r}")
    data = _deep_merge(_read_preset(kind, name), file_layer)
    for path, value in parsed:
        data = _deep_merge(data, _nest(path, value))
    data = _deep_merge(data, {k: v for k, v in fields.items() if v is not None})
    data["preset"] = name
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, model)) from None
