"""One build per URI: a second build refuses while the first holds a fresh lock, and takes over a stale one."""

import time

import pytest

from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import StorageError
from tasks.lock import LOCK, BuildLock


def test_second_build_refuses_while_the_first_runs(dataset_root):
    storage = Storage(dataset_root)
    first = BuildLock(storage, run_name="first", settle_s=0.05).acquire()
    try:
        with pytest.raises(StorageError, match="being built by .*run first") as err:
            BuildLock(storage, run_name="second", settle_s=0.05).acquire()
        assert "\n" not in str(err.value)
    finally:
        first.release()
    assert not storage.exists(LOCK)
    BuildLock(storage, settle_s=0.05).acquire().release()  # free again once released


def test_stale_lock_is_taken_over(tmp_path):
    storage = Storage(str(tmp_path / "ds"))
    storage.write_json_atomic(LOCK, {"id": "dead-build", "host": "gone", "pid": 1, "heartbeat": time.time() - 999})
    with BuildLock(storage, ttl_s=60, settle_s=0.05):
        assert storage.read_json(LOCK)["id"] != "dead-build"


def test_heartbeat_keeps_a_long_build_fresh(tmp_path):
    storage = Storage(str(tmp_path / "ds"))
    with BuildLock(storage, ttl_s=0.6, heartbeat_s=0.1, settle_s=0.05):
        time.sleep(1.0)  # longer than the ttl: only the heartbeat keeps it fresh
        with pytest.raises(StorageError):
            BuildLock(storage, ttl_s=0.6, settle_s=0.05).acquire()


def test_lock_of_a_killed_build_on_this_host_is_free_at_once(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    storage = Storage(str(tmp_path / "ds"))
    storage.write_json_atomic(LOCK, {"id": "killed", "host": socket.gethostname(), "pid": dead.pid,
                                     "heartbeat": time.time()})
    with BuildLock(storage, settle_s=0.05):
        assert storage.read_json(LOCK)["id"] != "killed"
