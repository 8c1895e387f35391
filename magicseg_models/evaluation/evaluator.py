"""Benchmark evaluation of a checkpoint, a baseline or saved predictions: the whole protocol, no Prefect or Ray.

``evaluate(config)`` reads the benchmark (:mod:`readers`), gets per-class scores for every image from a
*predictor*, and accumulates the metric:

- ``ZegCLIPPredictor``: a training checkpoint (its own model config is in ``meta.json``; the frozen CLIP comes
  from that config), text embeddings of the benchmark's prompt names (several names of one class are averaged),
  sigmoid scores through resize + sliding windows (:mod:`inference`).
- ``GroundedSAMPredictor`` (paper Table I's baseline): Grounding DINO on the benchmark's class names (captions
  split into chunks the detector can read, e.g. for LVIS's 1203 names) and SAM on every box. A class's score at
  a pixel is the best detector score of its masks covering it; a pixel under no mask is background (the
  background threshold does not apply: a box already passed the detector's thresholds).
- ``--predictions DIR``: label PNGs named by image id, scored as they are (:mod:`predictions`).

mIoU benchmarks: label = background where the best score is below the benchmark's ``bg_threshold``, else the
best class (:func:`inference.scores_to_labels`), one int64 confusion matrix over the dataset. ``oiv7-points``:
each image is scored only for the classes with points in it (the maps are read at the points), p-mIoU with the
aggregation of ``p_miou_aggregation``.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from magicseg_models.config import EvalConfig, ZegCLIPConfig, public_config
from magicseg_models.dataset.storage import Storage
from magicseg_models.devices import resolve_device
from magicseg_models.errors import ConfigError
from magicseg_models.evaluation.benchmarks import BenchmarkClasses
from magicseg_models.evaluation.inference import infer_scores, scores_to_labels
from magicseg_models.evaluation.metrics import ConfusionMatrix, PointIoU
from magicseg_models.evaluation.predictions import save_prediction, score_predictions
from magicseg_models.evaluation.readers import open_benchmark

Progress = Callable[[int, int], None]


def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255


# ------------------------------------------------------------------------------------------ predictors
class ZegCLIPPredictor:
    """Scores from a trained checkpoint (an output URI -> its latest checkpoint, or one checkpoint folder)."""

    background_threshold: float | None = None  # the benchmark's setting applies

    def __init__(self, checkpoint: str, config: EvalConfig, device: torch.device):
        from magicseg_models.training.checkpoints import load_checkpoint, resolve_checkpoint
        from magicseg_models.zegclip.build import build_zegclip

        folder = resolve_checkpoint(checkpoint, config.storage.storage_options)
        loaded = load_checkpoint(folder, with_state=False)
        model_config = ZegCLIPConfig.model_validate(loaded["meta"].get("model") or public_config(config.model))
        # the frozen CLIP of tiny/random weights is rebuilt from the seed the training run built it with
        seed = loaded["meta"].get("init_seed", (loaded["meta"].get("train") or {}).get("seed", 0))
        self.bundle = build_zegclip(model_config, device=device, seed=int(seed))
        self.bundle.model.load_trainable_state_dict(loaded["weights"])
        self.bundle.model.eval()
        self.device = device
        self.source = {"checkpoint": folder.uri, "step": loaded["meta"].get("step"),
                       "model": public_config(model_config)}
        self._text: dict[tuple, torch.Tensor] = {}

    def class_embeddings(self, alternatives: Sequence[Sequence[str]]) -> torch.Tensor:
        key = tuple(tuple(a) for a in alternatives)
        if key not in self._text:
            flat = [name for names in alternatives for name in names]
            embedded = self.bundle.class_embeddings(flat)
            rows, start = [], 0
            for names in alternatives:  # several names of one class: the mean of their embeddings
                rows.append(torch.nn.functional.normalize(embedded[start:start + len(names)].mean(0), dim=-1))
                start += len(names)
            self._text[key] = torch.stack(rows).to(self.device)
        return self._text[key]

    def scores(self, image: torch.Tensor, alternatives: Sequence[Sequence[str]], config: EvalConfig) -> torch.Tensor:
        text = self.class_embeddings(alternatives)
        model, normalize = self.bundle.model, self.bundle.normalize

        def predict(windows: torch.Tensor) -> torch.Tensor:
            return model(normalize(windows), text)["mask_logits"].sigmoid()

        return infer_scores(image, predict, len(alternatives), config.inference, device=self.device)


class GroundedSAMPredictor:
    """Grounding DINO boxes for the benchmark's names + SAM masks -> per-class score maps."""

    background_threshold = 1e-6  # any mask makes a pixel foreground; its class is the best-scoring mask's

    def __init__(self, config: EvalConfig, device: torch.device):
        from magicseg_models.annotation.detector import make_detector
        from magicseg_models.annotation.segmenter import make_segmenter

        self.detector = make_detector(config.annotate.detector, device)
        self.segmenter = make_segmenter(config.annotate.segmenter, device)
        self.source = {"baseline": "grounded-sam", "annotate": public_config(config.annotate)}

    def scores(self, image: torch.Tensor, alternatives: Sequence[Sequence[str]], config: EvalConfig) -> torch.Tensor:
        from magicseg_models.annotation.captions import clean_phrase

        phrases = [clean_phrase(names[0].replace("_", " ")) for names in alternatives]
        rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        [det] = self.detector.detect([Image.fromarray(rgb)], [phrases])
        h, w = rgb.shape[:2]
        out = torch.zeros(len(phrases), h, w)
        if len(det):
            [masks] = self.segmenter.segment([rgb], [det.boxes])
            for mask, label, score in zip(masks, det.labels, det.scores):
                region = torch.from_numpy(np.asarray(mask, dtype=bool))
                out[int(label)][region] = torch.clamp_min(out[int(label)][region], float(score))
        return out


# ----------------------------------------------------------------------------------------- evaluation
def evaluate(config: EvalConfig, progress: Progress | None = None) -> dict[str, Any]:
    """Run the protocol; returns ``{"metrics": {...metrics.json...}, "examples": [(image, gt, pred), ...]}``."""
    if not config.data_root:
        raise ConfigError("eval needs --data-root (the benchmark's folder)")
    settings = config.benchmarks[config.benchmark]
    reader = open_benchmark(config.benchmark, config.data_root, limit=config.limit,
                            prompt_names=settings.prompt_names)
    common = {"benchmark": config.benchmark, "num_images": len(reader),
              "settings": {"bg_threshold": settings.bg_threshold, "prompt_names": reader.classes.prompt_column,
                           "limit": config.limit, "inference": public_config(config.inference)}}
    points = config.benchmark == "oiv7-points"
    if config.predictions:
        if points:
            raise ConfigError("--predictions scores label maps; oiv7-points has point labels (score a model with "
                              "--checkpoint instead)")
        return evaluate_saved_predictions(config, reader, common, progress)
    predictor = make_predictor(config)
    common["settings"].update(predictor.source)
    protocol = evaluate_points if points else evaluate_miou
    return protocol(config, reader, predictor, common, progress)


def make_predictor(config: EvalConfig) -> ZegCLIPPredictor | GroundedSAMPredictor:
    """The predictor ``config`` asks for: the grounded-sam baseline or a checkpoint."""
    if config.baseline == "grounded-sam":
        return GroundedSAMPredictor(config, resolve_device(config.device))
    if config.checkpoint:
        return ZegCLIPPredictor(config.checkpoint, config, resolve_device(config.device))
    raise ConfigError("eval needs --checkpoint URI, --baseline grounded-sam or --predictions DIR")


def evaluate_saved_predictions(config: EvalConfig, reader, common: dict, progress: Progress | None = None) -> dict:
    """mIoU of the label PNGs in ``config.predictions`` (one per image id), scored as they are."""
    classes: BenchmarkClasses = reader.classes
    matrix = score_predictions(_tracked(reader, progress), config.predictions, classes.num_classes,
                               classes.ignore_index)
    common["settings"]["predictions"] = config.predictions
    return {"metrics": {**common, **_miou_metrics(matrix, classes)}, "examples": []}


def evaluate_miou(config: EvalConfig, reader, predictor, common: dict, progress: Progress | None = None) -> dict:
    """Dense protocol: per-pixel labels (background below the threshold), one confusion matrix over the dataset."""
    classes: BenchmarkClasses = reader.classes
    threshold = _background_threshold(config, predictor, common)
    out = Storage(config.out, config.storage.storage_options) if config.out else None
    examples: list[tuple[Image.Image, np.ndarray, np.ndarray]] = []
    matrix = ConfusionMatrix(classes.num_classes, ignore_index=classes.ignore_index)
    for i, sample in enumerate(reader):
        scores = predictor.scores(_to_tensor(sample.image), classes.prompt_alternatives, config)
        labels = scores_to_labels(scores, threshold, classes.has_background).cpu().numpy()
        matrix.update(labels, np.asarray(sample.label).astype(np.int64))
        if config.save_predictions and out is not None:
            _save(out, sample.image_id, labels, classes.num_classes)
        if len(examples) < config.visualize:
            examples.append((sample.image, np.asarray(sample.label), labels))
        if progress:
            progress(i + 1, len(reader))
    return {"metrics": {**common, **_miou_metrics(matrix, classes)}, "examples": examples}


def evaluate_points(config: EvalConfig, reader, predictor, common: dict, progress: Progress | None = None) -> dict:
    """Point protocol (p-mIoU): each image scored only for the classes with points in it, read at the points."""
    classes: BenchmarkClasses = reader.classes
    alternatives = classes.prompt_alternatives
    _background_threshold(config, predictor, common)
    points = PointIoU(config.p_miou_aggregation)
    for i, sample in enumerate(reader):
        present = sorted({int(c) for c in sample.points[:, 2]})
        scores = predictor.scores(_to_tensor(sample.image), [alternatives[c] for c in present], config)
        where = {c: k for k, c in enumerate(present)}
        xs, ys = sample.points[:, 0], sample.points[:, 1]
        values = scores[[where[int(c)] for c in sample.points[:, 2]], ys, xs].cpu().numpy()
        points.update([int(c) for c in sample.points[:, 2]], sample.points[:, 3].astype(int), values)
        if progress:
            progress(i + 1, len(reader))
    result = points.compute()
    per_class = {classes.names[k]: _finite(v) for k, v in result.get("per_class", {}).items()}
    metrics = {**common, "miou": _finite(result["p_miou"]), "metric": "p-mIoU",
               "per_class": per_class, "fg_iou": _finite(result["fg_iou"]), "bg_iou": _finite(result["bg_iou"]),
               "aggregation": result["aggregation"], "points": result["points"]}
    return {"metrics": metrics, "examples": []}


def _background_threshold(config: EvalConfig, predictor, common: dict) -> float:
    """The predictor's own threshold (a baseline's), else the benchmark's; recorded in the metrics' settings."""
    threshold = predictor.background_threshold
    if threshold is None:
        threshold = config.benchmarks[config.benchmark].bg_threshold
    common["settings"]["bg_threshold"] = threshold
    return threshold


def _tracked(reader, progress: Progress | None):
    for i, sample in enumerate(reader):
        yield sample
        if progress:
            progress(i + 1, len(reader))


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 6)


def _miou_metrics(matrix: ConfusionMatrix, classes: BenchmarkClasses) -> dict[str, Any]:
    result = matrix.compute()
    names = classes.label_names
    return {"miou": _finite(result["miou"]), "metric": "mIoU",
            "per_class": {name: _finite(v) for name, v in zip(names, result["per_class_iou"])},
            "pixel_accuracy": _finite(result["pixel_accuracy"]), "mean_accuracy": _finite(result["mean_accuracy"])}


def _save(out: Storage, image_id: str, labels: np.ndarray, num_classes: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = save_prediction(tmp, image_id, labels, num_classes)
        with open(path, "rb") as f:
            out.write_bytes_atomic(f"predictions/{image_id}.png", f.read())


# --------------------------------------------------------------------------------------- visualisation
def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    colors = rng.integers(40, 256, size=(max(n, 1) + 1, 3), dtype=np.uint8)
    colors[0] = 0  # background black
    return colors


def _colorize(labels: np.ndarray, palette: np.ndarray, ignore_index: int) -> Image.Image:
    safe = np.where((labels == ignore_index) | (labels < 0) | (labels >= len(palette)), 0, labels)
    rgb = palette[safe]
    rgb[labels == ignore_index] = 255  # ignored pixels white
    return Image.fromarray(rgb.astype(np.uint8))


def examples_png(examples: Sequence[tuple[Image.Image, np.ndarray, np.ndarray]], num_classes: int,
                 ignore_index: int = 255, height: int = 160) -> bytes:
    """A grid, one row per example: image | ground truth | prediction (same colour = same class)."""
    palette = _palette(num_classes)
    rows = []
    for image, gt, pred in examples:
        scale = height / image.height
        size = (max(1, round(image.width * scale)), height)
        tiles = [image.convert("RGB").resize(size), _colorize(gt, palette, ignore_index).resize(size, Image.NEAREST),
                 _colorize(pred, palette, ignore_index).resize(size, Image.NEAREST)]
        rows.append(tiles)
    width = max((sum(t.width for t in r) + 8 * 2 for r in rows), default=1)
    grid = Image.new("RGB", (width, max(1, len(rows) * (height + 8))), "white")
    for r, tiles in enumerate(rows):
        x = 0
        for tile in tiles:
            grid.paste(tile, (x, r * (height + 8)))
            x += tile.width + 8
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    return buf.getvalue()
