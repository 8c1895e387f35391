"""Test-time resize, sliding windows (coverage, weights, batching), merge, and the end-to-end helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from magicseg_models.config import InferenceConfig
from magicseg_models.errors import ConfigError
from magicseg_models.evaluation.inference import (
    autocast_for, infer_scores, predict_labels, resize_short_side, slide_inference, slide_windows,
    window_count_map,
)


def brute_force_count(h, w, windows):
    count = np.zeros((h, w), dtype=np.int64)
    for y0, x0, y1, x1 in windows:
        count[y0:y1, x0:x1] += 1
    return count


def coordinate_image(h, w):
    # channel 0 = row, channel 1 = column: a window "knows" where it was cut from
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")
    return torch.stack([ys, xs, torch.zeros_like(ys)])


def coordinate_fn(batch):
    # integer-valued, so sums of k equal copies divided by k are exact in float32
    y, x = batch[:, 0], batch[:, 1]
    return torch.stack([y * 1000 + x, 2 * x + 1, y], dim=1)


def expected_coordinates(h, w):
    img = coordinate_image(h, w)
    return coordinate_fn(img[None])[0]


# ------------------------------------------------------------------------------------------ windows
@pytest.mark.parametrize("h, w, crop, stride, expected", [
    # one row of windows; columns: 0..512, then pulled back to end at 683: 171..683
    (512, 683, 512, 426, [(0, 0, 512, 512), (0, 171, 512, 683)]),
    # smaller than the crop: one window of the image's size
    (500, 500, 512, 426, [(0, 0, 500, 500)]),
])
def test_windows_by_hand(h, w, crop, stride, expected):
    assert slide_windows(h, w, crop, stride) == expected


def test_windows_1000x1001_cover_every_pixel():
    wins = slide_windows(1000, 1001, 512, 426)
    # rows: grids (1000-512+425)//426+1 = 3: 0..512, 426..938, 488..1000; columns: 0..512, 426..938, 489..1001
    assert sorted({(y0, y1) for y0, _, y1, _ in wins}) == [(0, 512), (426, 938), (488, 1000)]
    assert sorted({(x0, x1) for _, x0, _, x1 in wins}) == [(0, 512), (426, 938), (489, 1001)]
    assert len(wins) == 9 and all(y1 - y0 == 512 and x1 - x0 == 512 for y0, x0, y1, x1 in wins)
    count = window_count_map(1000, 1001, wins).numpy()
    assert count.min() >= 1
    np.testing.assert_array_equal(count, brute_force_count(1000, 1001, wins))


def test_tiny_grid_count_map_by_hand():
    wins = slide_windows(13, 17, 8, 6)
    # rows: grids (13-8+5)//6+1 = 2 -> 0..8 and (end min(6+8,13)=13) 5..13
    # cols: grids (17-8+5)//6+1 = 3 -> 0..8, 6..14, and (end min(12+8,17)=17) 9..17
    assert wins == [(0, 0, 8, 8), (0, 6, 8, 14), (0, 9, 8, 17), (5, 0, 13, 8), (5, 6, 13, 14), (5, 9, 13, 17)]
    rows = np.array([1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1])  # rows 5-7 in both row bands
    cols = np.array([1, 1, 1, 1, 1, 1, 2, 2, 1, 2, 2, 2, 2, 2, 1, 1, 1])  # cols 6-7 and 9-13 in two bands
    np.testing.assert_array_equal(window_count_map(13, 17, wins).numpy(), np.outer(rows, cols))


@pytest.mark.parametrize("h, w", [(1, 1), (7, 300), (511, 513), (853, 854), (1300, 427)])
def test_any_size_is_covered(h, w):
    wins = slide_windows(h, w, 512, 426)
    assert window_count_map(h, w, wins).min() >= 1
    assert len({(y1 - y0, x1 - x0) for y0, x0, y1, x1 in wins}) == 1  # one window size: batchable


def test_stride_larger_than_crop_is_a_config_error():
    with pytest.raises(ConfigError, match="stride"):
        slide_windows(100, 100, 32, 40)


# ------------------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("h, w, crop, stride", [(13, 17, 8, 6), (512, 683, 512, 426), (500, 500, 512, 426),
                                                (1000, 1001, 512, 426)])
def test_ones_give_ones_and_coordinates_come_back_exactly(h, w, crop, stride):
    ones = slide_inference(torch.zeros(3, h, w), lambda b: torch.ones(b.shape[0], 2, *b.shape[-2:]), 2,
                           crop=crop, stride=stride, batch_size=4)
    assert ones.shape == (2, h, w) and ones.dtype == torch.float32 and bool((ones == 1).all())
    got = slide_inference(coordinate_image(h, w), coordinate_fn, 3, crop=crop, stride=stride, batch_size=3)
    assert torch.equal(got, expected_coordinates(h, w))


def test_each_pixel_gets_the_mean_of_the_windows_over_it():
    h, w, crop, stride = 13, 17, 8, 6
    wins = slide_windows(h, w, crop, stride)
    calls = []

    def per_window_constant(batch):
        # window k (in grid order) predicts the constant k + 1
        start = sum(len(c) for c in calls)
        calls.append(batch)
        values = torch.arange(start + 1, start + 1 + batch.shape[0], dtype=torch.float32)
        return values[:, None, None, None].expand(-1, 1, *batch.shape[-2:]).clone()

    got = slide_inference(torch.zeros(3, h, w), per_window_constant, 1, crop=crop, stride=stride, batch_size=4)
    total = np.zeros((h, w))
    for k, (y0, x0, y1, x1) in enumerate(wins):
        total[y0:y1, x0:x1] += k + 1
    np.testing.assert_allclose(got[0].numpy(), total / brute_force_count(h, w, wins), rtol=1e-6)
    assert [len(c) for c in calls] == [4, 2]  # 6 windows, batch_size 4


def test_small_image_runs_at_its_size_or_padded_to_the_crop():
    seen = []

    def fn(batch):
        seen.append(tuple(batch.shape[-2:]))
        return coordinate_fn(batch)

    plain = slide_inference(coordinate_image(50, 40), fn, 3, crop=64, stride=48)
    padded = slide_inference(coordinate_image(50, 40), fn, 3, crop=64, stride=48, pad_to_crop=True)
    assert seen == [(50, 40), (64, 64)]
    assert torch.equal(plain, expected_coordinates(50, 40)) and torch.equal(padded, expected_coordinates(50, 40))


def test_low_resolution_outputs_are_resized_to_the_window_and_bad_shapes_raise():
    got = slide_inference(torch.zeros(3, 40, 52), lambda b: torch.full((b.shape[0], 2, 4, 4), 0.25), 2,
                          crop=32, stride=24)
    assert got.shape == (2, 40, 52) and torch.allclose(got, torch.full_like(got, 0.25))
    with pytest.raises(ValueError, match="predict_fn"):
        slide_inference(torch.zeros(3, 40, 52), lambda b: torch.zeros(b.shape[0], 3, 32, 32), 2, crop=32, stride=24)


def test_float32_on_cpu_even_when_bfloat16_is_asked():
    def fn(batch):
        assert batch.dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
        return torch.ones(batch.shape[0], 1, *batch.shape[-2:])

    slide_inference(torch.zeros(3, 20, 20), fn, 1, crop=16, stride=12, dtype="bfloat16")
    assert not isinstance(autocast_for(torch.device("cpu"), "bfloat16"), torch.autocast)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bfloat16_autocast_on_cuda_and_float32_sums():
    conv = torch.nn.Conv2d(3, 2, 1).cuda()
    out = slide_inference(torch.rand(3, 40, 50, device="cuda"), lambda b: torch.sigmoid(conv(b)), 2,
                          crop=32, stride=24, dtype="bfloat16")
    assert out.dtype == torch.float32 and out.device.type == "cuda"


# ------------------------------------------------------------------------------------------ resize + end to end
def test_resize_short_side_sizes():
    # VOC-like 375 x 500 -> scale 512/375 -> 512 x int(682.67 + .5) = 683
    assert resize_short_side(torch.zeros(3, 375, 500, dtype=torch.uint8), 512).shape == (3, 512, 683)
    # long side clamped at 4 x short (mmseg's 2048 for 512): 100 x 1000 at 64 -> scale 256/1000 -> 26 x 256
    assert resize_short_side(torch.zeros(3, 100, 1000), 64).shape == (3, 26, 256)
    assert resize_short_side(torch.zeros(3, 100, 1000), 64, long_side_ratio=None).shape == (3, 64, 640)
    same = torch.rand(3, 64, 80)
    assert torch.equal(resize_short_side(same, 64), same)
    const = resize_short_side(torch.full((3, 30, 40), 7, dtype=torch.uint8), 45)
    assert const.dtype == torch.float32 and torch.allclose(const, torch.full_like(const, 7.0))


def test_infer_scores_and_labels_at_the_original_size():
    cfg = InferenceConfig(short_side=64, crop_size=64, stride=48, batch_size=2, dtype="float32")

    def fn(batch):
        # class 0 scores 0.97, class 1 scores 0.5: everything is class 1 after background at 0.95
        return torch.stack([torch.full(batch.shape[-2:], 0.97), torch.full(batch.shape[-2:], 0.5)])[None].expand(
            batch.shape[0], -1, -1, -1)

    scores = infer_scores(torch.rand(3, 30, 50), fn, 2, cfg)
    assert scores.shape == (2, 30, 50)
    labels = predict_labels(torch.rand(3, 30, 50), fn, 2, cfg, bg_threshold=0.95)
    assert labels.shape == (30, 50) and labels.dtype == torch.int64 and bool((labels == 1).all())
    assert bool((predict_labels(torch.rand(3, 30, 50), fn, 2, cfg, bg_threshold=0.99) == 0).all())
