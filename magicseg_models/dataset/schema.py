"""The Parquet row contract (docs/dataset-format.md). Field names and types here are what users script against."""

from __future__ import annotations

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


def schema_problems(schema: pa.Schema) -> list[str]:
    """What makes ``schema`` unreadable as MagicSeg rows ([] when compatible).

    Compatible means every contract field is present with the same kind of type (string, binary, integer,
    float, lists and structs of those); widths may differ (int64 for int32, large_binary...) so datasets written
    by other tools are accepted. Extra fields are allowed.
    """
    problems = []
    for field in SCHEMA:
        idx = schema.get_field_index(field.name)
        if idx < 0:
            problems.append(f"missing field '{field.name}'")
        elif _family(schema.field(idx).type) != _family(field.type):
            problems.append(f"field '{field.name}' is {schema.field(idx).type}, expected {field.type}")
    return problems
