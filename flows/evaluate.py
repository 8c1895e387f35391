"""Prefect flow ``evaluate``: a checkpoint (or the Grounded-SAM baseline, or saved predictions) on a benchmark.

Writes ``OUT/metrics.json`` (``benchmark, miou, per_class {name: iou}, num_images, settings``) and
``OUT/predictions.png`` (image | ground truth | prediction for the first few images), and publishes a table
artifact (mIoU and per-class IoU) and the examples as a markdown artifact.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_progress_artifact, create_table_artifact, \
    update_progress_artifact

from flows.artifacts import picture_artifact
from flows.params import Benchmark, EvalPreset, resolve_config
from flows.progress import TerminalProgress
from magicseg_models.config import EvalConfig
from magicseg_models.dataset.storage import Storage


@flow(name="evaluate", log_prints=True, validate_parameters=True)
def evaluate_flow(config: EvalConfig | None = None, preset: EvalPreset | None = None, checkpoint: str | None = None,
                  benchmark: Benchmark | None = None, data_root: str | None = None, out: str | None = None,
                  limit: int | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` (a training output URI or one checkpoint folder) on ``benchmark`` at ``data_root``.

    Args:
        config: a whole eval config; overrides the preset when given.
        preset: zegclip-vitb16 (the paper's protocol) or tiny.
        checkpoint: a training output (its latest checkpoint) or one checkpoint folder.
        benchmark: voc, context, coco-object, lvis (mIoU) or oiv7-points (p-mIoU).
        data_root: the benchmark's folder (docs/evaluation.md has each layout).
        out: where metrics.json and the predictions picture go.
        limit: evaluate the first N images only.
    """
    from magicseg_models.evaluation.evaluator import evaluate, examples_png

    logger = get_run_logger()
    config = resolve_config("eval", config, preset, checkpoint=checkpoint, benchmark=benchmark,
                            data_root=data_root, out=out, limit=limit)
    progress_id = create_progress_artifact(0.0, key="eval-progress", description="images evaluated")
    bar = TerminalProgress(f"evaluating {config.benchmark}")

    def progress(done: int, total: int) -> None:
        bar.update(done, total)
        if done == total or done % 10 == 0:
            update_progress_artifact(progress_id, 100.0 * done / max(total, 1), description=f"{done} of {total}")

    try:
        result = evaluate(config, progress)
    finally:
        bar.close()
    metrics = result["metrics"]
    logger.info("%s %s: %s over %d images", config.benchmark, metrics["metric"], metrics["miou"],
                metrics["num_images"])
    if config.out:
        storage = Storage(config.out, config.storage.storage_options)
        storage.write_json_atomic("metrics.json", metrics)
        metrics_uri = storage.url("metrics.json")
        png = None
        if result["examples"]:
            from magicseg_models.evaluation.benchmarks import benchmark_classes

            classes = benchmark_classes(config.benchmark) if config.benchmark != "oiv7-points" else None
            png = examples_png(result["examples"], classes.num_classes if classes else 1,
                               classes.ignore_index if classes else 255)
            storage.write_bytes_atomic("predictions.png", png)
        _artifacts(metrics, metrics_uri, storage.url("predictions.png") if png is not None else None)
    return metrics


def _artifacts(metrics: dict[str, Any], metrics_uri: str, picture: str | None) -> None:
    rows = [{"class": "(mean)", "iou": metrics["miou"]}]
    rows += [{"class": name, "iou": iou} for name, iou in metrics["per_class"].items()]
    create_table_artifact(rows, key="eval-metrics",
                          description=f"{metrics['benchmark']} {metrics['metric']} = {metrics['miou']} over "
                                      f"{metrics['num_images']} images; {metrics_uri}")
    if picture is not None:
        picture_artifact(picture, key="eval-predictions", title=f"{metrics['benchmark']}: image | ground truth | "
                         "prediction", caption=f"{metrics['num_images']} images evaluated.")
