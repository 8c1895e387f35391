"""mmseg's PhotoMetricDistortion as torchvision's ``RandomPhotometricDistort`` draws it, applied in float32.

:func:`draw_photometric` consumes torch's global generator exactly as ``RandomPhotometricDistort.make_params``
does (one ``rand(1)`` per step, a uniform factor when it fires, the contrast order, then the channel-permutation
draw, whose permutation is discarded: mmseg has none), so a seed picks the same factors as the v2 transform.

:func:`apply_photometric` runs the steps on float32 images in [0, 255] of shape (..., 3, H, W), all images of a
call with the same factors (an image and its counterfactual stacked). Each step is torchvision's uint8 kernel
without its rounding: the same blends with the same grey weights, clamped to [0, 255] after every step as the
uint8 kernels saturate, but not truncated to integers in between (torchvision's uint8 path truncates after each
step, which darkens by up to a level per step). The hue step is the exact HSV rotation written with the
closed-form HSV -> RGB (each channel ``max - (max - min) * clamp(min(k, 4 - k), 0, 1)``), a quarter of
torchvision's tensor ops for the same result to 1e-3 levels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

BRIGHTNESS = (0.875, 1.125)  # torchvision's multiplicative reading of mmseg's additive +-32
CONTRAST = (0.5, 1.5)
SATURATION = (0.5, 1.5)
HUE = (-0.1, 0.1)  # of the hue circle: mmseg's +-18 on OpenCV's 0-180 scale
PROB = 0.5
GREY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


@dataclass(frozen=True)
class Photometric:
    """One draw: a factor per step, or None where the step is skipped."""

    brightness: float | None = None
    contrast: float | None = None
    saturation: float | None = None
    hue: float | None = None
    contrast_before: bool = True


def _maybe(lo: float, hi: float) -> float | None:
    return float(torch.empty(1).uniform_(lo, hi).item()) if torch.rand(1) < PROB else None


def draw_photometric() -> Photometric:
    brightness, contrast = _maybe(*BRIGHTNESS), _maybe(*CONTRAST)
    saturation, hue = _maybe(*SATURATION), _maybe(*HUE)
    contrast_before = bool(torch.rand(()) < 0.5)
    if torch.rand(1) < PROB:  # the channel permutation's draw: consumed so later draws stay in step, not applied
        torch.randperm(3)
    return Photometric(brightness, contrast, saturation, hue, contrast_before)


def _grey(images: torch.Tensor) -> torch.Tensor:
    r, g, b = images.unbind(-3)
    return (r * GREY[0]).add_(g, alpha=GREY[1]).add_(b, alpha=GREY[2]).unsqueeze_(-3)


def _blend_(images: torch.Tensor, other: torch.Tensor, factor: float) -> torch.Tensor:
    return images.mul_(factor).add_(other, alpha=1.0 - factor).clamp_(0, 255)


def _contrast_(images: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend_(images, _grey(images).mean(dim=(-3, -2, -1), keepdim=True), factor)


def _hue(images: torch.Tensor, factor: float) -> torch.Tensor:
    low, high = torch.aminmax(images, dim=-3)
    span = high - low
    safe = torch.where(span > 0, span, torch.ones_like(span))
    r, g, b = images.unbind(-3)
    # the hue in sixths of the circle, [0, 6), as torchvision's rgb -> hsv computes it
    sector = torch.where(high == r, (g - b).div_(safe),
                         torch.where(high == g, (b - r).div_(safe).add_(2), (r - g).div_(safe).add_(4)))
    sector.add_(6.0 * factor).remainder_(6.0)
    out = torch.empty_like(images)
    for channel, offset in enumerate((5.0, 3.0, 1.0)):
        k = (sector + offset).remainder_(6.0)
        torch.minimum(k, 4.0 - k, out=k).clamp_(0, 1)
        torch.sub(high, k.mul_(span), out=out.select(-3, channel))
    return out


def apply_photometric(images: torch.Tensor, params: Photometric) -> torch.Tensor:
    """``images``: float32 (..., 3, H, W) in [0, 255], modified in place where possible; returns the result."""
    if params.brightness is not None:
        images = images.mul_(params.brightness).clamp_(0, 255)
    if params.contrast is not None and params.contrast_before:
        images = _contrast_(images, params.contrast)
    if params.saturation is not None:
        images = _blend_(images, _grey(images), params.saturation)
    if params.hue is not None:
        images = _hue(images, params.hue)
    if params.contrast is not None and not params.contrast_before:
        images = _contrast_(images, params.contrast)
    return images
