"""Reading a dataset that follows the contract (whoever wrote it): rows or batches, column selection, decoding."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from magicseg_models.dataset.codecs import decode_image, decode_mask
from magicseg_models.dataset.schema import IMAGE_COLUMNS
from magicseg_models.dataset.storage import Storage
from magicseg_models.dataset.store import MANIFEST
from magicseg_models.errors import ShardError, StorageError


class DatasetReader:
    """Reads ``URI/manifest.json`` and the shards it lists, in manifest order."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.storage = Storage(uri, storage_options)
        self.uri = self.storage.uri
        if not self.storage.exists(MANIFEST):
            raise StorageError(f"no dataset at {self.uri}: {MANIFEST} not found")
        self.manifest = self.storage.read_json(MANIFEST)
        shards = self.manifest.get("shards")
        if not isinstance(shards, list) or any(not isinstance(s, dict) or "path" not in s for s in shards):
            raise StorageError(f"{self.storage.url(MANIFEST)} has no valid 'shards' list")
        self.shards: list[dict] = shards

    def __len__(self) -> int:
        return sum(int(s.get("rows", 0)) for s in self.shards)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [])

    def parquet_file(self, rel_path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.storage.open(rel_path))
        except FileNotFoundError:
            raise ShardError(f"shard {rel_path} is missing at {self.uri}") from None
        except (pa.ArrowInvalid, OSError) as err:
            raise ShardError(f"shard {rel_path} is not readable Parquet: {err}") from None

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 256,
                     shards: Sequence[dict] | None = None) -> Iterator[pa.RecordBatch]:
        """Arrow record batches over the shards; ``columns`` limits what is read from storage."""
        for shard in shards if shards is not None else self.shards:
            pf = self.parquet_file(shard["path"])
            try:
                yield from pf.iter_batches(batch_size=batch_size, columns=list(columns) if columns else None)
            except (pa.ArrowInvalid, OSError) as err:
                raise ShardError(f"shard {shard['path']} is corrupt: {err}") from None

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        batches = list(self.iter_batches(columns))
        if batches:
            return pa.Table.from_batches(batches)
        return pa.table({})

    def iter_rows(self, columns: Sequence[str] | None = None, decode: bool = False,
                  limit: int | None = None) -> Iterator[dict]:
        """Rows as dicts. With ``decode``: images become PIL images and each annotation gains ``mask`` (HxW bool)."""
        if limit is not None and limit <= 0:
            return
        count = 0
        for batch in self.iter_batches(columns):
            for row in batch.to_pylist():
                yield decode_row(row) if decode else row
                count += 1
                if count == limit:  # stop before opening the next shard
                    return


def decode_row(row: dict) -> dict:
    row = dict(row)
    for key in IMAGE_COLUMNS:
        if row.get(key) is not None:
            row[key] = decode_image(row[key])
    if row.get("annotations") is not None and "height" in row and "width" in row:
        row["annotations"] = [
            {**ann, "mask": decode_mask(ann["mask_rle"], row["height"], row["width"])} for ann in row["annotations"]
        ]
    return row
