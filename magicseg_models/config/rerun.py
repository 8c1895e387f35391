"""Comparing the configs of two runs on one dataset: which differences would mix two datasets in one."""

from __future__ import annotations

from typing import Any, Sequence


# Keys that do not change what a build writes: how big, where, how fast. A rerun may change them freely;
# any other difference on an existing dataset would mix two datasets in one.
RERUN_FREE_KEYS = ("preset", "out", "num_samples", "shards_per_task", "ray", "storage", "health", "prompts.concurrency",
                   "prompts.timeout_s", "prompts.max_retries", "prompts.cache", "prompts.resources",
                   "prompts.token_parameter", "prompts.max_consecutive_failures",
                   "generator.resources", "annotate.resources", "generator.compile", "generator.attention",
                   "generator.channels_last", "generator.vae_decode_batch", "generator.tf32",
                   "annotate.detector.tf32", "annotate.segmenter.tf32")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def config_differences(old: dict, new: dict, free: Sequence[str] = RERUN_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two public configs, ignoring ``free`` keys and their children."""
    a, b = _flatten(old), _flatten(new)

    def is_free(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in free)

    return sorted(k for k in set(a) | set(b) if not is_free(k) and a.get(k) != b.get(k))
