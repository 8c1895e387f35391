"""MagicSeg's ML library: stages, shard schema and IO, planning, vocabulary, configs and presets.

Plain Python + PyTorch. This package never imports Prefect or Ray, so every piece runs the same in a
test, a notebook and inside a Ray actor (the orchestration lives in ``tasks`` and ``flows``).

Importing it checks the installed library versions (:mod:`magicseg_models.versions`): an older transformers or
diffusers fails here, in one line naming the version needed, rather than mid-run.
"""

from magicseg_models.versions import check_versions as _check_versions

__version__ = "0.1.0"

_check_versions()
