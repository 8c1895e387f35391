"""Post-processing of Grounding DINO outputs: per-query token probabilities -> boxes tied to one class each.

The class of a box is decided by the token positions of each phrase's span in the caption, never by matching
decoded text; boxes are clipped, de-duplicated per class (NMS) and cut to the best few per class; the chunks of
one image's caption are merged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.annotation.captions import Caption


@dataclass
class Detections:
    """Boxes found in one image. ``labels`` index the image's phrase list (not vocabulary ids)."""

    boxes: np.ndarray  # (N, 4) float32, xyxy in pixels of the original image, inside it
    scores: np.ndarray  # (N,) float32: the class score of each box
    labels: np.ndarray  # (N,) int64: which phrase (class) each box is
    best_scores: np.ndarray  # (P,) float32: best class score of each phrase over all queries, no threshold
    stats: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.scores)

    def of_class(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.labels == k)

    @classmethod
    def empty(cls, num_phrases: int = 0) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64),
                   np.zeros(num_phrases, np.float32))


def _cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def select_boxes(logits: torch.Tensor, pred_boxes: torch.Tensor, caption: Caption, image_size: tuple[int, int],
                 box_threshold: float, text_threshold: float) -> dict[str, torch.Tensor]:
    """One image x one caption: the queries that pass both thresholds, each with its class.

    ``logits``: (num_queries, max_text_len) raw scores over caption token positions (positions past the
    caption are ``-inf``); ``pred_boxes``: (num_queries, 4) cx, cy, w, h relative to the image;
    ``image_size``: (height, width) in pixels. Returns ``boxes`` (xyxy px, clipped), ``scores``, ``labels``
    (positions in the image's phrase list) and ``best`` (per phrase of this caption, aligned with
    ``caption.phrase_index``).
    """
    probs = logits.float().sigmoid()  # -inf -> 0
    box_score = probs.max(dim=-1).values  # the authors' box score: best token of the whole caption
    class_scores = torch.stack([probs[:, list(span)].mean(dim=-1) for span in caption.spans], dim=-1)
    score, which = class_scores.max(dim=-1)  # each query goes to one class, by token position
    best = torch.stack([torch.where(which == k, score, torch.zeros_like(score)).max()
                        for k in range(len(caption.spans))])
    keep = (box_score > box_threshold) & (score > text_threshold)
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=pred_boxes.device)
    boxes = _cxcywh_to_xyxy(pred_boxes[keep].float()) * scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    index = torch.tensor(caption.phrase_index, dtype=torch.long, device=logits.device)
    return {"boxes": boxes, "scores": score[keep], "labels": index[which[keep]], "best": best}


def merge_selections(parts: Sequence[tuple[Caption, dict[str, torch.Tensor]]], num_phrases: int,
                     nms_iou: float | None, max_boxes: int) -> Detections:
    """The selections of all chunks of one image -> its :class:`Detections`: boxes under a pixel wide or high
    dropped, per-class NMS, at most ``max_boxes`` per class, sorted by score."""
    from torchvision.ops import batched_nms

    best = np.zeros(num_phrases, np.float32)
    if not parts:
        return Detections.empty(num_phrases)
    for caption, sel in parts:
        best[list(caption.phrase_index)] = sel["best"].float().cpu().numpy()
    boxes = torch.cat([sel["boxes"] for _, sel in parts])
    scores = torch.cat([sel["scores"] for _, sel in parts])
    labels = torch.cat([sel["labels"] for _, sel in parts])
    candidates = len(scores)
    ok = ((boxes[:, 2] - boxes[:, 0]) >= 1) & ((boxes[:, 3] - boxes[:, 1]) >= 1)  # at least a pixel each way
    boxes, scores, labels = boxes[ok], scores[ok], labels[ok]
    if nms_iou is not None and len(scores):
        order = batched_nms(boxes, scores, labels, nms_iou)  # sorted by score
    else:
        order = torch.argsort(scores, descending=True)
    rank = torch.zeros_like(order)  # rank of each box within its class, best first
    sorted_labels = labels[order]
    for k in sorted_labels.unique():
        members = sorted_labels == k
        rank[members] = torch.arange(int(members.sum()), device=order.device)
    order = order[rank < max_boxes]
    return Detections(boxes[order].cpu().numpy().astype(np.float32), scores[order].cpu().numpy().astype(np.float32),
                      labels[order].cpu().numpy().astype(np.int64), best,
                      stats={"candidates": candidates, "degenerate": int((~ok).sum()), "kept": len(order)})


def post_process(outputs: Any, captions: Sequence[Caption], image_sizes: Sequence[tuple[int, int]], *,
                 box_threshold: float, text_threshold: float, nms_iou: float | None = None,
                 max_boxes: int = 900) -> list[Detections]:
    """Model outputs for a batch (one caption per image, a single chunk each) -> :class:`Detections`.

    ``outputs`` has ``logits`` (B, num_queries, max_text_len) and ``pred_boxes`` (B, num_queries, 4), as
    :class:`transformers.GroundingDinoForObjectDetection` returns (the official model's ``pred_logits`` /
    ``pred_boxes`` dict works too). The detector uses the same two steps for chunked captions.
    """
    logits = outputs["pred_logits"] if isinstance(outputs, dict) and "pred_logits" in outputs else outputs.logits
    boxes = outputs["pred_boxes"] if isinstance(outputs, dict) else outputs.pred_boxes
    results = []
    for lg, bx, caption, size in zip(logits, boxes, captions, image_sizes):
        sel = select_boxes(lg, bx, caption, size, box_threshold, text_threshold)
        results.append(merge_selections([(caption, sel)], len(caption.spans), nms_iou, max_boxes))
    return results
