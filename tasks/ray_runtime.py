"""Starting or joining Ray, and sizing stages to what the cluster has.

Pitfalls this module exists for (see docs/operations.md): GPU stages asking for GPUs on a cluster without any
wait forever, so they get ``num_gpus=0`` there; Ray workers see only installed code (no ``sys.path`` edits); storage
credentials reach workers through the environment they inherit (local Ray) or the cluster's own (remote).
"""

from __future__ import annotations

import logging
import os

from magicseg_models.config import RayConfig, StageResources

logger = logging.getLogger(__name__)


def ensure_ray(config: RayConfig) -> bool:
    """Join ``ray.address`` / ``RAY_ADDRESS`` or start a local Ray for this run; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = config.address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address is None:
        # a local Ray: declare enough logical CPUs that every stage actor fits at once (fractional stages
        # on a 2-core laptop otherwise wait forever for a CPU), and cap the object store
        kwargs.update(num_cpus=config.num_cpus, object_store_memory=config.object_store_memory)
    ray.init(address=address, **{k: v for k, v in kwargs.items() if v is not None})
    return True


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def actor_options(resources: StageResources, gpus_available: float) -> dict:
    """Ray options of one stage actor: its GPU share only where the cluster has GPUs."""
    num_gpus = resources.num_gpus if gpus_available > 0 else 0.0
    return {"num_cpus": resources.num_cpus, "num_gpus": num_gpus,
            # a crashed actor is restarted (its model reloads) and the calls it held are retried
            "max_restarts": -1, "max_task_retries": 3}
