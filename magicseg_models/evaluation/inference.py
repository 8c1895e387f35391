"""Test-time inference: resize, sliding windows, merge of window scores, scores to labels.

This reproduces the mmseg 0.x test pipeline that ZegCLIP is evaluated with, in plain PyTorch:

1. :func:`resize_short_side`: mmseg's ``Resize(img_scale=(2048, 512), keep_ratio=True)`` scales the image so
   its short side is 512 unless the long side would then exceed 2048; here ``short_side`` with the long side
   clamped at ``long_side_ratio * short_side`` (4 x, the same 2048:512 ratio). Bilinear, half-pixel centres,
   no antialiasing (what ``cv2.resize(INTER_LINEAR)`` in mmcv does).
2. :func:`slide_inference`: windows of ``crop`` pixels every ``stride`` pixels (mmseg's grid, see
   :func:`slide_windows`), run ``batch_size`` windows at a time through ``predict_fn``, and average the scores
   of overlapping windows with a count map.
3. :func:`infer_scores` resizes the averaged scores back to the original image size (mmseg's
   ``rescale=True``): metrics are computed at the ground truth's resolution.
4. :func:`scores_to_labels`: background (label 0) where the best class score is below the benchmark's
   threshold (0.95 in the paper), else 1 + argmax; benchmarks without background take the argmax.

``predict_fn`` contract: it takes a float32 batch ``B x 3 x h x w`` of windows cut from the image exactly as
given (any normalisation is predict_fn's job) and returns ``B x C x h' x w'`` per-class **probabilities**
(sigmoid scores in [0, 1], one per class, no background channel). Probabilities, not logits, are averaged,
so the background threshold applies to a score on the scale it was chosen for. Outputs at another spatial
size (e.g. the decoder's 1/16 grid) are bilinearly resized to the window first, as mmseg's ``encode_decode``
does.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
import torch.nn.functional as F

from magicseg_models.config import InferenceConfig
from magicseg_models.errors import ConfigError

__all__ = [
    "PredictFn", "resize_short_side", "slide_windows", "window_count_map", "slide_inference",
    "scores_to_labels", "infer_scores", "predict_labels", "autocast_for",
]

PredictFn = Callable[[torch.Tensor], torch.Tensor]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def resize_short_side(image: torch.Tensor, short_side: int, long_side_ratio: float | None = 4.0) -> torch.Tensor:
    """Resize a 3 x H x W image so its short side is ``short_side``, keeping the aspect ratio.

    If the long side would exceed ``long_side_ratio * short_side`` (mmseg's 2048 for 512) the scale is reduced
    so it does not; ``None`` never clamps. Output size rounds like mmcv's ``rescale_size``
    (``int(side * scale + 0.5)``). Returns float32 on the image's device, values not rounded to integers.
    """
    if image.dim() != 3:
        raise ValueError(f"expected a 3 x H x W image, got shape {tuple(image.shape)}")
    h, w = int(image.shape[-2]), int(image.shape[-1])
    scale = short_side / min(h, w)
    if long_side_ratio is not None:
        scale = min(scale, long_side_ratio * short_side / max(h, w))
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    img = image.float()
    if (new_h, new_w) == (h, w):
        return img.clone() if img is image else img
    return F.interpolate(img[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                         antialias=False)[0]


def slide_windows(h: int, w: int, crop: int | tuple[int, int], stride: int | tuple[int, int]
                  ) -> list[tuple[int, int, int, int]]:
    """Windows ``(y0, x0, y1, x1)`` (end exclusive) covering every pixel of an h x w image, mmseg's grid.

    ``grids = max(side - crop + stride - 1, 0) // stride + 1`` per axis; window i starts at ``i * stride``, ends at
    ``min(start + crop, side)`` and then starts at ``max(end - crop, 0)``: the last window is pulled back to end
    on the border, so any size is covered, not only multiples of the stride. Every window has the same size,
    ``min(crop, h) x min(crop, w)``: an image smaller than the crop gives one window of the image's own size
    (mmseg runs the model at that smaller size; see ``pad_to_crop`` in :func:`slide_inference`).
    """
    ch, cw = _pair(crop)
    sh, sw = _pair(stride)
    if min(ch, cw, sh, sw) < 1 or h < 1 or w < 1:
        raise ConfigError(f"sliding window needs positive sizes; got image {h}x{w}, crop {ch}x{cw}, stride {sh}x{sw}")
    if sh > ch or sw > cw:
        # mmseg's grid leaves unscored strips between windows when the stride is larger than the crop
        raise ConfigError(f"stride {sh}x{sw} is larger than crop {ch}x{cw}: some pixels would get no window")
    h_grids = max(h - ch + sh - 1, 0) // sh + 1
    w_grids = max(w - cw + sw - 1, 0) // sw + 1
    windows = []
    for hi in range(h_grids):
        for wi in range(w_grids):
            y1 = min(hi * sh + ch, h)
            x1 = min(wi * sw + cw, w)
            windows.append((max(y1 - ch, 0), max(x1 - cw, 0), y1, x1))
    return windows


def window_count_map(h: int, w: int, windows: list[tuple[int, int, int, int]],
                     device: str | torch.device | None = None) -> torch.Tensor:
    """H x W int64 map of how many windows cover each pixel (the weights of the merge)."""
    count = torch.zeros(h, w, dtype=torch.int64, device=device)
    for y0, x0, y1, x1 in windows:
        count[y0:y1, x0:x1] += 1
    return count


def autocast_for(device: torch.device, dtype: str | torch.dtype) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast on CUDA when asked; float32 everywhere else (CPU autocast is slow and not what the
    reference numbers used)."""
    if isinstance(dtype, str):
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device_type="cuda", dtype=dtype)
    return contextlib.nullcontext()


def slide_inference(image: torch.Tensor, predict_fn: PredictFn, num_classes: int,
                    crop: int | tuple[int, int] = 512, stride: int | tuple[int, int] = 426, batch_size: int = 8,
                    dtype: str | torch.dtype = "float32", device: str | torch.device | None = None,
                    pad_to_crop: bool = False) -> torch.Tensor:
    """Averaged per-class scores ``C x H x W`` (float32) of a ``3 x H x W`` image over sliding windows.

    Windows come from :func:`slide_windows` and go through ``predict_fn`` ``batch_size`` at a time (see the
    module docstring for predict_fn's contract). Each window's scores are added to a C x H x W sum and a count
    map is incremented over the window; the result is sum / count, so a pixel covered by k windows gets the
    mean of its k scores. Runs under ``torch.inference_mode`` on ``device`` (default: the image's), with
    :func:`autocast_for` ``dtype``; sums are kept in float32 whatever the autocast dtype.

    Images smaller than the crop: by default the model sees windows of the smaller size (as mmseg); with
    ``pad_to_crop=True`` windows are zero-padded at the bottom/right to the crop size (for models that need a
    fixed input) and the padded part of the output is dropped.
    """
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.dim() != 3:
        raise ValueError(f"expected a 3 x H x W image, got shape {tuple(image.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    dev = torch.device(device) if device is not None else image.device
    h, w = int(image.shape[-2]), int(image.shape[-1])
    ch, cw = _pair(crop)
    windows = slide_windows(h, w, (ch, cw), stride)
    wh, ww = min(ch, h), min(cw, w)
    pad = pad_to_crop and (wh, ww) != (ch, cw)
    with torch.inference_mode():
        img = image.to(dev, torch.float32)
        total = torch.zeros(num_classes, h, w, dtype=torch.float32, device=dev)
        count = torch.zeros(1, h, w, dtype=torch.float32, device=dev)
        for start in range(0, len(windows), batch_size):
            chunk = windows[start:start + batch_size]
            batch = torch.stack([img[:, y0:y1, x0:x1] for y0, x0, y1, x1 in chunk])
            if pad:
                batch = F.pad(batch, (0, cw - ww, 0, ch - wh))
            with autocast_for(dev, dtype):
                out = predict_fn(batch)
            if out.dim() != 4 or out.shape[0] != len(chunk) or out.shape[1] != num_classes:
                raise ValueError(f"predict_fn must return {len(chunk)} x {num_classes} x h x w scores for a batch "
                                 f"of {len(chunk)} windows, got shape {tuple(out.shape)}")
            out = out.float()
            if tuple(out.shape[-2:]) != tuple(batch.shape[-2:]):
                out = F.interpolate(out, size=batch.shape[-2:], mode="bilinear", align_corners=False)
            if pad:
                out = out[..., :wh, :ww]
            for (y0, x0, y1, x1), scores in zip(chunk, out):
                total[:, y0:y1, x0:x1] += scores
                count[:, y0:y1, x0:x1] += 1
        # slide_windows covers every pixel, so count >= 1 everywhere
        return total / count


def scores_to_labels(scores: torch.Tensor, bg_threshold: float = 0.95, has_background: bool = True) -> torch.Tensor:
    """``H x W`` int64 labels from ``C x H x W`` class scores.

    With background: label 0 where the best score is strictly below ``bg_threshold``, else ``1 + argmax`` (a
    score exactly at the threshold is a class). Without: ``argmax`` (ZegCLIP's own protocol, no background
    class). The comparison runs in the scores' dtype, so a float32 score equal to float32(threshold) is a class.
    """
    if scores.dim() != 3:
        raise ValueError(f"expected C x H x W scores, got shape {tuple(scores.shape)}")
    best, index = scores.max(dim=0)
    if not has_background:
        return index.long()
    return torch.where(best >= bg_threshold, index.long() + 1, torch.zeros_like(index, dtype=torch.long))


def infer_scores(image: torch.Tensor, predict_fn: PredictFn, num_classes: int,
                 config: InferenceConfig | None = None, device: str | torch.device | None = None,
                 pad_to_crop: bool = False) -> torch.Tensor:
    """The whole test-time path for one image: resize the short side to ``config.short_side``, slide windows of
    ``config.crop_size`` / ``config.stride`` in batches of ``config.batch_size`` under ``config.dtype``, then
    resize the C x h x w scores back to the image's original H x W (bilinear). Returns C x H x W float32."""
    config = config or InferenceConfig()
    h, w = int(image.shape[-2]), int(image.shape[-1])
    dev = torch.device(device) if device is not None else image.device
    resized = resize_short_side(image.to(dev), config.short_side)
    scores = slide_inference(resized, predict_fn, num_classes, crop=config.crop_size, stride=config.stride,
                             batch_size=config.batch_size, dtype=config.dtype, device=dev, pad_to_crop=pad_to_crop)
    if tuple(scores.shape[-2:]) != (h, w):
        scores = F.interpolate(scores[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    return scores


def predict_labels(image: torch.Tensor, predict_fn: PredictFn, num_classes: int,
                   config: InferenceConfig | None = None, bg_threshold: float = 0.95, has_background: bool = True,
                   device: str | torch.device | None = None, **kwargs: Any) -> torch.Tensor:
    """:func:`infer_scores` then :func:`scores_to_labels`: an H x W int64 label map at the original size."""
    scores = infer_scores(image, predict_fn, num_classes, config, device=device, **kwargs)
    return scores_to_labels(scores, bg_threshold, has_background)
