"""Which samples and which annotations training uses: ``train.filter`` and ``train.labels`` (docs/quality.md).

Both work on rows as the loader reads them (dicts of the needed columns) and never rewrite the dataset.
Schema-1 rows lack the version-2 fields; they read as the schema's defaults: no context classes, every
annotation asked, no quality scores.

Filters (``train.filter.*``), each off when None:

- ``clip_score_min``: the row's ``clip_score`` is lower.
- ``counterfactual_score_max``: one of the row's ``counterfactual_scores`` (one per asked class) is higher; an
  empty list counts as not stored.
- ``predicted_iou_min`` / ``stability_score_min`` / ``box_fill_min``: an asked-class annotation's score is lower.
  One bad asked mask removes the sample: its other masks do not make the wrong pixels right, and the build keeps
  or drops samples on their asked classes alone in the same way. A sample with no asked annotation has nothing to
  judge and stays.

A score a filter needs that the dataset does not hold (schema 1, a build without the quality stage, a segmenter
without SAM's scores) is refused, not guessed: keeping such samples or dropping them would both change the data
without saying so. Context annotations are not filtered out of a sample; under ``label`` one that fails a mask
filter (or has no score for it) is not trained as a positive: its class falls back to ``ignore``.

Labels (``train.labels.context``):

- ``ignore``: targets are the asked-class annotations; every context class (``context_class_ids`` and the class of
  any ``asked=false`` annotation) is excluded from the image's random negatives.
- ``label``: the ``asked=false`` annotations join the targets (their classes become own classes, positives like the
  asked ones); context classes without a usable annotation are excluded from the negatives as under ``ignore``.
- ``off``: the paper: targets are the asked-class annotations; nothing is excluded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from magicseg_models.errors import ConfigError

CONTEXT_MODES = ("ignore", "label", "off")
ROW_SCORES = {"clip_score_min": "clip_score", "counterfactual_score_max": "counterfactual_scores"}
MASK_SCORES = {"predicted_iou_min": "predicted_iou", "stability_score_min": "stability_score",
               "box_fill_min": "box_fill"}


def active_filters(filter_config: Any) -> dict[str, float]:
    """The filters that are on: {name: threshold}, in the config's order."""
    if filter_config is None:
        return {}
    values = filter_config if isinstance(filter_config, dict) else filter_config.model_dump()
    return {name: float(v) for name, v in values.items() if v is not None}


def filter_fields(filters: dict[str, float]) -> tuple[list[str], list[str]]:
    """(row columns, annotation fields) the active filters read."""
    return ([ROW_SCORES[n] for n in ROW_SCORES if n in filters],
            [MASK_SCORES[n] for n in MASK_SCORES if n in filters])


def _below(value: float, threshold: float) -> bool:
    """At the scores' own float32 precision: a stored 0.7 is not lower than a threshold of 0.7."""
    return bool(np.float32(value) < np.float32(threshold))


def is_asked(annotation: dict) -> bool:
    return annotation.get("asked") is not False  # schema 1 has no such field: every annotation was asked for


def _mask_failures(annotation: dict, filters: dict[str, float]) -> tuple[list[str], list[str]]:
    failed, missing = [], []
    for name, key in MASK_SCORES.items():
        if name in filters:
            value = annotation.get(key)
            if value is None:
                missing.append(name)
            elif _below(value, filters[name]):
                failed.append(name)
    return failed, missing


def judge_row(row: dict, filters: dict[str, float]) -> tuple[list[str], list[str]]:
    """(filters that remove this row, filters whose score the row lacks)."""
    failed, missing = [], []
    if "clip_score_min" in filters:
        value = row.get("clip_score")
        if value is None:
            missing.append("clip_score_min")
        elif _below(value, filters["clip_score_min"]):
            failed.append("clip_score_min")
    if "counterfactual_score_max" in filters:
        scores = row.get("counterfactual_scores")
        if not scores or any(s is None for s in scores):  # [] too: no counterfactual was scored
            missing.append("counterfactual_score_max")
        elif any(_below(filters["counterfactual_score_max"], s) for s in scores):
            failed.append("counterfactual_score_max")
    for annotation in row.get("annotations") or []:
        if is_asked(annotation):
            f, m = _mask_failures(annotation, filters)
            failed += [n for n in f if n not in failed]
            missing += [n for n in m if n not in missing]
    return failed, missing


def missing_score_error(name: str, where: str, count: int | None = None, total: int | None = None) -> ConfigError:
    key = ROW_SCORES.get(name) or MASK_SCORES[name]
    share = f" for {count} of {total} samples" if count is not None else ""
    return ConfigError(f"train.filter.{name} is set, but {where} does not store {key}{share} (a schema-1 "
                       "dataset, or a build that did not compute it): unset the filter, or rebuild the dataset")


def keeps(row: dict, filters: dict[str, float], where: str) -> bool:
    """The worker's predicate: False when a filter removes the row; a missing score raises (module doc)."""
    if not filters:
        return True
    failed, missing = judge_row(row, filters)
    if missing:
        raise missing_score_error(missing[0], where)
    return not failed


def training_targets(row: dict, context: str, filters: dict[str, float] | None = None
                     ) -> tuple[list[dict], list[int]]:
    """(annotations whose masks are targets, class ids never drawn as this image's random negatives)."""
    if context not in CONTEXT_MODES:
        raise ConfigError(f"train.labels.context must be one of {', '.join(CONTEXT_MODES)}, got {context!r}")
    annotations = row.get("annotations") or []
    targets = [a for a in annotations if is_asked(a)]
    if context == "off":
        return targets, []
    unasked = [a for a in annotations if not is_asked(a)]
    named = {int(c) for c in row.get("context_class_ids") or []} | {int(a["class_id"]) for a in unasked
                                                                     if a.get("class_id") is not None}
    if context == "label":
        mask_filters = {n: v for n, v in (filters or {}).items() if n in MASK_SCORES}
        rejected = {a.get("class_id") for a in unasked if any(_mask_failures(a, mask_filters))}
        targets += [a for a in unasked if a.get("class_id") not in rejected]
    own = {int(a["class_id"]) for a in targets if a.get("class_id") is not None}
    return targets, sorted(named - own)


@dataclass
class FilterReport:
    """How many samples the filters remove: ``removed[name]`` counts the samples failing that filter (a sample that
    fails two counts in both); ``total - kept`` is the union."""

    total: int = 0
    kept: int = 0
    thresholds: dict[str, float] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)

    def add(self, row: dict) -> list[str]:
        failed, missing = judge_row(row, self.thresholds)
        self.total += 1
        self.kept += not failed
        for name in failed:
            self.removed[name] = self.removed.get(name, 0) + 1
        return missing

    def line(self) -> str:
        parts = ", ".join(f"{name} {self.thresholds[name]:g}: {self.removed.get(name, 0)}" for name in self.thresholds)
        return (f"train.filter removed {self.total - self.kept} of {self.total} samples ({parts}); "
                f"{self.kept} remain")

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "kept": self.kept, "thresholds": dict(self.thresholds),
                "removed": {name: self.removed.get(name, 0) for name in self.thresholds}}
