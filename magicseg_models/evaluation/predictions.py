"""Prediction label PNGs: save them from our own evaluation, and score a folder of them offline.

A prediction for image ``ID`` is ``<folder>/ID.png``: one label per pixel, in the benchmark's label space
(the same numbering as its ground truth, e.g. 0 = background, 1..20 for VOC). Accepted PNGs are 8-bit
grayscale (``L``), palette (``P``, the palette index is the label, as VOC's own PNGs) and 16-bit grayscale
(for LVIS' 1203 classes). Colour PNGs are refused: their pixel values are not labels.

Folders may be local paths or any fsspec URL (``s3://...``), like the rest of the project's storage.
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, Iterable, Protocol

import fsspec
import numpy as np
import torch
from PIL import Image

from magicseg_models.evaluation.metrics import ConfusionMatrix, MetricError

__all__ = ["PredictionError", "LabelledSample", "prediction_path", "save_prediction", "load_prediction",
           "score_predictions"]


class PredictionError(MetricError):
    """A prediction PNG is missing, unreadable, not a label map, or does not match its ground truth."""


class LabelledSample(Protocol):
    """What :func:`score_predictions` reads from each sample: its id and its H x W ground-truth labels."""

    image_id: str
    label: np.ndarray


def prediction_path(folder: str, image_id: str) -> str:
    return posixpath.join(str(folder).rstrip("/"), f"{image_id}.png")


def save_prediction(folder: str, image_id: str, label: Any, num_classes: int | None = None) -> str:
    """Write ``label`` (H x W integers, numpy or torch) as ``<folder>/<image_id>.png``; returns the path.

    8-bit grayscale when the labels fit (``num_classes <= 256`` when given, else the largest label < 256),
    16-bit grayscale otherwise. PNG is lossless, so :func:`load_prediction` gives back the same array.
    """
    arr = label.detach().cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
    if arr.ndim != 2:
        raise PredictionError(f"prediction for {image_id} must be an H x W label map, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > 65535):
        raise PredictionError(f"prediction for {image_id} has label {int(arr.min() if arr.min() < 0 else arr.max())}"
                              f" that a PNG cannot hold (0..65535)")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise PredictionError(f"prediction for {image_id} has label {int(arr.max())} >= num_classes {num_classes}")
    small = num_classes <= 256 if num_classes is not None else (arr.size == 0 or arr.max() < 256)
    image = Image.fromarray(arr.astype(np.uint8 if small else np.uint16))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    path = prediction_path(folder, image_id)
    fs, fs_path = fsspec.core.url_to_fs(path)
    fs.makedirs(posixpath.dirname(fs_path) or ".", exist_ok=True)
    with fs.open(fs_path, "wb") as f:
        f.write(buffer.getvalue())
    return path


def load_prediction(folder: str, image_id: str) -> np.ndarray:
    """The H x W label map ``<folder>/<image_id>.png`` as uint8 or uint16 (palette index for ``P`` PNGs)."""
    path = prediction_path(folder, image_id)
    try:
        with fsspec.open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise PredictionError(f"no prediction for image {image_id} in {folder} (expected {image_id}.png)") from None
    except OSError as err:
        raise PredictionError(f"prediction {path} cannot be read: {type(err).__name__}") from None
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as err:  # PIL raises several unrelated types for a corrupt file
        raise PredictionError(f"prediction {path} is not a readable PNG: {type(err).__name__}") from None
    if image.mode in ("L", "P"):
        return np.array(image, dtype=np.uint8)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.array(image)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise PredictionError(f"prediction {path} has values outside 0..65535")
        return arr.astype(np.uint16)
    raise PredictionError(f"prediction {path} is a {image.mode} image, not a label map (use 8/16-bit grayscale or "
                          f"palette PNG)")


def score_predictions(samples: Iterable[LabelledSample], predictions_dir: str, num_classes: int,
                      ignore_index: int = 255, device: str | torch.device | None = None) -> ConfusionMatrix:
    """Accumulate a :class:`ConfusionMatrix` from ``<predictions_dir>/<image_id>.png`` against each sample's label.

    Every sample must have a prediction of the same size (one-line :class:`PredictionError` otherwise); values
    out of range raise :class:`MetricError` naming the image.
    """
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index, device=device)
    for sample in samples:
        image_id = str(sample.image_id)
        gt = np.asarray(sample.label)
        pred = load_prediction(predictions_dir, image_id)
        if pred.shape != gt.shape:
            raise PredictionError(f"prediction for image {image_id} in {predictions_dir} is "
                                  f"{'x'.join(map(str, pred.shape))} but its ground truth is "
                                  f"{'x'.join(map(str, gt.shape))}")
        try:
            matrix.update(pred, gt)
        except MetricError as err:
            raise MetricError(f"image {image_id}: {err}") from None
    return matrix
