"""Evaluation of trained segmenters on the paper's benchmarks.

Modules (import them directly; this package imports nothing heavy on purpose):

- :mod:`magicseg_models.evaluation.benchmarks`: class lists, label numbering and text-prompt names
  per benchmark (VOC, PASCAL Context 59, COCO-Object, LVIS v1, OpenImages-v7 points).
- :mod:`magicseg_models.evaluation.readers`: readers for the benchmarks' standard on-disk layouts,
  yielding images with labels (or labelled points) in the benchmark's label space; one module per
  benchmark, plus the COCO-Object conversion tool (``coco_prepare``), the LVIS rasteriser
  (``lvis_raster``) and the factory ``open_benchmark``.
- :mod:`magicseg_models.evaluation.data_files` and :mod:`magicseg_models.evaluation.oiv7_csv`: the file
  checks every reader shares and the OpenImages-v7 CSV parser (below ``benchmarks``, so that nothing in
  this package imports back up).
- :mod:`magicseg_models.evaluation.evaluator`: ``evaluate`` (one function per protocol: dense mIoU,
  OpenImages points), :mod:`.inference` (sliding windows), :mod:`.metrics`, :mod:`.predictions`.
"""
