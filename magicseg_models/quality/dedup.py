"""Near-duplicate images: fingerprints, the rule that compares them, and the "later copy" decision.

``quality.dedup.method``:

- ``clip``: the fingerprint is the image's CLIP embedding (L2-normalised, the quality stage computes it anyway);
  two images are copies when their cosine is at or above ``threshold`` (default 0.95).
- ``phash``: a 64-bit perceptual hash (``imagehash.phash``: DCT of the 32 x 32 grey image, the 8 x 8 lowest
  frequencies against their median); copies when the Hamming distance is at or below ``threshold`` bits (default 4).

The rule: a kept image that copies an image kept EARLIER is dropped with reason ``duplicate``. Earlier means job
order inside a shard, and the decision is made where that order is whole: ``tasks.shard_work.build_shard`` writes
a shard's batches in job order and checks each batch's kept rows (:func:`later_copies`) against the rows it has
already written, before anything counts or writes them. A shard is rebuilt from its first job on a rerun or a
resume, so the same images give the same drops every time.

Across shards nothing is decided: shards are built in parallel and commit in whatever order they finish, so
"earlier" between two shards would depend on timing (and a resumed run would see a different set). Two copies in
different shards are both kept; deduplicate a finished dataset offline when that matters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from magicseg_models.errors import ConfigError, MagicSegError

DROP_DUPLICATE = "duplicate"
FINGERPRINT = "dedup_fingerprint"  # transient row key: the quality stage sets it, the shard writer reads it
DEFAULT_THRESHOLDS = {"clip": 0.95, "phash": 4.0}
PHASH_BITS = 64


@dataclass(frozen=True)
class DedupRule:
    """``method`` (clip | phash) and its threshold (cosine at or above / Hamming bits at or below)."""

    method: str
    threshold: float

    @classmethod
    def from_config(cls, config) -> DedupRule | None:
        """The rule of a :class:`~magicseg_models.config.DedupConfig` (None when ``method`` is off)."""
        if config.method == "off":
            return None
        threshold = DEFAULT_THRESHOLDS[config.method] if config.threshold is None else float(config.threshold)
        if config.method == "clip" and threshold > 1:
            raise ConfigError(f"invalid config value for 'quality.dedup.threshold': a cosine, at most 1 for "
                              f"method clip (got {threshold})")
        return cls(config.method, threshold)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any] | None) -> DedupRule | None:
        """The rule the quality stage declared in its settings (``{"quality": {"dedup": {...}}}``), if any.

        The shard writer reads it there, so what is applied is exactly what the shard's provenance records.
        """
        dedup = ((settings or {}).get("quality") or {}).get("dedup") or {}
        if dedup.get("method") in (None, "off"):
            return None
        return cls(str(dedup["method"]), float(dedup["threshold"]))

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "threshold": self.threshold}


def later_copies(fingerprints: Sequence[Any], earlier: Sequence[Any] | np.ndarray,
                 rule: DedupRule) -> list[int | None]:
    """For each of ``fingerprints`` in order: which image it copies, or None when it is new.

    Indices count ``earlier`` first, then the new fingerprints that were not copies themselves (a copy of a copy
    is measured against the first image only, the one that stays). Pure: nothing is modified.
    """
    new, old = fingerprint_matrix(fingerprints, rule), fingerprint_matrix(earlier, rule)
    vs_old, vs_new = _close(new, old, rule), _close(new, new, rule)
    out: list[int | None] = []
    accepted: list[int] = []
    for i in range(len(new)):
        hits = np.flatnonzero(vs_old[i])
        if hits.size:
            out.append(int(hits[0]))
            continue
        prior = [k for k, j in enumerate(accepted) if vs_new[i, j]]
        out.append(len(old) + prior[0] if prior else None)
        if not prior:
            accepted.append(i)
    return out


def fingerprint_matrix(fingerprints: Sequence[Any] | np.ndarray, rule: DedupRule) -> np.ndarray:
    """N x D float32 unit vectors (clip) or N uint64 hashes (phash); an array of that kind is used as it is."""
    if rule.method == "clip":
        matrix = np.asarray(fingerprints, dtype=np.float32)
        if matrix.size == 0:
            return np.zeros((0, 0), dtype=np.float32)
        return matrix if matrix.ndim == 2 else matrix.reshape(len(matrix), -1)
    if isinstance(fingerprints, np.ndarray) and fingerprints.dtype == np.uint64:
        return fingerprints
    return np.asarray([int(fp) for fp in fingerprints], dtype=np.uint64)


def _close(a: np.ndarray, b: np.ndarray, rule: DedupRule) -> np.ndarray:
    """len(a) x len(b): whether each pair counts as copies under ``rule``."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)), dtype=bool)
    if rule.method == "clip":
        return a @ b.T >= rule.threshold
    return _popcount(a[:, None] ^ b[None, :]) <= rule.threshold


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (numpy < 2 has no ``bitwise_count``)."""
    as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
    return np.unpackbits(as_bytes, axis=-1).sum(axis=-1)


class ShardDeduplicator:
    """The kept fingerprints of one shard so far; :meth:`drop_copies` marks the later copies in a batch."""

    def __init__(self, rule: DedupRule):
        self.rule = rule
        self._kept: np.ndarray | None = None  # grows by doubling: a shard of 10k rows is not copied per batch
        self._count = 0

    @property
    def kept(self) -> np.ndarray:
        return fingerprint_matrix([], self.rule) if self._kept is None else self._kept[:self._count]

    def drop_copies(self, rows: list[dict]) -> int:
        """Sets ``drop_reason = "duplicate"`` on each kept row that copies an earlier kept one; returns how many."""
        live = [row for row in rows if not row.get("drop_reason")]
        missing = [row["sample_id"] for row in live if row.get(FINGERPRINT) is None]
        if missing:  # the quality stage sees every kept row: a gap is a pipeline bug, not a new image
            raise MagicSegError(f"sample {missing[0]} has no {self.rule.method} fingerprint for quality.dedup")
        if not live:
            return 0
        matches = later_copies([row[FINGERPRINT] for row in live], self.kept, self.rule)
        for row, match in zip(live, matches):
            if match is not None:
                row["drop_reason"] = DROP_DUPLICATE
        self._append(fingerprint_matrix([row[FINGERPRINT] for row, m in zip(live, matches) if m is None], self.rule))
        return sum(match is not None for match in matches)

    def _append(self, new: np.ndarray) -> None:
        if not len(new):
            return
        if self._kept is None:
            self._kept = np.zeros((max(64, len(new)), *new.shape[1:]), dtype=new.dtype)
        if self._count + len(new) > len(self._kept):
            grown = np.zeros((max(2 * len(self._kept), self._count + len(new)), *new.shape[1:]), dtype=new.dtype)
            grown[:self._count] = self._kept[:self._count]
            self._kept = grown
        self._kept[self._count:self._count + len(new)] = new
        self._count += len(new)


def require_imagehash():
    """The ``imagehash`` module, or the one line that installs it."""
    try:
        import imagehash
    except ImportError:
        raise ConfigError("quality.dedup.method=phash needs imagehash: pip install 'imagehash>=4.3'") from None
    return imagehash


def phash(image) -> int:
    """64-bit perceptual hash of a PIL image, as an int (``imagehash.phash``, hash size 8)."""
    bits = require_imagehash().phash(image, hash_size=8).hash.flatten()
    return int("".join("1" if b else "0" for b in bits), 2)
