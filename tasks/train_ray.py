"""Ray Train glue: run :func:`magicseg_models.training.trainer.train_worker` on ``workers`` Ray Train workers.

Ray Train (V2 API) starts the worker group, sets up ``torch.distributed`` (gloo on CPU, NCCL on GPUs) and restarts
the group after a worker dies (``max_failures`` times). Checkpoints are ours, not Ray's: rank 0 writes them under
``OUT/checkpoints`` on any fsspec URI, so evaluation, resume and users find them at a documented path; a restarted
worker group resumes from the latest one by itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from typing import Any, Callable

from magicseg_models.config import TrainConfig
from magicseg_models.training.trainer import check_run

logger = logging.getLogger(__name__)


def _train_loop(loop_config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    from magicseg_models.training.trainer import WorkerContext, train_worker

    config = TrainConfig.model_validate(loop_config)
    context = ray.train.get_context()
    ctx = WorkerContext(rank=context.get_world_rank(), world_size=context.get_world_size(),
                        device=ray.train.torch.get_device(),
                        report=lambda record: ray.train.report(dict(record)))
    train_worker(config, ctx)  # its outcome is on storage (checkpoints, metrics.jsonl), where the driver reads it


def _user_error(err: Exception) -> Exception | None:
    """A worker's MagicSegError (bad data, unreachable storage) as itself: one line, not a Ray traceback."""
    from magicseg_models.errors import MagicSegError

    failures = getattr(err, "worker_failures", {}) or {}
    for rank in sorted(failures):
        failure = failures[rank]
        cause = failure if isinstance(failure, MagicSegError) else getattr(failure, "cause", None)
        if isinstance(cause, MagicSegError):
            return type(cause)(f"training worker {rank}: {cause}")
    return None


def _absolute(uri: str | None) -> str | None:
    if not uri or "://" in uri:
        return uri
    return os.path.abspath(os.path.expanduser(uri))


def _worker_env() -> dict:
    # where the object store is (not who may use it): a Ray started before AWS_ENDPOINT_URL was set would not
    # pass it on. Credentials stay with the workers' own environment (image, pod spec, instance role).
    names = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION")
    env = {name: os.environ[name] for name in names if os.environ.get(name)}
    return {"env_vars": env} if env else {}


def run_training(config: TrainConfig, log: Callable[[str], None] = logger.info) -> dict[str, Any]:
    """Train on a Ray cluster (``RAY_ADDRESS`` / ``ray.address``) or a local Ray started for the run.

    ``log`` gets what the run should show before it starts (what ``train.filter`` removes): the flow passes its
    run logger."""
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from tasks.ray_runtime import ensure_ray

    # Ray Train workers run in their own working directories: a relative local path must not change meaning
    config = config.model_copy(update={"data": _absolute(config.data), "out": _absolute(config.out)})
    latest, filtered = check_run(config)
    if filtered is not None:
        log(filtered.line())
    # past the check, every (re)started worker group resumes from whatever checkpoint exists
    loop_config = config.model_copy(update={"resume": True}).model_dump(mode="json")
    started = ensure_ray(config.ray)
    try:
        use_gpu, notes = training_device(config)
        storage = os.environ.get("MAGICSEG_RAY_STORAGE") or os.path.join(tempfile.gettempdir(), "magicseg-ray-train")
        trainer = TorchTrainer(
            _train_loop, train_loop_config=loop_config,
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=use_gpu),
            run_config=RunConfig(worker_runtime_env=_worker_env(), name="train-" + hashlib.sha1(config.out.encode()).hexdigest()[:12], storage_path=storage,
                                 failure_config=FailureConfig(max_failures=config.max_failures)))
        try:
            result = trainer.fit()
        except ray.train.WorkerGroupError as err:
            raise _user_error(err) or err
    finally:
        if started:
            ray.shutdown()
    if result.error is not None:
        raise result.error
    return {**training_outcome(config), "resumed_from": latest, "workers": config.workers, "use_gpu": use_gpu,
            "notes": notes, "data_filter": filtered.as_dict() if filtered is not None else None}


def training_device(config: TrainConfig) -> tuple[bool, list[str]]:
    """Whether the workers get a GPU each, and notes for the run log; the build stages' rule (tasks.ray_runtime).

    ``use_gpu`` true is ``required``, unset is ``optional`` (asked for, CPU with a note where none can be had),
    false is CPU. Asking is what makes an autoscaling cluster start GPU nodes from zero.
    """
    from magicseg_models.errors import ClusterError
    from tasks.ray_runtime import gpu_unavailable

    if config.use_gpu is False:
        return False, []
    reason = gpu_unavailable([1.0] * config.workers, wait_s=config.ray.gpu_wait_s)
    if reason is None:
        return True, []
    if config.use_gpu:
        raise ClusterError(f"use_gpu=true, but {reason}: run on a cluster with GPU nodes, or unset use_gpu "
                           "to train on CPU")
    note = f"training runs on CPU: {reason} (use_gpu unset; true would refuse instead)"
    logger.warning(note)
    return False, [note]


def training_outcome(config: TrainConfig) -> dict[str, Any]:
    """What a finished run left under OUT: latest checkpoint, the last metrics line, the curve."""
    from magicseg_models.dataset.storage import Storage
    from magicseg_models.training import checkpoints as ckpt
    from magicseg_models.training.metrics_log import CURVE, METRICS, MetricsLog

    out = Storage(config.out, config.storage.storage_options)
    step = ckpt.latest_checkpoint(out)
    records = MetricsLog(out, resume_step=step).records if step is not None else []
    return {"out": out.uri, "step": step, "checkpoint": out.url(ckpt.step_dir(step)) if step is not None else None,
            "metrics": out.url(METRICS), "loss_curve": out.url(CURVE) if out.exists(CURVE) else None,
            "last": records[-1] if records else {}, "records": len(records)}
