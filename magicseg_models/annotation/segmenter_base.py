"""What every segmenter backend shares: the scored-mask result, SAM's stability score, the error, the split of
images with boxes (embedded) from those without (never sent through an image encoder), and the base class that
gives each backend ``segment`` and the settings keys every manifest records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.errors import MagicSegError

PROMPTS_PER_CALL = 64  # boxes per mask-decoder call (memory bound for images with very many boxes)
STABILITY_OFFSET = 1.0  # segment-anything's default stability_score_offset


class SegmenterWeightsError(MagicSegError):
    """SAM weights cannot be found or loaded."""


@dataclass
class ScoredMasks:
    """The masks of one image's boxes with SAM's quality scores, one entry per box."""

    masks: np.ndarray  # (N, H, W) bool
    predicted_iou: np.ndarray  # (N,) float32
    stability_score: np.ndarray  # (N,) float32

    @classmethod
    def empty(cls, height: int, width: int) -> ScoredMasks:
        return cls(np.zeros((0, height, width), bool), np.zeros(0, np.float32), np.zeros(0, np.float32))


def stability_score(logits: torch.Tensor, threshold: float, offset: float = STABILITY_OFFSET) -> torch.Tensor:
    """Per mask (the last two dims are the pixels), the IoU of the mask binarised at ``threshold + offset`` and at
    ``threshold - offset`` - segment-anything's ``calculate_stability_score``. The high mask lies inside the low
    one, so the IoU is their pixel-count ratio; 0 where even the low mask is empty (SAM's own gives NaN there)."""
    high = (logits > threshold + offset).flatten(-2).sum(-1)
    low = (logits > threshold - offset).flatten(-2).sum(-1)
    return torch.where(low > 0, high.double() / low.clamp(min=1).double(), 0.0).float()


def concat_masks(parts: list[ScoredMasks]) -> ScoredMasks:
    return ScoredMasks(np.concatenate([p.masks for p in parts]), np.concatenate([p.predicted_iou for p in parts]),
                       np.concatenate([p.stability_score for p in parts]))


def split_empty(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> tuple[list, list[int]]:
    """(outputs with empty results filled in for images without boxes, indices of images to embed):
    an image without boxes is never sent through the image encoder."""
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box arrays")
    out: list[ScoredMasks | None] = [None] * len(images)
    todo = []
    for i, (image, b) in enumerate(zip(images, boxes)):
        if len(b) == 0:
            out[i] = ScoredMasks.empty(*image.shape[:2])
        else:
            todo.append(i)
    return out, todo


class BaseSegmenter:
    """A backend sets ``config``, ``device``, ``source`` (what was loaded) and ``backend``, and implements
    ``segment_scored``; ``settings`` adds the backend's own keys to :meth:`common_settings`."""

    backend: str
    config: Any
    device: torch.device
    source: str

    def _place(self, model: Any, encoder: Any) -> Any:
        """``model`` on the device in eval mode, its image ``encoder`` in ``config.encoder_dtype`` (the mask decoder
        stays float32), the counters at zero."""
        model = model.to(self.device).eval()
        self.encoder_dtype = getattr(torch, self.config.encoder_dtype)
        encoder.to(self.encoder_dtype)
        self.images_embedded = 0
        self.decoder_calls = 0
        return model

    def segment(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        """``images``: HxWx3 uint8 RGB; ``boxes``: per image (N, 4) xyxy pixels -> per image (N, H, W) bool."""
        return [result.masks for result in self.segment_scored(images, boxes)]

    def segment_scored(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[ScoredMasks]:
        raise NotImplementedError

    def common_settings(self) -> dict[str, Any]:
        c = self.config
        return {"segmenter": self.source, "segmenter_backend": self.backend, "segmenter_weights": c.weights,
                "multimask_output": False, "segmenter_dtype": c.dtype if self.device.type == "cuda" else "float32",
                "segmenter_encoder_dtype": c.encoder_dtype, "segmenter_tf32": c.tf32}
