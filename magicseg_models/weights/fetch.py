"""Checkpoint files by path or URL, fetched once per node.

``local_checkpoint(value)`` turns what a config names into a local file:

- a local path (``/abs/sam_vit_h_4b8939.pth``, ``file://...``, ``~/...``): that file, which must exist. Relative
  paths were made absolute against the user's working directory when the config was loaded
  (:func:`magicseg_models.config.resolve_local_path`), so they mean the same inside every Ray actor;
- ``hf://org/name[@revision]/path/in/repo.pth``: ``huggingface_hub.hf_hub_download``, so the file lives in the
  Hugging Face cache with the other hub models and loads with ``HF_HUB_OFFLINE=1`` once it is there;
- any other fsspec URL (``s3://``, ``gs://``, ``https://``, ...): fetched with fsspec into
  ``$MAGICSEG_CACHE/checkpoints/<key>/<file name>`` (default ``~/.cache/magicseg``), where ``key`` is a hash of
  the URL without its query string (a presigned URL's signature changes, its object does not). One file lock
  per cached file makes the actors of one node wait for a single download; the bytes go to a temporary name
  and are renamed into place only once their size equals what the server reported, so a killed download never
  leaves a partial file under the final name. A record of the size sits beside the file (``.json``); later
  calls from any process of the node reuse the file after checking its size against it, without network.

The cache is node-local by default, so each node fetches once. It may instead be a volume shared by the nodes
(deploy/: a ReadWriteMany claim, EFS), but only on a filesystem with working POSIX locks (NFSv4, EFS,
Filestore). Temporary names carry the host name and the pid, because pids repeat across pods. ``python -m magicseg_models.weights.fetch URL`` pre-fetches a URL into this node's cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import re
import sys
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from magicseg_models.errors import MagicSegError, one_line

logger = logging.getLogger(__name__)

CACHE_ENV = "MAGICSEG_CACHE"
_HF_URL = re.compile(r"hf://(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/]+))?/(?P<path>.+)")


class CheckpointFetchError(MagicSegError):
    """A checkpoint file cannot be found, reached or fetched completely."""


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint as a local file: where it is, how big, and whether this call downloaded it."""

    path: str
    size: int
    downloaded: bool
    source: str  # what the config named (a URL without its query string, or the path)


@dataclass(frozen=True)
class HubFile:
    repo_id: str
    filename: str
    revision: str | None
    repo_type: str | None


def is_url(value: str) -> bool:
    """A remote location (``s3://``, ``https://``, ``hf://``, ...); ``file://`` is a local path."""
    return "://" in value and not value.startswith("file://")


def parse_hf_url(url: str) -> HubFile | None:
    """``hf://org/name[@rev]/path`` (``hf://datasets/...`` for a dataset repo) -> its parts; None if not one."""
    match = _HF_URL.fullmatch(url)
    if not match:
        return None
    repo_type = {"datasets": "dataset", "spaces": "space"}.get(match["type"] or "")
    rev = unquote(match["rev"]) if match["rev"] else None
    return HubFile(match["repo"], match["path"], rev, repo_type)


def public_url(url: str) -> str:
    """The URL without userinfo and query string: what logs, errors and cache keys may show."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


def cache_root() -> str:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "magicseg")
    return os.path.join(root, "checkpoints")


def cache_path(url: str) -> str:
    """Where ``url`` is (or will be) cached on this node."""
    key = public_url(url)
    name = os.path.basename(urlsplit(url).path) or "checkpoint"
    return os.path.join(cache_root(), hashlib.sha256(key.encode()).hexdigest()[:16], name)


def _recorded_size(path: str) -> int | None:
    """The size of a complete cached file (its record says so and the file agrees), else None."""
    try:
        with open(path + ".json") as f:
            size = int(json.load(f)["size"])
        return size if os.path.getsize(path) == size else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def cached_checkpoint(url: str) -> str | None:
    """The cached file of ``url`` when this node holds it complete (no network, no lock)."""
    path = cache_path(url)
    return path if _recorded_size(path) is not None else None


def _download(url: str, path: str, storage_options: dict[str, Any], label: str) -> int:
    import fsspec

    shown = public_url(url)
    try:
        fs, remote = fsspec.core.url_to_fs(url, **storage_options)
        expected = fs.info(remote).get("size")
    except FileNotFoundError as err:
        # fsspec's HTTP filesystem reports every failure (DNS, refused connection, 403) as FileNotFoundError,
        # with the real error as its cause: only a 404 (or a missing object elsewhere) means "not found"
        cause = err.__cause__
        if urlsplit(url).scheme in ("http", "https") and cause is not None and getattr(cause, "status", None) != 404:
            raise CheckpointFetchError(f"{label} {shown} cannot be reached: {one_line(cause)}") from None
        raise CheckpointFetchError(f"{label} {shown} not found") from None
    except Exception as err:  # noqa: BLE001 - any transport failure is one line naming the URL
        raise CheckpointFetchError(f"{label} {shown} cannot be reached: {one_line(err)}") from None
    tmp = f"{path}.part-{_writer_tag()}"
    try:
        try:
            fs.get_file(remote, tmp)
        except Exception as err:  # noqa: BLE001
            raise CheckpointFetchError(f"{label} {shown} could not be downloaded: {one_line(err)}") from None
        size = os.path.getsize(tmp)
        if expected is not None and size != int(expected):
            raise CheckpointFetchError(f"{label} {shown}: downloaded {size} bytes, the server reported "
                                       f"{int(expected)}; try again")
        os.replace(tmp, path)
        record = f"{path}.json.part-{_writer_tag()}"
        with open(record, "w") as f:
            json.dump({"url": shown, "size": size, "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f)
        os.replace(record, path + ".json")
        return size
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fetch_url(url: str, storage_options: dict[str, Any] | None = None, *, label: str = "checkpoint") -> Checkpoint:
    """``url`` in this node's cache: downloaded by the first caller, reused (size-checked) by every later one."""
    from filelock import FileLock

    path = cache_path(url)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):
        size = _recorded_size(path)
        if size is not None:
            return Checkpoint(path, size, downloaded=False, source=public_url(url))
        if os.path.exists(path):
            logger.warning("cached %s does not match its recorded size; fetching it again", public_url(url))
        began = time.perf_counter()
        size = _download(url, path, storage_options or {}, label)
    logger.info("fetched %s (%d bytes, %.1f s) into %s", public_url(url), size, time.perf_counter() - began, path)
    return Checkpoint(path, size, downloaded=True, source=public_url(url))


def hub_download_command(file: HubFile) -> str:
    """The ``hf`` CLI line that puts one hub file into the Hugging Face cache."""
    parts = ["hf download", file.repo_id, file.filename]
    if file.repo_type:
        parts += ["--repo-type", file.repo_type]
    if file.revision:
        parts += ["--revision", file.revision]
    return " ".join(parts)


def _hub_file(url: str, file: HubFile, label: str) -> Checkpoint:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = hf_hub_download(file.repo_id, file.filename, revision=file.revision, repo_type=file.repo_type)
    except LocalEntryNotFoundError:
        raise CheckpointFetchError(f"{label} {url} is not in the Hugging Face cache and the hub cannot be reached "
                                   f"(HF_HUB_OFFLINE?); fetch it with: {hub_download_command(file)}") from None
    except Exception as err:  # noqa: BLE001 - missing repo or file, network, auth
        raise CheckpointFetchError(f"{label} {url} could not be fetched: {one_line(err)}") from None
    return Checkpoint(path, os.path.getsize(path), downloaded=False, source=url)


def local_checkpoint(value: str, storage_options: dict[str, Any] | None = None, *,
                     label: str = "checkpoint") -> Checkpoint:
    """The local file for a checkpoint path or URL (see the module docstring). ``label`` names the config key."""
    if not is_url(value):
        path = os.path.expanduser(value.removeprefix("file://"))
        if not os.path.isfile(path):
            raise CheckpointFetchError(f"{label} '{value}' not found")
        return Checkpoint(os.path.abspath(path), os.path.getsize(path), downloaded=False, source=value)
    hub = parse_hf_url(value)
    if value.startswith("hf://"):
        if hub is None:
            raise CheckpointFetchError(f"{label} '{value}' is not an hf://org/name[@revision]/path/to/file URL")
        return _hub_file(value, hub, label)
    return fetch_url(value, storage_options, label=label)


def main(argv: list[str] | None = None) -> int:
    """Pre-fetch URLs into this node's checkpoint cache; prints each local path."""
    urls = sys.argv[1:] if argv is None else argv
    if not urls:
        print("usage: python -m magicseg_models.weights.fetch URL [URL ...]", file=sys.stderr)
        return 2
    try:
        for url in urls:
            print(local_checkpoint(url, label="URL").path)
    except MagicSegError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


def _writer_tag() -> str:
    """Unique to this process on a volume shared by several hosts (pods reuse pids)."""
    return f"{socket.gethostname()}-{os.getpid()}"
