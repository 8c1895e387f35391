"""Writing a dataset: shards published whole, commit records, and a manifest derived from them.

The shard is the unit of work, naming and commit (img2dataset, datatrove): a :class:`ShardWriter` stages rows
in a local Parquet file; ``commit`` closes it, publishes it atomically, then writes the shard's commit record
(``_magicseg/commits/part-NNNNN.json``) and refreshes ``manifest.json`` from all records. Records are
independent files, so writers committing at once never overwrite each other's entries; the manifest refresh
re-lists after writing and rewrites until it has seen every record (so the last writer always writes a complete
manifest). A shard without a commit record is treated as not done and is redone by a resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import subprocess
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

import magicseg_models
from magicseg_models.config import redact
from magicseg_models.dataset.card import CARD, class_counts, render_card
from magicseg_models.dataset.schema import (
    META_SCHEMA_VERSION, META_SETTINGS, SCHEMA, SCHEMA_VERSION, column_compression,
)
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ShardError, StorageError, one_line

SHARDS_DIR = "shards"
COMMITS_DIR = "_magicseg/commits"
RUN_FILE = "_magicseg/run.json"
MANIFEST = "manifest.json"
STALE_STAGED_S = 3600  # a staged shard untouched this long belongs to a killed writer (live ones append often)
ROW_GROUP_ROWS = 256  # ~25-50 MB groups of 512px JPEG pairs: column reads stay cheap, memory stays bounded


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def shard_rel_path(index: int) -> str:
    return f"{SHARDS_DIR}/{shard_name(index)}"


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from this project's checkout (recorded in manifests)."""
    version = magicseg_models.__version__
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(magicseg_models.__file__)))
    try:
        out = subprocess.run(["git", "-C", checkout, "rev-parse", "--show-toplevel", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.split()
    except (OSError, subprocess.SubprocessError):
        out = []
    # an installed package may sit inside some other repository: only our own checkout's commit counts
    if len(out) == 2 and os.path.realpath(out[0]) == os.path.realpath(checkout):
        return f"{version}+g{out[1]}"
    return version


class FollowingHash:
    """sha256 of a file while another thread is still appending to it.

    Parquet is written front to back and never rewritten, so the bytes already on disk are final: hashing them
    as they land overlaps the checksum with encoding (hashlib and pyarrow both release the GIL) instead of
    re-reading the whole shard after it closes.
    """

    def __init__(self, path: str, chunk: int = 8 << 20, poll_s: float = 0.01):
        self._file = open(path, "rb")
        self._digest = hashlib.sha256()
        self._closed = threading.Event()
        self._chunk, self._poll_s = chunk, poll_s
        self._thread = threading.Thread(target=self._follow, name="shard-sha256", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        while True:
            closed = self._closed.is_set()  # read before the file: after a close, one more read reaches EOF
            block = self._file.read(self._chunk)
            if block:
                self._digest.update(block)
            elif closed:
                return
            else:
                self._closed.wait(self._poll_s)

    def hexdigest(self) -> str:
        """Call once the writer has closed the file."""
        self._closed.set()
        self._thread.join()
        self._file.close()
        return self._digest.hexdigest()

    def cancel(self) -> None:
        self._closed.set()
        self._thread.join()
        self._file.close()


@dataclass
class ShardInfo:
    """What a commit record and a manifest entry say about one published shard."""

    path: str
    rows: int
    bytes: int
    sha256: str
    shard: int = -1
    planned: int = 0
    dropped: dict[str, str] = field(default_factory=dict)  # sample_id -> reason
    committed_at: float = 0.0
    # kept samples per class id (JSON keys are strings); None in records written before the dataset card existed
    class_counts: dict[str, int] | None = None

    def manifest_entry(self) -> dict:
        return {"path": self.path, "rows": self.rows, "bytes": self.bytes, "sha256": self.sha256}


class DatasetStore:
    """A dataset URI opened for writing (and for reading its bookkeeping)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.storage = Storage(uri, storage_options)
        self.uri = self.storage.uri
        # commit records are written once per shard: re-read one only when its listing entry changes
        self._records: dict[str, tuple[Any, ShardInfo]] = {}

    # -------------------------------------------------------------------------------------- run header
    def write_run_header(self, *, config: Mapping[str, Any] | None = None, planned: int, classes: list[str],
                         models: Mapping[str, Any] | None = None, **extra: Any) -> dict:
        """Record what this dataset is (config without secrets, plan size, id->name map, code version)."""
        header = {
            "schema_version": SCHEMA_VERSION,
            "code_version": code_version(),
            "created_at": time.time(),
            "planned": int(planned),
            "classes": list(classes),
            "config": redact(dict(config or {})),
            "models": redact(dict(models or {})),
            **redact(extra),
        }
        self.storage.write_json_atomic(RUN_FILE, header)
        self._remove_stale_staged()
        # a dataset exists (with 0 shards) from the start of a run, so readers and inspect work on an empty build
        self.refresh_manifest()
        return header

    def _remove_stale_staged(self) -> None:
        """Delete shards staged by killed writers (local roots stage under _magicseg/tmp; nothing else does)."""
        folder = self.storage.local_tmp_dir()
        if folder is None:
            return
        cutoff = time.time() - STALE_STAGED_S
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    if entry.name.endswith(".parquet.tmp") and entry.stat().st_mtime < cutoff:
                        os.remove(entry.path)
                except OSError:  # best effort: a leftover costs disk space, not correctness
                    pass

    def read_run_header(self) -> dict | None:
        return self.storage.read_json(RUN_FILE, missing_ok=True)

    # -------------------------------------------------------------------------------------- shards
    def open_shard(self, index: int, settings: Mapping[str, Any] | None = None) -> "ShardWriter":
        return ShardWriter(self, index, settings)

    def committed(self) -> dict[int, ShardInfo]:
        """Commit records by shard index: the shards a resume may skip.

        One listing per call; only records that are new or changed since the last call are fetched (in one
        batched request), so refreshing the manifest after each of N commits costs O(N) reads, not O(N^2).
        """
        listing = self.storage.list_detailed(COMMITS_DIR, suffix=".json")
        stale = [name for name, version in listing.items() if self._records.get(name, (None,))[0] != version]
        for name, data in self.storage.read_many([f"{COMMITS_DIR}/{n}" for n in stale]).items():
            self._records[posixpath.basename(name)] = (listing[posixpath.basename(name)], ShardInfo(**data))
        for name in set(self._records) - set(listing):
            del self._records[name]
        return {info.shard: info for _, info in self._records.values()}

    def record_commit(self, info: ShardInfo) -> None:
        self.storage.write_json_atomic(f"{COMMITS_DIR}/{shard_name(info.shard)[:-len('.parquet')]}.json",
                                       asdict(info))

    # -------------------------------------------------------------------------------------- manifest
    def build_manifest(self, records: Mapping[int, ShardInfo], header: Mapping[str, Any] | None) -> dict:
        header = dict(header or {})
        dropped: dict[str, int] = {}
        dropped_ids: list[str] = []
        for info in sorted(records.values(), key=lambda r: r.shard):
            for sample_id, reason in info.dropped.items():
                dropped[reason] = dropped.get(reason, 0) + 1
                dropped_ids.append(sample_id)
        shards = [records[i].manifest_entry() for i in sorted(records)]
        manifest = {
            "schema_version": SCHEMA_VERSION, "code_version": code_version(), "created_at": None,
            "classes": [], "models": {}, "config": {},
            **header,  # the run header's own fields (plan, selected classes, ...) travel along
        }
        manifest.pop("planned", None)
        manifest.update({
            "updated_at": time.time(),
            "counts": {
                "planned": header.get("planned", sum(r.planned for r in records.values())),
                "kept": sum(r.rows for r in records.values()),
                "dropped": dict(sorted(dropped.items())),
            },
            "shards": shards,
            "dropped_ids": dropped_ids,
        })
        return manifest

    def refresh_manifest(self, max_rounds: int = 50) -> dict:
        """Rewrite manifest.json from every commit record; safe with many writers at once.

        After each write, re-list the records: if one appeared meanwhile, write again. Whichever writer writes
        last saw every record committed before its final listing, so no committed entry is lost.
        """
        header = self.read_run_header()
        seen: set[int] | None = None
        for _ in range(max_rounds):
            records = self.committed()
            if seen is not None and set(records) == seen:
                return manifest
            manifest = self.build_manifest(records, header)
            self.storage.write_json_atomic(MANIFEST, manifest)
            self.write_card(manifest, records)
            seen = set(records)
        return manifest

    def write_card(self, manifest: Mapping[str, Any], records: Mapping[int, ShardInfo]) -> None:
        """``README.md``: the dataset card that makes the URI a Hugging Face dataset folder (dataset/card.py)."""
        counts: Counter = Counter()
        for info in records.values():
            if info.class_counts is None:  # a shard from before cards: read its class ids once
                column = pq.read_table(self.storage.open(info.path), columns=["class_ids"]).column(0).to_pylist()
                counts.update(class_counts(column))
            else:
                counts.update({int(k): v for k, v in info.class_counts.items()})
        self.storage.write_bytes_atomic(CARD, render_card(dict(manifest), counts, self.uri).encode())

    def read_manifest(self) -> dict:
        return load_manifest(self.storage)


def load_manifest(storage: Storage) -> dict:
    """``manifest.json`` at ``storage``, checked enough to list its shards (readers, inspect and writers use this)."""
    manifest = storage.read_json(MANIFEST, missing_ok=True)
    if manifest is None:
        raise StorageError(f"no dataset at {storage.uri}: {MANIFEST} not found")
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if not isinstance(shards, list) or any(not isinstance(s, dict) or not isinstance(s.get("path"), str)
                                           for s in shards):
        raise StorageError(f"{storage.url(MANIFEST)} has no valid 'shards' list")
    return manifest


_FIELDS = frozenset(SCHEMA.names)


class ShardWriter:
    """Stages the rows of one shard locally; nothing is visible at the URI until :meth:`commit`.

    Use as a context manager: an exception inside aborts the shard and removes the staged file.
    """

    def __init__(self, store: DatasetStore, index: int, settings: Mapping[str, Any] | None = None):
        self.store = store
        self.index = index
        self.rel_path = shard_rel_path(index)
        folder = store.storage.local_tmp_dir() or tempfile.gettempdir()
        self._tmp = os.path.join(folder, f"part-{index:05d}.{uuid.uuid4().hex}.parquet.tmp")
        # created as open() creates files (0o666 less the umask), not mkstemp's 0600: a published shard must be as
        # readable by other users of a shared folder as the JSON files beside it
        os.close(os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        metadata = {
            META_SCHEMA_VERSION: json.dumps(SCHEMA_VERSION).encode(),
            META_SETTINGS: json.dumps(redact(dict(settings or {})), sort_keys=True).encode(),
        }
        self._schema = SCHEMA.with_metadata(metadata)
        self._writer = pq.ParquetWriter(self._tmp, self._schema, compression=column_compression(),
                                        use_dictionary=["sample_id", "class_names.list.element", "prompt"])
        self._hash = FollowingHash(self._tmp)
        self.rows = 0
        self._buffer: list[dict] = []
        self._class_counts: Counter = Counter()

    def write(self, rows: Iterable[Mapping[str, Any]] | pa.Table) -> None:
        """Append rows (dicts with exactly the schema's fields, or a table); flushed in row groups."""
        if isinstance(rows, pa.Table):
            self._check_fields(rows.column_names)
            self._flush()
            try:
                table = rows.select(SCHEMA.names).cast(SCHEMA)
            except (ValueError, pa.ArrowTypeError, pa.ArrowNotImplementedError) as err:  # ArrowInvalid is a ValueError
                raise ShardError(f"rows for {self.rel_path} do not match the schema: {one_line(err, 300)}") from None
            self._check_nulls(table)
            self._writer.write_table(table.replace_schema_metadata(self._schema.metadata),
                                     row_group_size=ROW_GROUP_ROWS)
            self.rows += table.num_rows
            self._class_counts.update(class_counts(table.column("class_ids").to_pylist()))
            return
        for row in rows:
            self._check_fields(row)  # Arrow would write a missing field as null and drop an unknown one silently
            self._buffer.append(row)
            if len(self._buffer) >= ROW_GROUP_ROWS:
                self._flush()

    def _check_fields(self, names: Iterable[str]) -> None:
        names = set(names)
        if names != _FIELDS:
            problems = [f"{what} {', '.join(sorted(keys))}" for what, keys in
                        (("missing", _FIELDS - names), ("unknown", names - _FIELDS)) if keys]
            raise ShardError(f"rows for {self.rel_path} must have exactly the contract fields: {'; '.join(problems)}")

    def _check_nulls(self, table: pa.Table) -> None:
        # Parquet's writer refuses nulls in required scalar columns but writes null lists silently (pyarrow 26)
        bad = [f.name for f in SCHEMA if not f.nullable and table.column(f.name).null_count]
        if bad:
            raise ShardError(f"rows for {self.rel_path} do not match the schema: null in required field "
                             f"{', '.join(bad)}")

    def _flush(self) -> None:
        if not self._buffer:
            return
        try:
            table = pa.Table.from_pylist(self._buffer, schema=self._schema)
            self._check_nulls(table)
            self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)  # raises on nulls in required fields
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            raise ShardError(f"rows for {self.rel_path} do not match the schema: {one_line(err, 300)}") from None
        self.rows += table.num_rows
        self._class_counts.update(class_counts(row["class_ids"] for row in self._buffer))
        self._buffer.clear()

    def commit(self, planned: int | None = None, dropped: Mapping[str, str] | None = None,
               refresh_manifest: bool = True) -> ShardInfo:
        """Close, publish atomically, record the commit and (by default) refresh the manifest.

        ``planned``: jobs this shard was planned with; ``dropped``: sample_id -> reason for jobs not kept.
        A caller committing many shards in a row may pass ``refresh_manifest=False`` and call
        :meth:`DatasetStore.refresh_manifest` once afterwards.
        """
        self._flush()
        self._writer.close()
        info = ShardInfo(path=self.rel_path, rows=self.rows, bytes=os.path.getsize(self._tmp),
                         sha256=self._hash.hexdigest(), shard=self.index,
                         planned=int(planned if planned is not None else self.rows),
                         dropped=dict(dropped or {}), committed_at=time.time(),
                         class_counts={str(k): v for k, v in sorted(self._class_counts.items())})
        self.store.storage.publish_file(self._tmp, self.rel_path)
        self.store.record_commit(info)
        if refresh_manifest:
            self.store.refresh_manifest()
        return info

    def abort(self) -> None:
        try:
            self._writer.close()
            self._hash.cancel()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None or os.path.exists(self._tmp):
            self.abort()
