"""Any fsspec URI as a dataset root, with atomic publishing and one-line errors.

Atomicity is what makes shards and the manifest safe to read while a build runs and after any kill:
- local filesystems: write a temp file next to the target, fsync, ``os.replace`` (atomic rename);
- object stores (s3fs, gcsfs, ...): one upload per object; the object appears only when the upload completes,
  so a killed writer leaves nothing visible (at most an incomplete multipart upload, which lifecycle rules expire).
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from contextlib import contextmanager
from typing import Any, Iterator

import fsspec
from fsspec.implementations.local import LocalFileSystem

from magicseg_models.errors import StorageError, one_line

# botocore's connection errors do not subclass OSError; match them by name so this module needs no botocore
_NETWORK_ERRORS = ("EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
                   "NoCredentialsError", "ClientError", "ParamValidationError")


def is_storage_error(err: BaseException) -> bool:
    return isinstance(err, OSError) or type(err).__name__ in _NETWORK_ERRORS


class Storage:
    """A root folder on any fsspec filesystem; paths given to methods are relative to it."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None):
        if not uri:
            raise StorageError("no dataset URI given")
        self.uri = uri.rstrip("/") or uri
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.uri, **(storage_options or {}))
        except (ImportError, ValueError) as err:
            raise StorageError(f"cannot open storage {uri}: {one_line(err, 300)}") from None
        self.root = self.root.rstrip("/") or "/"
        self.is_local = isinstance(self.fs, LocalFileSystem)

    def path(self, rel: str) -> str:
        return posixpath.join(self.root, rel) if rel else self.root

    def url(self, rel: str = "") -> str:
        return f"{self.uri}/{rel}" if rel else self.uri

    @contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Turn filesystem/network failures into one-line StorageErrors that name the URI."""
        try:
            yield
        except StorageError:
            raise
        except Exception as err:  # noqa: BLE001 - classified just below
            if is_storage_error(err):
                raise StorageError(f"{action} {self.uri} failed: {one_line(err, 300)}") from err
            raise

    # ---------------------------------------------------------------------------------------- reading
    def exists(self, rel: str) -> bool:
        with self.errors("checking"):
            return self.fs.exists(self.path(rel))

    def read_bytes(self, rel: str) -> bytes:
        with self.errors("reading"):
            return self.fs.cat_file(self.path(rel))

    def read_json(self, rel: str, missing_ok: bool = False) -> Any:
        """Parsed JSON at ``rel``; with ``missing_ok``, None when there is no such file (one request, not two)."""
        try:
            with self.errors("reading"):
                data = self.fs.cat_file(self.path(rel))
        except StorageError as err:
            if missing_ok and isinstance(err.__cause__, FileNotFoundError):
                return None
            raise
        return _parse_json(data, self.url(rel))

    def read_many(self, rels: list[str]) -> dict[str, Any]:
        """Parsed JSON of several files in one batched request (s3fs fetches them concurrently)."""
        if not rels:
            return {}
        with self.errors("reading"):
            blobs = self.fs.cat([self.path(r) for r in rels], on_error="raise")
        by_path = {self.path(r): r for r in rels}
        return {by_path[path]: _parse_json(data, self.url(by_path[path])) for path, data in blobs.items()}

    def list_detailed(self, rel: str, suffix: str = "") -> dict[str, Any]:
        """Name -> version (ETag or mtime, with size) of the files in folder ``rel``, fresh from the server."""
        folder = self.path(rel)
        with self.errors("listing"):
            self.fs.invalidate_cache(folder)
            try:
                entries = self.fs.ls(folder, detail=True)
            except FileNotFoundError:
                return {}
        out = {}
        for e in entries:
            name = posixpath.basename(e["name"].rstrip("/"))
            if name.endswith(suffix) and e.get("type") != "directory":
                out[name] = (e.get("ETag") or e.get("etag") or e.get("mtime") or e.get("LastModified"), e.get("size"))
        return out

    def list(self, rel: str, suffix: str = "") -> list[str]:
        """Names (not paths) in folder ``rel``, fresh from the server (listing caches would hide commits)."""
        folder = self.path(rel)
        with self.errors("listing"):
            self.fs.invalidate_cache(folder)
            try:
                entries = self.fs.ls(folder, detail=False)
            except FileNotFoundError:
                return []
        names = sorted(posixpath.basename(e.rstrip("/")) for e in entries)
        return [n for n in names if n.endswith(suffix)]

    def size(self, rel: str) -> int:
        with self.errors("reading"):
            return int(self.fs.size(self.path(rel)))

    def open(self, rel: str, mode: str = "rb"):
        with self.errors("opening"):
            return self.fs.open(self.path(rel), mode)

    # ---------------------------------------------------------------------------------------- writing
    def local_tmp_dir(self) -> str | None:
        """Where to stage files so that publishing is a rename (local roots), or None (object stores)."""
        if not self.is_local:
            return None
        tmp = self.path("_magicseg/tmp")
        os.makedirs(tmp, exist_ok=True)
        return tmp

    def publish_file(self, local_path: str, rel: str) -> None:
        """Make ``local_path`` appear at ``rel`` all at once; ``local_path`` is consumed."""
        target = self.path(rel)
        with self.errors("writing"):
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                _fsync(local_path)
                os.replace(local_path, target)
            else:
                self.fs.put_file(local_path, target)
                os.remove(local_path)

    def write_bytes_atomic(self, rel: str, data: bytes) -> None:
        target = self.path(rel)
        with self.errors("writing"):
            if self.is_local:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                tmp = f"{target}.{uuid.uuid4().hex}.tmp"
                with open(tmp, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            else:
                self.fs.pipe_file(target, data)

    def write_json_atomic(self, rel: str, obj: Any) -> None:
        self.write_bytes_atomic(rel, json.dumps(obj, indent=1, sort_keys=False).encode())

    def remove(self, rel: str) -> None:
        with self.errors("deleting"):
            if self.fs.exists(self.path(rel)):
                self.fs.rm(self.path(rel))


def _parse_json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise StorageError(f"{where} is not valid JSON") from None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
