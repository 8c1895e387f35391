"""Prefect flow ``train``: ZegCLIP with MagicSeg's sampling and counterfactual loss on Ray Train.

The flow validates the run (data readable, output free or ``resume``), runs Ray Train (``tasks/train_ray.py``),
follows ``OUT/metrics.jsonl`` while it runs (a progress artifact and a terminal bar), and finishes with a table
artifact (final losses), a link to the checkpoint, the loss curve, and the event ``magicseg.training.completed``
that the ``evaluate/adhoc`` deployment's trigger listens for (``prefect.yaml``).
"""

from __future__ import annotations

import threading
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_progress_artifact, \
    create_table_artifact, update_progress_artifact
from prefect.events import emit_event

from flows.artifacts import picture_artifact
from flows.params import TrainPreset, resolve_config
from flows.progress import TerminalProgress
from magicseg_models.config import TrainConfig
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError

COMPLETED_EVENT = "magicseg.training.completed"


class _Follower:
    """Reads the newest metrics line every few seconds: progress for the UI and the terminal."""

    def __init__(self, config: TrainConfig, interval_s: float = 3.0):
        self.storage = Storage(config.out, config.storage.storage_options)
        self.total = config.steps
        self.interval_s = interval_s
        self.stop = threading.Event()
        self.progress_id = create_progress_artifact(0.0, key="train-progress", description="step / steps")
        self.bar = TerminalProgress("training steps", total=config.steps)
        self.thread = threading.Thread(target=self._run, name="train-progress", daemon=True)

    def _latest(self) -> dict | None:
        import json

        try:
            lines = self.storage.read_bytes("metrics.jsonl").decode().splitlines()
        except Exception:  # noqa: BLE001 - nothing written yet, or storage hiccup: try again next time
            return None
        return json.loads(lines[-1]) if lines else None

    def _run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.update()

    def update(self) -> None:
        record = self._latest()
        if record is None:
            return
        description = (f"step {record['step']} of {self.total}, loss {record['loss']:.4g}, "
                       f"{record['samples_per_s']:.2f} samples/s")
        update_progress_artifact(self.progress_id, 100.0 * record["step"] / self.total, description=description)
        self.bar.update(record["step"], info=f"loss {record['loss']:.4g}")

    def __enter__(self) -> "_Follower":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.update()
        self.bar.close()


@flow(name="train", log_prints=True, validate_parameters=True)
def train_flow(config: TrainConfig | None = None, preset: TrainPreset | None = None, data: str | None = None,
               out: str | None = None, steps: int | None = None, workers: int | None = None,
               resume: bool = False) -> dict[str, Any]:
    """Train (``resume``: continue) ZegCLIP on the dataset at ``data``; checkpoints and metrics under ``out``.

    Args:
        config: a whole train config; overrides the preset when given.
        preset: zegclip-vitb16 (the authors' recipe), zegclip-vitb16-plus, or tiny (CPU plumbing test).
        data: a dataset URI that build-dataset wrote.
        out: where checkpoints, metrics.jsonl and the loss curve go.
        steps: training iterations (the preset's otherwise).
        workers: Ray Train workers, one GPU each where GPUs can be had.
        resume: continue from the latest checkpoint under out.
    """
    from tasks.train_ray import run_training

    logger = get_run_logger()
    config = resolve_config("train", config, preset, data=data, out=out, steps=steps, workers=workers,
                            resume=resume or None)
    if not config.data or not config.out:
        raise ConfigError("train needs data (a dataset URI) and out (a folder or s3://bucket/prefix)")
    logger.info("training %s on %s -> %s (%d steps, %d workers)", config.preset, config.data, config.out,
                config.steps, config.workers)
    with _Follower(config):
        outcome = run_training(config, log=logger.info)
    _artifacts(outcome, config)
    emit_event(event=COMPLETED_EVENT,
               resource={"prefect.resource.id": f"magicseg.training.{outcome['out']}",
                         "prefect.resource.name": outcome["out"]},
               payload={"checkpoint": outcome["checkpoint"], "out": outcome["out"], "data": config.data,
                        "step": outcome["step"]})
    return outcome


def _artifacts(outcome: dict[str, Any], config: TrainConfig) -> None:
    last = outcome.get("last") or {}
    rows = [{"metric": key, "value": last[key]} for key in ("step", "loss", "loss_focal", "loss_dice", "loss_cf",
                                                            "lr", "samples_per_s") if key in last]
    filtered = outcome.get("data_filter")
    if filtered:
        rows += [{"metric": f"filter.{name} removed", "value": n} for name, n in filtered["removed"].items()]
        rows.append({"metric": "samples after train.filter", "value": f"{filtered['kept']} of {filtered['total']}"})
    rows += [{"metric": "checkpoint", "value": outcome["checkpoint"]},
             {"metric": "metrics", "value": outcome["metrics"]}]
    create_table_artifact(rows, key="train-summary", description=f"training at {outcome['out']}")
    if outcome["checkpoint"]:
        create_link_artifact(outcome["checkpoint"], link_text="latest checkpoint", key="train-checkpoint",
                             description="evaluate it with: magicseg eval --checkpoint " + outcome["out"])
    if outcome.get("loss_curve"):
        picture_artifact(outcome["loss_curve"], key="train-loss-curve", title="Loss curve",
                         caption=f"Training at `{outcome['out']}`, step {outcome['step']}.")
