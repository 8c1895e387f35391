"""The quality stage: a CLIP image-prompt score for every kept sample, an optional threshold, dedup fingerprints.

``QualityScorer(config.quality)`` loads a CLIP image and text encoder once (``quality.clip``: hub id,
transformers folder or OpenAI ``.pt``; ``quality.weights``: pretrained | random | tiny, the same loader ZegCLIP
uses). Calling it maps a batch of rows to rows; it runs after ``annotate`` on the rows still kept.

Per row:

- ``clip_score``: cosine (float32) between the CLIP embedding of ``image`` and that of ``prompt``, both through
  CLIP's projection. The image gets CLIP's own preprocessing, batched on the device: short side resized to the
  model's input size (224 for ViT-B/16) with antialiased bicubic interpolation, centre crop, CLIP's mean and std.
  The prompt is tokenised with CLIP's tokenizer and **truncated to CLIP's 77-token window** (start and end tokens
  included): words past it do not count in the score (the generator's text encoder cannot see them either).
- ``quality.clip_score_min``: a lower score drops the sample, ``drop_reason = "low_clip_score"``.
- ``quality.dedup``: the row gets a transient fingerprint (``dedup_fingerprint``; not a schema field, never
  written): the L2-normalised image embedding (``clip``) or a 64-bit perceptual hash (``phash``). The decision
  itself is the shard writer's (:mod:`magicseg_models.quality.dedup`).

On a GPU the encoders run under autocast in ``quality.dtype``; a CPU runs float32. ``stats()`` counts rows,
scores and drops; ``settings`` records the model, thresholds and the dedup rule the shard writer applies.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from magicseg_models.devices import autocast_context, resolve_device
from magicseg_models.config import QualityConfig
from magicseg_models.dataset.codecs import decode_image
from magicseg_models.errors import MagicSegError
from magicseg_models.quality.dedup import FINGERPRINT, DedupRule, phash, require_imagehash
from magicseg_models.zegclip.build import MAX_TOKENS, load_clip
from magicseg_models.zegclip.model import CLIP_IMAGE_MEAN, CLIP_IMAGE_STD
from magicseg_models.zegclip.text import CLIPTextEncoder

DROP_LOW_CLIP_SCORE = "low_clip_score"


class QualityInputError(MagicSegError):
    """A kept row the quality stage cannot score (no image or no prompt)."""


def clip_pixels(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    """HxWx3 uint8 images -> B x 3 x size x size CLIP input (resize short side, centre crop, normalise).

    Images of one size (a build's usual case) are resized in one batched call; mixed sizes go size by size.
    """
    mean = torch.tensor(CLIP_IMAGE_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_IMAGE_STD, device=device).view(1, 3, 1, 1)
    out = torch.empty(len(images), 3, size, size, device=device)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(image.shape, []).append(i)
    for (height, width, _), indices in by_shape.items():
        batch = torch.from_numpy(np.stack([images[i] for i in indices])).to(device).permute(0, 3, 1, 2).float()
        scale = size / min(height, width)
        resized = (max(size, int(height * scale)), max(size, int(width * scale)))  # int(): as torchvision, HF
        batch = torch.nn.functional.interpolate(batch / 255.0, size=resized, mode="bicubic", antialias=True,
                                                align_corners=False).clamp_(0, 1)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        out[indices] = (batch[:, :, top:top + size, left:left + size] - mean) / std
    return out


class QualityScorer:
    """CLIP image-prompt cosine for batches of rows, with the threshold and dedup fingerprints from config."""

    def __init__(self, config: QualityConfig, *, device: str | torch.device | None = None):
        self.config = config
        self.device = resolve_device(device)
        self.dedup = DedupRule.from_config(config.dedup)
        if self.dedup is not None and self.dedup.method == "phash":
            require_imagehash()  # a missing library fails when the actor is built, not on the first batch
        clip, tokenizer, self.source = load_clip(config.clip, config.tokenizer, config.weights, self.device,
                                                 key="quality")
        clip.eval().requires_grad_(False)
        self.vision, self.visual_projection = clip.vision_model, clip.visual_projection
        self.image_size = int(clip.config.vision_config.image_size)
        self.text = CLIPTextEncoder(clip.text_model, clip.text_projection, tokenizer, max_length=MAX_TOKENS,
                                    identity=str(self.source["model"]))
        self.counts: Counter[str] = Counter()
        self.drops: Counter[str] = Counter()

    def __call__(self, rows: Sequence[dict]) -> list[dict]:
        out = [dict(row) for row in rows]
        live = [row for row in out if not row.get("drop_reason")]
        if not live:
            return out
        images = [decode_image(self._field(row, "image")) for row in live]
        scores, embeddings = self.scores([np.asarray(im) for im in images],
                                         [self._field(row, "prompt") for row in live])
        for k, row in enumerate(live):
            row["clip_score"] = float(scores[k])
            if self.dedup is not None:
                row[FINGERPRINT] = embeddings[k] if self.dedup.method == "clip" else phash(images[k])
            minimum = self.config.clip_score_min
            if minimum is not None and row["clip_score"] < minimum:
                row["drop_reason"] = DROP_LOW_CLIP_SCORE
                self.drops[DROP_LOW_CLIP_SCORE] += 1
        self.counts["rows"] += len(live)
        self.counts["scored"] += len(live)
        self.counts["calls"] += 1
        return out

    @torch.no_grad()
    def scores(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cosines (N, float32) and the L2-normalised image embeddings (N x D, float32) of image-prompt pairs."""
        pixels = clip_pixels(images, self.image_size, self.device)
        with autocast_context(self.device, self.config.dtype):
            pooled = self.vision(pixel_values=pixels).pooler_output
            image = torch.nn.functional.normalize(self.visual_projection(pooled).float(), dim=-1)
            text = self.text.encode_texts(list(prompts))
        cosine = (image * text).sum(-1)
        return cosine.cpu().numpy().astype(np.float32), image.cpu().numpy()

    @property
    def settings(self) -> dict[str, Any]:
        return {"clip": self.source["model"], "clip_weights": self.source["weights"],
                "clip_init_seed": self.source.get("init_seed"), "clip_image_size": self.image_size,
                "clip_dtype": self.config.dtype if self.device.type == "cuda" else "float32",
                "clip_score_min": self.config.clip_score_min, "max_prompt_tokens": MAX_TOKENS,
                "dedup": self.dedup.as_dict() if self.dedup else {"method": "off"}}

    def stats(self) -> dict[str, Any]:
        return {**dict(self.counts), "dropped": dict(sorted(self.drops.items()))}

    @staticmethod
    def _field(row: dict, key: str):
        value = row.get(key)
        if value is None:
            raise QualityInputError(f"sample {row.get('sample_id', '?')}: '{key}' is missing (and the row has no "
                                    f"drop_reason)")
        return value
