"""The annotation stage: image pairs in, class-labelled instance masks out (or a drop reason).

``Annotator(config.annotate, vocabulary)`` loads Grounding DINO and SAM once; calling it maps a batch of rows to
rows, so the same object runs in a test, a notebook and a Ray actor (wrapped in ``tasks/``).

Per row (``image`` and ``counterfactual_image`` bytes, ``class_ids``, optional ``class_names`` and
``context_class_ids``):

1. The detector runs on the image and on its counterfactual - all images of the batch together, with the
   caption made of the row's asked classes' detector phrases (``"cat. hot dog."``).
2. Keep policy (``annotate.keep``): ``all`` (default, the paper) keeps a sample only when every named class has a
   box; ``any`` when at least one has. Otherwise ``drop_reason = "class_not_detected:<name>"`` for the first
   class (in the row's order) without a box.
3. ``counterfactual_scores``: per named class, the best score the detector gives that class on the counterfactual
   image (0 when no query goes to it). With ``annotate.counterfactual_threshold`` set, a pair whose counterfactual
   still shows a class above it is dropped: ``drop_reason = "counterfactual_contains_class"``.
4. Context classes (``annotate.context_classes``, on by default): for a kept image whose prompt names other
   vocabulary classes (``context_class_ids``, from the prompt stage), the detector runs once more on the image
   with the caption of the asked phrases followed by the context phrases (one caption when it fits
   ``detector.max_text_tokens``, chunks otherwise); the boxes its queries give to a context class become
   annotations with ``asked = false``. The asked classes' own boxes always come from step 1's caption: adding
   phrases to a caption changes every query's scores (the image features attend to the whole caption), so a
   shared caption would change which samples are kept. Keep and drop are decided on the asked classes alone.
5. SAM turns every box of a kept image (asked and context) into a mask (each image embedded once, all its boxes in
   one prompt batch). ``annotations`` gets one entry per instance: ``class_id`` (vocabulary id), ``class_name``,
   ``box`` (xyxy pixels), ``score``, ``mask_rle`` (COCO compressed RLE counts, pycocotools; size = the row's
   height x width), ``area`` (mask pixels), ``asked``, SAM's ``predicted_iou`` and ``stability_score`` and
   ``box_fill`` (the share of its box the mask covers) - the schema's ``annotations`` field.
6. Mask thresholds (``annotate.predicted_iou_min`` / ``stability_score_min`` / ``box_fill_min``, off by default):
   a kept sample with any asked-class instance below one of them is dropped, ``drop_reason =
   "low_mask_quality"``: every stored mask is ground truth for training, so one spilled or unstable mask of an
   asked class would teach wrong pixels. Context instances are stored with their scores and never drop a sample.

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

from magicseg_models.annotation.detector import make_detector
from magicseg_models.annotation.postprocess import Detections
from magicseg_models.devices import resolve_device
from magicseg_models.annotation.segmenter import ScoredMasks, make_segmenter
from magicseg_models.config import AnnotateConfig
from magicseg_models.dataset.codecs import box_fill, decode_image, encode_mask
from magicseg_models.errors import ConfigError
from magicseg_models.vocabulary import Vocabulary

DROP_NOT_DETECTED = "class_not_detected"
DROP_COUNTERFACTUAL = "counterfactual_contains_class"
DROP_LOW_MASK_QUALITY = "low_mask_quality"
# the build-time mask thresholds: config field -> the annotation score it bounds from below
MASK_THRESHOLDS = {"predicted_iou_min": "predicted_iou", "stability_score_min": "stability_score",
                   "box_fill_min": "box_fill"}


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


def mask_quality_drop(annotations: Sequence[Mapping], minimums: Mapping[str, float]) -> str | None:
    """``low_mask_quality`` when an asked-class instance has a score below its minimum (``{"box_fill": 0.3}``),
    else None. Context instances (``asked`` false) never drop a sample; a score that was not computed (None)
    cannot fail."""
    for ann in annotations:
        if ann["asked"] and any(ann[key] is not None and ann[key] < low for key, low in minimums.items()):
            return DROP_LOW_MASK_QUALITY
    return None


Class = tuple[int, str, str]  # (vocabulary id, class name, detector phrase)


class Annotator:
    """Grounding DINO boxes per named class + SAM masks with class ids, for batches of rows."""

    def __init__(self, config: AnnotateConfig, vocabulary: Vocabulary, *, device: str | torch.device | None = None,
                 detector: Any = None, segmenter: Any = None):
        self.config = config
        self.vocabulary = vocabulary
        self.device = resolve_device(device)
        self.detector = detector if detector is not None else make_detector(config.detector, self.device)
        check = getattr(self.detector, "check_phrases", None)
        if check is not None:  # a phrase past the detector's text window: refused now, not at its first sample
            check([c.detector_phrase for c in vocabulary])
        self.segmenter = segmenter if segmenter is not None else make_segmenter(config.segmenter, self.device)
        self.minimums = {score: getattr(config, key) for key, score in MASK_THRESHOLDS.items()
                         if getattr(config, key) is not None}
        self._scored = getattr(self.segmenter, "segment_scored", None)
        if self._scored is None and {"predicted_iou", "stability_score"} & set(self.minimums):
            raise ConfigError(f"annotate.predicted_iou_min / stability_score_min need SAM's scores, and the "
                              f"segmenter {type(self.segmenter).__name__} gives none")
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()

    # ------------------------------------------------------------------------------------- public API
    def __call__(self, rows: Sequence[Mapping]) -> list[dict]:
        return self.annotate(list(rows))

    @property
    def settings(self) -> dict[str, Any]:
        """What produced the labels (for shard metadata and manifests)."""
        c = self.config
        return {**self.detector.settings, **self.segmenter.settings, "keep": c.keep,
                "counterfactual_threshold": c.counterfactual_threshold, "context_classes": c.context_classes,
                **{key: getattr(c, key) for key in MASK_THRESHOLDS}}

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

        # 2-3. keep policy and counterfactual check, on the asked classes
        kept = []
        for i in active:
            row, det, names = out[i], detections[i], [name for _, name, _ in classes[i]]
            row["height"], row["width"] = images[i].height, images[i].width
            row.setdefault("context_class_ids", [])
            cf = cf_detections.get(i)
            row["counterfactual_scores"] = None if cf is None else [float(s) for s in cf.best_scores]
            reason = decide_drop(det, names, row["counterfactual_scores"], keep=self.config.keep,
                                 counterfactual_threshold=self.config.counterfactual_threshold)
            if reason:
                self._drop(row, reason)
            else:
                kept.append(i)

        # 4. context classes: their boxes from a caption that names the asked classes first
        context = {i: self._context(out[i], classes[i]) for i in kept} if self.config.context_classes else {}
        with_context = [i for i in kept if context.get(i)]
        found = self.detector.detect([images[i] for i in with_context],
                                     [[p for _, _, p in classes[i] + context[i]] for i in with_context])
        context_boxes = {i: self._context_detections(det, len(classes[i])) for i, det in zip(with_context, found)}
        self.counts["context_images_detected"] += len(with_context)

        # 5. masks for every box of the kept images; 6. mask thresholds
        arrays = [np.asarray(images[i]) for i in kept]
        boxes = [np.concatenate([detections[i].boxes, context_boxes[i].boxes]) if i in context_boxes
                 else detections[i].boxes for i in kept]
        for i, masks in zip(kept, self._segment(arrays, boxes)):
            annotations = self._instances(detections[i], masks, classes[i], asked=True)
            if i in context_boxes:
                rest = _tail(masks, len(detections[i]))
                annotations += self._instances(context_boxes[i], rest, context[i], asked=False)
            reason = mask_quality_drop(annotations, self.minimums)
            if reason:
                self._drop(out[i], reason)
                continue
            out[i].update(annotations=annotations, drop_reason=None)
            out[i].setdefault("clip_score", None)
            self.counts["instances"] += len(annotations)
            self.counts["context_instances"] += sum(not a["asked"] for a in annotations)
            self.counts["kept"] += 1
        return out

    # ------------------------------------------------------------------------------------- internals
    def _drop(self, row: dict, reason: str) -> None:
        row.update(annotations=None, drop_reason=reason)
        self.drops[reason] += 1

    def _segment(self, arrays: list[np.ndarray], boxes: list[np.ndarray]) -> list[ScoredMasks]:
        if self._scored is not None:
            return self._scored(arrays, boxes)
        nan = np.float32("nan")  # a segmenter without SAM's scores: stored as null
        return [ScoredMasks(m, np.full(len(m), nan), np.full(len(m), nan))
                for m in self.segmenter.segment(arrays, boxes)]

    @staticmethod
    def _context_detections(det: Detections, num_asked: int) -> Detections:
        """The boxes of a context pass that went to context classes, relabelled to index the context list."""
        rows = np.flatnonzero(det.labels >= num_asked)
        return Detections(det.boxes[rows], det.scores[rows], det.labels[rows] - num_asked,
                          det.best_scores[num_asked:], det.stats)

    @staticmethod
    def _instances(det: Detections, masks: ScoredMasks, classes: list[Class], asked: bool) -> list[dict]:
        instances = []
        for k, (class_id, name, _) in enumerate(classes):  # grouped by class in the row's order, best first
            for j in det.of_class(k):
                rle, area = encode_mask(masks.masks[j])
                box = [float(v) for v in det.boxes[j]]
                instances.append({"class_id": int(class_id), "class_name": name, "box": box,
                                  "score": float(det.scores[j]), "mask_rle": rle, "area": int(area),
                                  "asked": asked, "predicted_iou": _score(masks.predicted_iou[j]),
                                  "stability_score": _score(masks.stability_score[j]),
                                  "box_fill": box_fill(masks.masks[j], box)})
        return instances

    def _classes(self, row: Mapping, index: int) -> list[Class]:
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

    def _context(self, row: Mapping, asked: list[Class]) -> list[Class]:
        """The row's context classes (``context_class_ids``, minus any asked one), in the row's order."""
        skip = {class_id for class_id, _, _ in asked}
        ids = row.get("context_class_ids")
        out = []
        for class_id in [] if ids is None else ids:
            if int(class_id) not in skip:
                skip.add(int(class_id))
                c = self.vocabulary[int(class_id)]
                out.append((c.id, c.name, c.detector_phrase))
        return out

    @staticmethod
    def _image(row: Mapping, key: str, index: int) -> bytes:
        data = row.get(key)
        if data is None:
            raise AnnotationInputError(f"row {index}: '{key}' is missing (and the row has no drop_reason)")
        return data


def _score(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _tail(masks: ScoredMasks, start: int) -> ScoredMasks:
    return ScoredMasks(masks.masks[start:], masks.predicted_iou[start:], masks.stability_score[start:])
