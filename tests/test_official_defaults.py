"""The zegclip-vitb16 defaults compute what the official ZegCLIP code (mmseg 0.24) computes, in the three places
where the project has its own variants (zegclip-vitb16-plus):

- the CLS input: ZegCLIP's ``VPTCLIPVisionTransformer.forward`` puts CLIP's class embedding in the CLS slot AND adds
  it to the CLS position embedding, so it enters twice;
- the crop: mmseg's ``RandomCrop(cat_max_ratio=0.75)`` on label maps loaded with ``reduce_zero_label`` (background
  becomes the ignored label 255), 10 checked draws, then an 11th unchecked one;
- padded pixels: ``Pad(seg_pad_val=255)`` and ``SegLossPlus``, whose targets are ``label == class``, so a padded
  pixel is a negative of every class in the focal term (a per-mask mean over all pixels) and in the dice term.

Each official computation is written out here from its definition (numpy / plain loops), never by calling the code
under test. ``python -m tests.test_official_defaults`` prints the measured share of object-free crops under both
crop rules (the figures in docs/training.md).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision import tv_tensors

from magicseg_models.config import AugmentConfig, LossConfig, TrainConfig, load_config
from magicseg_models.training.augment import CatMaxRatioCrop, JointAugment
from magicseg_models.training.losses import MagicSegLoss
from magicseg_models.zegclip import build_zegclip

OFFICIAL = load_config("train", "zegclip-vitb16")


def test_zegclip_vitb16_and_the_model_defaults_are_the_official_settings():
    # the preset states them, and the typed defaults (what any other preset inherits) agree
    defaults = TrainConfig()
    for config in (OFFICIAL, defaults):
        assert config.model.double_class_embedding is True
        assert config.augment.cat_count_background is False and config.augment.crop_fallback == "draw"
        assert config.loss.padding == "negative"
    plus = load_config("train", "zegclip-vitb16-plus")
    assert not plus.model.double_class_embedding and plus.loss.padding == "ignore"
    assert plus.augment.cat_count_background and plus.augment.crop_fallback == "best"


# --------------------------------------------------------------------------------------------- CLS input
def _first_layer_input(encoder, images: torch.Tensor) -> torch.Tensor:
    """What enters CLIP's ``pre_layrnorm`` (tokens + position embeddings), captured with a hook."""
    seen = {}
    handle = encoder.clip.pre_layrnorm.register_forward_hook(lambda m, args, out: seen.setdefault("x", args[0]))
    try:
        with torch.no_grad():
            encoder(images)
    finally:
        handle.remove()
    return seen["x"]


def _zegclip_tokens(encoder, images: torch.Tensor) -> torch.Tensor:
    """ZegCLIP's forward up to ``ln_pre``, written out: conv1 -> tokens; x = [ce, tokens]; pos[0] += ce;
    the grid positions bilinearly resized (pretrained grid -> image_size grid at load, then to the input grid)."""
    emb = encoder.clip.embeddings
    ce = emb.class_embedding.detach()
    pos = emb.position_embedding.weight.detach()
    with torch.no_grad():
        x = emb.patch_embedding(images)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h * w).permute(0, 2, 1)
    x = torch.cat([ce + torch.zeros(b, 1, c), x], dim=1)
    g = int(math.isqrt(pos.shape[0] - 1))
    grid = pos[1:].reshape(1, g, g, c).permute(0, 3, 1, 2)
    base = encoder.base_grid
    grid = F.interpolate(grid, size=(base, base), mode="bilinear")  # done once at load in the official code
    spatial = F.interpolate(grid, size=(h, w), mode="bilinear").reshape(1, c, h * w).permute(0, 2, 1)
    cls_pos = pos[0] + ce
    return x + torch.cat([cls_pos.reshape(1, 1, c), spatial], dim=1)


def test_default_cls_input_carries_the_class_embedding_twice_as_zegclip():
    model_config = load_config("train", "tiny").model
    assert model_config.double_class_embedding == OFFICIAL.model.double_class_embedding is True
    encoder = build_zegclip(model_config, "cpu").model.encoder.eval()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = _first_layer_input(encoder, images)
    official = _zegclip_tokens(encoder, images)
    torch.testing.assert_close(ours, official, atol=1e-6, rtol=1e-6)

    # the project's variant adds it once, as CLIP does: the CLS row differs by exactly one class embedding
    once = build_zegclip(model_config.model_copy(update={"double_class_embedding": False}), "cpu").model.encoder
    once_input = _first_layer_input(once.eval(), images)
    ce = encoder.clip.embeddings.class_embedding.detach()
    torch.testing.assert_close(once_input[:, 0], official[:, 0] - ce, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(once_input[:, 1:], official[:, 1:])
    assert (ce.norm() > 0.1).item()  # a difference a test can see


# ------------------------------------------------------------------------------------------------ crop rule
def _label_map(masks: torch.Tensor, reduce_zero_label: bool) -> np.ndarray:
    """Disjoint class masks -> an mmseg label map: class k is k + 1 in the file (0 = background); with
    ``reduce_zero_label`` (ZegCLIP's loading) 0 becomes 255 and every class shifts down by one."""
    label = np.zeros(masks.shape[1:], dtype=np.int64)
    for k, mask in enumerate(masks.numpy()):
        label[mask] = k + 1
    if reduce_zero_label:
        label = np.where(label == 0, 255, label - 1)
    return label


def _mmseg_accepts(label: np.ndarray, top: int, left: int, size: int, ratio: float = 0.75) -> bool:
    """mmseg RandomCrop's test: labels, counts of the crop without 255; accept if > 1 label and max/sum < ratio."""
    crop = label[top:top + size, left:left + size]
    labels, counts = np.unique(crop, return_counts=True)
    counts = counts[labels != 255]
    return len(counts) > 1 and counts.max() / counts.sum() < ratio


def _mmseg_crop(label: np.ndarray, size: int, draw, ratio: float = 0.75) -> tuple[int, int]:
    """mmseg RandomCrop.__call__: a draw, then up to 10 checks, each failed one followed by a new draw."""
    top, left = draw()
    for _ in range(10):
        if _mmseg_accepts(label, top, left, size, ratio):
            break
        top, left = draw()
    return top, left


def _scenes() -> list[torch.Tensor]:
    """Disjoint class masks on 48 x 48: one object; two objects side by side; a small object beside a big one."""
    one = torch.zeros(1, 48, 48, dtype=torch.bool)
    one[0, 10:30, 12:28] = True
    two = torch.zeros(2, 48, 48, dtype=torch.bool)
    two[0, 5:40, 2:22] = True
    two[1, 8:44, 24:46] = True
    lopsided = torch.zeros(2, 48, 48, dtype=torch.bool)
    lopsided[0, 0:48, 0:40] = True
    lopsided[1, 20:24, 42:46] = True
    return [one, two, lopsided]


def _ours_crop(masks: torch.Tensor, size: int, seed: int, **options) -> tuple[int, int]:
    crop = CatMaxRatioCrop(size, 0.75, **options)
    stacked = torch.cat([torch.ones(1, *masks.shape[1:], dtype=torch.bool), masks]).to(torch.uint8)
    inputs = [tv_tensors.Image(torch.zeros(3, *masks.shape[1:], dtype=torch.uint8)), tv_tensors.Mask(stacked)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        params = crop.make_params(inputs)
    return params["top"], params["left"]


def _torch_draws(seed: int, height: int, width: int, size: int):
    """The crop offsets as the transform draws them (top, then left, uniform), from the same seed."""
    generator = torch.Generator().manual_seed(seed)

    def draw() -> tuple[int, int]:
        return (int(torch.randint(0, height - size + 1, (), generator=generator)),
                int(torch.randint(0, width - size + 1, (), generator=generator)))

    return draw


def test_crop_acceptance_is_mmsegs_with_background_ignored_or_counted():
    # every window of every scene: ours accepts exactly when mmseg does, on the label map it would see
    defaults = AugmentConfig()
    for masks in _scenes():
        for reduce_zero_label, count_background in ((True, defaults.cat_count_background), (False, True)):
            label = _label_map(masks, reduce_zero_label)
            crop = CatMaxRatioCrop(24, 0.75, count_background)
            classes = masks.bool()
            for top in range(0, 25, 3):
                for left in range(0, 25, 3):
                    ours = crop.window_largest_share(classes, top, left, 24, 24) < 0.75
                    assert ours == _mmseg_accepts(label, top, left, 24), (reduce_zero_label, top, left)


def test_default_crop_is_mmsegs_crop_draw_for_draw():
    # the same random offsets in the same order: the default rule picks the crop mmseg picks, including the 11th
    # unchecked draw when all 10 fail (the one-object scene never passes: its crop is a plain random one)
    defaults = AugmentConfig()
    options = {"count_background": defaults.cat_count_background, "fallback": defaults.crop_fallback}
    fallbacks = 0
    for masks in _scenes():
        label = _label_map(masks, reduce_zero_label=True)
        for seed in range(30):
            official = _mmseg_crop(label, 24, _torch_draws(seed, 48, 48, 24))
            assert _ours_crop(masks, 24, seed, **options) == official, seed
            fallbacks += not _mmseg_accepts(label, *official, 24)
    assert fallbacks >= 30  # the fallback path was exercised (every one-object crop at least)
    # the project's variant differs: with background counted a one-object crop must hold some background and
    # some object, and the best of the 10 draws is kept
    one = _scenes()[0]
    plus = [_ours_crop(one, 24, seed, count_background=True, fallback="best") for seed in range(30)]
    official = [_mmseg_crop(_label_map(one, True), 24, _torch_draws(seed, 48, 48, 24)) for seed in range(30)]
    assert plus != official
    assert all(_mmseg_accepts(_label_map(one, False), top, left, 24) for top, left in plus)


def _ellipse_scene(rng: np.random.Generator, size: int, lo: float, hi: float) -> torch.Tensor:
    """One elliptic object covering a log-uniform share in [lo, hi] of a square image, anywhere inside it."""
    frac = math.exp(rng.uniform(math.log(lo), math.log(hi)))
    aspect = math.exp(rng.uniform(-0.7, 0.7))
    a = min(math.sqrt(frac * size * size / math.pi * aspect), size / 2)
    b = min(frac * size * size / math.pi / a, size / 2)
    cx, cy = rng.uniform(a, size - a), rng.uniform(b, size - b)
    yy, xx = np.mgrid[0:size, 0:size]
    return torch.from_numpy((((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1)[None])


def object_free_share(n: int, size: int = 64, lo: float = 0.01, hi: float = 0.05, seed: int = 0,
                      **rule) -> float:
    """Share of training crops with no object pixel: one-object images, the zegclip-vitb16 augmentation scaled
    down by ``512 / size`` (resize ratio 0.5-2 of the short side, crop = the image's side, no flip/colour)."""
    config = OFFICIAL.augment.model_copy(update={"crop_size": size, "scale": (4 * size, size), "flip_prob": 0.0,
                                                 "photometric": False, **rule})
    augment = JointAugment(config)
    rng = np.random.default_rng(seed)
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    empty = 0
    for i in range(n):
        out = augment(image, image, _ellipse_scene(rng, size, lo, hi), seed=i)
        empty += not out["masks"].any()
    return empty / n


def test_background_ignored_crops_often_miss_a_small_object_and_the_variant_rarely_does():
    official = object_free_share(300)
    plus = object_free_share(300, cat_count_background=True, crop_fallback="best")
    assert official > 0.06 and plus < 0.02


# ------------------------------------------------------------------------------------------- padded pixels
def _focal(z: float, t: float, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """RetinaNet's focal term of one pixel: alpha_t (1 - p_t)^gamma CE."""
    p = 1 / (1 + math.exp(-z))
    ce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    p_t = p * t + (1 - p) * (1 - t)
    return (alpha * t + (1 - alpha) * (1 - t)) * (1 - p_t) ** gamma * ce


def _seg_loss_plus(logits: torch.Tensor, label: np.ndarray, alpha=0.25, gamma=2.0) -> tuple[float, float]:
    """SegLossPlus on a B x H x W label map (255 = padding), with plain floats: focal = sum over (image, class)
    of the mean over ALL H*W pixels of alpha_t (1 - p_t)^gamma CE, target = (label == class); dice over the
    (image, class) pairs present in the label map; both divided by the number of present pairs."""
    b, m, h, w = logits.shape
    present = [(i, k) for i in range(b) for k in range(m) if (label[i] == k).any()]
    num_masks = max(len(present), 1)
    focal_sum = 0.0
    for i in range(b):
        for k in range(m):
            total = sum(_focal(float(logits[i, k, y, x]), float(label[i, y, x] == k), alpha, gamma)
                        for y in range(h) for x in range(w))
            focal_sum += total / (h * w)
    dice_sum = 0.0
    for i, k in present:
        p = [1 / (1 + math.exp(-float(z))) for z in logits[i, k].flatten()]
        t = [float(v == k) for v in label[i].flatten()]
        inter = sum(a * c for a, c in zip(p, t))
        dice_sum += 1 - (2 * inter + 1) / (sum(p) + sum(t) + 1)
    return focal_sum / num_masks, dice_sum / num_masks


def test_default_padding_is_a_negative_of_every_class_as_seglossplus():
    g = torch.Generator().manual_seed(3)
    b, m, h, w = 2, 3, 6, 5
    logits = torch.randn(b, m, h, w, generator=g) * 2
    label = np.full((b, h, w), 255)  # 255: background (reduce_zero_label) and padding (seg_pad_val) alike
    label[0, :4, :3] = 0          # image 0: class 0 top-left, class 2 below it, the two right columns padded
    label[0, 4:, :3] = 2
    label[1, :4, :] = 1           # image 1: class 1, a row of background, the last row padded
    padded = torch.zeros(b, h, w, dtype=torch.bool)
    padded[0, :, 3:] = True
    padded[1, 5] = True
    targets = torch.stack([torch.from_numpy(label == k) for k in range(m)], dim=1).float()
    present = targets.flatten(2).any(-1)

    out = MagicSegLoss(LossConfig(counterfactual=False))(logits, targets, present, ignore=padded)
    focal, dice = _seg_loss_plus(logits, label)
    assert out["loss_focal"].item() == pytest.approx(100 * focal, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)

    # a label 1 under padding (a mask the crop left there) is still no positive: SegLossPlus reads 255 there
    dirty = targets.clone()
    dirty[1, 1, 5] = 1.0
    again = MagicSegLoss(LossConfig(counterfactual=False))(logits, dirty, present, ignore=padded)
    assert again["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)

    # the project's variant leaves padded pixels out: per-mask means over kept pixels, dice sums without them
    kept = [(~padded[i]).sum().item() for i in range(b)]
    ignored = MagicSegLoss(LossConfig(counterfactual=False, padding="ignore"))(logits, targets, present,
                                                                              ignore=padded)
    focal_kept = 0.0
    for i in range(b):
        for k in range(m):
            terms = [_focal(float(logits[i, k, y, x]), float(label[i, y, x] == k))
                     for y in range(h) for x in range(w) if not padded[i, y, x]]
            assert len(terms) == kept[i]
            focal_kept += sum(terms) / len(terms)
    assert ignored["loss_focal"].item() == pytest.approx(100 * focal_kept / 3, rel=1e-5)  # 3 present masks
    assert ignored["loss_focal"].item() != pytest.approx(out["loss_focal"].item(), rel=1e-3)


if __name__ == "__main__":
    for lo, hi in ((0.01, 0.05), (0.01, 0.5), (0.1, 0.5)):
        shares = [object_free_share(1000, 128, lo, hi, **rule) for rule in
                  ({}, {"cat_count_background": True, "crop_fallback": "best"})]
        print(f"object area {lo:.0%}-{hi:.0%} of the image: object-free crops {shares[0]:.1%} (zegclip-vitb16) "
              f"vs {shares[1]:.1%} (zegclip-vitb16-plus)")
