"""mmseg's PhotoMetricDistortion as torchvision's ``RandomPhotometricDistort`` draws it, applied in float32.

:func:`draw_photometric` consumes torch's global generator exactly as ``RandomPhotometricDistort.make_params``
does (one ``rand(1)`` per step, a uniform factor when it fires, the contrast order, then the channel-permutation
draw, whose permutation is discarded: mmseg has none), so a seed picks the same factors as the v2 transform.

:func:`apply_photometric` runs the steps on float32 images in [0, 255] of shape (..., 3, H, W), all images of a
call with the same factors (an image and its counterfactual stacked). Each step is torchvision's uint8 kernel
without its rounding: the same blends with the same grey weights, clamped to [0, 255] after every step as the
uint8 kernels saturate, but not truncated to integers in between (torchvision's uint8 path truncates after each
step, which darkens by up to a level per step). The hue step is the exact HSV rotation written with the
closed-form HSV -> RGB (each channel ``min + (max - min) * clamp(triangle wave of the hue, 0, 1)``), a
fraction of torchvision's tensor ops for the same result to 1e-3 levels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

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


    def to_tensor(self) -> torch.Tensor:
        """(brightness, contrast, saturation, hue, contrast_before), NaN for a skipped step: batches stack it."""
        values = (self.brightness, self.contrast, self.saturation, self.hue)
        return torch.tensor([math.nan if v is None else v for v in values] + [float(self.contrast_before)])

    @classmethod
    def from_tensor(cls, values: Sequence[float]) -> "Photometric":
        factors = [None if math.isnan(v) else float(v) for v in values[:4]]
        return cls(*factors, contrast_before=bool(values[4]))

    @property
    def identity(self) -> bool:
        return all(v is None for v in (self.brightness, self.contrast, self.saturation, self.hue))


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
    # the grey image's mean is the grey of the channel means (grey is linear): no grey plane needed
    means = images.mean(dim=(-2, -1), keepdim=True)
    weights = torch.tensor(GREY, dtype=images.dtype, device=images.device).view(3, 1, 1)
    return _blend_(images, (means * weights).sum(dim=-3, keepdim=True), factor)


def _hue(images: torch.Tensor, factor: float) -> torch.Tensor:
    # elementwise only: on the CPU, torch's aminmax over the 3 channels, where() and remainder() each cost
    # several times a multiply-add over the image
    r, g, b = images.unbind(-3)
    high, low = torch.maximum(torch.maximum(r, g), b), torch.minimum(torch.minimum(r, g), b)
    span = high - low
    red = (high == r).float()
    green = (high == g).float().mul_(1.0 - red)
    blue = 1.0 - red - green
    # the hue in sixths of the circle as torchvision's rgb -> hsv computes it (grey pixels: 0), then shifted
    sector = (g - b).mul_(red).add_((b - r).mul_(green)).add_((r - g).mul_(blue))
    sector.div_(span.clamp(min=1e-12)).add_(green.mul_(2.0).add_(blue.mul_(4.0))).add_(6.0 * factor)
    sector.sub_(torch.floor(sector / 6.0).mul_(6.0))  # into [0, 6)
    # hsv -> rgb with v = high, v * s = span: channel = low + span * (triangle wave of the hue)
    out = torch.empty_like(images)
    for channel, (centre, sign) in enumerate(((3.0, 1.0), (2.0, -1.0), (4.0, -1.0))):
        wave = (sector - centre).abs_()
        wave = wave.sub_(1.0) if sign > 0 else wave.neg_().add_(2.0)
        torch.addcmul(low, wave.clamp_(0, 1), span, out=out.select(-3, channel))
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
