"""The detector factory: ``detector.backend`` -> transformers Grounding DINO or the official groundingdino-py.

The detector is split by job: :mod:`.captions` (caption planning), :mod:`.postprocess` (outputs -> boxes per
class), :mod:`.text_cache`, :mod:`.detector_tokenizer`, :mod:`.detector_configs` (tiny and random
architectures), :mod:`.detector_base` (batching, chunking, merging), and the backends :mod:`.grounding_dino` and
:mod:`.official`.
"""

from __future__ import annotations

import torch

from magicseg_models.annotation.detector_base import BaseDetector
from magicseg_models.annotation.grounding_dino import GroundingDinoDetector
from magicseg_models.config import DetectorConfig
from magicseg_models.errors import ConfigError


def make_detector(config: DetectorConfig, device: str | torch.device | None = None) -> BaseDetector:
    """The detector of ``config.backend``: transformers (default) or the official groundingdino-py."""
    if config.backend == "official":
        from magicseg_models.annotation.official import OfficialGroundingDino

        return OfficialGroundingDino(config, device)
    if config.backend != "transformers":
        raise ConfigError(f"unknown detector.backend {config.backend!r}")
    return GroundingDinoDetector(config, device)
