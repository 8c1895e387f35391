"""The configuration reference (docs/configuration.md), generated from the schemas."""

from __future__ import annotations

import re

from pydantic import BaseModel

from magicseg_models.config.loading import KINDS, available_presets
from magicseg_models.config.redaction import PUBLIC_STORAGE_OPTIONS


def config_reference(kind: str) -> str:
    """Markdown table of every key of a config kind (docs/configuration.md is generated from this)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str, instance: BaseModel | None = None) -> None:
        # defaults come from the enclosing default instance: a section may override its class's own
        # defaults (e.g. `annotate.resources` shares a GPU by default, StageResources alone does not)
        for name, field in model.model_fields.items():
            ann = field.annotation
            default = getattr(instance, name) if instance is not None else field.get_default(
                call_default_factory=True)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.", default)
                continue
            if isinstance(default, dict) and default and isinstance(next(iter(default.values())), BaseModel):
                default = {k: v.model_dump() for k, v in default.items()}
            type_text = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann)
            type_text = re.sub(r"[\w.]+\.(\w+)", r"\1", type_text or str(ann)).replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {type_text} | `{default!r}` | {field.description or ''} |")

    walk(KINDS[kind], "")
    return "\n".join(rows)


def configuration_doc() -> str:
    """The whole of docs/configuration.md (regenerate with ``python -m magicseg_models.config``)."""
    parts = [
        "# Configuration reference",
        "",
        "Generated from `magicseg_models/config/` by `python -m magicseg_models.config > docs/configuration.md`;",
        "a test fails when this file and the code disagree.",
        "",
        "Layers, later wins: these defaults (the paper's and the authors' values) -> a preset",
        "(`magicseg_models/presets/<kind>/<name>.yaml`) -> `--config FILE.yaml` -> `--set key.path=value`",
        "(values parsed as YAML, except that a string key takes the text as written: `--set prompts.model=3.5` is",
        "the string `3.5`; `null` or nothing still unsets an optional one) -> explicit flags such as `--num-samples`.",
        "Unknown keys and bad values fail with one line naming the key. Secrets never belong in a config: storage",
        "credentials come from the AWS environment, the LLM key from `OPENAI_API_KEY` or the Prefect Secret block",
        "named by `prompts.api_key_secret`. Configs as recorded (manifests, Parquet metadata, artifacts, dry runs)",
        "redact the values of secret-looking keys (`secret`, `key`, `token`, `password`, `auth`, `account_key`,",
        "`connection_string`, ...), URL userinfo, secret-looking URL query parameters, and every value of",
        "`storage.storage_options` except these harmless ones:",
        ", ".join(f"`{k}`" for k in PUBLIC_STORAGE_OPTIONS) + ".",
        "",
        "Presets: " + "; ".join(f"{kind}: " + ", ".join(f"`{p}`" for p in available_presets(kind)) for kind in KINDS),
    ]
    for kind, model in KINDS.items():
        parts += ["", f"## {kind}: `{model.__name__}`", "", config_reference(kind)]
    return "\n".join(parts) + "\n"
