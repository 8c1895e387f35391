"""Starting or joining Ray, and asking the cluster for GPUs.

GPUs are asked for, never dropped silently: a GPU stage requests its share whether or not a GPU node is up now
(an autoscaling cluster - KubeRay, the cluster launcher - then starts one). Only when the cluster has no GPU and
cannot get one does a stage run without: a ``required`` stage refuses before any work, an ``optional`` one runs on
CPU and the run says so. "Cannot get one" is decided by asking the cluster: no autoscaler at all (a local Ray, a
fixed cluster), or an autoscaler that starts no node for the request, or ``ray.gpu_wait_s`` without a GPU.

Other pitfalls this module exists for (see docs/operations.md): Ray workers see only installed code (no
``sys.path`` edits); storage credentials reach workers through the environment they inherit (local Ray) or the
cluster's own (remote).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Sequence

from magicseg_models.config import RayConfig, StageResources

logger = logging.getLogger(__name__)


def ensure_ray(config: RayConfig) -> bool:
    """Join ``ray.address`` / ``RAY_ADDRESS`` or start a local Ray for this run; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    # ray.init(address=None) attaches to the cluster named in /tmp/ray/ray_current_cluster - whatever `ray start`
    # last wrote there, alive or long dead - and then refuses num_cpus: "local" always starts this run's own Ray
    # worker output reaches the driver's terminal; the records of our own loggers also travel with each batch's
    # result to the flow run's log (tasks.stage_pool), which is where Prefect users look
    kwargs: dict = {"log_to_driver": True, "configure_logging": False}
    if address is None:
        # a local Ray: declare enough logical CPUs that every stage actor fits at once (fractional stages
        # on a 2-core laptop otherwise wait forever for a CPU), and cap the object store
        kwargs.update(num_cpus=config.num_cpus, object_store_memory=config.object_store_memory,
                      include_dashboard=config.dashboard)
        if config.dashboard:
            kwargs["dashboard_host"] = "127.0.0.1"
    context = ray.init(address=address or "local", **{k: v for k, v in kwargs.items() if v is not None})
    if address is None and config.dashboard and getattr(context, "dashboard_url", None):
        logger.info("Ray dashboard at http://%s", context.dashboard_url)
    return True


def cluster_gpus() -> float:
    """GPUs the cluster has right now (0 on a scaled-to-zero autoscaling cluster: not what it can get)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_options(resources: StageResources, *, on_cpu: bool = False) -> dict:
    """Ray options of one stage actor: its GPU share unless the run decided this stage goes on CPU."""
    return {"num_cpus": resources.num_cpus, "num_gpus": 0.0 if on_cpu else resources.num_gpus,
            # a crashed actor is restarted (its model reloads) and the calls it held are retried
            "max_restarts": -1, "max_task_retries": 3}


def autoscaler_state() -> dict | None:
    """What the cluster's autoscaler reports (``{"version": 1|2, "starting": n}``); None when none runs.

    Autoscaler v1 (the cluster launcher, KubeRay's default before v2) writes a status record into the GCS on every
    update; v2 reports its state to the GCS itself. A plain local Ray runs a v1 monitor too, but over a read-only
    provider (node types named after the nodes it has): that is no autoscaler.
    """
    import ray
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        from ray.autoscaler.v2.sdk import get_cluster_status

        status = get_cluster_status(ray.get_runtime_context().gcs_address)
        if str(status.stats.autoscaler_version or "0") not in ("0", ""):
            return {"version": 2, "starting": len(status.pending_launches) + len(status.pending_nodes)}
    except Exception as err:  # an older GCS or a transient RPC error: fall through to the v1 record
        logger.debug("autoscaler v2 status unavailable: %s", err)
    deadline = time.monotonic() + 10.0
    while True:
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        if not raw:
            return None
        record = json.loads(raw)
        # a monitor's first records, seconds after the cluster starts, carry no report yet: wait for one (the
        # monitor reports every few seconds) rather than guess from an empty one
        if record.get("autoscaler_report") or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if time.time() - float(record.get("time", 0)) > 120:  # a monitor that stopped long ago
        return None
    report = record.get("autoscaler_report") or {}
    mapping = report.get("node_type_mapping") or {}
    if mapping and all(kind == format_readonly_node_type(node) for node, kind in mapping.items()):
        return None  # a plain Ray's monitor only watches the nodes it has ("read-only"): it can start none
    starting = sum((report.get("pending_launches") or {}).values()) + len(report.get("pending_nodes") or [])
    return {"version": 1, "starting": starting}


def cpu_shortfall(needs: Sequence[tuple[str, float]]) -> str | None:
    """None when the cluster can place one actor of each ``(stage, num_cpus)``; else why not, in words.

    An actor Ray cannot place waits for CPUs forever, without an error: a run whose stages ask for more CPUs than a
    fixed cluster holds would hang before its first shard. With an autoscaler the cluster may grow, so nothing is
    decided here.
    """
    import ray

    asked = sum(cpus for _, cpus in needs)
    nodes = [float(node.get("Resources", {}).get("CPU", 0.0)) for node in ray.nodes() if node.get("Alive")]
    if not needs or autoscaler_state() is not None:
        return None
    have, largest = sum(nodes), max(nodes, default=0.0)
    biggest_stage, biggest = max(needs, key=lambda need: need[1])
    if biggest > largest:
        return (f"stage {biggest_stage} asks for {biggest:g} CPUs per actor and the largest Ray node has "
                f"{largest:g}")
    if asked > have:
        parts = ", ".join(f"{name} {cpus:g}" for name, cpus in needs)
        return f"the stages' first actors ask for {asked:g} CPUs ({parts}) and the Ray cluster has {have:g}"
    return None


def gpu_unavailable(shares: Sequence[float], *, wait_s: float, settle_s: float = 30.0,
                    poll_s: float = 1.0) -> str | None:
    """None when the cluster has or can get ``shares`` (one GPU share per bundle); else why not, in words.

    A placement group of the shares is the request the autoscaler sees: it stays pending until a GPU node is up,
    and is removed at once either way (the stage actors then land on the node the autoscaler started).
    """
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    shares = [share for share in shares if share > 0]
    if not shares or cluster_gpus() >= max(shares):
        return None
    if autoscaler_state() is None:
        return "the Ray cluster has no GPU and no autoscaler that could start one"
    group = placement_group([{"GPU": share} for share in shares], strategy="PACK")
    began = last_starting = time.monotonic()
    try:
        while True:
            ready, _ = ray.wait([group.ready()], timeout=poll_s)
            if ready:
                return None
            state = autoscaler_state()
            now = time.monotonic()
            if state and state["starting"]:
                last_starting = now
            if state is None or now - last_starting > settle_s:
                return "the Ray cluster has no GPU and its autoscaler starts no node with one"
            if now - began > wait_s:
                return f"the Ray cluster offered no GPU within ray.gpu_wait_s={wait_s:g}"
    finally:
        remove_placement_group(group)
