"""Segmentation metrics: a dataset-wide confusion matrix (mIoU) and point-label IoU (OpenImages-v7 p-mIoU).

mIoU follows the usual protocol (mmseg, GroupViT, ZegCLIP): ONE int64 confusion matrix summed over the whole
dataset, then IoU per class, then the mean over classes. It is not a mean of per-image IoUs. A class absent from
both the ground truth and the predictions of the whole dataset has IoU 0/0: it is reported as NaN and left out
of the mean. A class that is predicted but never in the ground truth has IoU 0 and counts.

:class:`ConfusionMatrix` builds the matrix with a single ``torch.bincount`` per update on the device the labels
are on, so GPU predictions are scored without a copy to the CPU. :func:`histc_intersect_and_union` is mmseg's
own per-image method (three ``torch.histc`` passes on CPU tensors), kept only as the reference the tests and
``benchmarks/bench_eval.py`` compare against.
"""

from __future__ import annotations

import math
from typing import Any, Hashable, Iterable, Literal, Sequence

import numpy as np
import torch

from magicseg_models.errors import MagicSegError

__all__ = [
    "MetricError", "ConfusionMatrix", "histc_intersect_and_union", "histc_reference_iou",
    "PointIoU", "POINT_YES", "POINT_NO", "POINT_UNSURE", "sample_points",
]


class MetricError(MagicSegError):
    """Labels or predictions that cannot be scored (out-of-range value, shape mismatch, wrong class count)."""


def _as_tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x
    arr = np.asarray(x)
    if arr.dtype == np.uint16 or arr.dtype == np.uint32 or arr.dtype == np.uint64:
        # torch's support for unsigned types wider than 8 bits is partial: widen on the host (labels fit int64)
        arr = arr.astype(np.int64)
    arr = np.ascontiguousarray(arr)
    if not arr.flags.writeable:  # e.g. np.asarray(PIL image); torch warns on read-only buffers
        arr = arr.copy()
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------------------------- mIoU
class ConfusionMatrix:
    """Dataset-wide int64 confusion matrix; rows are ground truth, columns are predictions.

    ``update(pred, target)`` takes two label maps of the same shape (torch tensors on any device, or numpy
    arrays; any integer dtype, any number of dimensions, so a batch works too). Pixels whose *target* is
    ``ignore_index`` are skipped whatever their prediction. Every other target and prediction must lie in
    ``[0, num_classes)``; anything else raises :class:`MetricError` naming the value (a wrong label map must
    fail loudly, not shift counts into a neighbouring class as an unchecked ``target * n + pred`` would).

    The matrix lives on ``device`` when given, else on the device of the first update (a GPU evaluation
    accumulates on the GPU; only ``compute`` copies the n x n matrix to the host). Each update costs one host
    sync (value range) plus one more when values >= num_classes are present (usually the ignore label), so an
    error can name the offending value at the update that brought it. ``ignore_index`` should lie outside
    ``[0, num_classes)``; if it does not, that class is simply never scored.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, device: str | torch.device | None = None):
        if num_classes < 1:
            raise MetricError(f"num_classes must be at least 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.device = torch.device(device) if device is not None else None
        self._matrix: torch.Tensor | None = None

    # -- accumulation
    @property
    def matrix(self) -> torch.Tensor:
        """The n x n int64 matrix (zeros before the first update)."""
        if self._matrix is None:
            n = self.num_classes
            return torch.zeros(n, n, dtype=torch.int64, device=self.device or "cpu")
        return self._matrix

    def reset(self) -> None:
        self._matrix = None

    def _add(self, counts: torch.Tensor) -> None:
        if self._matrix is None:
            if self.device is None:
                self.device = counts.device
            n = self.num_classes
            # a fresh n x n tensor: counts may be a view into a larger histogram or another matrix
            self._matrix = torch.zeros(n, n, dtype=torch.int64, device=self.device)
        self._matrix += counts.to(self._matrix.device)

    def update(self, pred: Any, target: Any) -> "ConfusionMatrix":
        pred_t, target_t = _as_tensor(pred), _as_tensor(target)
        if tuple(pred_t.shape) != tuple(target_t.shape):
            raise MetricError(f"prediction shape {tuple(pred_t.shape)} does not match ground truth shape "
                              f"{tuple(target_t.shape)}")
        for name, x in (("prediction", pred_t), ("ground truth", target_t)):
            if x.is_floating_point() or x.is_complex():
                raise MetricError(f"{name} labels must be integers, got {x.dtype}")
        if self.device is not None:
            pred_t, target_t = pred_t.to(self.device), target_t.to(self.device)
        elif pred_t.device != target_t.device:
            pred_t = pred_t.to(target_t.device)
        p = pred_t.reshape(-1)
        t = target_t.reshape(-1)
        # bool has no aminmax; torch's wide unsigned types have few kernels
        if p.dtype == torch.bool:
            p = p.to(torch.uint8)
        elif p.dtype in (torch.uint16, torch.uint32, torch.uint64):
            p = p.long()
        if t.dtype == torch.bool:
            t = t.to(torch.uint8)
        elif t.dtype in (torch.uint16, torch.uint32, torch.uint64):
            t = t.long()
        if t.numel() == 0:
            return self
        n = self.num_classes
        # One host sync for the value range decides the path. Fast path: bincount over base K = max(n, largest
        # value + 1) instead of n, so the ignore label and any out-of-range value fall in bins of their own and
        # the range check is a look at the K x K histogram rather than a dozen full-size mask passes (20x faster
        # on CPU for 512^2 uint8 maps). Negative values or a huge K (e.g. ignore 65535) take the general path.
        t_mm, p_mm = t.aminmax(), p.aminmax()
        t_lo, t_hi, p_lo, p_hi = torch.stack([t_mm.min.long(), t_mm.max.long(), p_mm.min.long(),
                                              p_mm.max.long()]).tolist()
        k = max(n, t_hi + 1, p_hi + 1)
        if min(t_lo, p_lo) >= 0 and k * k <= max(4 * n * n, 1 << 16):
            index_dtype = torch.int32 if k * k < 2**31 else torch.int64
            index = torch.add(p.to(index_dtype), t.to(index_dtype), alpha=k)
            hist = torch.bincount(index, minlength=k * k).reshape(k, k)
            if 0 <= self.ignore_index < k:
                hist[self.ignore_index] = 0  # ignored pixels: whatever was predicted there does not count
            if k > n and bool(hist[n:].any() | hist[:n, n:].any()):
                self._raise_out_of_range(hist[n:].any(1).nonzero() + n, hist[:n, n:].any(0).nonzero() + n)
            self._add(hist[:n, :n])
            return self
        # general path: explicit masks; ignored pixels go to an extra bin n*n (no data-dependent shape)
        p, t = p.long(), t.long()
        valid = t != self.ignore_index
        t_bad = valid & ((t < 0) | (t >= n))
        p_bad = valid & ((p < 0) | (p >= n))
        if bool((t_bad | p_bad).any()):
            self._raise_out_of_range(t[t_bad][:1], p[p_bad][:1])
        index = torch.where(valid, t * n + p, torch.full_like(t, n * n))
        self._add(torch.bincount(index, minlength=n * n + 1)[: n * n].reshape(n, n))
        return self

    def _raise_out_of_range(self, bad_targets: torch.Tensor, bad_preds: torch.Tensor) -> None:
        n = self.num_classes
        if bad_targets.numel():
            raise MetricError(f"ground-truth label {int(bad_targets.reshape(-1)[0])} is out of range for {n} "
                              f"classes (valid: 0..{n - 1}, ignore: {self.ignore_index})")
        raise MetricError(f"predicted label {int(bad_preds.reshape(-1)[0])} is out of range for {n} classes "
                          f"(valid: 0..{n - 1})")

    def merge(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        """Add another matrix's counts (e.g. from another worker); class counts must match."""
        if other.num_classes != self.num_classes:
            raise MetricError(f"cannot merge a {other.num_classes}-class confusion matrix into a "
                              f"{self.num_classes}-class one")
        if other._matrix is not None:
            self._add(other._matrix)
        return self

    # -- results
    def compute(self) -> dict[str, Any]:
        """Metrics from the accumulated matrix.

        Returns ``miou`` (mean IoU over classes present in the ground truth or the predictions),
        ``per_class_iou`` (list, NaN for classes absent from both), ``pixel_accuracy`` (correct / scored pixels),
        ``mean_accuracy`` (mean over classes present in the ground truth of correct / GT pixels, mmseg's mAcc),
        ``per_class_accuracy`` (NaN where the class has no GT pixel) and ``pixels`` (scored pixels). Values
        are fractions in [0, 1]; NaN when nothing was scored.
        """
        m = self.matrix.detach().to("cpu", torch.float64)
        tp = m.diagonal()
        gt = m.sum(dim=1)
        pred = m.sum(dim=0)
        union = gt + pred - tp
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        iou = torch.where(union > 0, tp / union.clamp(min=1), nan)
        acc = torch.where(gt > 0, tp / gt.clamp(min=1), nan)
        total = float(m.sum())
        return {
            "miou": float(torch.nanmean(iou)) if bool((union > 0).any()) else math.nan,
            "per_class_iou": iou.tolist(),
            "pixel_accuracy": float(tp.sum()) / total if total else math.nan,
            "mean_accuracy": float(torch.nanmean(acc)) if bool((gt > 0).any()) else math.nan,
            "per_class_accuracy": acc.tolist(),
            "pixels": int(total),
        }


def histc_intersect_and_union(pred: Any, label: Any, num_classes: int, ignore_index: int = 255
                              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """mmseg 0.x ``intersect_and_union`` for one image: reference only (tests and benchmark).

    Inputs are moved to the CPU as mmseg does (its ``pre_eval`` calls ``.cpu().numpy()`` on each prediction),
    ignored pixels are dropped, then three ``torch.histc`` passes count the intersection, the predicted area
    and the label area. Returns ``(area_intersect, area_union, area_pred, area_label)`` as float tensors.
    Out-of-range values are silently dropped by ``histc`` (the weakness :class:`ConfusionMatrix` fixes).
    """
    pred_t = _as_tensor(pred).cpu()
    label_t = _as_tensor(label).cpu()
    mask = label_t != ignore_index
    pred_t = pred_t[mask]
    label_t = label_t[mask]
    intersect = pred_t[pred_t == label_t]
    hi = num_classes - 1
    area_intersect = torch.histc(intersect.float(), bins=num_classes, min=0, max=hi)
    area_pred = torch.histc(pred_t.float(), bins=num_classes, min=0, max=hi)
    area_label = torch.histc(label_t.float(), bins=num_classes, min=0, max=hi)
    return area_intersect, area_pred + area_label - area_intersect, area_pred, area_label


def histc_reference_iou(pairs: Iterable[tuple[Any, Any]], num_classes: int, ignore_index: int = 255
                        ) -> np.ndarray:
    """Per-class IoU the mmseg way: sum :func:`histc_intersect_and_union` areas over (pred, label) pairs.

    NaN where the union is empty (mmseg divides 0 by 0 and ``nanmean`` skips it).
    """
    inter = torch.zeros(num_classes, dtype=torch.float64)
    union = torch.zeros(num_classes, dtype=torch.float64)
    for pred, label in pairs:
        i, u, _, _ = histc_intersect_and_union(pred, label, num_classes, ignore_index)
        inter += i.double()
        union += u.double()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (inter / union).numpy()


# --------------------------------------------------------------------------------------------- p-mIoU
POINT_YES, POINT_NO, POINT_UNSURE = 1, 0, -1
_POINT_CODES = {"yes": POINT_YES, "no": POINT_NO, "unsure": POINT_UNSURE}


def _point_codes(labels: Sequence[Any] | np.ndarray) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.dtype.kind in "USO":
        out = np.empty(arr.shape, dtype=np.int8)
        for i, value in enumerate(arr.reshape(-1)):
            code = _POINT_CODES.get(str(value).strip().lower())
            if code is None:
                raise MetricError(f"point label {value!r} is not one of yes, no, unsure")
            out.reshape(-1)[i] = code
        return out
    if arr.dtype == bool:
        return arr.astype(np.int8)  # True = yes, False = no
    codes = arr.astype(np.int64)
    bad = ~np.isin(codes, (POINT_YES, POINT_NO, POINT_UNSURE))
    if bad.any():
        raise MetricError(f"point label {codes[bad][0]} is not one of 1 (yes), 0 (no), -1 (unsure)")
    return codes.astype(np.int8)


def sample_points(score_map: Any, xs: Any, ys: Any) -> np.ndarray:
    """Scores of an H x W map at normalised point coordinates (OpenImages X, Y in [0, 1]).

    A point falls in pixel ``(min(floor(y * H), H - 1), min(floor(x * W), W - 1))``: the pixel whose area
    contains it (x = 1.0 is the last column). Normalised coordinates make the map's resolution irrelevant, so
    scores at the original or the resized image size both work.
    """
    m = _as_tensor(score_map)
    h, w = int(m.shape[-2]), int(m.shape[-1])
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.size and (x.min() < 0 or x.max() > 1 or y.min() < 0 or y.max() > 1):
        raise MetricError("point coordinates must be normalised to [0, 1]")
    col = np.minimum(np.floor(x * w).astype(np.int64), w - 1)
    row = np.minimum(np.floor(y * h).astype(np.int64), h - 1)
    idx = torch.from_numpy(row * w + col).to(m.device)
    return m.reshape(-1)[idx].float().cpu().numpy()


class PointIoU:
    """p-mIoU on point labels (OpenImages-v7 protocol).

    Per image, for each class with at least one yes/no point in that image (a *present* class), the class's
    score map is binarised at ``threshold`` (score >= 0.5 is a positive prediction) and read only at the labelled
    points: a ``yes`` point is a positive, a ``no`` point a negative, an ``unsure`` point is skipped. With
    TP = yes & predicted positive, FP = no & predicted positive, FN = yes & predicted negative and
    TN = no & predicted negative:

    - foreground IoU = TP / (TP + FP + FN),
    - background IoU = TN / (TN + FN + FP)  (the same points with the roles of positive and negative swapped),
    - the unit's p-IoU = mean of its foreground and background IoU.

    The *unit* depends on ``aggregation``:

    - ``per_class`` (default): TP/FP/FN/TN of each class are summed over all images first, then each class gets
      its fg IoU, bg IoU and p-IoU, and p-mIoU is the mean over classes present in at least one image. Like the
      dataset-wide confusion matrix of mIoU, an image with many points weighs more within its class, and
      every class weighs the same.
    - ``per_image_class``: each (image, present class) pair is a unit; p-mIoU is the mean over all pairs, so
      frequent classes weigh more.

    Edge case: an IoU whose union is empty is undefined and left out, as mIoU leaves out classes absent from
    both ground truth and prediction. That happens only to the background IoU of a unit with yes points only,
    all predicted positive (e.g. a class with 3 yes points, all >= 0.5: fg IoU 1, bg IoU undefined, p-IoU 1),
    or to the foreground IoU of a unit with no points only, all predicted negative (fg undefined, bg 1, p-IoU
    1). If one of those points is wrong, the other IoU is defined and 0 (2 yes points, one predicted negative:
    fg 1/2, bg 0/1 = 0, p-IoU 0.25). A unit always has at least one defined IoU, since each yes/no point is in
    the foreground or the background union. ``fg_iou`` and ``bg_iou`` in the result are the means over units
    where they are defined, so p-mIoU is not always their average.

    Class keys are any hashable (OpenImages MIDs, indices). Use :meth:`update` with the score of each point's
    class at that point, or :meth:`update_maps` with score maps and normalised point coordinates. Both
    aggregations are accumulated at once; ``compute(aggregation)`` can ask for either.
    """

    def __init__(self, aggregation: Literal["per_class", "per_image_class"] = "per_class", threshold: float = 0.5):
        self._check_aggregation(aggregation)
        self.aggregation = aggregation
        self.threshold = float(threshold)
        self.class_counts: dict[Hashable, np.ndarray] = {}  # class -> int64 [tp, fp, fn, tn]
        self._pair_sums = np.zeros(3, dtype=np.float64)  # sums of fg, bg, p over pairs where defined
        self._pair_defined = np.zeros(3, dtype=np.int64)  # number of pairs where fg, bg, p are defined
        self.images = 0
        self.points = 0  # yes/no points scored (unsure ones are not counted)

    @staticmethod
    def _check_aggregation(aggregation: str) -> None:
        if aggregation not in ("per_class", "per_image_class"):
            raise MetricError(f"unknown p-mIoU aggregation {aggregation!r}; use per_class or per_image_class")

    @staticmethod
    def _ious(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> tuple[np.ndarray, ...]:
        fg_union = tp + fp + fn
        bg_union = tn + fn + fp
        with np.errstate(invalid="ignore", divide="ignore"):
            fg = np.where(fg_union > 0, tp / np.maximum(fg_union, 1), np.nan)
            bg = np.where(bg_union > 0, tn / np.maximum(bg_union, 1), np.nan)
        both = np.stack([fg, bg])
        defined = ~np.isnan(both)
        p = np.where(defined.any(0), np.nansum(both, 0) / np.maximum(defined.sum(0), 1), np.nan)
        return fg, bg, p

    def update(self, classes: Sequence[Hashable] | np.ndarray, labels: Sequence[Any] | np.ndarray,
               scores: Sequence[float] | np.ndarray) -> "PointIoU":
        """Score ONE image's points: parallel sequences of class key, label (yes/no/unsure, as strings, as
        1/0/-1, or as booleans) and the class's score at the point. Classes whose points are all unsure are
        not present and add nothing."""
        codes = _point_codes(labels)
        if isinstance(classes, np.ndarray):
            cls = classes
        else:  # element-wise fill: np.asarray would split tuple keys into a 2-D array
            cls = np.empty(len(classes), dtype=object)
            for i, key in enumerate(classes):
                cls[i] = key
        sc = np.asarray(scores, dtype=np.float64)
        if not (len(cls) == len(codes) == len(sc)):
            raise MetricError(f"points need one class, label and score each; got {len(cls)} classes, "
                              f"{len(codes)} labels, {len(sc)} scores")
        self.images += 1
        keep = codes != POINT_UNSURE
        if not keep.any():
            return self
        cls, codes, sc = cls[keep], codes[keep], sc[keep]
        pos_pred = sc >= self.threshold
        yes = codes == POINT_YES
        keys, inverse = np.unique(cls, return_inverse=True) if cls.dtype != object else _unique_objects(cls)
        k = len(keys)
        tp = np.bincount(inverse, weights=yes & pos_pred, minlength=k)
        fp = np.bincount(inverse, weights=~yes & pos_pred, minlength=k)
        fn = np.bincount(inverse, weights=yes & ~pos_pred, minlength=k)
        tn = np.bincount(inverse, weights=~yes & ~pos_pred, minlength=k)
        counts = np.stack([tp, fp, fn, tn], axis=1).astype(np.int64)
        for key, row in zip(keys, counts):
            key = key.item() if isinstance(key, np.generic) else key
            acc = self.class_counts.get(key)
            if acc is None:
                self.class_counts[key] = row.copy()
            else:
                acc += row
        per_pair = np.stack(self._ious(tp, fp, fn, tn))  # 3 x k
        defined = ~np.isnan(per_pair)
        self._pair_sums += np.where(defined, per_pair, 0).sum(1)
        self._pair_defined += defined.sum(1)
        self.points += int(keep.sum())
        return self

    def update_maps(self, score_maps: Any, map_classes: Sequence[Hashable], classes: Sequence[Hashable],
                    xs: Any, ys: Any, labels: Sequence[Any]) -> "PointIoU":
        """Score ONE image from score maps: ``score_maps`` is K x H x W (probabilities) for the classes
        ``map_classes``; each point (class, normalised x, y, label) reads its class's map at
        :func:`sample_points`' pixel. A point whose class has no map raises."""
        maps = _as_tensor(score_maps)
        where = {key: i for i, key in enumerate(map_classes)}
        if len(where) != maps.shape[0]:
            raise MetricError(f"{maps.shape[0]} score maps for {len(map_classes)} class keys (duplicates?)")
        xs, ys = np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)
        scores = np.zeros(len(classes), dtype=np.float64)
        cls = list(classes)
        for key in dict.fromkeys(cls):
            if key not in where:
                raise MetricError(f"no score map for point class {key!r}")
            sel = np.array([c == key for c in cls])
            scores[sel] = sample_points(maps[where[key]], xs[sel], ys[sel])
        return self.update(cls, labels, scores)

    def merge(self, other: "PointIoU") -> "PointIoU":
        for key, row in other.class_counts.items():
            if key in self.class_counts:
                self.class_counts[key] += row
            else:
                self.class_counts[key] = row.copy()
        self._pair_sums += other._pair_sums
        self._pair_defined += other._pair_defined
        self.images += other.images
        self.points += other.points
        return self

    def compute(self, aggregation: str | None = None) -> dict[str, Any]:
        """``p_miou``, ``fg_iou``, ``bg_iou`` (fractions; NaN when nothing was scored), ``aggregation``,
        ``units`` (classes or image-class pairs), ``classes``, ``images``, ``points``; with ``per_class`` also
        ``per_class`` = {class: p-IoU}."""
        aggregation = aggregation or self.aggregation
        self._check_aggregation(aggregation)
        out: dict[str, Any] = {"aggregation": aggregation, "classes": len(self.class_counts),
                               "images": self.images, "points": self.points}
        if aggregation == "per_class":
            keys = list(self.class_counts)
            if keys:
                c = np.stack([self.class_counts[k] for k in keys]).astype(np.float64)
                fg, bg, p = self._ious(c[:, 0], c[:, 1], c[:, 2], c[:, 3])
            else:
                fg = bg = p = np.zeros(0)
            mean = lambda a: float(np.nanmean(a)) if a.size and not np.isnan(a).all() else math.nan  # noqa: E731
            out.update(p_miou=mean(p), fg_iou=mean(fg), bg_iou=mean(bg), units=len(keys),
                       per_class={k: float(v) for k, v in zip(keys, p)})
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                fg, bg, p = (self._pair_sums / np.where(self._pair_defined > 0, self._pair_defined, np.nan))
            out.update(p_miou=float(p), fg_iou=float(fg), bg_iou=float(bg), units=int(self._pair_defined[2]))
        return out


def _unique_objects(values: np.ndarray) -> tuple[list[Hashable], np.ndarray]:
    # np.unique cannot sort mixed or unorderable keys; first-seen order is as good for counting
    index: dict[Hashable, int] = {}
    inverse = np.fromiter((index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values))
    return list(index), inverse
