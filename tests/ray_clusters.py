"""Ray's own autoscaling test cluster (``ray.cluster_utils.AutoscalingCluster``), made safe to run beside other tests.

It is the real autoscaler over the fake multi-node provider: worker "nodes" are raylets on this machine that
declare the resources of their node type (``GPU: 1`` without a GPU). As shipped it runs ``ray stop --force``
(every Ray process on the machine), reads a base config the wheel does not ship, and lets workers dial the
default GCS port. This subclass embeds the base config, starts the head on free ports in a short private temp
dir (Unix socket paths are limited to 107 bytes), and stops only the processes of its own session.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import tempfile

import psutil
from ray.cluster_utils import AutoscalingCluster

# python/ray/autoscaler/_private/fake_multi_node/example.yaml in Ray's source tree, without its sample node types
_BASE_CONFIG = {
    "cluster_name": "fake_multinode", "max_workers": 8,
    "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                 "disable_launch_config_check": True},
    "available_node_types": {}, "head_node_type": "ray.head.default", "auth": {}, "upscaling_speed": 1.0,
    "idle_timeout_minutes": 0.1, "docker": {}, "initialization_commands": [], "setup_commands": [],
    "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
    "worker_start_ray_commands": [], "file_mounts": {}, "cluster_synced_files": [],
    "file_mounts_sync_continuously": False, "rsync_exclude": [], "rsync_filter": [],
}

# token auth (on when ~/.ray/auth_token exists) would keep a driver given only the address out
ENV = {"RAY_AUTH_MODE": "disabled"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PrivateAutoscalingCluster(AutoscalingCluster):
    """``AutoscalingCluster`` with its own ports and temp dir, stopped by PID (other Ray sessions untouched)."""

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        config = copy.deepcopy(_BASE_CONFIG)
        config["available_node_types"] = copy.deepcopy(worker_node_types)
        config["available_node_types"]["ray.head.default"] = {"resources": head_resources, "node_config": {},
                                                             "max_workers": 0}
        config.update(config_kwargs)
        return config

    def start(self, _system_config=None, override_env=None) -> str:
        import ray._private.services as services

        self.port = _free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="ras", dir="/tmp")
        self.address = f"{services.get_node_ip_address()}:{self.port}"
        # the fake provider starts worker raylets against this GCS (else the default port 6379)
        self._config["provider"]["gcs_address"] = self.address
        path = os.path.join(self.temp_dir, "autoscaling.json")
        with open(path, "w") as f:
            json.dump(self._config, f)
        head = dict(self._head_resources)
        cmd = [os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", f"--port={self.port}",
               f"--temp-dir={self.temp_dir}", f"--autoscaling-config={path}", "--include-dashboard=false",
               "--disable-usage-stats", f"--num-cpus={head.pop('CPU', 1)}", f"--num-gpus={head.pop('GPU', 0)}"]
        env = {**os.environ, **ENV, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1",
               **(override_env or {})}
        subprocess.run(cmd, env=env, check=True, capture_output=True)
        return self.address

    def shutdown(self) -> None:
        session = os.path.basename(os.path.realpath(os.path.join(self.temp_dir, "session_latest")))
        mine = []
        for proc in psutil.process_iter(["cmdline"]):
            args = proc.info["cmdline"] or []
            if any(session in arg or self.temp_dir in arg for arg in args):
                mine.append(proc)
        for proc in mine:
            proc.terminate()
        _, alive = psutil.wait_procs(mine, timeout=10)
        for proc in alive:
            proc.kill()
