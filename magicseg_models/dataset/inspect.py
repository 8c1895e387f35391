"""Health and coverage report of a dataset: what ``magicseg inspect`` prints.

Every shard listed in the manifest is downloaded once, checked against the manifest's byte count and sha256,
parsed as Parquet, checked against the schema and row count, and its ``class_names`` column counted. Shard
files the manifest does not list are reported too (a stray or half-committed writer). Works on any dataset that
follows the contract, whoever wrote it.

``report["scores"]`` holds the distribution of each quality score over the healthy shards (:data:`SCORES`), read
from those columns alone (for annotations, only the score leaves, never the masks): ``clip_score`` per sample,
``counterfactual_score`` per sample (its highest counterfactual score, the figure ``counterfactual_threshold``
tests), ``predicted_iou``, ``stability_score`` and ``box_fill`` per annotation, and ``context_annotations`` (how
many annotations have ``asked = false``). A score a dataset has no column for (schema 1, another writer) is
``"not stored"``; one whose values are all null (``quality.enabled = false``) is ``"not computed"``.
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
from magicseg_models.errors import StorageError, one_line

SCORES = ("clip_score", "counterfactual_score", "predicted_iou", "stability_score", "box_fill")
ANNOTATION_SCORES = ("predicted_iou", "stability_score", "box_fill")
QUANTILES = {"p10": 10, "p25": 25, "median": 50, "p75": 75, "p90": 90}


def _leaf(pf: pq.ParquetFile, column: str, field: str) -> str | None:
    """The Parquet path of ``column``'s list-of-struct child ``field`` (``annotations.list.element.box_fill``;
    writers name the list level differently), or None when the file has no such column."""
    for i in range(pf.metadata.num_columns):
        path = pf.schema.column(i).path
        parts = path.split(".")
        if parts[0] == column and parts[-1] == field and len(parts) == 4:
            return path
    return None


def _annotation_scores(pf: pq.ParquetFile, fields: tuple[str, ...]) -> dict[str, list | None]:
    """Per sample, the list of each annotation field's values (None: no such leaf); reads those leaves only."""
    leaves = {name: _leaf(pf, "annotations", name) for name in fields}
    present = [path for path in leaves.values() if path]
    rows = pf.read(columns=present).column(0).to_pylist() if present else []
    return {name: [[a.get(name) for a in per_row or []] for per_row in rows] if path else None
            for name, path in leaves.items()}


def sample_scores(pf: pq.ParquetFile, name: str) -> list[float | None] | None:
    """One figure per sample for score ``name`` (None: the file has no such column): ``clip_score`` itself, the
    highest counterfactual score, or the lowest of the sample's masks for a mask score (its worst mask)."""
    if name == "clip_score":
        return pf.read(columns=["clip_score"]).column(0).to_pylist() if "clip_score" in pf.schema_arrow.names \
            else None
    if name == "counterfactual_score":
        return [max(v) if v else None for v in pf.read(columns=["counterfactual_scores"]).column(0).to_pylist()]
    per_sample = _annotation_scores(pf, (name,))[name]
    if per_sample is None:
        return None
    return [min((v for v in values if v is not None), default=None) for values in per_sample]


def shard_scores(pf: pq.ParquetFile) -> dict[str, list | None]:
    """The raw score values of one shard (None: no such column); reads only the score columns."""
    out: dict[str, list | None] = {name: sample_scores(pf, name) for name in ("clip_score", "counterfactual_score")}
    for name, per_sample in _annotation_scores(pf, (*ANNOTATION_SCORES, "asked")).items():
        out[name] = None if per_sample is None else [v for values in per_sample for v in values]
    return out


def _distribution(values: list, not_stored: int) -> dict[str, Any]:
    """count, nulls and quantiles of the values of every shard that stores the score."""
    present = [float(v) for v in values if v is not None]
    summary: dict[str, Any] = {"values": len(present), "null": len(values) - len(present),
                               "not_stored": not_stored}
    if not values and not_stored:
        return {"status": "not stored", **summary}
    if not present:
        return {"status": "not computed" if values else "no values", **summary}
    ordered = sorted(present)
    quantiles = statistics.quantiles(ordered, n=100, method="inclusive") if len(ordered) > 1 else ordered * 99
    return {"status": "ok", **summary, "min": ordered[0],
            **{key: quantiles[q - 1] for key, q in QUANTILES.items()},
            "max": ordered[-1], "mean": statistics.fmean(ordered)}


def score_report(shards: list[dict]) -> dict[str, Any]:
    """The ``scores`` section of the report from each healthy shard's raw values (``shard["scores"]``)."""
    report: dict[str, Any] = {}
    for name in SCORES:
        values, not_stored = [], 0
        for shard in shards:
            raw = (shard.get("scores") or {}).get(name)
            if raw is None:
                not_stored += int(shard.get("rows") or 0)
            else:
                values.extend(raw)
        report[name] = _distribution(values, not_stored)
    asked = [(shard.get("scores") or {}).get("asked") for shard in shards]
    stored = [flags for flags in asked if flags is not None]
    report["context_annotations"] = ({"status": "ok", "count": sum(flag is False for flags in stored for flag in flags)}
                                     if stored else {"status": "not stored", "count": None})
    return report


def _check_shard(storage: Storage, entry: dict) -> dict:
    path = entry["path"]
    result = {"path": path, "rows": entry.get("rows"), "bytes": entry.get("bytes"), "status": "ok",
              "problem": None, "class_names": [], "scores": None}

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
        pf, problems = None, [f"not readable Parquet ({one_line(err, 200)})"]
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
        result["scores"] = shard_scores(pf)
    except (pa.ArrowInvalid, OSError) as err:
        return fail("corrupt", f"not readable Parquet ({one_line(err, 200)})")
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
                           "class_names": [], "scores": None})

    scores = score_report([shard for shard in shards if shard["status"] == "ok"])
    for shard in shards:
        shard.pop("scores")
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
        "scores": scores,
        "shards": shards,
        "problems": problems,
        "ok": not problems,
    }
