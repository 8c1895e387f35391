"""Grounding DINO: boxes for the named classes of each image, each box tied to one class through token spans.

How an image's classes become boxes:

1. **Caption.** The detector phrases of the image's classes, lower-cased, joined the authors' way:
   ``"cat. hot dog."``. A phrase's *token span* is the set of caption token positions its characters produced
   (from the fast tokenizer's offsets). A caption longer than the text encoder's window
   (``detector.max_text_tokens``, 256 for Grounding DINO) is cut between phrases into several captions
   (*chunks*), each run as its own pass; the detections of all chunks are merged (LVIS-size vocabularies).
2. **Scores.** The model gives, per query, a probability for every caption token. The box score is the highest
   of them (the authors' ``box_threshold`` test); the score of class ``c`` is the mean probability over ``c``'s
   span (a multi-token name must match as a whole, as in GLIP/mmdet). Each query goes to the class with the
   highest score, and is kept when box score > ``box_threshold`` and class score > ``text_threshold``. The
   class is decided by token *positions*, never by matching decoded text: ``"hot dog. dog."`` has two
   ``dog`` tokens and a box on the second is a ``dog``, not a ``hot dog``.
3. **Merge.** Boxes are clipped to the image, near-duplicates of the same class removed by NMS
   (``detector.nms_iou``), and the ``detector.max_boxes`` best of each class kept. ``best_scores`` holds, for
   each class, the best class score of any query assigned to it before thresholds: what the counterfactual
   check reads.

Speed: images are batched (``detector.batch_size`` per forward, each with its own caption, padded); the text
encoder (BERT) runs once per distinct caption - :class:`TextFeatureCache` sits in place of the model's text
backbone and returns cached features for captions it has seen (an image and its counterfactual share one).

Weights (``detector.weights``): ``pretrained`` loads ``detector.model`` (hub id or folder) with its processor;
``random`` builds the Grounding DINO SwinT architecture at full size and ``tiny`` a few hundred kB version, both
from configs in code with a WordPiece tokenizer made here from the vocabulary's words (no download). The
official backend (``detector.backend=official``) lives in :mod:`magicseg_models.annotation.official`.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Sequence

import torch
from PIL import Image

from magicseg_models.annotation.captions import Caption, plan_captions
from magicseg_models.annotation.postprocess import Detections, merge_selections, select_boxes
from magicseg_models.config import DetectorConfig
from magicseg_models.errors import MagicSegError

DEFAULT_SHORT_SIDE, DEFAULT_LONG_SIDE = 800, 1333  # the authors' RandomResize([800], max_size=1333)


class DetectorWeightsError(MagicSegError):
    """Detector weights or processor cannot be loaded (missing folder, offline hub, wrong checkpoint)."""


class BaseDetector:
    """Captions, chunking, batching and merging; a backend supplies ``_forward`` (logits and boxes)."""

    backend: str  # detector.backend
    config: DetectorConfig
    device: torch.device
    source: dict[str, Any]
    tokenizer: Any
    max_text_tokens: int

    def __init__(self) -> None:
        self._captions: OrderedDict[tuple[str, ...], list[Caption]] = OrderedDict()
        self.forwards = 0

    def captions_for(self, phrases: Sequence[str]) -> list[Caption]:
        key = tuple(phrases)
        if key not in self._captions:
            self._captions[key] = plan_captions(list(phrases), self.tokenizer, self.max_text_tokens)
            while len(self._captions) > 4096:
                self._captions.popitem(last=False)
        return self._captions[key]

    @property
    def settings(self) -> dict[str, Any]:
        """What produced the boxes, for shard metadata and the manifest: ``source`` (the model and its weights),
        the backend, and the settings that decide which boxes are kept."""
        c = self.config
        return {**self.source, "detector_backend": self.backend, "box_threshold": c.box_threshold,
                "text_threshold": c.text_threshold, "max_text_tokens": self.max_text_tokens,
                "image_size": self.input_size(), "nms_iou": c.nms_iou, "max_boxes": c.max_boxes,
                "detector_dtype": c.dtype if self.device.type == "cuda" else "float32", "detector_tf32": c.tf32}

    def input_size(self) -> list[int]:
        """The image size the model sees: Grounding DINO's resize limits (short side, long side at most)."""
        return list(self.resize_limits(self.config))

    def check_phrases(self, phrases: Sequence[str]) -> None:
        """:class:`~magicseg_models.annotation.captions.PhraseTooLongError` for the first phrase that cannot fit
        the text encoder's window even alone in a caption (the annotator asks this of its whole vocabulary when it
        is built, so a build refuses before any image is made rather than at the first sample of that class)."""
        plan_captions(list(phrases), self.tokenizer, self.max_text_tokens)

    def _forward(self, images: list[Image.Image], texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _run(self, images: list[Image.Image], captions: list[Caption]) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch: per image, logits over its caption's positions and boxes (cx, cy, w, h relative to the image).
        A backend whose queries are not caption texts (OWLv2: one query per phrase) overrides this."""
        return self._forward(images, [caption.text for caption in captions])

    def _batch_key(self, image: Image.Image) -> Any:
        """Images with equal keys may share a forward pass (Grounding DINO: the same size)."""
        return image.size

    def detect(self, images: Sequence[Image.Image], phrases: Sequence[Sequence[str]]) -> list[Detections]:
        """Per image, the boxes of its phrases. Images that may share a pass (``_batch_key``: the same size for
        Grounding DINO) are batched (``detector.batch_size``), each with its own caption; an image with several
        caption chunks is run once per chunk and the chunks' detections merged."""
        if len(images) != len(phrases):
            raise ValueError(f"{len(images)} images but {len(phrases)} phrase lists")
        items = [(i, caption) for i, ph in enumerate(phrases) if len(ph) for caption in self.captions_for(ph)]
        # Grounding DINO batches same-size images only: padding would change the backbone's view of a smaller
        # image, and an image's boxes must not depend on which images it was batched with
        by_size: dict[Any, list[tuple[int, Caption]]] = {}
        for item in items:
            by_size.setdefault(self._batch_key(images[item[0]]), []).append(item)
        batches = [group[s:s + self.config.batch_size] for group in by_size.values()
                   for s in range(0, len(group), self.config.batch_size)]
        parts: list[list[tuple[Caption, dict]]] = [[] for _ in images]
        c = self.config
        for chunk in batches:
            batch_images = [images[i] for i, _ in chunk]
            logits, boxes = self._run(batch_images, [cap for _, cap in chunk])
            self.forwards += 1
            for (i, caption), lg, bx in zip(chunk, logits, boxes):
                size = (images[i].height, images[i].width)
                parts[i].append((caption, select_boxes(lg, bx, caption, size, c.box_threshold, c.text_threshold)))
        return [merge_selections(p, len(ph), c.nms_iou, c.max_boxes) for p, ph in zip(parts, phrases)]

    @staticmethod
    def resize_limits(config: DetectorConfig) -> tuple[int, int]:
        if config.image_size is None:
            return DEFAULT_SHORT_SIDE, DEFAULT_LONG_SIDE
        return config.image_size, max(config.image_size, round(config.image_size * DEFAULT_LONG_SIDE
                                                               / DEFAULT_SHORT_SIDE))
