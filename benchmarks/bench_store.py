#!/usr/bin/env python
"""Shard store throughput against plain pyarrow, on a local folder and on an S3-compatible server.

What is measured (best of ``--repeats`` after ``--warmup`` untimed rounds, same process, same table, same
backend, fresh paths every round, ours/raw order alternating, ``os.sync()`` before each timed operation):

- ours-write: ``DatasetStore(uri)`` + ``open_shard(i)`` / ``write(table)`` / ``commit(...)`` per shard
  (local staging file, sha256, atomic publish, commit record, manifest refresh);
- raw-write:  ``pyarrow.parquet.write_table(chunk, path, filesystem=...)`` per shard, default pyarrow settings;
- ours-read:  ``DatasetReader(uri).read_table()`` (all columns);
- raw-read:   ``pyarrow.parquet.read_table(path, filesystem=...)`` per shard, concatenated.

The raw baseline uses ``pyarrow.fs.LocalFileSystem`` for the local folder and
``PyFileSystem(FSSpecHandler(s3fs))`` for S3 (the same s3fs instance ours uses). The S3 server is moto's
``ThreadedMotoServer`` on 127.0.0.1 inside this process: the numbers measure client overhead, not a network.

MB is the size of the Parquet files on storage (10^6 bytes); MB/s is that size over the time. The last line is::

    RESULT store write_ratio=<raw/ours write time> read_ratio=<raw/ours read time> MBps=<our write MB/s>
        write_spread=<x> write_meaningful=yes|no read_spread=<x> read_meaningful=yes|no load=<1m/5m/15m>

Ratios are raw time / our time (1.0 = as fast as plain pyarrow, higher = faster). With ``--backend both``
each ratio is the worse of the two backends and MBps is the local backend's.

Usage: ``.venv/bin/python benchmarks/bench_store.py [--samples 512] [--size 512] [--repeats 3]
[--backend local|s3|both] [--shard-rows K] [--warmup 1] [--local-dir DIR]``
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from typing import Callable

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks._machine import cpu_model, describe, noise_fields, print_load, ratio_note, spread  # noqa: E402

from magicseg_models.dataset.reader import DatasetReader  # noqa: E402
from magicseg_models.dataset.schema import SCHEMA  # noqa: E402
from magicseg_models.dataset.store import DatasetStore  # noqa: E402
from magicseg_models.dataset.synthetic import synthetic_row  # noqa: E402

CLASSES = ["cat", "dog", "bus (vehicle)", "bicycle", "person", "umbrella", "horse", "bench"]
OPS = ("ours-write", "raw-write", "ours-read", "raw-read")


# ------------------------------------------------------------------------------------------- data
def _make_rows(args: tuple[int, int, int]) -> list[dict]:
    start, stop, size = args
    rows = []
    for i in range(start, stop):
        n = 1 + (i % 2)  # 1 or 2 classes per sample
        ids = [(i + j * 3) % len(CLASSES) for j in range(n)]
        rows.append(synthetic_row(f"bench-{i:07d}", ids, [CLASSES[c] for c in ids], seed=i,
                                  height=size, width=size))
    return rows


def make_table(samples: int, size: int) -> pa.Table:
    """K synthetic contract rows (JPEG image + counterfactual, RLE masks) as one table; built once, not timed."""
    workers = max(1, min(os.cpu_count() or 1, 8))
    step = max(1, -(-samples // (workers * 4)))
    parts = [(s, min(s + step, samples), size) for s in range(0, samples, step)]
    rows: list[dict] = []
    if workers > 1 and len(parts) > 1:
        with ProcessPoolExecutor(workers) as pool:
            for chunk in pool.map(_make_rows, parts):
                rows.extend(chunk)
    else:
        for part in parts:
            rows.extend(_make_rows(part))
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def split(table: pa.Table, shard_rows: int) -> list[pa.Table]:
    return [table.slice(i, shard_rows) for i in range(0, table.num_rows, shard_rows)]


# ------------------------------------------------------------------------------------------- backends
class LocalBackend:
    name = "local"

    def __init__(self, root: str):
        self.root = root
        self.fs = pafs.LocalFileSystem()

    def ours_uri(self, key: str) -> str:
        return os.path.join(self.root, key)

    def raw_dir(self, key: str) -> str:
        path = os.path.join(self.root, key)
        os.makedirs(path, exist_ok=True)  # pyarrow's LocalFileSystem does not create parents on write
        return path

    def cleanup(self, key: str) -> None:
        shutil.rmtree(os.path.join(self.root, key), ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def describe(self) -> str:
        return f"local folder {self.root}"


class S3Backend:
    name = "s3"

    def __init__(self):
        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench-access-key")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench-secret-key")
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request access log

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self._old_endpoint = os.environ.get("AWS_ENDPOINT_URL")
        os.environ["AWS_ENDPOINT_URL"] = self.endpoint

        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        # the same (cached) instance fsspec.url_to_fs hands the store and the reader
        self.s3 = s3fs.S3FileSystem()
        self.bucket = f"bench-{uuid.uuid4().hex[:10]}"
        self.s3.mkdir(self.bucket)
        self.fs = pafs.PyFileSystem(pafs.FSSpecHandler(self.s3))

    def ours_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def raw_dir(self, key: str) -> str:
        return f"{self.bucket}/{key}"

    def cleanup(self, key: str) -> None:
        try:
            self.s3.rm(f"{self.bucket}/{key}", recursive=True)
        except FileNotFoundError:
            pass
        self.s3.invalidate_cache()

    def close(self) -> None:
        self.server.stop()
        if self._old_endpoint is None:
            os.environ.pop("AWS_ENDPOINT_URL", None)
        else:
            os.environ["AWS_ENDPOINT_URL"] = self._old_endpoint

    def describe(self) -> str:
        return f"moto ThreadedMotoServer {self.endpoint} (in-process, loopback), s3fs client"


# ------------------------------------------------------------------------------------------- operations
def ours_write(backend, key: str, chunks: list[pa.Table]) -> int:
    store = DatasetStore(backend.ours_uri(key))
    total = 0
    for index, chunk in enumerate(chunks):
        writer = store.open_shard(index, settings={"benchmark": "bench_store"})
        writer.write(chunk)
        info = writer.commit(planned=chunk.num_rows, dropped={})
        total += info.bytes
    return total


def raw_paths(backend, key: str, nshards: int) -> list[str]:
    folder = backend.raw_dir(key)
    return [f"{folder}/part-{index:05d}.parquet" for index in range(nshards)]


def raw_size(backend, key: str, nshards: int) -> int:
    """Bytes of the raw files (looked up outside the timed region)."""
    return sum(backend.fs.get_file_info(p).size for p in raw_paths(backend, key, nshards))


def raw_write(backend, key: str, chunks: list[pa.Table]) -> None:
    for path, chunk in zip(raw_paths(backend, key, len(chunks)), chunks):
        pq.write_table(chunk, path, filesystem=backend.fs)


def ours_read(backend, key: str, expect_rows: int) -> int:
    reader = DatasetReader(backend.ours_uri(key))
    table = reader.read_table()
    assert table.num_rows == expect_rows, (table.num_rows, expect_rows)
    nbytes = sum(int(s["bytes"]) for s in reader.shards)
    del table
    return nbytes


def raw_read(backend, key: str, expect_rows: int, nshards: int) -> None:
    tables = [pq.read_table(p, filesystem=backend.fs) for p in raw_paths(backend, key, nshards)]
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    assert table.num_rows == expect_rows, (table.num_rows, expect_rows)
    del table, tables


def timed(fn: Callable[[], int | None], size: Callable[[], int] | None = None) -> tuple[float, int]:
    """(seconds, bytes): ``fn`` timed; bytes from what it returns or from ``size()``, called after the clock."""
    gc.collect()
    if hasattr(os, "sync"):
        os.sync()  # start every timed operation without the previous one's dirty pages still being written back
    t0 = time.perf_counter()
    nbytes = fn()
    seconds = time.perf_counter() - t0
    return seconds, nbytes if size is None else size()


def bench_backend(backend, table: pa.Table, shard_rows: int, repeats: int,
                  warmup: int = 1) -> tuple[dict[str, tuple[float, int]], dict[str, list[float]]]:
    """Best time (and bytes) per operation over ``repeats`` after ``warmup`` untimed rounds, and every repeat's
    time per operation (their spread says how far the best can be trusted).

    The ours/raw order alternates each round, so neither side always runs on a colder cache.
    """
    chunks = split(table, shard_rows)
    best: dict[str, tuple[float, int]] = {}
    times: dict[str, list[float]] = {op: [] for op in OPS}

    def keep(op: str, result: tuple[float, int]) -> None:
        times[op].append(result[0])
        if op not in best or result[0] < best[op][0]:
            best[op] = result

    for rep in range(-warmup, repeats):
        tag = uuid.uuid4().hex[:8]
        ours_key, raw_key = f"ours-{rep}-{tag}", f"raw-{rep}-{tag}"
        raw_bytes = lambda: raw_size(backend, raw_key, len(chunks))  # noqa: E731
        writes = [("ours-write", lambda: ours_write(backend, ours_key, chunks), None),
                  ("raw-write", lambda: raw_write(backend, raw_key, chunks), raw_bytes)]
        reads = [("ours-read", lambda: ours_read(backend, ours_key, table.num_rows), None),
                 ("raw-read", lambda: raw_read(backend, raw_key, table.num_rows, len(chunks)), raw_bytes)]
        if rep % 2:  # warm-up is round -1: raw first there, ours first in repeat 1
            writes.reverse()
            reads.reverse()
        timings = {}
        for op, fn, size in writes + reads:
            timings[op] = timed(fn, size)
        this = "  ".join(f"{op}={timings[op][0]:.3f}s" for op in OPS)
        if rep < 0:
            print(f"  [{backend.name}] warm-up (not counted): {this}", flush=True)
        else:
            for op, result in timings.items():
                keep(op, result)
            print(f"  [{backend.name}] repeat {rep + 1}/{repeats}: {this}", flush=True)
        backend.cleanup(ours_key)
        backend.cleanup(raw_key)
    return best, times


# ------------------------------------------------------------------------------------------- report

def print_table(name: str, best: dict[str, tuple[float, int]], times: dict[str, list[float]]) -> None:
    print(f"\n{name}:")
    print(f"  {'operation':<12} {'seconds':>9} {'MB':>9} {'MB/s':>9}   repeats")
    for op in OPS:
        seconds, nbytes = best[op]
        mb = nbytes / 1e6
        print(f"  {op:<12} {seconds:>9.3f} {mb:>9.1f} {mb / seconds:>9.1f}   {describe(times[op])}")
    for kind in ("write", "read"):
        ratio = best[f"raw-{kind}"][0] / best[f"ours-{kind}"][0]
        note = ratio_note(spread(times[f"raw-{kind}"]), spread(times[f"ours-{kind}"]), ratio)
        print(f"  {kind}_ratio (raw/ours time) = {ratio:.3f}: {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=512, help="rows K (default 512)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--backend", choices=("local", "s3", "both"), default="both")
    parser.add_argument("--shard-rows", type=int, default=None, help="rows per shard (default: K, one shard)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds per backend first (default 1)")
    parser.add_argument("--local-dir", default=None, help="parent folder for the local backend (default: $TMPDIR)")
    args = parser.parse_args(argv)
    shard_rows = args.shard_rows or args.samples
    print_load("start")

    print(f"machine: {os.cpu_count()} CPUs ({cpu_model()}), {platform.platform()}, "
          f"Python {platform.python_version()}, pyarrow {pa.__version__}")
    print(f"workload: {args.samples} samples of {args.size}x{args.size} JPEG image + counterfactual, 1-2 RLE masks; "
          f"{shard_rows} rows/shard; best of {args.repeats} after {args.warmup} untimed warm-up round(s)")

    t0 = time.perf_counter()
    table = make_table(args.samples, args.size)
    print(f"generated {table.num_rows} rows, {table.nbytes / 1e6:.1f} MB in memory, "
          f"in {time.perf_counter() - t0:.1f}s (not measured)", flush=True)

    names = ["local", "s3"] if args.backend == "both" else [args.backend]
    results: dict[str, dict[str, tuple[float, int]]] = {}
    repeats: dict[str, dict[str, list[float]]] = {}
    for name in names:
        if name == "local":
            backend = LocalBackend(tempfile.mkdtemp(prefix="bench_store_", dir=args.local_dir))
        else:
            backend = S3Backend()
        try:
            print(f"\nbackend {name}: {backend.describe()}", flush=True)
            results[name], repeats[name] = bench_backend(backend, table, shard_rows, args.repeats, args.warmup)
        finally:
            backend.close()

    for name in names:
        print_table(f"{name} (seconds = best of {args.repeats}; MB = Parquet bytes on storage)", results[name],
                    repeats[name])

    write_ratios = {n: r["raw-write"][0] / r["ours-write"][0] for n, r in results.items()}
    read_ratios = {n: r["raw-read"][0] / r["ours-read"][0] for n, r in results.items()}
    w_worst = min(write_ratios, key=write_ratios.get)
    r_worst = min(read_ratios, key=read_ratios.get)
    mb_backend = "local" if "local" in results else names[0]
    ours_t, ours_b = results[mb_backend]["ours-write"]
    mbps = ours_b / 1e6 / ours_t
    print(f"\nwrite_ratio = worst over backends ({w_worst}); read_ratio = worst over backends ({r_worst}); "
          f"MBps = our write MB/s on {mb_backend}. Ratios are raw pyarrow time / our time (goal >= 0.8).")
    write_noise = noise_fields(repeats[w_worst]["raw-write"], repeats[w_worst]["ours-write"], write_ratios[w_worst])
    read_noise = noise_fields(repeats[r_worst]["raw-read"], repeats[r_worst]["ours-read"], read_ratios[r_worst])
    load = print_load("end")
    print(f"RESULT store write_ratio={write_ratios[w_worst]:.3f} read_ratio={read_ratios[r_worst]:.3f} "
          f"MBps={mbps:.1f} write_{write_noise.replace(' ', ' write_')} read_{read_noise.replace(' ', ' read_')} "
          f"{load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
