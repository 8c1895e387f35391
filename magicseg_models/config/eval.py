"""The eval config (``magicseg eval``): benchmark, per-benchmark settings, sliding-window inference."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from magicseg_models.config.base import Section, StorageConfig
from magicseg_models.config.build import AnnotateConfig
from magicseg_models.config.train import ZegCLIPConfig


BenchmarkName = Literal["voc", "context", "coco-object", "lvis", "oiv7-points"]
BENCHMARKS: tuple[str, ...] = get_args(BenchmarkName)
"""The benchmarks ``magicseg eval`` knows, in the one order every list of them (CLI, flow form, readers) uses."""


class BenchmarkSettings(Section):
    bg_threshold: float = Field(0.95, ge=0, le=1, description="background where the best class score is below")
    prompt_names: str = Field("default", description="which prompt-name column of the benchmark's vocab to use")


def _default_benchmarks() -> dict[str, BenchmarkSettings]:
    # Paper: 0.95 everywhere (the GroupViT setting for VOC and COCO-Object; GroupViT uses 0.35 on Context).
    return {name: BenchmarkSettings() for name in BENCHMARKS}


class InferenceConfig(Section):
    short_side: int = 512
    crop_size: int = 512
    stride: int = 426
    batch_size: int = Field(8, ge=1)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class EvalConfig(Section):
    preset: str = "tiny"
    checkpoint: str | None = None
    benchmark: BenchmarkName = "voc"
    data_root: str | None = None
    predictions: str | None = None
    limit: int | None = Field(None, ge=1)
    out: str | None = None
    p_miou_aggregation: Literal["per_class", "per_image_class"] = "per_class"
    baseline: Literal["grounded-sam"] | None = Field(
        None, description="evaluate a baseline instead of a checkpoint: grounded-sam = Grounding DINO + SAM on the "
        "benchmark's class names (settings under annotate)")
    save_predictions: bool = Field(False, description="also write every label map as OUT/predictions/<id>.png")
    visualize: int = Field(4, ge=0, description="images in OUT/predictions.png (image | ground truth | prediction)")
    device: str | None = Field(None, description="None = the first GPU, else the CPU")
    model: ZegCLIPConfig = ZegCLIPConfig()
    inference: InferenceConfig = InferenceConfig()
    benchmarks: dict[str, BenchmarkSettings] = Field(default_factory=_default_benchmarks)
    annotate: AnnotateConfig = AnnotateConfig()

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _known_benchmarks(cls, value: Any) -> Any:
        # overriding one benchmark must keep the others' defaults, and a misspelt name must fail
        if not isinstance(value, dict):
            return value
        known = _default_benchmarks()
        unknown = sorted(set(value) - set(known))
        if unknown:
            raise ValueError(f"unknown benchmark {unknown[0]!r}; known: {', '.join(known)}")
        return {**{name: {} for name in known}, **value}
    storage: StorageConfig = StorageConfig()
