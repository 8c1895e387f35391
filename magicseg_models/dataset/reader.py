"""Reading a dataset that follows the contract (whoever wrote it): rows or batches, column selection, decoding."""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from magicseg_models.dataset.codecs import decode_image, decode_mask
from magicseg_models.dataset.schema import IMAGE_COLUMNS, upgrade_batch, upgrade_row
from magicseg_models.dataset.storage import Storage
from magicseg_models.dataset.store import load_manifest
from magicseg_models.errors import ShardError, StorageError


class DatasetReader:
    """Reads ``URI/manifest.json`` and the shards it lists, in manifest order."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        self.storage = Storage(uri, storage_options)
        self.uri = self.storage.uri
        self.manifest = load_manifest(self.storage)
        self.shards: list[dict] = self.manifest["shards"]

    def __len__(self) -> int:
        return sum(int(s.get("rows", 0)) for s in self.shards)

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.get("classes") or [])

    def parquet_file(self, rel_path: str) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(self.storage.open(rel_path))
        except StorageError as err:  # Storage wraps every filesystem error, FileNotFoundError included
            if isinstance(err.__cause__, FileNotFoundError):
                raise ShardError(f"shard {rel_path} is missing at {self.uri}") from None
            raise
        except (pa.ArrowInvalid, OSError) as err:
            raise ShardError(f"shard {rel_path} is not readable Parquet: {err}") from None

    def iter_batches(self, columns: Sequence[str] | None = None, batch_size: int = 256,
                     shards: Sequence[dict] | None = None) -> Iterator[pa.RecordBatch]:
        """Arrow record batches over the shards; ``columns`` limits what is read from storage.

        Every batch has the schema-2 fields: a shard of an older schema gets their defaults (:func:`upgrade_batch`).
        """
        for shard in shards if shards is not None else self.shards:
            pf = self.parquet_file(shard["path"])
            present = set(pf.schema_arrow.names)
            read = [c for c in columns if c in present] if columns else None
            try:
                for batch in pf.iter_batches(batch_size=batch_size, columns=read):
                    yield upgrade_batch(batch, columns or None)
            except (pa.ArrowInvalid, OSError) as err:
                raise ShardError(f"shard {shard['path']} is corrupt: {err}") from None

    def read_table(self, columns: Sequence[str] | None = None) -> pa.Table:
        tables = [pa.Table.from_batches([b]) for b in self.iter_batches(columns)]
        # "default" promotion unifies nullability: shards from older writers have nullable fields
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

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
    """Images as PIL images, each annotation with its ``mask``; schema-2 fields a row lacks get their defaults."""
    row = upgrade_row(row)
    sample_id = row.get("sample_id", "?")
    for key in IMAGE_COLUMNS:
        if row.get(key) is not None:
            try:
                row[key] = decode_image(row[key])
            except (OSError, SyntaxError, ValueError):  # PIL's ways of saying "not an image I can read"
                raise ShardError(f"sample {sample_id}: {key} is not a decodable image") from None
    if row.get("annotations") is not None and "height" in row and "width" in row:
        try:
            row["annotations"] = [{**ann, "mask": decode_mask(ann["mask_rle"], row["height"], row["width"])}
                                  for ann in row["annotations"]]
        except (ValueError, TypeError, AttributeError):
            raise ShardError(f"sample {sample_id}: annotations.mask_rle is not a valid COCO RLE of "
                             f"{row['height']}x{row['width']} pixels") from None
    return row
