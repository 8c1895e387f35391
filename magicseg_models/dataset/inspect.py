"""Health and coverage report of a dataset: what ``magicseg inspect`` prints.

Every shard listed in the manifest is downloaded once, checked against the manifest's byte count and sha256,
parsed as Parquet, checked against the schema and row count, and its ``class_names`` column counted. Shard
files the manifest does not list are reported too (a stray or half-committed writer). Works on any dataset that
follows the contract, whoever wrote it.
"""

from __future__ import annotations

import hashlib
import posixpath
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from magicseg_models.dataset.schema import schema_problems
from magicseg_models.dataset.storage import Storage
from magicseg_models.dataset.store import SHARDS_DIR, load_manifest
from magicseg_models.errors import StorageError


def _check_shard(storage: Storage, entry: dict) -> dict:
    path = entry["path"]
    result = {"path": path, "rows": entry.get("rows"), "bytes": entry.get("bytes"), "status": "ok",
              "problem": None, "class_names": []}

    def fail(status: str, problem: str) -> dict:
        result.update(status=status, problem=f"{path}: {problem}")
        return result

    try:
        data = storage.read_bytes(path)
    except StorageError as err:
        if not storage.exists(path):
            return fail("missing", "listed in the manifest but not found")
        return fail("unreadable", str(err))
    # schema first: a shard from another writer is better explained by its fields than by its checksum
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        problems = schema_problems(pf.schema_arrow)
    except (pa.ArrowInvalid, OSError) as err:
        pf, problems = None, [f"not readable Parquet ({str(err).splitlines()[0][:200]})"]
    if pf is not None and problems:
        return fail("schema", "; ".join(problems))
    if entry.get("bytes") is not None and len(data) != int(entry["bytes"]):
        return fail("corrupt", f"{len(data)} bytes, manifest says {entry['bytes']} (truncated or rewritten)")
    if entry.get("sha256") and hashlib.sha256(data).hexdigest() != entry["sha256"]:
        return fail("corrupt", "sha256 does not match the manifest")
    if pf is None:
        return fail("corrupt", problems[0])
    try:
        if entry.get("rows") is not None and pf.metadata.num_rows != int(entry["rows"]):
            return fail("corrupt", f"{pf.metadata.num_rows} rows, manifest says {entry['rows']}")
        result["class_names"] = pf.read(columns=["class_names"]).column("class_names").to_pylist()
    except (pa.ArrowInvalid, OSError) as err:
        return fail("corrupt", f"not readable Parquet ({str(err).splitlines()[0][:200]})")
    return result


def inspect_dataset(uri: str, storage_options: dict[str, Any] | None = None, workers: int = 4,
                    progress: Callable[[int, int], None] | None = None) -> dict:
    """The report as a JSON-able dict; ``report["problems"]`` is empty when every shard is healthy."""
    storage = Storage(uri, storage_options)
    manifest = load_manifest(storage)
    entries = manifest["shards"]

    shards: list[dict] = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for done, result in enumerate(pool.map(lambda e: _check_shard(storage, e), entries), 1):
            shards.append(result)
            if progress:
                progress(done, len(entries))

    listed = {posixpath.normpath(e["path"]) for e in entries}
    for name in storage.list(SHARDS_DIR, suffix=".parquet"):
        rel = f"{SHARDS_DIR}/{name}"
        if rel not in listed:
            shards.append({"path": rel, "rows": None, "bytes": storage.size(rel), "status": "unlisted",
                           "problem": f"{rel}: shard file exists but the manifest does not list it",
                           "class_names": []})

    per_class: dict[str, int] = {}
    for shard in shards:
        for names in shard.pop("class_names"):
            for name in names or []:
                per_class[name] = per_class.get(name, 0) + 1
    vocabulary = list(manifest.get("selected_classes") or manifest.get("classes") or [])
    for name in vocabulary:
        per_class.setdefault(name, 0)
    counts = sorted(per_class.values())
    coverage = {
        "classes": len(per_class),
        "min": counts[0] if counts else 0,
        "median": statistics.median(counts) if counts else 0,
        "max": counts[-1] if counts else 0,
        "classes_with_none": sorted(name for name, c in per_class.items() if c == 0),
    }
    manifest_counts = manifest.get("counts") or {}
    dropped = manifest_counts.get("dropped") or {}
    problems = [s["problem"] for s in shards if s["problem"]]
    return {
        "uri": storage.uri,
        "schema_version": manifest.get("schema_version"),
        "code_version": manifest.get("code_version"),
        "samples": sum(int(s["rows"] or 0) for s in shards if s["status"] == "ok"),
        "planned": manifest_counts.get("planned"),
        "dropped": dropped,
        "dropped_total": sum(dropped.values()),
        "per_class": dict(sorted(per_class.items(), key=lambda kv: (-kv[1], kv[0]))),
        "coverage": coverage,
        "shards": shards,
        "problems": problems,
        "ok": not problems,
    }
