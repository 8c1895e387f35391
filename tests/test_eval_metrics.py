"""mIoU confusion matrix, the mmseg histc reference, background threshold, p-mIoU, offline prediction PNGs."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from magicseg_models.errors import MagicSegError
from magicseg_models.evaluation.inference import scores_to_labels
from magicseg_models.evaluation.metrics import (
    ConfusionMatrix, MetricError, PointIoU, histc_intersect_and_union, histc_reference_iou, sample_points,
)
from magicseg_models.evaluation.predictions import (
    PredictionError, load_prediction, save_prediction, score_predictions,
)

# 3 x 4 maps, 5 classes, 255 = ignore. Scored pixels (t, p), row by row, skipping the three ignored ones:
# (0,0) (0,1) (1,1) (1,1) | (0,0) (2,2) (1,3) | (2,2) (2,0)   -> 9 pixels, 6 correct.
TARGET = np.array([[0, 0, 1, 1],
                   [0, 2, 1, 255],
                   [2, 2, 255, 255]], dtype=np.uint8)
PRED = np.array([[0, 1, 1, 1],
                 [0, 2, 3, 0],
                 [2, 0, 1, 3]], dtype=np.uint8)  # the 0, 1, 3 under ignored pixels must not count
# class 0: GT 3 px, predicted 3 px (the (2,1) pixel is a 2 predicted 0), TP 2 -> 2 / (3 + 3 - 2) = 1/2
# class 1: GT 3, predicted 3 ((0,1) is a 0 predicted 1), TP 2      -> 2 / 4 = 1/2
# class 2: GT 3, predicted 2, TP 2                                   -> 2 / 3
# class 3: never in GT, predicted once ((1,2) is a 1 predicted 3)    -> 0 / 1 = 0, counts in the mean
# class 4: in neither                                                -> NaN, excluded
EXPECTED_IOU = [0.5, 0.5, 2 / 3, 0.0, math.nan]
EXPECTED_MIOU = (0.5 + 0.5 + 2 / 3 + 0.0) / 4  # 0.41667
# pixel accuracy 6/9; mean accuracy over classes with GT: (2/3 + 2/3 + 2/3) / 3


def test_hand_built_maps_give_known_iou():
    cm = ConfusionMatrix(5).update(torch.from_numpy(PRED), torch.from_numpy(TARGET))
    assert cm.matrix.dtype == torch.int64
    expected = np.zeros((5, 5), dtype=np.int64)
    for t, p in [(0, 0), (0, 1), (1, 1), (1, 1), (0, 0), (2, 2), (1, 3), (2, 2), (2, 0)]:
        expected[t, p] += 1
    np.testing.assert_array_equal(cm.matrix.numpy(), expected)
    r = cm.compute()
    np.testing.assert_allclose(r["per_class_iou"], EXPECTED_IOU, equal_nan=True)
    assert r["miou"] == pytest.approx(EXPECTED_MIOU)
    assert r["pixel_accuracy"] == pytest.approx(6 / 9)
    assert r["mean_accuracy"] == pytest.approx(2 / 3)
    assert r["pixels"] == 9


def test_numpy_inputs_batches_and_merge_match_one_update():
    whole = ConfusionMatrix(5).update(PRED, TARGET)  # numpy uint8
    halves = ConfusionMatrix(5).update(PRED[:1].astype(np.uint16), TARGET[:1].astype(np.uint16))
    rest = ConfusionMatrix(5).update(torch.from_numpy(PRED[1:]).long()[None], torch.from_numpy(TARGET[1:]).long()[None])
    halves.merge(rest)
    assert torch.equal(whole.matrix, halves.matrix)
    with pytest.raises(MetricError):
        whole.merge(ConfusionMatrix(6))


def test_fast_and_general_paths_agree():
    # 255 ignore on uint8 maps takes the bincount-over-K path; ignore 65535 makes K too large and -1 is
    # negative: both take the general masked path. All three must give the same matrix.
    fast = ConfusionMatrix(5).update(PRED, TARGET).matrix
    wide_target = TARGET.astype(np.int64)
    wide_target[wide_target == 255] = 65535
    wide = ConfusionMatrix(5, ignore_index=65535).update(PRED.astype(np.int64), wide_target).matrix
    neg_target = TARGET.astype(np.int64)
    neg_target[neg_target == 255] = -1
    neg = ConfusionMatrix(5, ignore_index=-1).update(PRED.astype(np.int64), neg_target).matrix
    assert torch.equal(fast, wide) and torch.equal(fast, neg)
    with pytest.raises(MetricError, match="ground-truth label 70000"):
        ConfusionMatrix(5, ignore_index=65535).update(np.array([0, 1]), np.array([70000, 1]))
    with pytest.raises(MetricError, match="integers"):
        ConfusionMatrix(5).update(np.array([0.0, 1.0]), np.array([0, 1]))


def test_empty_matrix_is_nan_not_an_error():
    r = ConfusionMatrix(3).compute()
    assert math.isnan(r["miou"]) and math.isnan(r["pixel_accuracy"]) and r["pixels"] == 0


@pytest.mark.parametrize("pred, target, bad", [
    (np.array([0, 1]), np.array([0, 7]), "ground-truth label 7"),
    (np.array([0, 1]), np.array([-1, 0]), "ground-truth label -1"),
    (np.array([0, 9]), np.array([0, 1]), "predicted label 9"),
    (np.array([255, 1]), np.array([0, 1]), "predicted label 255"),  # 255 is only ignored in the target
])
def test_out_of_range_labels_raise_one_line_naming_the_value(pred, target, bad):
    with pytest.raises(MetricError) as err:
        ConfusionMatrix(5).update(pred, target)
    assert bad in str(err.value) and "\n" not in str(err.value)
    assert isinstance(err.value, MagicSegError)


def test_prediction_under_ignored_pixel_is_not_checked_and_shapes_must_match():
    cm = ConfusionMatrix(2).update(np.array([200, 1]), np.array([255, 1]))
    assert int(cm.matrix.sum()) == 1
    with pytest.raises(MetricError, match="shape"):
        ConfusionMatrix(2).update(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.parametrize("num_classes", [21, 150])
def test_equal_to_mmseg_histc_reference_on_random_maps(num_classes):
    gen = torch.Generator().manual_seed(num_classes)
    pairs = []
    cm = ConfusionMatrix(num_classes)
    for _ in range(12):
        target = torch.randint(0, num_classes, (61, 83), generator=gen)
        target[torch.rand(61, 83, generator=gen) < 0.1] = 255
        pred = torch.where(torch.rand(61, 83, generator=gen) < 0.6, target.clamp(max=num_classes - 1),
                           torch.randint(0, num_classes, (61, 83), generator=gen))
        pairs.append((pred, target))
        cm.update(pred, target)
    ours = np.array(cm.compute()["per_class_iou"])
    ref = histc_reference_iou(pairs, num_classes)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12, equal_nan=True)
    # and per image, the reference areas equal the matrix's row/column sums
    inter, union, area_pred, area_label = histc_intersect_and_union(*pairs[0], num_classes)
    m = ConfusionMatrix(num_classes).update(*pairs[0]).matrix.double()
    np.testing.assert_array_equal(area_label.double().numpy(), m.sum(1).numpy())
    np.testing.assert_array_equal(area_pred.double().numpy(), m.sum(0).numpy())
    np.testing.assert_array_equal(inter.double().numpy(), m.diagonal().numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matrix_stays_on_device_and_matches_cpu():
    pred, target = torch.from_numpy(PRED).cuda(), torch.from_numpy(TARGET).cuda()
    cm = ConfusionMatrix(5).update(pred, target)
    assert cm.matrix.device.type == "cuda"
    assert torch.equal(cm.matrix.cpu(), ConfusionMatrix(5).update(PRED, TARGET).matrix)


# ------------------------------------------------------------------------------------------ background threshold
def test_background_threshold_edges():
    below = np.nextafter(np.float32(0.95), np.float32(0))
    scores = torch.tensor([[[0.95, below, 0.20, 0.5]],
                           [[0.10, 0.30, 0.96, 0.5]]], dtype=torch.float32)
    # pixel 0: best 0.95 == threshold -> class 1; pixel 1: just below -> background; pixel 2: 0.96 -> class 2;
    # pixel 3: a tie below the threshold -> background
    assert scores_to_labels(scores, 0.95).tolist() == [[1, 0, 2, 0]]
    assert scores_to_labels(scores, 0.95).dtype == torch.int64
    assert scores_to_labels(scores, 0.95, has_background=False).tolist() == [[0, 0, 1, 0]]
    assert scores_to_labels(scores, 0.0).tolist() == [[1, 1, 2, 1]]


# ------------------------------------------------------------------------------------------ p-mIoU
# Image A: cat: yes .9 (TP), yes .3 (FN), no .6 (FP), no .1 (TN), unsure .99 (skipped)
#               fg 1/(1+1+1) = 1/3, bg 1/(1+1+1) = 1/3, p = 1/3
#          dog: yes .5 (TP, exactly at 0.5 is positive), yes .7 (TP): fg 2/2 = 1, bg 0/0 undefined -> p = 1
# Image B: cat: yes .8 (TP), no .2 (TN), no .4 (TN): fg 1/1 = 1, bg 2/2 = 1, p = 1
#          dog: yes .49 (FN): fg 0/1 = 0, bg 0/(0+1+0) = 0, p = 0
#          bird: unsure only -> not present, nothing counted
#          fish: no .2, no .1 (TN, TN): fg undefined, bg 2/2 = 1, p = 1
POINTS_A = (["cat"] * 5 + ["dog"] * 2, ["yes", "yes", "no", "no", "unsure", "yes", "yes"],
            [0.9, 0.3, 0.6, 0.1, 0.99, 0.5, 0.7])
POINTS_B = (["cat"] * 3 + ["dog", "bird", "fish", "fish"], ["yes", "no", "no", "yes", "unsure", "no", "no"],
            [0.8, 0.2, 0.4, 0.49, 0.9, 0.2, 0.1])


def test_p_miou_per_image_class_by_hand():
    r = PointIoU("per_image_class").update(*POINTS_A).update(*POINTS_B).compute()
    # pairs: A-cat 1/3, A-dog 1, B-cat 1, B-dog 0, B-fish 1
    assert r["p_miou"] == pytest.approx((1 / 3 + 1 + 1 + 0 + 1) / 5)  # 0.66667
    assert r["fg_iou"] == pytest.approx((1 / 3 + 1 + 1 + 0) / 4)  # fish has no fg IoU
    assert r["bg_iou"] == pytest.approx((1 / 3 + 1 + 0 + 1) / 4)  # A-dog has no bg IoU
    assert r["units"] == 5 and r["images"] == 2 and r["points"] == 12 and r["classes"] == 3


def test_p_miou_per_class_by_hand():
    r = PointIoU().update(*POINTS_A).update(*POINTS_B).compute()
    # cat over both images: TP 2, FP 1, FN 1, TN 3 -> fg 2/4 = .5, bg 3/5 = .6, p = .55
    # dog: TP 2, FN 1, FP 0, TN 0 -> fg 2/3, bg 0/1 = 0, p = 1/3
    # fish: TN 2 -> fg undefined, bg 1, p = 1
    assert r["aggregation"] == "per_class" and r["units"] == 3
    assert r["per_class"] == pytest.approx({"cat": 0.55, "dog": 1 / 3, "fish": 1.0})
    assert r["p_miou"] == pytest.approx((0.55 + 1 / 3 + 1) / 3)  # 0.62778
    assert r["fg_iou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert r["bg_iou"] == pytest.approx((0.6 + 0 + 1) / 3)


def test_p_miou_label_encodings_merge_and_errors():
    a = PointIoU().update(*POINTS_A)
    b = PointIoU().update(*POINTS_B)
    both = PointIoU().update(*POINTS_A).update(*POINTS_B)
    merged = a.merge(b)
    for agg in ("per_class", "per_image_class"):
        assert merged.compute(agg)["p_miou"] == pytest.approx(both.compute(agg)["p_miou"])
    codes = {"yes": 1, "no": 0, "unsure": -1}
    ints = PointIoU().update(POINTS_A[0], [codes[x] for x in POINTS_A[1]], POINTS_A[2])
    assert ints.compute()["p_miou"] == pytest.approx(PointIoU().update(*POINTS_A).compute()["p_miou"])
    as_bool = PointIoU().update(["x", "x"], [True, False], [0.7, 0.2]).compute()
    assert as_bool["p_miou"] == 1.0
    with pytest.raises(MetricError, match="maybe"):
        PointIoU().update(["x"], ["maybe"], [0.5])
    with pytest.raises(MetricError, match="aggregation"):
        PointIoU("per_pixel")
    empty = PointIoU().update(["x"], ["unsure"], [0.9]).compute()
    assert math.isnan(empty["p_miou"]) and empty["units"] == 0 and empty["images"] == 1


def test_p_miou_from_score_maps_and_point_pixels():
    # 2 x 4 map: a normalised x in [0.25, 0.5) lands in column 1; x = y = 1.0 land in the last row/column
    m = torch.tensor([[0.0, 0.1, 0.2, 0.3], [0.4, 0.5, 0.6, 0.7]])
    np.testing.assert_allclose(sample_points(m, [0.3, 1.0, 0.0], [0.2, 1.0, 0.6]), [0.1, 0.7, 0.4], rtol=1e-6)
    maps = torch.stack([m, 1 - m])  # classes "a", "b"
    pts = PointIoU().update_maps(maps, ["a", "b"], ["a", "a", "b"], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0],
                                 ["yes", "no", "yes"])
    direct = PointIoU().update(["a", "a", "b"], ["yes", "no", "yes"], [0.7, 0.0, 1.0])
    assert pts.class_counts.keys() == direct.class_counts.keys()
    for key in pts.class_counts:
        np.testing.assert_array_equal(pts.class_counts[key], direct.class_counts[key])
    with pytest.raises(MetricError, match="no score map"):
        PointIoU().update_maps(maps, ["a", "b"], ["c"], [0.1], [0.1], ["yes"])


# ------------------------------------------------------------------------------------------ prediction PNGs
@dataclass
class Sample:
    image_id: str
    label: np.ndarray


def test_saved_predictions_round_trip_and_score_like_direct_update(tmp_path):
    gen = np.random.default_rng(0)
    samples, preds = [], []
    for i in range(3):
        gt = gen.integers(0, 21, (17, 23)).astype(np.uint8)
        gt[0, :5] = 255
        pred = gen.integers(0, 21, (17, 23))
        samples.append(Sample(f"2008_{i:06d}", gt))
        preds.append(pred)
        save_prediction(str(tmp_path), f"2008_{i:06d}", pred, num_classes=21)
    loaded = load_prediction(str(tmp_path), "2008_000001")
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, preds[1])
    scored = score_predictions(samples, str(tmp_path), 21)
    direct = ConfusionMatrix(21)
    for s, p in zip(samples, preds):
        direct.update(p, s.label)
    assert torch.equal(scored.matrix, direct.matrix)


def test_sixteen_bit_and_palette_pngs(tmp_path):
    lvis = np.array([[0, 1203], [700, 5]])
    path = save_prediction(str(tmp_path), "lvis-1", lvis, num_classes=1204)
    assert Image.open(path).mode.startswith("I")
    got = load_prediction(str(tmp_path), "lvis-1")
    assert got.dtype == np.uint16
    np.testing.assert_array_equal(got, lvis)
    # a VOC-style palette PNG: the palette index is the label, whatever colour it shows
    pal = Image.fromarray(np.array([[0, 15], [20, 3]], dtype=np.uint8), mode="P")
    pal.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    pal.save(tmp_path / "voc-1.png")
    np.testing.assert_array_equal(load_prediction(str(tmp_path), "voc-1"), [[0, 15], [20, 3]])
    Image.fromarray(np.zeros((2, 2, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(PredictionError, match="RGB"):
        load_prediction(str(tmp_path), "rgb")


def test_missing_prediction_and_size_mismatch_are_one_line_errors(tmp_path):
    save_prediction(str(tmp_path), "a", np.zeros((4, 5), dtype=np.int64))
    with pytest.raises(PredictionError) as err:
        score_predictions([Sample("a", np.zeros((4, 5), np.uint8)), Sample("b", np.zeros((4, 5), np.uint8))],
                          str(tmp_path), 3)
    msg = str(err.value)
    assert "b" in msg and str(tmp_path) in msg and "\n" not in msg
    with pytest.raises(PredictionError) as err:
        score_predictions([Sample("a", np.zeros((5, 4), np.uint8))], str(tmp_path), 3)
    assert "4x5" in str(err.value) and "5x4" in str(err.value) and "\n" not in str(err.value)
    save_prediction(str(tmp_path), "c", np.full((2, 2), 9))
    with pytest.raises(MetricError, match="image c: predicted label 9"):
        score_predictions([Sample("c", np.zeros((2, 2), np.uint8))], str(tmp_path), 3)
    with pytest.raises(PredictionError, match="num_classes"):
        save_prediction(str(tmp_path), "d", np.full((2, 2), 9), num_classes=3)
