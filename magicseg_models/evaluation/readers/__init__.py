"""Readers for the evaluation benchmarks in their standard on-disk layouts.

Every reader is a sequence of :class:`Sample` (``len``, indexing, iteration) in a fixed order, cut
to the first ``limit`` images when given; ``reader.classes`` is the benchmark's
:class:`~magicseg_models.evaluation.benchmarks.BenchmarkClasses` (label numbering is documented in
:mod:`.benchmarks`). Images are RGB PIL images exactly as stored (no EXIF rotation: the labels are
drawn on the stored pixels). ``data_root`` is a local folder. A missing folder or file, or an
unreadable one, raises :class:`BenchmarkDataError` with one line naming the path and the layout
expected; the files of the selected images are checked when the reader is opened.

Layouts (``data_root`` = the folder given to :func:`open_benchmark`):

``voc``: PASCAL VOC 2012 val, order of ``val.txt`` (1449 images)::

    VOCdevkit/VOC2012/JPEGImages/<id>.jpg
    VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNGs: index 0..20, 255 = border
    VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt

  ``data_root`` may be the folder holding ``VOCdevkit``, ``VOCdevkit`` itself or ``VOC2012``.

``context``: PASCAL Context 59 in mmsegmentation's layout (its converter writes 0 = background,
1..59 = the 59 classes), order of ``val.txt`` (5104 images)::

    VOCdevkit/VOC2010/JPEGImages/<id>.jpg
    VOCdevkit/VOC2010/SegmentationClassContext/<id>.png
    VOCdevkit/VOC2010/ImageSets/SegmentationContext/val.txt

  ``data_root`` may also be ``VOCdevkit`` or ``VOC2010``. Raw 0 is background (label 0) and raw
  1..59 are labels 1..59 (the paper's "59 + background" setting), not mmseg's reduce_zero_label.

``coco-object``: COCO val2017 images with COCO-Stuff-164k label PNGs, sorted by image id (5000)::

    val2017/<id>.jpg                                  (or images/val2017/, mmseg's layout)
    stuffthingmaps_trainval2017/val2017/<id>.png      (or annotations/val2017/, mmseg's layout)

  Per image the first that exists is read: ``<id>_instanceTrainIds.png`` in ``prepared_dir``
  (default: the label folder; written by :func:`prepare_coco_object`, values = labels), the raw
  COCO-Stuff ``<id>.png`` (mapped with ``coco_object80_ids.tsv``: a thing value k <= 90 -> its
  1..80 label, stuff and unlabeled 255 -> 0) or mmseg's ``<id>_labelTrainIds.png`` (171-class
  train ids: 0..79 -> 1..80, the rest -> 0).

``lvis``: LVIS v1 val, sorted by image id (19809 images)::

    lvis_v1_val.json                                  (or annotations/lvis_v1_val.json)
    train2017/<file>.jpg, val2017/<file>.jpg          COCO images; the folder is the one in the
                                                      image's coco_url (the other is tried too)

  Semantic maps come from the instance masks (polygons or RLE, decoded with pycocotools).
  Overlaps: instances are painted from the largest mask area to the smallest (ties: annotation id),
  so a smaller object lying on a larger one keeps its pixels. Pixels of no instance are background
  0. LVIS is federated (not every class is exhaustively annotated per image); like the paper's
  semantic protocol we score unannotated pixels as background anyway.

``oiv7-points``: OpenImages-v7 point labels, sorted by image id; only images with at least one
yes/no point (about 36.7k)::

    oidv7-val-annotations-point-labels.csv            ImageId, X, Y, Label, EstimatedYesNo, ...
    oidv7-class-descriptions.csv                      LabelName, DisplayName (header optional)
    validation/<ImageId>.jpg

  ``Sample.points`` is an int64 array (N, 4) of ``x_px, y_px, class_index, is_positive``: pixel
  column/row ``min(floor(X * width), width - 1)`` (same for Y), ``class_index`` into
  ``reader.classes.names`` (every label that occurs in the CSV, sorted by MID), and 1 for "yes" /
  0 for "no"; "unsure" points are skipped.
"""

from magicseg_models.errors import BenchmarkDataError
from magicseg_models.evaluation.readers.base import POINT_COLUMNS, BenchmarkReader, Sample
from magicseg_models.evaluation.readers.coco_labels import coco_object_lut
from magicseg_models.evaluation.readers.coco_object import COCOObjectReader
from magicseg_models.evaluation.readers.coco_prepare import prepare_coco_object
from magicseg_models.evaluation.readers.factory import READERS, open_benchmark
from magicseg_models.evaluation.readers.lvis import LVISReader
from magicseg_models.evaluation.readers.lvis_raster import lvis_semantic_map
from magicseg_models.evaluation.readers.oiv7 import OIV7PointsReader, oiv7_classes
from magicseg_models.evaluation.readers.voc import ContextReader, VOCReader

__all__ = [
    "POINT_COLUMNS",
    "BenchmarkDataError",
    "BenchmarkReader",
    "COCOObjectReader",
    "ContextReader",
    "LVISReader",
    "OIV7PointsReader",
    "Sample",
    "VOCReader",
    "coco_object_lut",
    "lvis_semantic_map",
    "oiv7_classes",
    "open_benchmark",
    "prepare_coco_object",
]
