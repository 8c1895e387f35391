"""Joint augmentation of (image, counterfactual image, class masks): mmseg's training pipeline as ZegCLIP uses it.

ZegCLIP (mmseg 0.24) trains with::

    Resize(img_scale=(2048, 512), ratio_range=(0.5, 2.0))   # keep_ratio
    RandomCrop(crop_size=512, cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    Normalize(CLIP mean/std)
    Pad(size=crop_size, pad_val=0, seg_pad_val=255)          # after Normalize: padded pixels are 0 = the mean

Crop first. mmseg resizes the whole image (up to 4x the pixels at ratio 2) and then keeps a 512 crop; here all
random parameters are drawn first - resize ratio, crop offsets, flip, photometric factors, in that order and
from torch's global generator exactly as the torchvision v2 pipeline this replaced drew them, so a seed gives
the same geometry and colours as before - and only the crop is produced:

- images: above ``WHOLE_RESIZE_MAX`` PIL resamples just the crop's source box to the crop size
  (``Image.resize(box=...)`` filters from the box's source coordinates, so the pixels are those of the whole
  resized image's window); below it torch's vectorised uint8 kernel resizes the whole pair faster than that; a
  JPEG shrunk to half or less decodes at a reduced DCT scale first (PIL ``draft``), when handed over undecoded;
- masks: decoded at the image's own size and never resized: the crop's pixels are picked by the indices torch's
  nearest-neighbour resize would use (:func:`nearest_index`), so they equal the resize-then-crop masks exactly,
  and a flip is the same pick reversed;
- the ``cat_max_ratio`` rule counts each tried window's category pixels from the source masks through those
  indices (two matrix-vector products per window) instead of on resized masks.

The image and its counterfactual go through every step together (the same geometry and the SAME photometric
draw: the counterfactual loss compares their class tokens, and independent colour draws would add a difference
between the pair that is not the object). ``tests/test_augment_distribution.py`` checks the geometry against the
previous pipeline (kept in ``benchmarks/bench_train.py``), seed by seed and as distributions.

Choices (and where they differ from mmseg):

- Resize: mmseg's keep-ratio rule. The base is the image scaled to fit ``scale`` = (long, short) = (2048, 512)
  keeping its aspect ratio, i.e. factor = min(2048 * r / long_side, 512 * r / short_side) with r uniform in
  ``ratio_range``; for any image less elongated than 4:1 that is "short side = 512 * r". Bilinear, antialiased
  when shrinking (mmseg/cv2 does not antialias; antialias is the better downscale).
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
- Photometric (``photometric``; ``photometric.py``): torchvision's ``RandomPhotometricDistort`` draws - the v2
  port of the SSD/mmdet PhotoMetricDistortion mmseg copies: each of brightness, contrast (before or after the
  colour steps, at random), saturation and hue applied with probability 0.5, ranges contrast/saturation 0.5-1.5,
  hue +-0.1 of the hue circle (mmseg: +-18 on OpenCV's 0-180 scale), brightness x0.875-1.125 (torchvision's
  multiplicative reading of mmseg's additive +-32), computed in float32. No channel permutation: mmseg has none,
  and a red bus turning blue would contradict colour words in the prompts CLIP reads.
- Normalize with ``mean``/``std`` in [0, 1] units (CLIP's by default), then pad bottom/right to ``crop_size``
  with 0 (the mean colour after normalisation, as mmseg pads after Normalize); ``ignore`` marks the padding.
- ``defer_pixels``: stop after decoding and the random draws: return the decoded uint8 images, the finished
  masks and ``ignore``, and ``pixels`` (resized size, crop, flip, photometric draw); :func:`finish_pixels` does
  the rest on a batch on the training GPU, in mmseg's order (whole-image resize, crop, flip, colour): the loader
  process is left with the JPEG and mask decoding.
- Determinism: with ``seed`` or ``generator`` the call runs inside ``torch.random.fork_rng`` seeded from it, so the
  same seed gives the same output and the caller's global RNG state is left untouched (CUDA generators are never
  touched).

Eval mode (``train=False``): keep-ratio resize to ``scale`` (ratio 1) and Normalize only; no randomness, no crop,
no padding (``ignore`` all False), output size follows the image's aspect ratio.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2._utils import query_size

from magicseg_models.config import AugmentConfig
from magicseg_models.training.photometric import Photometric, apply_photometric, draw_photometric

# OpenAI CLIP's preprocessing statistics, in [0, 1] units (ZegCLIP's img_norm_cfg is the same x 255).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

CROP_TRIES = 10  # mmseg RandomCrop's retry count for cat_max_ratio
# Up to this resize factor, resizing the whole pair with torch's vectorised uint8 kernel and cropping beats PIL
# resampling only the crop's box (measured on a 512-px pair: 0.7 vs 2 ms at 0.6x, 2.2 vs 2.5 ms at 1.6x,
# 3.6 vs 2.6 ms at 2x); both give the same window of the resized image to a level or two.
WHOLE_RESIZE_MAX = 1.75


def keep_ratio_size(height: int, width: int, scale: Sequence[int], ratio: float) -> tuple[int, int]:
    """mmcv.imrescale: fit (long, short) = int(scale * ratio) keeping the aspect ratio; sizes rounded half up."""
    long_cap, short_cap = int(max(scale) * ratio), int(min(scale) * ratio)
    factor = min(long_cap / max(height, width), short_cap / min(height, width))
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def draw_ratio(ratio_range: Sequence[float]) -> float:
    lo, hi = float(ratio_range[0]), float(ratio_range[1])
    return lo + float(torch.rand(())) * (hi - lo) if hi > lo else lo


def nearest_index(in_size: int, out_size: int) -> torch.Tensor:
    """Source index of each output pixel of torch's ``nearest`` resize (what torchvision uses for masks):
    ``floor(i * (in / out))`` in float32, as ATen computes it, clamped to the last pixel."""
    if in_size == out_size:
        return torch.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    index = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return torch.from_numpy(np.minimum(index, in_size - 1))


def largest_share(counts: torch.Tensor) -> float:
    """Largest category's share of the labelled pixels; 1.0 when fewer than two categories are present."""
    counts = counts[counts > 0]
    if counts.numel() < 2:  # mmseg: len(cnt) > 1 is part of the acceptance test
        return 1.0
    return float(counts.max()) / float(counts.sum())


def choose_crop(draw: Callable[[], tuple[int, int]], share: Callable[[int, int], float] | None,
                cat_max_ratio: float, tries: int = CROP_TRIES, fallback: str = "draw") -> tuple[int, int]:
    """mmseg's retry rule: the first of ``tries`` draws whose ``share`` is below ``cat_max_ratio``; when all fail,
    an unchecked extra draw (``fallback="draw"``, mmseg) or the draw with the smallest share (``"best"``).
    ``share=None``: the rule does not apply (one plain draw)."""
    top, left = draw()
    if share is None:
        return top, left
    best = None
    for attempt in range(tries):
        if attempt:
            top, left = draw()
        value = share(top, left)
        if value < cat_max_ratio:
            return top, left
        if best is None or value < best[0]:
            best = (value, top, left)
    return draw() if fallback == "draw" else (best[1], best[2])


def offset_drawer(height: int, width: int, h: int, w: int) -> Callable[[], tuple[int, int]]:
    def draw() -> tuple[int, int]:
        return int(torch.randint(0, height - h + 1, ())), int(torch.randint(0, width - w + 1, ()))
    return draw


class CatMaxRatioCrop(v2.Transform):
    """mmseg ``RandomCrop(crop_size, cat_max_ratio)`` on multi-label masks (see the module docstring).

    Defaults are ZegCLIP's (background ignored, mmseg's unchecked fallback draw). The class masks are channels
    ``first_class_channel:`` of the (single) ``tv_tensors.Mask`` among the inputs. :class:`JointAugment` applies
    the same rule (:meth:`choose`) without materialising the resized masks.
    """

    def __init__(self, size: int, cat_max_ratio: float = 0.75, count_background: bool = False,
                 first_class_channel: int = 1, tries: int = CROP_TRIES, fallback: str = "draw"):
        super().__init__()
        if fallback not in ("draw", "best"):
            raise ValueError(f"crop fallback must be 'draw' or 'best', got {fallback!r}")
        self.size = int(size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.count_background = count_background
        self.fallback = fallback
        self.first_class_channel = first_class_channel
        self.tries = tries

    def window_largest_share(self, classes: torch.Tensor, top: int, left: int, h: int, w: int) -> float:
        """Largest category's share of the crop's labelled pixels (dense masks)."""
        crop = classes[:, top:top + h, left:left + w]
        counts = crop.flatten(1).sum(1, dtype=torch.int64)
        if self.count_background:
            counts = torch.cat([counts, (~crop.any(0)).sum().reshape(1)])
        return largest_share(counts)

    def choose(self, height: int, width: int, share: Callable[[int, int], float] | None,
               has_masks: bool = True) -> tuple[int, int, int, int]:
        """(top, left, h, w) of the crop of a ``height`` x ``width`` image; ``share(top, left)`` as in
        :func:`choose_crop`, consulted only where the rule applies (a mask input and room to move)."""
        h, w = min(self.size, height), min(self.size, width)  # smaller sides are padded later, not cropped
        ruled = self.cat_max_ratio < 1.0 and has_masks and (height > h or width > w)
        top, left = choose_crop(offset_drawer(height, width, h, w), share if ruled else None, self.cat_max_ratio,
                                self.tries, self.fallback)
        return top, left, h, w

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = query_size(flat_inputs)
        masks = [x for x in flat_inputs if isinstance(x, tv_tensors.Mask)]
        classes = masks[0][self.first_class_channel:].as_subclass(torch.Tensor).bool() if masks else None
        h, w = min(self.size, height), min(self.size, width)
        top, left, h, w = self.choose(height, width, lambda t, l: self.window_largest_share(classes, t, l, h, w),
                                      bool(masks))
        return {"top": top, "left": left, "height": h, "width": w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(v2.functional.crop, inpt, **params)


class _WindowCounts:
    """Pixels of each category inside a window of the nearest-resized masks, from the source-size masks.

    Window pixel (i, j) is source pixel (rows[i], cols[j]), so a category's count is ``a^T M b`` with ``a``, ``b``
    how often each source row and column is picked: two matrix-vector products on the source masks instead of
    resizing all masks to the (up to 4x larger) resized size. Exact: integer sums below 2^24 in float32.
    """

    def __init__(self, masks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, count_background: bool):
        channels = [masks, (~masks.any(0, keepdim=True))] if count_background else [masks]
        self.planes = torch.cat(channels).float() if masks.shape[0] else None
        self.rows, self.cols = rows, cols
        self.height, self.width = masks.shape[1:]

    def share(self, top: int, left: int, h: int, w: int) -> float:
        if self.planes is None:  # no class: fewer than two categories whatever the window
            return 1.0
        a = torch.bincount(self.rows[top:top + h], minlength=self.height).float()
        b = torch.bincount(self.cols[left:left + w], minlength=self.width).float()
        return largest_share(torch.matmul(self.planes, b) @ a)


def _as_pil(x: Any) -> PILImage.Image:
    """A PIL image as given (still undecoded if it was: JPEG draft decoding needs that), else one made from a
    3xHxW tensor or an HxWx3 array."""
    if isinstance(x, PILImage.Image):
        return x
    if isinstance(x, torch.Tensor):
        if x.ndim != 3 or x.shape[0] != 3:
            raise ValueError(f"expected a 3xHxW image, got shape {tuple(x.shape)}")
        x = x.permute(1, 2, 0).numpy()
    x = np.ascontiguousarray(x, dtype=np.uint8)
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image array, got shape {tuple(x.shape)}")
    return PILImage.fromarray(x)


def _decoded(image: PILImage.Image, factor: float) -> PILImage.Image:
    """The image's RGB pixels; a JPEG about to shrink to half or less decodes at the smallest DCT scale still at
    least as large as the target (PIL ``draft``; a no-op for decoded images and other formats)."""
    if factor <= 0.5:
        image.draft("RGB", (math.ceil(image.width * factor), math.ceil(image.height * factor)))
    return image if image.mode == "RGB" else image.convert("RGB")


def _resized_whole(image: PILImage.Image, cf: PILImage.Image, size: tuple[int, int], factor: float) -> torch.Tensor:
    """Both images resized whole to ``size`` (h, w) by torch's uint8 antialiased bilinear kernel, 2x3xhxw in
    channels-last memory (the layout that kernel is vectorised for)."""
    pair = torch.from_numpy(np.stack([np.array(_decoded(x, factor)) for x in (image, cf)]))
    return torch.nn.functional.interpolate(pair.permute(0, 3, 1, 2), size=size, mode="bilinear", antialias=True)


def _resized_region(image: PILImage.Image, size: tuple[int, int], box: tuple[float, float, float, float],
                    factor: float) -> PILImage.Image:
    """``box`` (left, top, right, bottom, source pixels) resampled to ``size`` (w, h): the same pixels as the
    window of the whole image resized by ``factor`` (PIL filters from the box's source coordinates), without
    resizing the rest."""
    width = image.width
    image = _decoded(image, factor)
    k = image.width / width  # < 1 after a draft decode
    return image.resize(size, PILImage.BILINEAR, box=tuple(v * k for v in box))


def _planar(images: Sequence[PILImage.Image]) -> torch.Tensor:
    """RGB PIL images of one size -> uint8 Nx3xHxW, contiguous: the colour steps then run on planes, not on
    interleaved pixels (several times slower per op)."""
    planes = np.stack([np.asarray(band) for im in images for band in im.split()])  # PIL splits bands in C
    return torch.from_numpy(planes).view(len(images), 3, *planes.shape[1:])


def _pad_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """Zero-pad the last two dimensions bottom/right to ``size`` (mmseg ``Pad``); no copy when already there."""
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    out = x.new_zeros((*x.shape[:-2], size, size))
    out[..., :h, :w] = x
    return out


def normalisation(mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> tuple[torch.Tensor, ...]:
    """(scale, shift), each 3x1x1: ``(x / 255 - mean) / std`` as one multiply-add on [0, 255] floats."""
    mean, std = check_stats(mean, std)
    return (1.0 / (255.0 * torch.tensor(std))).view(3, 1, 1), (-torch.tensor(mean) / torch.tensor(std)).view(3, 1, 1)


def finish_pixels(batch: dict, device: torch.device | str | None = None, mean: Sequence[float] = CLIP_MEAN,
                  std: Sequence[float] = CLIP_STD) -> dict:
    """The rest of a ``defer_pixels`` batch's augmentation, on ``device`` (default: where the images are): per
    sample, mmseg's order on the decoded images - resize the whole image (bilinear, antialiased), crop, flip -
    then the photometric draw, normalisation and padding. Returns the batch with float32 ``image`` and
    ``counterfactual_image`` (Bx3xSxS) on ``device`` and without ``pixels``."""
    batch = dict(batch)
    params = batch.pop("pixels").cpu()  # they steer Python control flow: read them without a device sync
    device = torch.device(device) if device is not None else batch["image"][0].device
    size = batch["ignore"].shape[-1]
    scale, shift = (t.to(device) for t in normalisation(mean, std))
    out = torch.zeros((len(params), 2, 3, size, size), device=device)
    for i, values in enumerate(params.tolist()):
        new_h, new_w, top, left, h, w, flip = (int(v) for v in values[:7])
        pair = torch.stack([batch["image"][i], batch["counterfactual_image"][i]]).to(device, non_blocking=True)
        pair = v2.functional.resize(pair.float(), [new_h, new_w], antialias=True)[..., top:top + h, left:left + w]
        pair = pair.flip(-1) if flip else pair.contiguous()
        colour = Photometric.from_tensor(values[7:12])
        if not colour.identity:
            pair = apply_photometric(pair.clamp_(0, 255), colour)
        out[i, :, :, :h, :w] = pair.mul_(scale).add_(shift)
    batch["image"], batch["counterfactual_image"] = out[:, 0].contiguous(), out[:, 1].contiguous()
    return batch


def check_stats(mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """Normalisation mean and std as 3 floats each, in [0, 1] units (a 0-255 value fails in one line)."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    if len(mean) != 3 or len(std) != 3 or max(mean) > 1 or min(std) <= 0 or max(std) > 1:
        raise ValueError(f"mean/std must be 3 values in [0, 1] units (CLIP: {CLIP_MEAN}, {CLIP_STD}); "
                         f"got {mean}, {std}")
    return mean, std


class JointAugment:
    """Callable: (image, counterfactual image, masks) -> dict(image, counterfactual_image, masks, ignore).

    Inputs: images as uint8 3xHxW tensors, HxWx3 arrays or PIL images (same size; an undecoded PIL JPEG lets a
    strong downscale decode at reduced size); masks KxHxW bool (K may be 0).
    Output (train): ``image`` and ``counterfactual_image`` 3xSxS float32 normalised, ``masks`` KxSxS bool,
    ``ignore`` SxS bool (True on padding), S = ``cfg.crop_size``. Eval mode: HxW follows the resize, ignore all False.
    ``defer_pixels`` (train): ``image`` and ``counterfactual_image`` are the decoded uint8 3xH'xW' images (H'xW'
    smaller than HxW after a draft decode) and ``pixels`` (12 floats) the rest for :func:`finish_pixels`; masks
    and ignore are final. Picklable (DataLoader workers get a copy).
    """

    def __init__(self, cfg: AugmentConfig | None = None, mean: Sequence[float] = CLIP_MEAN,
                 std: Sequence[float] = CLIP_STD, train: bool = True, defer_pixels: bool = False):
        self.cfg = cfg or AugmentConfig()
        self.train = train
        self.defer_pixels = defer_pixels and train
        self.scale, self.shift = normalisation(mean, std)
        self.crop = CatMaxRatioCrop(self.cfg.crop_size, self.cfg.cat_max_ratio, self.cfg.cat_count_background,
                                    fallback=self.cfg.crop_fallback)

    def __call__(self, image: Any, counterfactual_image: Any, masks: Any, *, seed: int | None = None,
                 generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        image, cf = _as_pil(image), _as_pil(counterfactual_image)
        if image.size != cf.size:
            raise ValueError(f"image {image.height}x{image.width} and counterfactual {cf.height}x{cf.width} "
                             f"differ in size")
        masks = torch.as_tensor(masks, dtype=torch.bool)
        if masks.ndim != 3 or tuple(masks.shape[1:]) != (image.height, image.width):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not match image {image.height}x{image.width}")
        if seed is None and generator is not None:
            seed = int(torch.randint(0, 2**63 - 1, (), generator=generator))
        run = self._train if self.train else self._eval
        if seed is None:
            return run(image, cf, masks)
        # v2-era draws come from torch's global generator: fork it so the caller's state is left untouched
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(int(seed) & (2**64 - 1))
            return run(image, cf, masks)

    def _train(self, image: PILImage.Image, cf: PILImage.Image, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        height, width = image.height, image.width
        # the random draws in the order the v2 pipeline made them: resize ratio, crop offsets, flip, photometric
        new_h, new_w = keep_ratio_size(height, width, cfg.scale, draw_ratio(cfg.ratio_range))
        rows, cols = nearest_index(height, new_h), nearest_index(width, new_w)
        counts = None

        def share(top: int, left: int) -> float:
            nonlocal counts
            if counts is None:  # built on the first checked draw only: many crops need no check
                counts = _WindowCounts(masks, rows, cols, cfg.cat_count_background)
            return counts.share(top, left, min(cfg.crop_size, new_h), min(cfg.crop_size, new_w))

        top, left, h, w = self.crop.choose(new_h, new_w, share)
        flip = bool(torch.rand(1) < cfg.flip_prob)
        colour = draw_photometric() if cfg.photometric else None

        rows, cols = rows[top:top + h], cols[left:left + w]
        if flip:
            cols = cols.flip(0)
        size = cfg.crop_size
        out_masks = _pad_to(masks.index_select(1, rows).index_select(2, cols), size)
        ignore = torch.ones((size, size), dtype=torch.bool)
        ignore[:h, :w] = False
        factor = max(new_h / height, new_w / width)
        if self.defer_pixels:  # the decoded images and what finish_pixels needs to do the rest
            geometry = torch.tensor([new_h, new_w, top, left, h, w, flip], dtype=torch.float32)
            pair = _planar([_decoded(x, factor) for x in (image, cf)])
            return {"image": pair[0], "counterfactual_image": pair[1], "masks": out_masks, "ignore": ignore,
                    "pixels": torch.cat([geometry, (colour or Photometric()).to_tensor()])}
        if factor <= WHOLE_RESIZE_MAX:
            pair = _resized_whole(image, cf, (new_h, new_w), factor)[..., top:top + h, left:left + w]
            pair = (pair.flip(-1) if flip else pair).contiguous()
        else:
            fy, fx = height / new_h, width / new_w
            box = (left * fx, top * fy, (left + w) * fx, (top + h) * fy)
            crops = [_resized_region(x, (w, h), box, factor) for x in (image, cf)]
            if flip:
                crops = [c.transpose(PILImage.Transpose.FLIP_LEFT_RIGHT) for c in crops]
            pair = _planar(crops)
        pair = pair.float()
        if colour is not None:
            pair = apply_photometric(pair, colour)
        out = _pad_to(pair.mul_(self.scale).add_(self.shift), size)  # 0 after normalisation: the mean colour
        return {"image": out[0], "counterfactual_image": out[1], "masks": out_masks, "ignore": ignore}

    def _eval(self, image: PILImage.Image, cf: PILImage.Image, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = image.height, image.width
        new_h, new_w = keep_ratio_size(height, width, self.cfg.scale, 1.0)
        box = (0.0, 0.0, float(width), float(height))
        factor = max(new_h / height, new_w / width)
        crops = [_resized_region(x, (new_w, new_h), box, factor) for x in (image, cf)]
        pair = _planar(crops).float().mul_(self.scale).add_(self.shift)
        out_masks = masks.index_select(1, nearest_index(height, new_h)).index_select(2, nearest_index(width, new_w))
        return {"image": pair[0], "counterfactual_image": pair[1], "masks": out_masks,
                "ignore": torch.zeros((new_h, new_w), dtype=torch.bool)}
