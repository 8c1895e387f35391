"""Joint augmentation: image, counterfactual and masks stay aligned; photometric and padding behave as mmseg's."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image as PILImage
from torchvision import tv_tensors

from magicseg_models.config import AugmentConfig
from magicseg_models.dataset.codecs import encode_image
from magicseg_models.training.augment import CLIP_MEAN, CLIP_STD, CatMaxRatioCrop, JointAugment, nearest_index
from magicseg_models.training.photometric import Photometric, apply_photometric, draw_photometric

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _unnormalize(x: torch.Tensor) -> torch.Tensor:
    return x * STD + MEAN


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0


def _marked_pair(height=96, width=128, top=20, left=30, size=24, seed=0):
    """Dark noisy image and counterfactual (different noise) with the same bright square, plus its mask."""
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 60, (3, height, width), generator=g, dtype=torch.uint8)
    cf = torch.randint(0, 60, (3, height, width), generator=g, dtype=torch.uint8)
    image[:, top:top + size, left:left + size] = 255
    cf[:, top:top + size, left:left + size] = 255
    masks = torch.zeros(1, height, width, dtype=torch.bool)
    masks[0, top:top + size, left:left + size] = True
    return image, cf, masks


def test_resize_crop_flip_move_image_counterfactual_and_masks_together():
    # the project's crop rule (background counts): most crops keep a good part of the square to compare
    cfg = AugmentConfig(crop_size=64, scale=(128, 96), ratio_range=(0.5, 2.0), flip_prob=0.5, photometric=False,
                        cat_count_background=True, crop_fallback="best")
    augment = JointAugment(cfg)
    image, cf, masks = _marked_pair()
    centres = set()
    seen = 0
    for seed in range(24):
        out = augment(image, cf, masks, seed=seed)
        assert out["image"].shape == out["counterfactual_image"].shape == (3, 64, 64)
        assert out["masks"].shape == (1, 64, 64) and out["masks"].dtype == torch.bool
        bright_image = (_unnormalize(out["image"]) > 0.6).all(0)
        bright_cf = (_unnormalize(out["counterfactual_image"]) > 0.6).all(0)
        mask = out["masks"][0]
        if mask.sum() < 16:  # square mostly cropped away: nothing to locate
            continue
        seen += 1
        # bilinear (antialiased) edges vs nearest-neighbour masks differ by a pixel at the border, no more
        assert _iou(bright_image, mask) > 0.8, seed
        assert _iou(bright_cf, mask) > 0.8, seed
        assert _iou(bright_image, bright_cf) > 0.95, seed
        cols = mask.nonzero()[:, 1].float()
        centres.add(round(cols.mean().item()))
    assert seen >= 12  # cat_max_ratio keeps the square in most crops
    assert len(centres) >= 6  # the geometry really varied (scales, offsets and flips)


def test_flip_alone_is_applied_to_all_inputs():
    cfg = AugmentConfig(crop_size=128, scale=(128, 96), ratio_range=(1.0, 1.0), flip_prob=1.0, photometric=False,
                        cat_max_ratio=1.0)
    image, cf, masks = _marked_pair()
    out = JointAugment(cfg)(image, cf, masks, seed=0)
    expected = masks[0].flip(-1)
    assert torch.equal(out["masks"][0, :96], expected)
    assert torch.equal((_unnormalize(out["image"][:, :96]) > 0.9).all(0), expected)
    assert torch.equal((_unnormalize(out["counterfactual_image"][:, :96]) > 0.9).all(0), expected)


def test_photometric_changes_images_only_and_the_pair_alike():
    base = dict(crop_size=64, scale=(128, 96), ratio_range=(0.5, 2.0))
    on = JointAugment(AugmentConfig(**base, photometric=True))
    off = JointAugment(AugmentConfig(**base, photometric=False))
    image, _, masks = _marked_pair()
    changed = 0
    for seed in range(10):
        a = on(image, image.clone(), masks, seed=seed)
        b = off(image, image.clone(), masks, seed=seed)
        # photometric draws come after the geometric ones: same seed, same geometry; masks untouched and binary
        assert torch.equal(a["masks"], b["masks"]) and a["masks"].dtype == torch.bool
        assert torch.equal(a["ignore"], b["ignore"])
        # the counterfactual gets the same photometric draw as the image
        assert torch.equal(a["image"], a["counterfactual_image"])
        changed += not torch.allclose(a["image"], b["image"])
    assert changed >= 5


def test_padding_is_marked_ignore_and_zero():
    cfg = AugmentConfig(crop_size=64, scale=(60, 40), ratio_range=(1.0, 1.0), photometric=False, flip_prob=0.0)
    image = torch.full((3, 40, 60), 200, dtype=torch.uint8)
    masks = torch.ones(2, 40, 60, dtype=torch.bool)
    out = JointAugment(cfg)(image, image, masks, seed=0)
    expected = torch.ones(64, 64, dtype=torch.bool)
    expected[:40, :60] = False
    assert torch.equal(out["ignore"], expected)
    assert not out["masks"][:, expected].any() and out["masks"][:, ~expected].all()
    assert out["image"][:, expected].abs().max() == 0  # mmseg pads after Normalize with 0 (the mean colour)
    assert out["image"][:, ~expected].abs().min() > 0


def _largest_share(mask: torch.Tensor) -> float:
    frac = mask.float().mean().item()
    return max(frac, 1 - frac)


def test_cat_max_ratio_is_honoured_when_possible():
    # class = left half: a 32px crop of the 64px image passes only when it straddles the border (~45 % of draws)
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks = torch.zeros(1, 64, 64, dtype=torch.bool)
    masks[0, :, :32] = True
    base = dict(crop_size=32, scale=(64, 64), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False,
                cat_count_background=True)  # one class: only background as a second category can pass the rule
    ruled, free = JointAugment(AugmentConfig(**base)), JointAugment(AugmentConfig(**base, cat_max_ratio=1.0))
    shares = [_largest_share(ruled(image, image, masks, seed=s)["masks"][0]) for s in range(40)]
    free_shares = [_largest_share(free(image, image, masks, seed=s)["masks"][0]) for s in range(40)]
    assert max(shares) < 0.75
    assert sum(s >= 0.75 for s in free_shares) >= 10


def test_cat_max_ratio_without_background_uses_class_pixels_only():
    image = torch.zeros(3, 64, 64, dtype=torch.uint8)
    masks = torch.zeros(2, 64, 64, dtype=torch.bool)
    masks[0, :, :32] = True
    masks[1, :, 32:] = True
    cfg = AugmentConfig(crop_size=32, scale=(64, 64), ratio_range=(1.0, 1.0), flip_prob=0.0, photometric=False,
                        cat_count_background=False)
    for seed in range(20):
        out = JointAugment(cfg)(image, image, masks, seed=seed)["masks"]
        assert _largest_share(out[0]) < 0.75


def test_deterministic_per_seed_and_generator_and_leaves_global_rng_alone():
    augment = JointAugment(AugmentConfig(crop_size=48, scale=(128, 96)))
    image, cf, masks = _marked_pair()
    state = torch.get_rng_state()
    a = augment(image, cf, masks, seed=7)
    b = augment(image, cf, masks, seed=7)
    c = augment(image, cf, masks, generator=torch.Generator().manual_seed(3))
    d = augment(image, cf, masks, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.get_rng_state(), state)
    for key in a:
        assert torch.equal(a[key], b[key]) and torch.equal(c[key], d[key])
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_eval_mode_resizes_only():
    cfg = AugmentConfig(scale=(64, 32))
    image, cf, masks = _marked_pair(height=100, width=200, top=10, left=20, size=40)
    augment = JointAugment(cfg, train=False)
    out = augment(image, cf, masks)
    again = augment(image, cf, masks)
    assert out["image"].shape == (3, 32, 64) and out["masks"].shape == (1, 32, 64)  # min(64/200, 32/100) = 0.32
    assert not out["ignore"].any()
    assert all(torch.equal(out[k], again[k]) for k in out)
    assert out["masks"][0, 4:16, 7:19].all() and out["masks"].sum() < 14 * 14
    assert _iou((_unnormalize(out["image"]) > 0.6).all(0), out["masks"][0]) > 0.8


def test_no_masks_and_bad_inputs():
    image = torch.zeros(3, 40, 40, dtype=torch.uint8)
    out = JointAugment(AugmentConfig(crop_size=32, scale=(40, 40)))(image, image, torch.zeros(0, 40, 40), seed=1)
    assert out["masks"].shape == (0, 32, 32)
    with pytest.raises(ValueError, match="0, 1"):
        JointAugment(mean=(122.7, 116.7, 104.1), std=(68.5, 66.6, 70.3))
    with pytest.raises(ValueError, match="differ"):
        JointAugment()(image, torch.zeros(3, 20, 40, dtype=torch.uint8), torch.zeros(0, 40, 40))
    with pytest.raises(ValueError, match="masks"):
        JointAugment()(image, image, torch.zeros(1, 20, 40))


def test_crop_rule_class_defaults_are_zegclips():
    # the class and the config default alike: background ignored (reduce_zero_label), mmseg's unchecked 11th draw
    crop, defaults = CatMaxRatioCrop(24), AugmentConfig()
    assert (crop.count_background, crop.fallback) == (defaults.cat_count_background, defaults.crop_fallback)
    assert (crop.count_background, crop.fallback) == (False, "draw")
    # one object only: with background ignored no crop has two categories, so all 10 draws fail and the crop is
    # the 11th draw of the same generator sequence
    masks = torch.zeros(1, 48, 48, dtype=torch.bool)
    masks[0, 10:30, 12:28] = True
    stacked = tv_tensors.Mask(torch.cat([torch.ones(1, 48, 48, dtype=torch.bool), masks]).to(torch.uint8))
    for seed in range(5):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            params = crop.make_params([tv_tensors.Image(torch.zeros(3, 48, 48, dtype=torch.uint8)), stacked])
            g = torch.Generator().manual_seed(seed)
            draws = [(int(torch.randint(0, 25, (), generator=g)), int(torch.randint(0, 25, (), generator=g)))
                     for _ in range(11)]
        assert (params["top"], params["left"]) == draws[10]
    with pytest.raises(ValueError, match="fallback"):
        CatMaxRatioCrop(24, fallback="first")


@pytest.mark.parametrize("in_size,out_size", [(48, 48), (48, 96), (512, 1023), (480, 256), (97, 61), (333, 500)])
def test_mask_pixels_are_picked_as_torchs_nearest_resize_picks_them(in_size, out_size):
    g = torch.Generator().manual_seed(in_size)
    mask = torch.rand(2, in_size, in_size + 7, generator=g) > 0.5
    resized = torch.nn.functional.interpolate(mask[None].to(torch.uint8), size=(out_size, out_size + 3),
                                              mode="nearest")[0].bool()
    picked = mask.index_select(1, nearest_index(in_size, out_size)).index_select(
        2, nearest_index(in_size + 7, out_size + 3))
    assert torch.equal(picked, resized)


def test_a_strongly_shrunk_jpeg_is_decoded_at_reduced_size_and_stays_aligned():
    image, cf, masks = _marked_pair(height=720, width=960, top=200, left=300, size=240)
    jpeg = encode_image(image.permute(1, 2, 0).numpy())
    cfg = AugmentConfig(crop_size=256, scale=(2048, 512), ratio_range=(0.5, 0.6), photometric=False)
    opened = PILImage.open(io.BytesIO(jpeg))
    out = JointAugment(cfg)(opened, PILImage.open(io.BytesIO(jpeg)), masks, seed=3)
    assert opened.size[0] < 960  # factor 512 * 0.5-0.6 / 720 < 0.5: PIL's draft decoded at half size or less
    assert out["image"].shape == (3, 256, 256) and out["masks"].shape == (1, 256, 256)
    assert out["masks"].any()
    assert _iou((_unnormalize(out["image"]) > 0.6).all(0), out["masks"][0]) > 0.8


def test_photometric_steps_are_torchvisions_kernels_in_float():
    from torchvision.transforms.v2 import RandomPhotometricDistort
    from torchvision.transforms.v2 import functional as F

    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 40, 50, generator=g)
    steps = [(Photometric(brightness=1.1), lambda x: F.adjust_brightness(x, 1.1)),
             (Photometric(contrast=0.6), lambda x: F.adjust_contrast(x, 0.6)),
             (Photometric(saturation=1.4), lambda x: F.adjust_saturation(x, 1.4)),
             (Photometric(hue=-0.08), lambda x: F.adjust_hue(x, -0.08)),
             (Photometric(1.05, 1.3, 0.7, 0.03, contrast_before=False),
              lambda x: F.adjust_contrast(F.adjust_hue(F.adjust_saturation(F.adjust_brightness(x, 1.05), 0.7),
                                                       0.03), 1.3))]
    for params, reference in steps:
        ours = apply_photometric(image.clone() * 255, params) / 255
        assert torch.allclose(ours, reference(image), atol=1e-5), params
    # the same draws as torchvision's transform from the same generator state
    distort = RandomPhotometricDistort(brightness=(0.875, 1.125), contrast=(0.5, 1.5), saturation=(0.5, 1.5),
                                       hue=(-0.1, 0.1), p=0.5)
    for seed in range(20):
        torch.manual_seed(seed)
        expected = distort.make_params([image])
        torch.manual_seed(seed)
        drawn = draw_photometric()
        follow = torch.rand(())  # both consumed the generator alike, channel-permutation draw included
        torch.manual_seed(seed)
        distort.make_params([image])
        assert follow == torch.rand(())
        assert (drawn.brightness, drawn.contrast, drawn.saturation, drawn.hue, drawn.contrast_before) == (
            expected["brightness_factor"], expected["contrast_factor"], expected["saturation_factor"],
            expected["hue_factor"], expected["contrast_before"])
