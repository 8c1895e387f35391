"""Evaluation of trained segmenters on the paper's benchmarks.

Modules (import them directly; this package imports nothing heavy on purpose):

- :mod:`magicseg_models.evaluation.benchmarks`: class lists, label numbering and text-prompt names
  per benchmark (VOC, PASCAL Context 59, COCO-Object, LVIS v1, OpenImages-v7 points).
- :mod:`magicseg_models.evaluation.readers`: readers for the benchmarks' standard on-disk layouts,
  yielding images with labels (or labelled points) in the benchmark's label space.
"""
