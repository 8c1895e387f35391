"""The reader factory: a benchmark name -> its reader over a data root."""

from __future__ import annotations

import inspect
import os

from magicseg_models.config import BENCHMARKS
from magicseg_models.errors import ConfigError
from magicseg_models.evaluation.readers.base import BenchmarkReader
from magicseg_models.evaluation.readers.coco_object import COCOObjectReader
from magicseg_models.evaluation.readers.lvis import LVISReader
from magicseg_models.evaluation.readers.oiv7 import OIV7PointsReader
from magicseg_models.evaluation.readers.voc import ContextReader, VOCReader

READERS: dict[str, type[BenchmarkReader]] = {
    "voc": VOCReader,
    "context": ContextReader,
    "coco-object": COCOObjectReader,
    "lvis": LVISReader,
    "oiv7-points": OIV7PointsReader,
}
assert tuple(READERS) == BENCHMARKS


def open_benchmark(
    name: str,
    data_root: str | os.PathLike | None,
    limit: int | None = None,
    prompt_names: str = "default",
    **options,
) -> BenchmarkReader:
    """The reader of benchmark ``name`` (one of ``BENCHMARKS``) over ``data_root``. ``options``:
    ``prepared_dir`` (coco-object), ``images_dir`` (oiv7-points)."""
    if name not in READERS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    reader = READERS[name]
    if set(options) - set(inspect.signature(reader).parameters):
        raise ConfigError(f"benchmark {name} does not take option(s) {', '.join(options)}")
    return reader(data_root, limit=limit, prompt_names=prompt_names, **options)
