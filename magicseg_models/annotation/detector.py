"""The detector factory: ``detector.backend`` -> transformers Grounding DINO, the official groundingdino-py, or
transformers OWLv2.

The detector is split by job: :mod:`.captions` (caption planning), :mod:`.postprocess` (outputs -> boxes per
class), :mod:`.text_cache`, :mod:`.detector_tokenizer`, :mod:`.detector_configs` (tiny and random
architectures), :mod:`.detector_base` (batching, chunking, merging), and the backends :mod:`.grounding_dino` and
:mod:`.official` (Grounding DINO), :mod:`.owlv2` (OWLv2: one query per phrase instead of token spans).
"""

from __future__ import annotations

import torch

from magicseg_models.annotation.detector_base import BaseDetector
from magicseg_models.annotation.grounding_dino import GroundingDinoDetector
from magicseg_models.config import DetectorConfig
from magicseg_models.errors import ConfigError


def make_detector(config: DetectorConfig, device: str | torch.device | None = None) -> BaseDetector:
    """The detector of ``config.backend``: transformers (default), the official groundingdino-py, or owlv2."""
    if config.backend == "owlv2":
        from magicseg_models.annotation.owlv2 import Owlv2Detector

        return Owlv2Detector(config, device)
    if config.backend == "official":
        from magicseg_models.annotation.official import OfficialGroundingDino

        return OfficialGroundingDino(config, device)
    if config.backend != "transformers":
        raise ConfigError(f"unknown detector.backend {config.backend!r}")
    return GroundingDinoDetector(config, device)
