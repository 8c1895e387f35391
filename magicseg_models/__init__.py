"""MagicSeg's ML library: stages, shard schema and IO, planning, vocabulary, configs and presets.

Plain Python + PyTorch. This package never imports Prefect or Ray, so every piece runs the same in a
test, a notebook and inside a Ray actor (the orchestration lives in ``tasks`` and ``flows``).
"""

__version__ = "0.1.0"
