"""The dataset card: ``URI/README.md``, which makes the dataset folder a Hugging Face dataset.

Its YAML header is what ``datasets.load_dataset(<folder>)`` and the Hub viewer read. ``configs`` points at the
shards only, so the bookkeeping (``manifest.json``, ``_magicseg/``, the prompt cache) is never read as data.
``dataset_info.features`` types the columns: the two image columns as ``Image`` (decoded to PIL), and the class ids
as ``ClassLabel`` over the vocabulary's names. The body states the licence that follows from the generator, the
models and config that made the data, the counts, per-class coverage, drop reasons, and how to load and upload it.
The card is rewritten whenever the manifest is (``DatasetStore.refresh_manifest``).
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable

import yaml

from magicseg_models.dataset.schema import SCHEMA_VERSION

CARD = "README.md"

# licences of the models whose outputs or weights shape the data (by hub id fragment; first match wins)
LICENCES = [
    ("stable-diffusion-v1-5", "creativeml-openrail-m",
     "Stable Diffusion 1.5 outputs: CreativeML OpenRAIL-M (use restrictions of its Attachment A apply)"),
    ("runwayml/stable-diffusion", "creativeml-openrail-m",
     "Stable Diffusion 1.5 outputs: CreativeML OpenRAIL-M (use restrictions of its Attachment A apply)"),
    ("stable-diffusion-xl", "openrail++", "SDXL outputs: CreativeML OpenRAIL++-M"),
    ("flux.1-schnell", "apache-2.0", "FLUX.1-schnell outputs: Apache-2.0"),
    ("grounding-dino", "apache-2.0", "Grounding DINO (boxes): Apache-2.0"),
    ("groundingdino", "apache-2.0", "Grounding DINO (boxes): Apache-2.0"),
    ("sam_vit", "apache-2.0", "Segment Anything (masks): Apache-2.0"),
    ("sam2", "apache-2.0", "Segment Anything 2 (masks): Apache-2.0"),
    ("segment-anything", "apache-2.0", "Segment Anything (masks): Apache-2.0"),
]

_FEATURES_BEFORE_ANNOTATIONS = [
    {"name": "sample_id", "dtype": "string"},
    {"name": "class_names", "sequence": "string"},
]


def _licence(model: str) -> tuple[str, str] | None:
    lowered = (model or "").lower()
    for fragment, spdx, text in LICENCES:
        if fragment in lowered:
            return spdx, text
    return None


def _model_ids(models: dict[str, Any]) -> dict[str, str]:
    """The model of each role, from the manifest's ``models`` (stage settings, or the older flat strings)."""
    def pick(entry: Any, *keys: str) -> str:
        if isinstance(entry, str):
            return entry
        if isinstance(entry, dict):
            for key in keys:
                if entry.get(key):
                    return str(entry[key])
        return ""

    pairs = models.get("pairs", models.get("generator"))
    annotate = models.get("annotate", {})
    out = {"generator": pick(pairs, "model"),
           "detector": pick(annotate, "detector") or pick(models.get("detector"), "model"),
           "segmenter": pick(annotate, "segmenter", "checkpoint") or pick(models.get("segmenter"), "model"),
           "prompts": pick(models.get("prompts"), "model")}
    weights = pairs.get("weights") if isinstance(pairs, dict) else None
    if weights and weights != "pretrained":
        out["generator"] = f"{out['generator']} ({weights} weights)"
    return out


def features(classes: list[str], schema_version: int = SCHEMA_VERSION) -> list[dict]:
    """``dataset_info.features`` of the shard schema (magicseg_models.dataset.schema), in column order; a
    dataset of schema 1 (no context classes or quality scores) gets the features its shards have."""
    # ClassLabel over the vocabulary where the manifest lists it (datasets maps ids to names); plain ids otherwise
    label = ({"class_label": {"names": {str(i): name for i, name in enumerate(classes)}}} if classes
             else {"dtype": "int32"})
    v2 = int(schema_version or 1) >= 2
    return [
        *_FEATURES_BEFORE_ANNOTATIONS,
        {"name": "class_ids", "sequence": label},
        {"name": "prompt", "dtype": "string"},
        {"name": "counterfactual_prompt", "dtype": "string"},
        {"name": "seed", "dtype": "int64"},
        {"name": "image", "dtype": "image"},
        {"name": "counterfactual_image", "dtype": "image"},
        {"name": "height", "dtype": "int32"},
        {"name": "width", "dtype": "int32"},
        {"name": "annotations", "list": [
            {"name": "class_id", **label},
            {"name": "class_name", "dtype": "string"},
            {"name": "box", "sequence": "float32", "length": 4},
            {"name": "score", "dtype": "float32"},
            {"name": "mask_rle", "dtype": "string"},
            {"name": "area", "dtype": "int64"},
            *([{"name": "asked", "dtype": "bool"}, {"name": "predicted_iou", "dtype": "float32"},
               {"name": "stability_score", "dtype": "float32"}, {"name": "box_fill", "dtype": "float32"}]
              if v2 else []),
        ]},
        {"name": "counterfactual_scores", "sequence": "float32"},
        *([{"name": "context_class_ids", "sequence": label}, {"name": "clip_score", "dtype": "float32"}]
          if v2 else []),
    ]


def render_card(manifest: dict, class_counts: Counter, uri: str) -> str:
    """The whole README.md for a dataset whose manifest is ``manifest``; ``class_counts`` per class id."""
    classes = list(manifest.get("classes") or [])
    models = _model_ids(manifest.get("models") or {})
    generator_licence = _licence(models["generator"])
    header = {
        "license": generator_licence[0] if generator_licence else "other",
        "pretty_name": "MagicSeg synthetic segmentation data",
        "task_categories": ["image-segmentation", "object-detection"],
        "tags": ["synthetic", "magicseg", "open-vocabulary-segmentation", "counterfactual"],
        "size_categories": [_size_category(manifest["counts"]["kept"])],
        "configs": [{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.parquet"}]}],
        "dataset_info": {"features": features(classes, manifest.get("schema_version") or 1), "splits": [
            {"name": "train", "num_examples": int(manifest["counts"]["kept"])}]},
    }
    counts = manifest["counts"]
    licence_lines = [text for text in dict.fromkeys(
        (_licence(m) or ("", ""))[1] for m in models.values()) if text]
    if not generator_licence:
        licence_lines.insert(0, f"Generator `{models['generator']}`: licence not known to MagicSeg, check the "
                                "model's own card (the header says `other`)")
    dropped = counts.get("dropped") or {}
    covered = sorted(class_counts.items(), key=lambda item: -item[1])
    lines = [
        "---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
        "# MagicSeg synthetic segmentation data", "",
        "Images generated from class names, each with a counterfactual image (the same seed and noise, with the "
        "class words replaced by \"nothing\"), and boxes and masks for the asked classes. Written by MagicSeg "
        f"{manifest.get('code_version', '')}.", "",
        "## Licence", "",
        *[f"- {text}" for text in licence_lines],
        "- Prompts: written by the LLM named below; its provider's terms apply to its outputs.", "",
        "## Models", "",
        "| role | model |", "| --- | --- |",
        *[f"| {role} | `{model or '-'}` |" for role, model in models.items()], "",
        "The full settings of every stage are in `manifest.json` (`models`) and in each shard's Parquet metadata "
        "(`magicseg.settings`); the build config is under `config` in `manifest.json`.", "",
        "## Counts", "",
        f"- planned: {counts['planned']}, kept: {counts['kept']}, dropped: {sum(dropped.values())}",
        f"- shards: {len(manifest.get('shards', []))} (`shards/*.parquet`)",
        *([f"- dropped because `{reason}`: {n}" for reason, n in sorted(dropped.items())]), "",
        "## Classes", "",
        f"{len(class_counts)} of the vocabulary's {len(classes)} classes appear in kept samples.", "",
        "| class | samples |", "| --- | --- |",
        *[f"| {classes[cid] if 0 <= cid < len(classes) else cid} | {n} |" for cid, n in covered[:50]],
        *([f"| ... {len(covered) - 50} more | |"] if len(covered) > 50 else []), "",
        "## Loading", "",
        "```python", "from datasets import load_dataset", "",
        f'ds = load_dataset("{uri}")  # a local folder, or the Hub repo it was uploaded to',
        'row = ds["train"][0]  # row["image"] is a PIL image; class ids are ClassLabel over the vocabulary',
        "```", "",
        "Masks are COCO RLE strings (`pycocotools.mask.decode({'size': [height, width], 'counts': mask_rle})`); "
        "boxes are xyxy in pixels. DuckDB, Polars and pyarrow read `shards/*.parquet` directly; "
        "`magicseg export` writes COCO, semantic-label and WebDataset copies.", "",
        "Upload: `huggingface-cli upload <user>/<name> <folder> . --repo-type dataset` (the bookkeeping files go "
        "along but are never read as data).", "",
    ]
    return "\n".join(lines)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def class_counts(class_id_lists: Iterable[list[int]]) -> Counter:
    counts: Counter = Counter()
    for ids in class_id_lists:
        counts.update(set(int(i) for i in ids))
    return counts
