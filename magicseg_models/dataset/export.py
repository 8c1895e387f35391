"""A MagicSeg dataset in the formats other segmentation tools read: COCO instances, semantic label maps, WebDataset.

``export_dataset(uri, out, fmt)`` streams the dataset shard by shard (one shard's rows in memory at a time) into
``out`` (a local folder or any fsspec URI). Each shard's outputs are followed by a marker,
``_export/<format>/<shard>.json``, that holds the shard's sha256 and what was written. A rerun skips the shards whose
marker matches, so an interrupted export resumes, and a finished one reruns in seconds. Formats (docs/dataset-format.md
has the layouts and the training configs that read them):

- ``coco``: ``images/<sample_id>.jpg`` and ``annotations/instances.json``. Boxes are xywh, segmentations are COCO
  compressed RLE as pycocotools writes them, and category ids are the vocabulary's ids. Each annotation also
  carries ``asked`` and the mask scores (``predicted_iou``, ``stability_score``, ``box_fill``; extra keys COCO
  tools ignore).
- ``semantic`` (the mmsegmentation / detectron2 layout): ``images/<sample_id>.jpg``, ``labels/<sample_id>.png``
  and ``classes.txt``. A label is 0 for background and ``class_id + 1`` for a class. Maps are 8-bit PNGs when
  every label fits under 255 (the ignore value) and 16-bit otherwise (ignore 65535). Where masks of two classes
  overlap, the pixel takes the class of the smaller mask (drawn last), so small objects on top of large ones
  keep their pixels.
- ``webdataset``: ``<shard>.tar`` files, one per dataset shard, written with the ``webdataset`` package. Each
  sample holds ``jpg`` (the image), ``counterfactual.jpg``, ``seg.png`` (the semantic label map above) and
  ``json`` (prompts, classes, ``context_class_ids``, ``clip_score``, annotations with RLE masks, xyxy boxes and
  their scores).

Label maps hold every annotation, the context objects (``asked`` false) too. A schema-1 dataset exports with the
schema-2 defaults (no context classes, null scores).

``split_counterfactual`` makes each counterfactual image a sample of its own (``<sample_id>_cf``), with no
annotations and an all-background label map: by construction it shows the scene without the asked classes (context
objects, which the counterfactual prompt still names, are not labelled there).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any, Callable, Iterable

import numpy as np
from PIL import Image

from magicseg_models.dataset.codecs import decode_mask
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.schema import V2_ANNOTATION_FIELDS, V2_FIELDS
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError, ShardError

FORMATS = ("coco", "semantic", "webdataset")
MARKERS = "_export"
COUNTERFACTUAL_SUFFIX = "_cf"


def label_map(row: dict, num_classes: int) -> np.ndarray:
    """The semantic label map of a row: 0 background, ``class_id + 1`` per class, smaller masks on top."""
    height, width = int(row["height"]), int(row["width"])
    dtype = np.uint8 if num_classes + 1 < 255 else np.uint16
    labels = np.zeros((height, width), dtype)
    # the largest masks first, so that a smaller one over it keeps its pixels; ties in dataset order
    ordered = sorted(enumerate(row["annotations"]), key=lambda item: (-int(item[1]["area"]), item[0]))
    for _, ann in ordered:
        try:
            mask = decode_mask(ann["mask_rle"], height, width)
        except ValueError as err:
            raise ShardError(f"sample {row['sample_id']}: {err}") from None
        labels[mask] = int(ann["class_id"]) + 1
    return labels


def png_bytes(labels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(labels).save(buf, format="PNG")  # uint8 -> mode L, uint16 -> I;16
    return buf.getvalue()


def _xywh(box: Iterable[float]) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


class _Exporter:
    """One format: ``shard(rows) -> record`` per dataset shard, then ``finish(records)`` once."""

    def __init__(self, out: Storage, classes: list[str], split_counterfactual: bool):
        self.out = out
        self.classes = classes
        self.split_counterfactual = split_counterfactual

    def shard(self, name: str, rows: Iterable[dict]) -> dict:
        raise NotImplementedError

    def finish(self, records: list[dict]) -> dict:
        return {}

    def _image(self, sample_id: str, data: bytes) -> str:
        rel = f"images/{sample_id}.jpg"
        self.out.write_bytes_atomic(rel, data)  # the shard's JPEG bytes as they are: no re-encoding
        return rel


class CocoExporter(_Exporter):
    def shard(self, name: str, rows: Iterable[dict]) -> dict:
        images = []
        for row in rows:
            anns = [{"category_id": int(a["class_id"]), "bbox": _xywh(a["box"]), "area": int(a["area"]),
                     "segmentation": {"size": [int(row["height"]), int(row["width"])], "counts": a["mask_rle"]},
                     "iscrowd": 0, "score": float(a["score"]),
                     **{k: a[k] for k in V2_ANNOTATION_FIELDS}} for a in row["annotations"]]
            images.append({"file_name": self._image(row["sample_id"], row["image"]), "height": int(row["height"]),
                           "width": int(row["width"]), "sample_id": row["sample_id"], "annotations": anns})
            if self.split_counterfactual:
                cf_id = row["sample_id"] + COUNTERFACTUAL_SUFFIX
                images.append({"file_name": self._image(cf_id, row["counterfactual_image"]),
                               "height": int(row["height"]), "width": int(row["width"]), "sample_id": cf_id,
                               "annotations": []})
        return {"images": images}

    def finish(self, records: list[dict]) -> dict:
        images, annotations = [], []
        for record in records:  # ids follow the dataset's order, so a resumed export gives the same file
            for image in record["images"]:
                image_id = len(images) + 1
                for ann in image["annotations"]:
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
                images.append({"id": image_id, **{k: v for k, v in image.items() if k != "annotations"}})
        categories = [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(self.classes)]
        coco = {"info": {"description": "MagicSeg synthetic dataset"}, "images": images,
                "annotations": annotations, "categories": categories}
        self.out.write_bytes_atomic("annotations/instances.json", json.dumps(coco).encode())
        return {"images": len(images), "annotations": len(annotations)}


class SemanticExporter(_Exporter):
    def shard(self, name: str, rows: Iterable[dict]) -> dict:
        count = 0
        for row in rows:
            self._image(row["sample_id"], row["image"])
            labels = label_map(row, len(self.classes))
            self.out.write_bytes_atomic(f"labels/{row['sample_id']}.png", png_bytes(labels))
            count += 1
            if self.split_counterfactual:
                cf_id = row["sample_id"] + COUNTERFACTUAL_SUFFIX
                self._image(cf_id, row["counterfactual_image"])
                self.out.write_bytes_atomic(f"labels/{cf_id}.png", png_bytes(np.zeros_like(labels)))
                count += 1
        return {"images": count}

    def finish(self, records: list[dict]) -> dict:
        # line k is label k: background first, then the vocabulary in id order
        self.out.write_bytes_atomic("classes.txt", "\n".join(["background", *self.classes]).encode() + b"\n")
        return {"images": sum(r["images"] for r in records),
                "label_dtype": "uint8" if len(self.classes) + 1 < 255 else "uint16"}


class WebDatasetExporter(_Exporter):
    def shard(self, name: str, rows: Iterable[dict]) -> dict:
        import webdataset as wds

        count = 0
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, f"{name}.tar")
            with wds.TarWriter(local) as sink:
                for row in rows:
                    meta = {k: row[k] for k in ("sample_id", "prompt", "counterfactual_prompt", "seed", "class_ids",
                                                "class_names", "height", "width", "counterfactual_scores",
                                                *V2_FIELDS)}
                    meta["annotations"] = [{**a, "box": [float(v) for v in a["box"]]} for a in row["annotations"]]
                    labels = label_map(row, len(self.classes))
                    sample = {"__key__": row["sample_id"], "jpg": row["image"], "seg.png": png_bytes(labels),
                              "json": json.dumps(meta).encode()}
                    if self.split_counterfactual:
                        cf_meta = {**meta, "sample_id": row["sample_id"] + COUNTERFACTUAL_SUFFIX,
                                   "prompt": row["counterfactual_prompt"], "class_ids": [], "class_names": [],
                                   "annotations": [], "counterfactual_of": row["sample_id"]}
                        sink.write(sample)
                        sample = {"__key__": cf_meta["sample_id"], "jpg": row["counterfactual_image"],
                                  "seg.png": png_bytes(np.zeros_like(labels)), "json": json.dumps(cf_meta).encode()}
                        count += 1
                    else:
                        sample["counterfactual.jpg"] = row["counterfactual_image"]
                    sink.write(sample)
                    count += 1
            self.out.publish_file(local, f"{name}.tar")
        return {"samples": count, "tar": f"{name}.tar"}

    def finish(self, records: list[dict]) -> dict:
        return {"samples": sum(r["samples"] for r in records), "tars": [r["tar"] for r in records]}


EXPORTERS: dict[str, type[_Exporter]] = {"coco": CocoExporter, "semantic": SemanticExporter,
                                         "webdataset": WebDatasetExporter}


def export_dataset(uri: str, out: str, fmt: str, *, storage_options: dict[str, Any] | None = None,
                   out_options: dict[str, Any] | None = None, split_counterfactual: bool = False,
                   on_shard: Callable[[int, int], None] | None = None) -> dict:
    """Export the dataset at ``uri`` to ``out`` as ``fmt``; ``on_shard(done, total)`` after each shard.

    Returns what was written: counts per format, and how many shards were exported now or skipped (done before).
    """
    if fmt not in EXPORTERS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    reader = DatasetReader(uri, storage_options)
    target = Storage(out, out_options)
    exporter = EXPORTERS[fmt](target, reader.classes, split_counterfactual)
    records, exported, skipped = [], 0, 0
    for done, shard in enumerate(reader.shards, 1):
        name = os.path.splitext(os.path.basename(shard["path"]))[0]
        marker = f"{MARKERS}/{fmt}/{name}.json"
        previous = target.read_json(marker, missing_ok=True)
        key = {"sha256": shard["sha256"], "split_counterfactual": split_counterfactual}
        if previous and previous.get("key") == key:
            records.append(previous["record"])
            skipped += 1
        else:
            rows = (row for batch in reader.iter_batches(shards=[shard]) for row in batch.to_pylist())
            record = exporter.shard(name, rows)
            target.write_json_atomic(marker, {"key": key, "record": record})
            records.append(record)
            exported += 1
        if on_shard:
            on_shard(done, len(reader.shards))
    return {"format": fmt, "out": target.uri, "shards_exported": exported, "shards_skipped": skipped,
            **exporter.finish(records)}
