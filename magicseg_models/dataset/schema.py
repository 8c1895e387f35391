"""The Parquet row contract (docs/dataset-format.md). Field names and types here are what users script against."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa

SCHEMA_VERSION = 2
"""2 added context classes and quality scores (the ``V2_FIELDS`` below); version-1 datasets stay readable: a
reader fills the missing fields with their documented defaults (``context_class_ids`` [], ``clip_score`` null,
``asked`` true, the mask scores null)."""

ANNOTATION = pa.struct([
    ("class_id", pa.int32()),
    ("class_name", pa.string()),
    ("box", pa.list_(pa.float32(), 4)),  # xyxy in pixels
    ("score", pa.float32()),
    ("mask_rle", pa.string()),  # COCO compressed RLE counts; size is (height, width) of the row
    ("area", pa.int64()),
    # schema 2
    ("asked", pa.bool_()),  # true: a class the sample was generated for; false: a context class its prompt named
    ("predicted_iou", pa.float32()),  # SAM's own estimate of the mask's IoU (null where the segmenter has none)
    ("stability_score", pa.float32()),  # SAM's stability score: IoU of the mask at logit thresholds +-1
    ("box_fill", pa.float32()),  # mask pixels inside the box / box area (a spill-over mask has a low fill)
])

# Every field is required (not null): a row missing one is a writer bug, better refused than published.
# Readers accept nullable fields from other tools (schema_problems compares kinds of types only).
SCHEMA = pa.schema([pa.field(name, type_, nullable=False) for name, type_ in [
    ("sample_id", pa.string()),
    ("class_names", pa.list_(pa.string())),
    ("class_ids", pa.list_(pa.int32())),
    ("prompt", pa.string()),
    ("counterfactual_prompt", pa.string()),
    ("seed", pa.int64()),
    ("image", pa.binary()),
    ("counterfactual_image", pa.binary()),
    ("height", pa.int32()),
    ("width", pa.int32()),
    ("annotations", pa.list_(ANNOTATION)),
    ("counterfactual_scores", pa.list_(pa.float32())),
    # schema 2
    ("context_class_ids", pa.list_(pa.int32())),  # vocabulary classes the prompt names besides the asked ones
]] + [pa.field("clip_score", pa.float32(), nullable=True)])  # image-prompt CLIP cosine; null: not computed

V2_FIELDS = ("context_class_ids", "clip_score")
ANNOTATION_LIST = pa.list_(ANNOTATION)
V2_ANNOTATION_FIELDS = ("asked", "predicted_iou", "stability_score", "box_fill")

IMAGE_COLUMNS = ("image", "counterfactual_image")

# Parquet file metadata keys (values are JSON strings)
META_SCHEMA_VERSION = b"magicseg.schema_version"
META_SETTINGS = b"magicseg.settings"


def _leaf_paths(field: pa.Field, prefix: str = "") -> list[str]:
    path = f"{prefix}{field.name}"
    t = field.type
    if pa.types.is_struct(t):
        return [p for child in t for p in _leaf_paths(child, path + ".")]
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _leaf_paths(pa.field("element", t.value_type), path + ".list.")
    return [path]


def column_compression(codec: str = "zstd") -> dict[str, str]:
    """Per-column codecs: encoded images are incompressible, so compressing them only burns CPU."""
    return {path: ("none" if path in IMAGE_COLUMNS else codec) for f in SCHEMA for path in _leaf_paths(f)}


def _family(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "binary"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return f"list<{_family(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct<" + ",".join(f"{c.name}:{_family(c.type)}" for c in t) + ">"
    return str(t)


def _struct_problems(name: str, found: pa.DataType, expected: pa.DataType, optional: tuple[str, ...]) -> list[str]:
    """Problems of a list<struct> field child by child: a child of ``optional`` may be missing (schema 1)."""
    if not (pa.types.is_list(found) or pa.types.is_large_list(found)) or not pa.types.is_struct(found.value_type):
        return [f"field '{name}' is {found}, expected {expected}"]
    have = {child.name: child.type for child in found.value_type}
    problems = []
    for child in expected.value_type:
        if child.name not in have:
            if child.name not in optional:
                problems.append(f"field '{name}' has no '{child.name}'")
        elif _family(have[child.name]) != _family(child.type):
            problems.append(f"field '{name}.{child.name}' is {have[child.name]}, expected {child.type}")
    return problems


def schema_problems(schema: pa.Schema) -> list[str]:
    """What makes ``schema`` unreadable as MagicSeg rows ([] when compatible).

    Compatible means every contract field is present with the same kind of type (string, binary, integer,
    float, lists and structs of those); widths may differ (int64 for int32, large_binary...) so datasets written
    by other tools are accepted. Extra fields are allowed. The schema-2 fields (``V2_FIELDS``, and
    ``V2_ANNOTATION_FIELDS`` inside ``annotations``) may be missing: a schema-1 shard is read with their
    defaults (:func:`upgrade_batch`); when present they must have the right kind of type.
    """
    problems = []
    for field in SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            if field.name not in V2_FIELDS:
                problems.append(f"missing field '{field.name}'")
        elif field.name == "annotations":
            problems += _struct_problems(field.name, schema.field(idx).type, field.type, V2_ANNOTATION_FIELDS)
        elif _family(schema.field(idx).type) != _family(field.type):
            problems.append(f"field '{field.name}' is {schema.field(idx).type}, expected {field.type}")
    return problems


# --------------------------------------------------------------------------- schema 1 -> 2 defaults

def _default_column(name: str, num_rows: int) -> pa.Array:
    if name == "context_class_ids":
        return pa.array([[] for _ in range(num_rows)], pa.list_(pa.int32()))
    return pa.nulls(num_rows, SCHEMA.field(name).type)


def _upgrade_annotations(column: pa.Array) -> pa.Array:
    """A list<struct> annotations column with the schema-2 children added: ``asked`` true, the scores null."""
    if isinstance(column, pa.ChunkedArray):
        return pa.chunked_array([_upgrade_annotations(chunk) for chunk in column.chunks], ANNOTATION_LIST)
    values = column.flatten()  # honours the list array's own offset (a sliced batch)
    names = [child.name for child in values.type]
    missing = [name for name in V2_ANNOTATION_FIELDS if name not in names]
    if not missing:
        return column
    children = [values.field(i) for i in range(values.type.num_fields)]
    for name in missing:
        type_ = ANNOTATION.field(name).type
        children.append(pa.array([True] * len(values), type_) if name == "asked" else pa.nulls(len(values), type_))
        names.append(name)
    struct = pa.StructArray.from_arrays(children, names=names)
    lengths = column.value_lengths().fill_null(0)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths.to_numpy(zero_copy_only=False))]), pa.int32())
    return pa.ListArray.from_arrays(offsets, struct, mask=column.is_null())


def upgrade_batch(batch: pa.RecordBatch | pa.Table, columns: Sequence[str] | None = None):
    """``batch`` (read from a shard of any schema version) with the schema-2 fields it lacks filled with their
    defaults: ``context_class_ids`` [], ``clip_score`` null, and in each annotation ``asked`` true and
    ``predicted_iou`` / ``stability_score`` / ``box_fill`` null. ``columns``: the columns the caller asked for
    (None: all): only those are added. A schema-2 batch comes back unchanged."""
    wanted = list(columns) if columns is not None else list(SCHEMA.names)
    arrays, names = list(batch.columns), list(batch.schema.names)
    if "annotations" in names:
        arrays[names.index("annotations")] = _upgrade_annotations(arrays[names.index("annotations")])
    for name in V2_FIELDS:
        if name in wanted and name not in names:
            arrays.append(_default_column(name, batch.num_rows))
            names.append(name)
    if columns is not None:  # the caller's column order
        order = [names.index(c) for c in columns if c in names]
        arrays, names = [arrays[i] for i in order], [names[i] for i in order]
    make = pa.Table.from_arrays if isinstance(batch, pa.Table) else pa.RecordBatch.from_arrays
    return make(arrays, names=names)


_ANNOTATION_DEFAULTS = {"asked": True, "predicted_iou": None, "stability_score": None, "box_fill": None}


def upgrade_row(row: dict) -> dict:
    """A row as a dict (any schema version) with the schema-2 defaults filled in (see :func:`upgrade_batch`)."""
    row = dict(row)
    row.setdefault("context_class_ids", [])
    row.setdefault("clip_score", None)
    if row.get("annotations") is not None:
        row["annotations"] = [{**ann, **{k: v for k, v in _ANNOTATION_DEFAULTS.items() if k not in ann}}
                              for ann in row["annotations"]]
    return row
