"""MagicSeg's training loss: sigmoid focal x 100 + dice x 1 on sampled classes, + counterfactual x 1.

All mask losses work on the per-image sampled classes (``magicseg_models.training.sampling``): logits and
targets are ``B x m x H x W``, targets a dense multi-label float map (a pixel under no mask is a negative for
every class; a pixel under two classes' masks is positive for both, each class being its own sigmoid), and
``present`` ``B x m`` marks the (image, class) pairs with at least one positive pixel.

Reductions follow ZegCLIP's criterion (``models/losses/criterion.py``, from MaskFormer), which is not a plain mean:

- focal (``focal_reduction="zegclip"``, the default): the focal term is averaged over the pixels of each
  (image, class) mask, summed over *all* sampled masks - present or not - and divided by ``num_masks``, the number
  of present masks in the batch (at least 1). With m = 100 sampled classes and one or two present per image this is
  about 50-100 times the elementwise mean, on top of the x100 weight; ``"mean"`` (the elementwise mean) is there
  for comparison. Distributed training should pass ``num_masks`` averaged over workers, as ZegCLIP does.
- dice: ``1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)`` per present mask (p = sigmoid), summed over present
  masks, divided by the same ``num_masks``. Absent classes do not enter the dice term.
- counterfactual: ``mean_i max(0, cos(cls_i, cls_cf_i))`` over the images that have a counterfactual.

Crop padding (``ignore``, ``B x H x W`` bool, True on padded pixels): ZegCLIP pads its label maps with 255 and
its ``SegLossPlus`` builds the targets from ``label == class``, so a padded pixel is a negative of every class in
both terms, and the focal per-mask mean runs over all ``H x W`` pixels. That is ``loss.padding="negative"`` (the
default): targets are set to 0 on padded pixels, which stay in both terms. ``"ignore"`` passes it on: focal
means are then over the kept pixels and dice sums skip them (the functions below take ``ignore`` directly).
Padded class positions (``valid``, ``B x m`` bool, False on padding): when context classes are struck out of a
small vocabulary, a batch's subsets are padded to one width (``sampling.draw_batch``); a padded position is in
neither term, so padding changes no loss value.

The returned ``loss_focal``/``loss_dice``/``loss_cf`` are the *weighted* terms, so they add up to ``loss``, as
mmseg logs them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FocalReduction = str  # "zegclip" | "mean" | "none"


def _valid(ignore: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """ignore B x H x W (True = excluded) -> keep weights broadcastable to ``like`` (B x m x H x W)."""
    if ignore is None:
        return None
    keep = (~ignore.bool()).to(like.dtype)
    while keep.dim() < like.dim():
        keep = keep.unsqueeze(-3)
    return keep


def _num_masks(present: torch.Tensor | None, num_masks: float | torch.Tensor | None) -> torch.Tensor | float:
    if num_masks is not None:
        return torch.clamp(torch.as_tensor(num_masks, dtype=torch.float32), min=1.0)
    if present is None:
        raise ValueError("the zegclip reduction needs `present` or `num_masks`")
    return present.sum().float().clamp(min=1.0)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0, *,
                       ignore: torch.Tensor | None = None, reduction: FocalReduction = "mean",
                       present: torch.Tensor | None = None,
                       num_masks: float | torch.Tensor | None = None,
                       valid: torch.Tensor | None = None) -> torch.Tensor:
    """RetinaNet's focal loss on per-pixel sigmoids: ``alpha_t (1 - p_t)^gamma BCE``.

    ``logits``/``targets`` ``... x H x W``; ``valid`` (``...``, bool): masks to count (default all).
    ``reduction``: ``"mean"`` over all kept elements; ``"zegclip"`` per-mask
    pixel mean, summed over masks, divided by ``num_masks`` (default: ``present.sum()``, at least 1);
    ``"none"``: elementwise. ``alpha < 0`` turns the class balancing off.
    """
    logits = logits.float()
    targets = targets.to(logits.dtype)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    prob = logits.sigmoid()
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    keep = _valid(ignore, loss)
    if valid is not None:
        positions = valid.to(device=loss.device, dtype=loss.dtype)[..., None, None]
        keep = positions if keep is None else keep * positions
    if reduction == "none":
        return loss if keep is None else loss * keep
    if reduction == "mean":
        if keep is None:
            return loss.mean()
        keep = keep.expand_as(loss)
        return (loss * keep).sum() / keep.sum().clamp(min=1.0)
    if reduction == "zegclip":
        flat = loss.flatten(-2)
        if keep is None:
            per_mask = flat.mean(-1)
        else:
            k = keep.expand_as(loss).flatten(-2)
            per_mask = (flat * k).sum(-1) / k.sum(-1).clamp(min=1.0)
        return per_mask.sum() / _num_masks(present, num_masks)
    raise ValueError(f"unknown focal reduction {reduction!r} (zegclip, mean, none)")


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor, *,
              ignore: torch.Tensor | None = None, num_masks: float | torch.Tensor | None = None,
              valid: torch.Tensor | None = None) -> torch.Tensor:
    """Dice over present masks only: ``sum_present [1 - (2 sum(p t) + 1) / (sum(p) + sum(t) + 1)] / num_masks``.

    ``logits``/``targets`` ``B x m x H x W``, ``present`` ``B x m`` bool; ``num_masks`` defaults to the number of
    present masks (at least 1), i.e. the mean over present masks; 0 when nothing is present.
    """
    prob = logits.float().sigmoid()
    targets = targets.to(prob.dtype)
    keep = _valid(ignore, prob)
    if keep is not None:
        prob, targets = prob * keep, targets * keep
    inter = (prob * targets).flatten(-2).sum(-1)
    denom = prob.flatten(-2).sum(-1) + targets.flatten(-2).sum(-1)
    per_mask = 1 - (2 * inter + 1) / (denom + 1)
    if valid is not None:
        present = present & valid.to(present.device)
    return (per_mask * present.to(per_mask.dtype)).sum() / _num_masks(present, num_masks)


def counterfactual_loss(cls: torch.Tensor, cls_counterfactual: torch.Tensor) -> torch.Tensor:
    """``mean_i max(0, cos(cls_i, cls_cf_i))``: pushes an image's global embedding away from its counterfactual's.

    Orthogonal or opposed pairs cost nothing; an empty batch gives 0.
    """
    if cls.shape != cls_counterfactual.shape:
        raise ValueError(f"counterfactual embeddings {tuple(cls_counterfactual.shape)} do not match "
                         f"{tuple(cls.shape)}")
    if cls.shape[0] == 0:
        return cls.sum() * 0.0
    cos = F.cosine_similarity(cls.float(), cls_counterfactual.float(), dim=-1)
    return cos.clamp(min=0).mean()


class MagicSegLoss(nn.Module):
    """``forward(...)`` -> dict(loss, loss_focal, loss_dice, loss_cf), weighted by a :class:`LossConfig`."""

    def __init__(self, config=None):
        super().__init__()
        if config is None:
            from magicseg_models.config import LossConfig

            config = LossConfig()
        self.config = config

    def forward(self, mask_logits: torch.Tensor, targets: torch.Tensor, present: torch.Tensor, *,
                cls: torch.Tensor | None = None, cls_counterfactual: torch.Tensor | None = None,
                ignore: torch.Tensor | None = None, num_masks: float | torch.Tensor | None = None,
                valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``mask_logits``/``targets`` B x m x H x W (logits are resized to the targets bilinearly if they differ),
        ``present`` B x m, ``cls``/``cls_counterfactual`` K x D for the K images that have a counterfactual
        (required when the counterfactual term is on), ``ignore`` B x H x W (used with ``loss.padding=ignore``),
        ``num_masks`` and ``valid`` (B x m, False = padding) see the module doc."""
        c = self.config
        if mask_logits.shape[-2:] != targets.shape[-2:]:
            mask_logits = F.interpolate(mask_logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
        if num_masks is None:
            num_masks = present.sum().float().clamp(min=1.0)
        if c.padding == "negative" and ignore is not None:
            # SegLossPlus: a padded pixel (label 255) is no class's positive and stays in both terms
            targets = targets.masked_fill(ignore.bool().unsqueeze(1), 0)
            ignore = None
        focal = sigmoid_focal_loss(mask_logits, targets, c.focal_alpha, c.focal_gamma, ignore=ignore,
                                   reduction=c.focal_reduction, present=present, num_masks=num_masks, valid=valid)
        dice = dice_loss(mask_logits, targets, present, ignore=ignore, num_masks=num_masks, valid=valid)
        out = {"loss_focal": c.focal_weight * focal, "loss_dice": c.dice_weight * dice}
        if c.counterfactual:
            if cls is None or cls_counterfactual is None:
                raise ValueError("the counterfactual loss is on: pass cls and cls_counterfactual "
                                 "(or set loss.counterfactual=false)")
            out["loss_cf"] = c.counterfactual_weight * counterfactual_loss(cls, cls_counterfactual)
        else:
            out["loss_cf"] = torch.zeros((), device=mask_logits.device)
        out["loss"] = out["loss_focal"] + out["loss_dice"] + out["loss_cf"]
        return {"loss": out["loss"], "loss_focal": out["loss_focal"], "loss_dice": out["loss_dice"],
                "loss_cf": out["loss_cf"]}
