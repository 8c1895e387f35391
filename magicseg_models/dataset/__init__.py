"""The dataset on storage: shard schema, codecs, writer with commit markers, manifest, reader, inspect, preview.

Layout at a dataset URI (docs/dataset-format.md)::

    manifest.json                 derived from the commit records below; what users and checks read
    shards/part-00000.parquet     a shard appears only once complete (written, closed, then published)
    _magicseg/run.json            the run header: config (no secrets), plan size, code version
    _magicseg/commits/*.json      one commit record per published shard (rows, bytes, sha256, drops)
"""

from magicseg_models.dataset.codecs import decode_image, decode_mask, encode_image, encode_mask
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.schema import SCHEMA, SCHEMA_VERSION
from magicseg_models.dataset.store import DatasetStore, ShardInfo, ShardWriter

__all__ = [
    "SCHEMA", "SCHEMA_VERSION", "DatasetStore", "ShardWriter", "ShardInfo", "DatasetReader",
    "encode_image", "decode_image", "encode_mask", "decode_mask",
]
