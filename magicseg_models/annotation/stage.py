"""The annotation stage: image pairs in, class-labelled instance masks out (or a drop reason).

``Annotator(config.annotate, vocabulary)`` loads Grounding DINO and SAM once; calling it maps a batch of rows to
rows, so the same object runs in a test, a notebook and a Ray actor (wrapped in ``tasks/``).

Per row (``image`` and ``counterfactual_image`` bytes, ``class_ids``, optional ``class_names``):

1. The detector runs on the image and on its counterfactual - all images of the batch together, with the
   caption made of the row's classes' detector phrases (``"cat. hot dog."``).
2. Keep policy (``annotate.keep``): ``all`` (default, the paper) keeps a sample only when every named class has a
   box; ``any`` when at least one has. Otherwise ``drop_reason = "class_not_detected:<name>"`` for the first
   class (in the row's order) without a box.
3. ``counterfactual_scores``: per named class, the best score the detector gives that class on the counterfactual
   image (0 when no query goes to it). With ``annotate.counterfactual_threshold`` set, a pair whose counterfactual
   still shows a class above it is dropped: ``drop_reason = "counterfactual_contains_class"``.
4. SAM turns every box of a kept image into a mask (each image embedded once, all its boxes in one prompt
   batch). ``annotations`` gets one entry per instance: ``class_id`` (vocabulary id), ``class_name``, ``box``
   (xyxy pixels), ``score``, ``mask_rle`` (COCO compressed RLE counts, pycocotools; size = the row's
   height x width) and ``area`` (mask pixels) - the schema's ``annotations`` field.

Rows that arrive with a ``drop_reason`` pass through untouched; dropped rows keep their
``counterfactual_scores`` (when computed) and get ``annotations = None``. ``stats()`` counts rows, drops by
reason, boxes and instances for the manifest.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.annotation.detector import Detections, make_detector, resolve_device
from magicseg_models.annotation.segmenter import make_segmenter
from magicseg_models.config import AnnotateConfig
from magicseg_models.dataset.codecs import box_fill, decode_image, encode_mask
from magicseg_models.vocabulary import Vocabulary

DROP_NOT_DETECTED = "class_not_detected"
DROP_COUNTERFACTUAL = "counterfactual_contains_class"


class AnnotationInputError(ValueError):
    """A row the annotator cannot read (missing image or classes)."""


def not_detected_reason(class_name: str) -> str:
    return f"{DROP_NOT_DETECTED}:{class_name}"


def decide_drop(detections: Detections, names: Sequence[str], counterfactual_scores: Sequence[float] | None, *,
                keep: str = "all", counterfactual_threshold: float | None = None) -> str | None:
    """Why a sample is dropped (``None``: kept). The keep policy first, then the counterfactual check.

    ``keep="all"``: every named class needs a box; ``"any"``: one is enough. The reason names the first class
    (in the row's order) without a box. With a threshold, a counterfactual score strictly above it drops.
    """
    found = [len(detections.of_class(k)) > 0 for k in range(len(names))]
    missing = [name for name, ok in zip(names, found) if not ok]
    if missing and (keep == "all" or not any(found)):
        return not_detected_reason(missing[0])
    if counterfactual_threshold is not None and counterfactual_scores is not None \
            and any(s > counterfactual_threshold for s in counterfactual_scores):
        return DROP_COUNTERFACTUAL
    return None


class Annotator:
    """Grounding DINO boxes per named class + SAM masks with class ids, for batches of rows."""

    def __init__(self, config: AnnotateConfig, vocabulary: Vocabulary, *, device: str | torch.device | None = None,
                 detector: Any = None, segmenter: Any = None):
        self.config = config
        self.vocabulary = vocabulary
        self.device = resolve_device(device)
        self.detector = detector if detector is not None else make_detector(config.detector, self.device)
        self.segmenter = segmenter if segmenter is not None else make_segmenter(config.segmenter, self.device)
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------- public API
    def __call__(self, batch):
        """Rows (a list of dicts) -> rows; also a dict of columns (Ray Data's batch format) -> columns."""
        if isinstance(batch, Mapping):
            names = list(batch)
            size = len(batch[names[0]]) if names else 0
            rows = self.annotate([{name: batch[name][i] for name in names} for i in range(size)])
            keys = list(rows[0]) if rows else [*names, "annotations", "counterfactual_scores", "drop_reason"]
            return {key: [row.get(key) for row in rows] for key in keys}
        return self.annotate(list(batch))

    @property
    def settings(self) -> dict[str, Any]:
        """What produced the labels (for shard metadata and manifests)."""
        return {**self.detector.settings, **self.segmenter.settings, "keep": self.config.keep,
                "counterfactual_threshold": self.config.counterfactual_threshold}

    def stats(self) -> dict[str, Any]:
        cache = getattr(self.detector, "text_cache", None)
        text = {"text_cache_hits": cache.hits, "text_cache_misses": cache.misses} if cache is not None else {}
        return {**dict(self.counts), **text, "dropped": dict(sorted(self.drops.items()))}

    def annotate(self, rows: Sequence[Mapping]) -> list[dict]:
        """Rows in, rows out (same order, same length); see the module docstring for the fields."""
        out = [dict(row) for row in rows]
        active = [i for i, row in enumerate(out) if not row.get("drop_reason")]
        if not active:
            return out
        classes = {i: self._classes(out[i], i) for i in active}
        images = {i: decode_image(self._image(out[i], "image", i)) for i in active}
        with_cf = [i for i in active if out[i].get("counterfactual_image") is not None]
        cf_images = {i: decode_image(out[i]["counterfactual_image"]) for i in with_cf}

        # 1. detection: every image and counterfactual of the batch in one detector call
        order = [("image", i) for i in active] + [("counterfactual", i) for i in with_cf]
        found = self.detector.detect([images[i] if kind == "image" else cf_images[i] for kind, i in order],
                                     [[phrase for _, _, phrase in classes[i]] for _, i in order])
        detections: dict[int, Detections] = {}
        cf_detections: dict[int, Detections] = {}
        for (kind, i), det in zip(order, found):
            (detections if kind == "image" else cf_detections)[i] = det
        self.counts["rows"] += len(active)
        self.counts["images_detected"] += len(order)

        # 2-3. keep policy and counterfactual check
        kept = []
        for i in active:
            row, det, names = out[i], detections[i], [name for _, name, _ in classes[i]]
            row["height"], row["width"] = images[i].height, images[i].width
            cf = cf_detections.get(i)
            row["counterfactual_scores"] = None if cf is None else [float(s) for s in cf.best_scores]
            reason = decide_drop(det, names, row["counterfactual_scores"], keep=self.config.keep,
                                 counterfactual_threshold=self.config.counterfactual_threshold)
            if reason:
                row.update(annotations=None, drop_reason=reason)
                self.drops[reason] += 1
            else:
                kept.append(i)

        # 4. masks for every box of the kept images
        arrays = [np.asarray(images[i]) for i in kept]
        masks = self.segmenter.segment(arrays, [detections[i].boxes for i in kept])
        for i, image_masks in zip(kept, masks):
            out[i]["annotations"] = self._instances(detections[i], image_masks, classes[i])
            out[i]["drop_reason"] = None
            out[i].setdefault("context_class_ids", [])
            out[i].setdefault("clip_score", None)
            self.counts["instances"] += len(out[i]["annotations"])
        self.counts["kept"] += len(kept)
        return out

    # ------------------------------------------------------------------------------------- internals
    @staticmethod
    def _instances(det: Detections, masks: np.ndarray, classes: list[tuple[int, str, str]]) -> list[dict]:
        instances = []
        for k, (class_id, name, _) in enumerate(classes):  # grouped by class in the row's order, best first
            for j in det.of_class(k):
                rle, area = encode_mask(masks[j])
                box = [float(v) for v in det.boxes[j]]
                instances.append({"class_id": int(class_id), "class_name": name, "box": box,
                                  "score": float(det.scores[j]), "mask_rle": rle, "area": int(area),
                                  "asked": True, "predicted_iou": None, "stability_score": None,
                                  "box_fill": box_fill(masks[j], box)})
        return instances

    def _classes(self, row: Mapping, index: int) -> list[tuple[int, str, str]]:
        """(vocabulary id, class name, detector phrase) of each class the row asks for."""
        ids = row.get("class_ids")
        if ids is None or len(ids) == 0:
            raise AnnotationInputError(f"row {index}: 'class_ids' is missing or empty")
        names = row.get("class_names")
        out = []
        for k, class_id in enumerate(ids):
            vocab_class = self.vocabulary[int(class_id)]
            name = names[k] if names is not None and k < len(names) else vocab_class.name
            out.append((int(class_id), str(name), vocab_class.detector_phrase))
        return out

    @staticmethod
    def _image(row: Mapping, key: str, index: int) -> bytes:
        data = row.get(key)
        if data is None:
            raise AnnotationInputError(f"row {index}: '{key}' is missing (and the row has no drop_reason)")
        return data
