"""Joint augmentation of (image, counterfactual image, class masks): mmseg's training pipeline as ZegCLIP uses it.

ZegCLIP (mmseg 0.24) trains with::

    Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))   # keep_ratio
    RandomCrop(crop_size=512, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    Normalize(CLIP mean/std)
    Pad(size=crop_size, pad_val=0, seg_pad_val=255)          # after Normalize: padded pixels are 0 = the mean

Here every step is a torchvision transforms v2 transform in ONE ``v2.Compose`` call over three tv_tensors: the
image and the counterfactual image (``tv_tensors.Image``) and the class masks (one ``tv_tensors.Mask``). v2 draws
each step's random parameters once per call and applies them to every input, so the two images and the masks
always get the same resize, crop and flip; masks use nearest-neighbour resizing; photometric and Normalize
touch Images only, so masks stay binary.

Choices (and where they differ from mmseg):

- Resize: mmseg's keep-ratio rule. The base is the image scaled to fit ``scale`` = (long, short) = (2048, 512)
  keeping its aspect ratio, i.e. factor = min(2048 * r / long_side, 512 * r / short_side) with r uniform in
  ``ratio_range``; for any image less elongated than 4:1 that is "short side = 512 * r". Bilinear with antialias
  for images (mmseg/cv2 does not antialias; antialias is the better downscale and torchvision's default).
- Crop: mmseg's rule on the multi-label masks (no label map is built, so overlapping instances of different
  classes each count for their class): draw a crop of ``min(crop_size, side)`` uniformly; accept it when at
  least two categories are present and none covers ``cat_max_ratio`` or more of the crop's labelled pixels;
  otherwise draw again, up to 10 draws. Defaults are ZegCLIP's: its datasets load with ``reduce_zero_label``,
  which turns background into the ignored label 255, so only class pixels count (``cat_count_background``
  false: a single-class image never passes, and its crop is a plain random one), and when all 10 draws fail the
  crop is an 11th, unchecked draw (``crop_fallback="draw"``). The project's variant counts pixels of no class as
  one more category (``cat_count_background``: crops that are more than 75 % empty background are rejected too)
  and keeps the draw with the smallest largest-category share (``crop_fallback="best"``).
- Flip: horizontal with ``flip_prob``.
- Photometric (``photometric``): torchvision's ``RandomPhotometricDistort`` - the v2 port of the same SSD/mmdet
  PhotoMetricDistortion mmseg copies: each of brightness, contrast (before or after the colour steps, at random),
  saturation and hue applied with probability 0.5, ranges contrast/saturation 0.5-1.5, hue +-0.1 of the hue
  circle (mmseg: +-18 on OpenCV's 0-180 hue scale), brightness x0.875-1.125 (torchvision's multiplicative
  reading of mmseg's additive +-32). Its random channel permutation is switched off: mmseg has none, and a
  red bus turning blue would contradict colour words in the prompts CLIP reads.
  The image and its counterfactual get the SAME photometric parameters (they are two Images in the same call):
  the counterfactual loss compares their class tokens, and independent colour draws would add a difference
  between the pair that is not the object, which the loss would then learn to see.
- Normalize with ``mean``/``std`` in [0, 1] units (CLIP's by default), then pad bottom/right to ``crop_size``
  with 0 (the mean colour after normalisation, as mmseg pads after Normalize). Padding is tracked by a
  "valid" channel stacked in front of the class masks (1 everywhere, padded with 0): ``ignore = ~valid``.
- Determinism: v2 transforms draw from torch's global CPU generator; with ``seed`` or ``generator`` the call runs
  inside ``torch.random.fork_rng`` seeded from it, so the same seed gives the same output and the caller's
  global RNG state is left untouched (CUDA generators are never touched).

Eval mode (``train=False``): keep-ratio resize to ``scale`` (ratio 1) and Normalize only; no randomness, no crop,
no padding (``ignore`` all False), output size follows the image's aspect ratio.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2._utils import query_size

from magicseg_models.config import AugmentConfig

# OpenAI CLIP's preprocessing statistics, in [0, 1] units (ZegCLIP's img_norm_cfg is the same x 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CROP_TRIES = 10  # mmseg RandomCrop's retry count for cat_max_ratio


class RandomResizeKeepRatio(v2.Transform):
    """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)`` as a v2 transform."""

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0),
                 antialias: bool = True):
        super().__init__()
        self.scale = (max(scale), min(scale))  # (long, short): mmseg's rule does not care about orientation
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.antialias = antialias

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        lo, hi = self.ratio_range
        ratio = lo + float(torch.rand(())) * (hi - lo) if hi > lo else lo
        # mmcv.imrescale: fit (long, short) = int(scale * ratio) keeping the aspect ratio; sizes rounded half up
        long_cap, short_cap = int(self.scale[0] * ratio), int(self.scale[1] * ratio)
        factor = min(long_cap / max(height, width), short_cap / min(height, width))
        return {"size": [max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        # the Mask kernel ignores interpolation and always uses nearest: masks stay binary
        return self._call_kernel(F.resize, inpt, size=params["size"], interpolation=v2.InterpolationMode.BILINEAR,
                                 antialias=self.antialias)


class CatMaxRatioCrop(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)`` on multi-label masks (see the module docstring).

    The class masks are channels ``first_class_channel:`` of the (single) ``tv_tensors.Mask`` among the inputs.
    """

    def __init__(self, size: int, cat_max_ratio: float = 0.75, count_background: bool = True,
                 first_class_channel: int = 1, tries: int = CROP_TRIES, fallback: str = "best"):
        super().__init__()
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.count_background = count_background
        self.fallback = fallback  # all draws failed: "draw" = mmseg's unchecked next draw, "best" = the best one
        self.first_class_channel = first_class_channel
        self.tries = tries

    def _largest_share(self, classes: torch.Tensor, top: int, left: int, h: int, w: int) -> float:
        """Largest category's share of the crop's labelled pixels; 1.0 when fewer than two categories are there."""
        crop = classes[:, top:top + h, left:left + w]
        counts = crop.flatten(1).sum(1, dtype=torch.int64)
        if self.count_background:
            counts = torch.cat([counts, (~crop.any(0)).sum().reshape(1)])
        counts = counts[counts > 0]
        if counts.numel() < 2:  # mmseg: len(cnt) > 1 is part of the acceptance test
            return 1.0
        return float(counts.max()) / float(counts.sum())

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        h, w = min(self.size, height), min(self.size, width)  # smaller sides are padded later, not cropped

        def draw() -> tuple[int, int]:
            return (int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ())))

        top, left = draw()
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        if self.cat_max_ratio < 1.0 and masks and (height > h or width > w):
            classes = masks[0][self.first_class_channel:].as_subclass(torch.Tensor).bool()
            best = None
            for attempt in range(self.tries):
                if attempt:
                    top, left = draw()
                share = self._largest_share(classes, top, left, h, w)
                if share < self.cat_max_ratio:
                    best = (share, top, left)
                    break
                if best is None or share < best[0]:
                    best = (share, top, left)
            share, top, left = best
            if share >= self.cat_max_ratio and self.fallback == "draw":
                top, left = draw()
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(F.crop, inpt, **params)


class PadTo(v2.Transform):
    """Pad bottom/right up to ``size`` x ``size`` with 0 (mmseg ``Pad(size=crop_size)``, after Normalize)."""

    def __init__(self, size: int):
        super().__init__()
        self.size = int(size)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        return {"padding": [0, 0, max(0, self.size - width), max(0, self.size - height)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not any(params["padding"]):
            return inpt
        return self._call_kernel(F.pad, inpt, padding=params["padding"], fill=0)


class MMSegPhotometricDistort(v2.RandomPhotometricDistort):
    """torchvision's port of PhotoMetricDistortion with mmseg's ranges and without the channel permutation."""

    def __init__(self) -> None:
        super().__init__(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=(-0.1, 0.1),
                         p=0.5)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        params = super().make_params(flat_inputs)
        params["channel_permutation"] = None
        return params


def _as_image(x: Any) -> tv_tensors.Image:
    if isinstance(x, PILImage.Image):
        x = F.pil_to_tensor(x.convert("RGB"))
    elif isinstance(x, np.ndarray):  # HxWx3, as PIL and decoders hand them out
        x = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image, got shape {tuple(x.shape)}")
    return tv_tensors.Image(x)


def _check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3 or max(mean) > 1 or min(std) <= 0 or max(std) > 1:
        raise ValueError(f"mean/std must be 3 values in [0, 1] units (CLIP: {CLIP_MEAN}, {CLIP_STD}); "
                         f"got {mean}, {std}")
    return mean, std


class JointAugment:
    """Callable: (image, counterfactual image, masks) -> dict(image, counterfactual_image, masks, ignore).

    Inputs: images as uint8 3xHxW tensors, HxWx3 arrays or PIL images (same size); masks KxHxW bool (K may be 0).
    Output (train): ``image`` and ``counterfactual_image`` 3xSxS float32 normalised, ``masks`` KxSxS bool,
    ``ignore`` SxS bool (True on padding), S = ``cfg.crop_size``. Eval mode: HxW follows the resize, ignore all False.
    Picklable (DataLoader workers get a copy).
    """

    def __init__(self, cfg: AugmentConfig | None = None, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, train: bool = True):
        self.cfg = cfg or AugmentConfig()
        self.train = train
        mean, std = _check_stats(mean, std)
        cfg = self.cfg
        to_float = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
                    v2.Normalize(mean=mean, std=std)]
        if train:
            steps = [RandomResizeKeepRatio(cfg.scale, cfg.ratio_range),
                     CatMaxRatioCrop(cfg.crop_size, cfg.cat_max_ratio, cfg.cat_count_background,
                                     fallback=cfg.crop_fallback),
                     v2.RandomHorizontalFlip(p=cfg.flip_prob)]
            if cfg.photometric:
                steps.append(MMSegPhotometricDistort())
            steps += to_float + [PadTo(cfg.crop_size)]
        else:
            steps = [RandomResizeKeepRatio(cfg.scale, (1.0, 1.0))] + to_float
        self.transform = v2.Compose(steps)

    def __call__(self, image: Any, counterfactual_image: Any, masks: Any, *, seed: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image, cf = _as_image(image), _as_image(counterfactual_image)
        if image.shape != cf.shape:
            raise ValueError(f"image {tuple(image.shape)} and counterfactual {tuple(cf.shape)} differ in size")
        masks = torch.as_tensor(masks, dtype=torch.bool)
        if masks.ndim != 3 or masks.shape[1:] != image.shape[1:]:
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not match image {tuple(image.shape)}")
        # channel 0 = valid pixels (becomes 0 where PadTo pads); uint8 because resize kernels take no bool
        stacked = torch.cat([torch.ones((1, *masks.shape[1:]), dtype=torch.bool), masks]).to(torch.uint8)
        inputs = (image, cf, tv_tensors.Mask(stacked))
        if seed is None and generator is not None:
            seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        if seed is None:
            out_image, out_cf, out_masks = self.transform(*inputs)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(int(seed) & (2**64 - 1))
                out_image, out_cf, out_masks = self.transform(*inputs)
        out_masks = out_masks.as_subclass(torch.Tensor)
        return {"image": out_image.as_subclass(torch.Tensor), "counterfactual_image": out_cf.as_subclass(torch.Tensor),
                "masks": out_masks[1:].bool(), "ignore": out_masks[0] == 0}
