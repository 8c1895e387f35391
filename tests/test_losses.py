"""Losses against hand computations: focal (both reductions), dice over present classes, counterfactual, weights.

The expected values are written out with ``math`` from the formulas, never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from magicseg_models.config import LossConfig
from magicseg_models.training.losses import MagicSegLoss, counterfactual_loss, dice_loss, sigmoid_focal_loss


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def focal(z: float, t: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    p = sig(z)
    ce = -math.log(p) if t else -math.log(1 - p)
    p_t = p if t else 1 - p
    alpha_t = alpha if t else 1 - alpha
    return alpha_t * (1 - p_t) ** gamma * ce


# one image, two sampled classes, a 1 x 2 image: class 0 is present on pixel 0, class 1 is absent
LOGITS = [[2.0, -1.0], [0.5, 0.0]]
TARGETS = [[1, 0], [0, 0]]


def tensors():
    logits = torch.tensor(LOGITS, dtype=torch.float32).reshape(1, 2, 1, 2)
    targets = torch.tensor(TARGETS, dtype=torch.float32).reshape(1, 2, 1, 2)
    present = torch.tensor([[True, False]])
    return logits, targets, present


def elementwise() -> list[list[float]]:
    return [[focal(z, t) for z, t in zip(zs, ts)] for zs, ts in zip(LOGITS, TARGETS)]


def test_focal_loss_elementwise_and_reductions():
    logits, targets, present = tensors()
    e = elementwise()
    none = sigmoid_focal_loss(logits, targets, reduction="none")
    torch.testing.assert_close(none, torch.tensor(e).reshape(1, 2, 1, 2))
    mean = sigmoid_focal_loss(logits, targets, reduction="mean")
    assert mean.item() == pytest.approx(sum(map(sum, e)) / 4, rel=1e-5)
    # ZegCLIP: per-mask pixel mean, summed over every sampled mask, divided by the present masks (1 here)
    zeg = sigmoid_focal_loss(logits, targets, reduction="zegclip", present=present)
    assert zeg.item() == pytest.approx((e[0][0] + e[0][1]) / 2 + (e[1][0] + e[1][1]) / 2, rel=1e-5)
    # num_masks given (e.g. averaged over workers) replaces the local count
    zeg4 = sigmoid_focal_loss(logits, targets, reduction="zegclip", num_masks=4.0)
    assert zeg4.item() == pytest.approx(((e[0][0] + e[0][1]) / 2 + (e[1][0] + e[1][1]) / 2) / 4, rel=1e-5)
    # other alpha / gamma, and alpha < 0 = no class balancing
    other = sigmoid_focal_loss(logits, targets, alpha=0.5, gamma=0.0, reduction="mean")
    assert other.item() == pytest.approx(
        sum(focal(z, t, 0.5, 0.0) for zs, ts in zip(LOGITS, TARGETS) for z, t in zip(zs, ts)) / 4, rel=1e-5)
    plain = sigmoid_focal_loss(logits, targets, alpha=-1, gamma=0.0, reduction="mean")
    bce = [-math.log(sig(2.0)), -math.log(1 - sig(-1.0)), -math.log(1 - sig(0.5)), -math.log(0.5)]
    assert plain.item() == pytest.approx(sum(bce) / 4, rel=1e-5)


def test_focal_loss_with_ignored_pixels():
    logits, targets, present = tensors()
    e = elementwise()
    ignore = torch.tensor([[[False, True]]])  # B x H x W: pixel 1 is padding
    mean = sigmoid_focal_loss(logits, targets, ignore=ignore, reduction="mean")
    assert mean.item() == pytest.approx((e[0][0] + e[1][0]) / 2, rel=1e-5)
    zeg = sigmoid_focal_loss(logits, targets, ignore=ignore, reduction="zegclip", present=present)
    assert zeg.item() == pytest.approx(e[0][0] + e[1][0], rel=1e-5)


def test_padded_class_positions_are_in_neither_term():
    logits, targets, present = tensors()
    e = elementwise()
    valid = torch.tensor([[True, False]])  # position 1 is padding (sampling.draw_batch)
    mean = sigmoid_focal_loss(logits, targets, reduction="mean", valid=valid)
    assert mean.item() == pytest.approx((e[0][0] + e[0][1]) / 2, rel=1e-5)
    zeg = sigmoid_focal_loss(logits, targets, reduction="zegclip", present=present, valid=valid)
    assert zeg.item() == pytest.approx((e[0][0] + e[0][1]) / 2, rel=1e-5)
    zeg_ignore = sigmoid_focal_loss(logits, targets, reduction="zegclip", present=present, valid=valid,
                                    ignore=torch.tensor([[[False, True]]]))
    assert zeg_ignore.item() == pytest.approx(e[0][0], rel=1e-5)
    both = torch.tensor([[True, True]])
    p0, p1 = sig(2.0), sig(-1.0)
    only_first = 1 - (2 * p0 + 1) / ((p0 + p1) + 1 + 1)
    assert dice_loss(logits, targets, both, valid=valid).item() == pytest.approx(only_first, rel=1e-5)


def test_focal_loss_is_finite_for_extreme_logits():
    logits = torch.tensor([[[[1e4, -1e4]]]], requires_grad=True)
    targets = torch.tensor([[[[0.0, 1.0]]]])
    loss = sigmoid_focal_loss(logits, targets, reduction="mean")
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(logits.grad).all()


def test_dice_over_present_classes_only():
    logits, targets, present = tensors()
    p0, p1 = sig(2.0), sig(-1.0)
    expected = 1 - (2 * p0 * 1 + 1) / ((p0 + p1) + 1 + 1)
    assert dice_loss(logits, targets, present).item() == pytest.approx(expected, rel=1e-5)
    # the absent class does not count, whatever its logits
    worse = logits.clone()
    worse[0, 1] = 50.0
    assert dice_loss(worse, targets, present).item() == pytest.approx(expected, rel=1e-5)
    # both present: the mean over present masks (class 1 has an empty target: 1 - 1 / (sum p + 1))
    both = torch.tensor([[True, True]])
    q0, q1 = sig(0.5), sig(0.0)
    expected_both = (expected + (1 - 1 / (q0 + q1 + 1))) / 2
    assert dice_loss(logits, targets, both).item() == pytest.approx(expected_both, rel=1e-5)
    # ignored pixels drop out of the sums
    ignore = torch.tensor([[[False, True]]])
    expected_ignore = 1 - (2 * p0 + 1) / (p0 + 1 + 1)
    assert dice_loss(logits, targets, present, ignore=ignore).item() == pytest.approx(expected_ignore, rel=1e-5)
    # nothing present: no dice term
    assert dice_loss(logits, targets, torch.zeros(1, 2, dtype=torch.bool)).item() == 0.0


def test_counterfactual_loss():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 4.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [-1.0, 0.0], [4.0, 3.0], [0.0, 5.0]])
    # cosines: 0 (orthogonal), -1 (opposite, clipped to 0), 24/25, 1
    assert counterfactual_loss(a, b).item() == pytest.approx((0 + 0 + 24 / 25 + 1) / 4, rel=1e-6)
    assert counterfactual_loss(a[:2], b[:2]).item() == 0.0
    assert counterfactual_loss(a[:0], b[:0]).item() == 0.0
    with pytest.raises(ValueError):
        counterfactual_loss(a, b[:2])


def test_magicseg_loss_applies_weights_and_sums():
    logits, targets, present = tensors()
    e = elementwise()
    focal_zeg = (e[0][0] + e[0][1]) / 2 + (e[1][0] + e[1][1]) / 2
    p0, p1 = sig(2.0), sig(-1.0)
    dice = 1 - (2 * p0 + 1) / (p0 + p1 + 2)
    cls = torch.tensor([[3.0, 4.0]])
    cls_cf = torch.tensor([[4.0, 3.0]])
    out = MagicSegLoss(LossConfig())(logits, targets, present, cls=cls, cls_counterfactual=cls_cf)
    assert set(out) == {"loss", "loss_focal", "loss_dice", "loss_cf"}
    assert out["loss_focal"].item() == pytest.approx(100 * focal_zeg, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(dice, rel=1e-5)
    assert out["loss_cf"].item() == pytest.approx(24 / 25, rel=1e-5)
    assert out["loss"].item() == pytest.approx(100 * focal_zeg + dice + 24 / 25, rel=1e-5)

    config = LossConfig(focal_weight=2, dice_weight=3, counterfactual_weight=5, focal_reduction="mean")
    out = MagicSegLoss(config)(logits, targets, present, cls=cls, cls_counterfactual=cls_cf)
    assert out["loss_focal"].item() == pytest.approx(2 * sum(map(sum, e)) / 4, rel=1e-5)
    assert out["loss_dice"].item() == pytest.approx(3 * dice, rel=1e-5)
    assert out["loss_cf"].item() == pytest.approx(5 * 24 / 25, rel=1e-5)


def test_counterfactual_off_and_missing_inputs():
    logits, targets, present = tensors()
    out = MagicSegLoss(LossConfig(counterfactual=False))(logits, targets, present)
    assert out["loss_cf"].item() == 0.0
    assert out["loss"].item() == pytest.approx((out["loss_focal"] + out["loss_dice"]).item())
    with pytest.raises(ValueError, match="counterfactual"):
        MagicSegLoss(LossConfig())(logits, targets, present)


def test_low_resolution_logits_are_resized_to_the_targets_and_gradients_flow():
    logits = torch.zeros(2, 3, 4, 4, requires_grad=True)
    targets = torch.zeros(2, 3, 8, 8)
    targets[0, 0, :4, :4] = 1
    present = targets.flatten(2).amax(-1) > 0
    out = MagicSegLoss(LossConfig(counterfactual=False))(logits, targets, present)
    out["loss"].backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # constant zero logits: every pixel has p = 0.5, resizing changes nothing
    f_pos, f_neg = focal(0.0, 1), focal(0.0, 0)
    per_mask = [(16 * f_pos + 48 * f_neg) / 64] + [f_neg] * 5
    assert out["loss_focal"].item() == pytest.approx(100 * sum(per_mask) / 1, rel=1e-5)
