"""The crop-first augmentation draws the same geometry as the legacy v2 pipeline (the benchmark's frozen copy).

Two kinds of evidence, both deterministic (fixed seeds):
- per seed: both paths consume torch's generator in the same order, so the same seed gives the same scale, crop
  and flip: masks and padding come out identical, images within resampling rounding;
- as distributions, on disjoint seeds: crop positions, scales and flips read back from the output pixels of a
  coordinate-ramp image pass two-sample Kolmogorov-Smirnov / chi-square tests against the legacy path, and a
  deliberately different configuration fails them (the tests have the power to see a change).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.bench_train import LegacyJointAugment
from magicseg_models.config import AugmentConfig
from magicseg_models.training.augment import CLIP_MEAN, CLIP_STD, JointAugment, finish_pixels
from magicseg_models.training.data import collate

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)
# ZegCLIP's rule and ranges, scaled down: short side 64 * (0.5-2), crop 64
CFG = AugmentConfig(crop_size=64, scale=(256, 64), ratio_range=(0.5, 2.0), photometric=False)


def _ramp_scene(height: int = 72, width: int = 108) -> tuple[torch.Tensor, torch.Tensor]:
    """Red = column, green = row (linear ramps survive bilinear resizing), one object on the left and a small
    one on the right so the cat_max_ratio rule shapes where crops land."""
    x = torch.linspace(0, 255, width).round().to(torch.uint8)
    y = torch.linspace(0, 255, height).round().to(torch.uint8)
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    image[0] = x.view(1, -1)
    image[1] = y.view(-1, 1)
    masks = torch.zeros(2, height, width, dtype=torch.bool)
    masks[0, 8:60, 4:50] = True
    masks[1, 30:44, 80:96] = True
    return image, masks


def _geometry(out: dict, height: int, width: int) -> tuple[float, float, float, bool]:
    """(scale, crop left, crop top in source pixels, flipped) read back from the ramps of an output."""
    valid = ~out["ignore"]
    h, w = int(valid[:, 0].sum()), int(valid[0].sum())
    pixels = (out["image"] * STD + MEAN)[:, :h, :w] * 255
    red, green = pixels[0, h // 2], pixels[1, :, w // 2]
    inset = max(2, w // 8)  # away from the border, where resampling filters are clamped
    per_pixel = (red[w - 1 - inset] - red[inset]).item() / (w - 1 - 2 * inset)
    flipped = per_pixel < 0
    scale = (255 / (width - 1)) / abs(per_pixel) if per_pixel else math.inf
    # whole ramp levels: float noise around the many crops at the same offset must not reorder them between paths
    left_level, top_level = round((red[-1] if flipped else red[0]).item()), round(green[0].item())
    return scale, left_level * (width - 1) / 255, top_level * (height - 1) / 255, flipped


def _samples(augment, seeds) -> np.ndarray:
    image, masks = _ramp_scene()
    rows = []
    for seed in seeds:
        rows.append(_geometry(augment(image, image, masks, seed=seed), *image.shape[1:]))
    return np.array(rows, dtype=np.float64)


def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov test, asymptotic p-value (Stephens' small-sample correction)."""
    a, b = np.sort(a), np.sort(b)
    grid = np.concatenate([a, b])
    d = np.abs(np.searchsorted(a, grid, "right") / a.size - np.searchsorted(b, grid, "right") / b.size).max()
    n = a.size * b.size / (a.size + b.size)
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 1e-3:
        return 1.0
    p = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return float(min(max(p, 0.0), 1.0))


def chi2_2x2_pvalue(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    """Pearson's chi-square test of equal proportions (1 degree of freedom)."""
    table = np.array([[hits_a, n_a - hits_a], [hits_b, n_b - hits_b]], dtype=np.float64)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = float(((table - expected) ** 2 / expected).sum())
    return math.erfc(math.sqrt(chi2 / 2))


def _compare(new: np.ndarray, old: np.ndarray) -> dict[str, float]:
    return {"scale": ks_pvalue(new[:, 0], old[:, 0]), "left": ks_pvalue(new[:, 1], old[:, 1]),
            "top": ks_pvalue(new[:, 2], old[:, 2]),
            "flip": chi2_2x2_pvalue(int(new[:, 3].sum()), len(new), int(old[:, 3].sum()), len(old))}


N = 300


@pytest.fixture(scope="module")
def legacy_geometry() -> np.ndarray:
    return _samples(LegacyJointAugment(CFG), range(N))


def test_crops_scales_and_flips_are_distributed_as_before(legacy_geometry):
    new = _samples(JointAugment(CFG), range(N, 2 * N))  # other seeds: an independent sample
    fit = 64 / 72  # the scene's short side fitted to the scale's, before the 0.5-2 ratio
    assert 0.5 * fit - 0.02 < new[:, 0].min() < 0.5 * fit + 0.03  # the scale readout works
    assert 2.0 * fit - 0.05 < new[:, 0].max() < 2.0 * fit + 0.02
    pvalues = _compare(new, legacy_geometry)
    assert min(pvalues.values()) > 0.01, pvalues


@pytest.mark.parametrize("change", [{"ratio_range": (0.8, 2.0)}, {"flip_prob": 0.35},
                                    {"cat_count_background": True, "crop_fallback": "best"}])
def test_the_comparison_sees_a_changed_augmentation(legacy_geometry, change):
    changed = _samples(JointAugment(CFG.model_copy(update=change)), range(N, 2 * N))
    pvalues = _compare(changed, legacy_geometry)
    assert min(pvalues.values()) < 1e-3, pvalues


@pytest.mark.parametrize("size", [(72, 108), (50, 50), (97, 61), (640, 480)])
def test_same_seed_same_geometry_as_the_legacy_pipeline(size):
    height, width = size
    cfg = AugmentConfig(crop_size=64, scale=(4 * min(size), min(size) // 2 * 2), photometric=True)
    g = torch.Generator().manual_seed(height)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
    masks = torch.zeros(3, height, width, dtype=torch.bool)
    masks[0, : height // 2, : width // 3] = True
    masks[1, height // 3:, width // 2:] = True
    masks[2, height // 4: height // 2, width // 4: width // 2] = True
    new, old = JointAugment(cfg), LegacyJointAugment(cfg)
    for seed in range(12):
        a, b = new(image, image.flip(0), masks, seed=seed), old(image, image.flip(0), masks, seed=seed)
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["ignore"], b["ignore"]), seed
        # the same photometric draw too; values differ by resampling (PIL vs torch) and uint8 rounding only
        for key in ("image", "counterfactual_image"):
            diff = ((a[key] - b[key]) * STD * 255).abs()
            assert diff.mean() < 2.0 and diff.quantile(0.99) < 12, (seed, key, diff.mean())


def test_pixels_finished_on_the_device_are_the_legacy_pipelines():
    # defer_pixels: workers decode and draw, finish_pixels resamples in mmseg's order on the device - the same
    # crops as the legacy pipeline from the same seeds, padded samples included
    image, masks = _ramp_scene()
    cfg = CFG.model_copy(update={"photometric": True})
    legacy, deferred, in_process = LegacyJointAugment(cfg), JointAugment(cfg, defer_pixels=True), JointAugment(cfg)
    extra = {"class_ids": torch.zeros(2), "sample_id": "x", "epoch": 0}
    seeds = range(16)
    sent = [{**deferred(image, image.flip(0), masks, seed=s), **extra} for s in seeds]
    assert sent[0]["image"].dtype == torch.uint8 and sent[0]["image"].shape == image.shape
    assert sent[0]["pixels"].shape == (12,) and any(s["ignore"].any() for s in sent)
    finished = finish_pixels(collate(sent))
    assert "pixels" not in finished and finished["image"].shape == (16, 3, 64, 64)
    reference = collate([{**legacy(image, image.flip(0), masks, seed=s), **extra} for s in seeds])
    ours = collate([{**in_process(image, image.flip(0), masks, seed=s), **extra} for s in seeds])
    assert torch.equal(finished["ignore"], reference["ignore"])
    assert all(torch.equal(a, b) for a, b in zip(finished["masks"], reference["masks"]))
    for key in ("image", "counterfactual_image"):
        # torchvision resamples both (float here, uint8 there); uint8 rounding between colour steps is the rest
        diff = ((finished[key] - reference[key]) * STD * 255).abs()
        assert diff.mean() < 1.0 and diff.max() < 8, (key, diff.mean(), diff.max())
        assert not finished[key][reference["ignore"][:, None].expand(-1, 3, -1, -1)].any()  # padding is 0
        assert ((finished[key] - ours[key]) * STD * 255).abs().mean() < 2.0  # and the in-process path agrees
