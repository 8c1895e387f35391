"""Evaluation end to end: a tiny training checkpoint on a tiny VOC-layout fixture -> metrics.json; the same
numbers from its saved predictions scored offline; the Grounded-SAM baseline; p-mIoU on OpenImages points."""

from __future__ import annotations

import json

import pytest

from magicseg_models.config import load_config
from magicseg_models.evaluation.benchmarks import benchmark_classes
from magicseg_models.evaluation.evaluator import evaluate
from magicseg_models.training.trainer import train_worker
from tests.benchmark_data import VOC_IDS, make_oiv7, make_voc


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A 2-step tiny training run on a synthetic dataset: a real checkpoint to evaluate."""
    from magicseg_models.dataset.synthetic import write_synthetic_dataset
    from magicseg_models.planning import PlanSpec, plan_jobs

    root = tmp_path_factory.mktemp("ckpt")
    names = ("cat", "dog", "person", "sheep")
    spec = PlanSpec(class_ids=(0, 1, 2, 3), class_names=names, num_samples=6, seed=1, shard_size=6,
                    two_class_fraction=0.5)
    write_synthetic_dataset(str(root / "ds"), plan_jobs(spec), list(names), height=64, width=64)
    config = load_config("train", "tiny", overrides=[f"data={root / 'ds'}", f"out={root / 'train'}", "steps=2",
                                                     "data_workers=0"])
    train_worker(config)
    return str(root / "train")


def _eval_config(*overrides: str, **fields):
    return load_config("eval", "tiny", overrides=list(overrides), **fields)


def test_checkpoint_on_voc_writes_metrics_json_and_offline_scoring_agrees(checkpoint, tmp_path, prefect_api):
    from flows.evaluate import evaluate_flow

    root, _ = make_voc(tmp_path / "voc")
    out = tmp_path / "eval"
    config = _eval_config("save_predictions=true", checkpoint=checkpoint, benchmark="voc", data_root=str(root),
                          out=str(out), limit=2)
    metrics = evaluate_flow(config=config)
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics))
    assert written["benchmark"] == "voc" and written["num_images"] == 2
    classes = benchmark_classes("voc")
    assert list(written["per_class"]) == list(classes.label_names) and len(written["per_class"]) == 21
    assert written["miou"] is None or 0.0 <= written["miou"] <= 1.0
    assert written["settings"]["checkpoint"].endswith("step-00000002")
    assert written["settings"]["bg_threshold"] == 0.95
    assert (out / "predictions.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.stem for p in (out / "predictions").iterdir()) == sorted(VOC_IDS[:2])

    # the saved label maps scored offline give exactly the same numbers
    offline = evaluate(_eval_config(predictions=str(out / "predictions"), benchmark="voc", data_root=str(root),
                                    limit=2))["metrics"]
    assert offline["miou"] == written["miou"] and offline["per_class"] == written["per_class"]


def test_background_threshold_decides_background(checkpoint, tmp_path):
    root, labels = make_voc(tmp_path / "voc")
    # threshold 1.0: no sigmoid reaches it, every pixel is background -> only background can score
    metrics = evaluate(_eval_config("benchmarks.voc.bg_threshold=1.0", checkpoint=checkpoint, benchmark="voc",
                                    data_root=str(root), limit=1))["metrics"]
    gt = labels[VOC_IDS[0]]
    scored = gt != 255
    assert metrics["per_class"]["background"] == pytest.approx((gt[scored] == 0).sum() / scored.sum(), abs=1e-6)
    assert all(v in (None, 0.0) for k, v in metrics["per_class"].items() if k != "background")
    # threshold 0: every pixel gets its best class, never background
    metrics = evaluate(_eval_config("benchmarks.voc.bg_threshold=0.0", checkpoint=checkpoint, benchmark="voc",
                                    data_root=str(root), limit=1))["metrics"]
    assert metrics["per_class"]["background"] in (None, 0.0)


def test_grounded_sam_baseline_runs_the_protocol(tmp_path):
    root, _ = make_voc(tmp_path / "voc")
    metrics = evaluate(_eval_config(baseline="grounded-sam", benchmark="voc", data_root=str(root), limit=2))["metrics"]
    assert metrics["settings"]["baseline"] == "grounded-sam" and metrics["num_images"] == 2
    assert len(metrics["per_class"]) == 21


def test_p_miou_on_openimages_points(checkpoint, tmp_path):
    root = make_oiv7(tmp_path)
    metrics = evaluate(_eval_config(checkpoint=checkpoint, benchmark="oiv7-points", data_root=str(root)))["metrics"]
    assert metrics["metric"] == "p-mIoU" and metrics["aggregation"] == "per_class"
    assert metrics["points"] > 0 and (metrics["miou"] is None or 0.0 <= metrics["miou"] <= 1.0)
    per_image = evaluate(_eval_config("p_miou_aggregation=per_image_class", checkpoint=checkpoint,
                                      benchmark="oiv7-points", data_root=str(root)))["metrics"]
    assert per_image["aggregation"] == "per_image_class" and per_image["points"] == metrics["points"]


def test_missing_benchmark_folder_is_one_line(tmp_path, checkpoint):
    from magicseg_models.errors import MagicSegError

    with pytest.raises(MagicSegError) as err:
        evaluate(_eval_config(checkpoint=checkpoint, benchmark="voc", data_root=str(tmp_path / "nowhere")))
    assert "\n" not in str(err.value) and "nowhere" in str(err.value)
