"""Cache of validated LLM prompts on storage, so a rerun never pays for the same prompt twice.

One JSON file per LLM call under ``URI/prompts/<aa>/<key>.json``, keyed by what determines the answer: the class
names, backend, model, instruction version, run seed and call number (a class set asked for more than ``k``
prompts needs several calls). Files are written atomically; a corrupt file counts as a miss and is rewritten.
No secret is part of a key or a file.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import StorageError

PROMPTS_DIR = "prompts"


def cache_key(*, class_names: Sequence[str], backend: str, model: str, instruction_version: str, seed: int,
              call: int) -> dict[str, Any]:
    return {"class_names": sorted(class_names), "backend": backend, "model": model,
            "instruction_version": instruction_version, "seed": int(seed), "call": int(call)}


class PromptCache:
    """``uri`` is a dataset URI (files go under ``URI/prompts/``) or a cache folder; None disables caching."""

    def __init__(self, uri: str | None, storage_options: dict[str, Any] | None = None):
        self.storage = Storage(uri, storage_options) if uri else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def _path(key: dict[str, Any]) -> str:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        return f"{PROMPTS_DIR}/{digest[:2]}/{digest}.json"

    def get(self, key: dict[str, Any]) -> list[str] | None:
        if self.storage is None:
            self.misses += 1
            return None
        try:
            entry = self.storage.read_json(self._path(key), missing_ok=True)
        except StorageError:
            entry = None  # unreadable or corrupt: ask again and overwrite
        if isinstance(entry, dict) and entry.get("key") == key and isinstance(entry.get("prompts"), list):
            self.hits += 1
            return [str(p) for p in entry["prompts"]]
        self.misses += 1
        return None

    def put(self, key: dict[str, Any], prompts: Sequence[str], meta: dict[str, Any] | None = None) -> None:
        if self.storage is not None:
            self.storage.write_json_atomic(self._path(key), {"key": key, "prompts": list(prompts),
                                                             "meta": dict(meta or {})})

    def stats(self) -> dict[str, int]:
        return {"cache_hits": self.hits, "cache_misses": self.misses}
