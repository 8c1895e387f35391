"""Sample quality at build time: the CLIP image-prompt score stage and near-duplicate detection.

``QualityScorer(config.quality)`` is the stage (rows in, rows out, after ``annotate``); the dedup rule and its
"later copy" decision live in :mod:`magicseg_models.quality.dedup`. :func:`check_quality_config` refuses settings
that cannot work, before any work starts.
"""

from magicseg_models.config import QualityConfig
from magicseg_models.errors import ConfigError
from magicseg_models.quality.dedup import (DEFAULT_THRESHOLDS, DROP_DUPLICATE, FINGERPRINT, DedupRule,
                                           ShardDeduplicator, later_copies)


def check_quality_config(config: QualityConfig) -> None:
    """One-line :class:`ConfigError` for a quality section that cannot run as written."""
    if not config.enabled and config.dedup.method != "off":
        raise ConfigError(f"quality.dedup.method={config.dedup.method} needs quality.enabled=true (the quality "
                          f"stage computes the fingerprints dedup compares)")
    if not config.enabled and config.clip_score_min is not None:
        raise ConfigError("quality.clip_score_min needs quality.enabled=true (no clip_score is computed without "
                          "the quality stage)")
    DedupRule.from_config(config.dedup)


def __getattr__(name: str):
    if name in ("QualityScorer", "DROP_LOW_CLIP_SCORE"):  # torch and transformers only when the stage is used
        from magicseg_models.quality import clip_score

        return getattr(clip_score, name)
    raise AttributeError(name)


__all__ = ["DEFAULT_THRESHOLDS", "DROP_DUPLICATE", "DROP_LOW_CLIP_SCORE", "FINGERPRINT", "DedupRule",
           "QualityScorer", "ShardDeduplicator", "check_quality_config", "later_copies"]
