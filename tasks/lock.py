"""One build per dataset URI: a lock object with owner and heartbeat, taken over when stale.

Object stores have no atomic create-if-absent that every fsspec backend exposes, so the lock is written, then read
back after a short settle time: of two builds starting together, the one whose write landed last keeps it and the
other refuses. Even if both ran, commit records and the manifest refresh keep the dataset consistent.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid

from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import StorageError

LOCK = "_magicseg/lock.json"


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid recorded: assume alive
    return True


class BuildLock:
    def __init__(self, storage: Storage, run_name: str = "", ttl_s: float = 120.0, heartbeat_s: float = 15.0,
                 settle_s: float = 0.5):
        self.storage = storage
        self.owner = {"id": uuid.uuid4().hex, "host": socket.gethostname(), "pid": os.getpid(), "run": run_name}
        self.ttl_s, self.heartbeat_s, self.settle_s = ttl_s, heartbeat_s, settle_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _held_by_other(self) -> dict | None:
        lock = self.storage.read_json(LOCK, missing_ok=True)
        if not isinstance(lock, dict) or lock.get("id") == self.owner["id"]:
            return None
        if time.time() - float(lock.get("heartbeat", 0)) > self.ttl_s:
            return None  # stale: its build died without releasing it
        if lock.get("host") == self.owner["host"] and not _alive(lock.get("pid")):
            return None  # its build ran here and is gone (killed): resume at once, not after the ttl
        return lock

    def _refuse(self, other: dict) -> StorageError:
        age = time.time() - float(other.get("heartbeat", 0))
        return StorageError(
            f"{self.storage.uri} is being built by {other.get('host')} pid {other.get('pid')} "
            f"(run {other.get('run') or '?'}, heartbeat {age:.0f}s ago); wait for it, or delete "
            f"{self.storage.url(LOCK)} if that build is gone")

    def _write(self) -> None:
        self.storage.write_json_atomic(LOCK, {**self.owner, "heartbeat": time.time()})

    def acquire(self) -> "BuildLock":
        other = self._held_by_other()
        if other:
            raise self._refuse(other)
        self._write()
        time.sleep(self.settle_s)
        other = self._held_by_other()
        if other:  # a build that started at the same moment won the race
            raise self._refuse(other)
        self._thread = threading.Thread(target=self._beat, name="build-lock-heartbeat", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except StorageError:
                pass  # storage blip: the next beat tries again; the lock only goes stale after ttl_s

    def release(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        lock = self.storage.read_json(LOCK, missing_ok=True)
        if isinstance(lock, dict) and lock.get("id") == self.owner["id"]:
            self.storage.remove(LOCK)

    def __enter__(self) -> "BuildLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
