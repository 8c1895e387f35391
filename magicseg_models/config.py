"""Typed configuration: BuildConfig, TrainConfig, EvalConfig, layered from presets.

Layers, later wins: the model defaults below (the paper's and the authors' values) -> a preset shipped as
package data (``presets/<kind>/<name>.yaml``) -> ``--config FILE.yaml`` -> ``--set a.b=c`` overrides ->
explicit CLI flags. Every model forbids unknown keys, so a typo fails with one line naming the key instead of
being silently ignored.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from typing import Any, Literal, Sequence, get_args, get_origin

import fsspec
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from magicseg_models.errors import ConfigError

Weights = Literal["pretrained", "random", "tiny"]
"""``pretrained``: hub id or local path; ``random``: full-size architecture, random init (throughput
benchmarks, no download); ``tiny``: tiny models built from configs in code (tests, CPU, seconds)."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------------------------- model paths
# segment-anything's released checkpoints, one per model_type (its README's download links)
SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".py")


def resolve_local_path(value: str | None, *, hub_id_allowed: bool = True) -> str | None:
    """A relative local path made absolute against the working directory of the process loading the config.

    Configs are loaded where the user runs the command (the driver); Ray actors run elsewhere (another working
    directory, another node), so a relative path must be fixed here. URLs, absolute paths and hub ids
    (``org/name``, when ``hub_id_allowed``: anything not written as a path, not existing here and not named like a
    file) stay as they are.
    """
    if value is None or ("://" in value and not value.startswith("file://")):
        return value
    path = os.path.expanduser(value.removeprefix("file://"))
    if os.path.isabs(path):
        return path if path != value.removeprefix("file://") else value
    written_as_path = value.startswith(("./", "../", "file://")) or path.lower().endswith(_FILE_SUFFIXES)
    if hub_id_allowed and not written_as_path and not os.path.exists(path):
        return value
    return os.path.abspath(path)


# ----------------------------------------------------------------------------------------------- build
class StageResources(Section):
    """How one stage runs on Ray: actors hold the model for the whole run."""

    actors: int | tuple[int, int] = Field(
        1, description="actors of this stage: a number, or [min, max] for a pool that grows with its backlog up "
        "to max and shrinks back to min after ray.idle_actor_s without work")
    num_gpus: float = Field(1.0, ge=0, description="GPU share per actor; asked of the cluster even while no GPU "
                            "node is up, so an autoscaling cluster starts one")
    gpu: Literal["required", "optional"] = Field(
        "required", description="a stage with num_gpus > 0 on a cluster that has no GPU and cannot start one: "
        "required = the run refuses before any work; optional = the stage runs on CPU, said in the log and summary")
    num_cpus: float = Field(1.0, ge=0)
    batch_size: int = Field(8, ge=1, description="rows per call of one actor of this stage")

    @field_validator("actors")
    @classmethod
    def _actor_range(cls, value: int | tuple[int, int]) -> int | tuple[int, int]:
        low, high = (value, value) if isinstance(value, int) else value
        if not 1 <= low <= high:
            raise ValueError(f"actors must be >= 1, or [min, max] with 1 <= min <= max (got {list(value) if not isinstance(value, int) else value})")
        return value

    @property
    def actor_range(self) -> tuple[int, int]:
        return (self.actors, self.actors) if isinstance(self.actors, int) else tuple(self.actors)


class VocabularyConfig(Section):
    file: str | None = Field(None, description="custom vocabulary file (one name per line); None = builtin 1205")
    classes: list[str] | None = Field(None, description="restrict to these names (ids of the full vocabulary kept)")


class PlanConfig(Section):
    two_class_fraction: float = Field(0.5, ge=0, le=1, description="share of jobs asking for two classes")


HF_PROMPTS_NUM_GPUS = 0.5  # prompts.backend=hf: GPU share per actor unless prompts.resources.num_gpus is set


class PromptsConfig(Section):
    backend: Literal["openai", "hf", "template"] = Field(
        "openai", description=f"hf: a local transformers LLM, whose actors ask for {HF_PROMPTS_NUM_GPUS} GPU "
        "unless prompts.resources.num_gpus is set")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint; None = api.openai.com")
    model: str = "gpt-3.5-turbo"
    weights: Weights = "pretrained"
    api_key_secret: str | None = Field(
        None, description="name of a Prefect Secret block holding the API key; otherwise OPENAI_API_KEY")
    prompts_per_call: int = Field(10, ge=1, description="k numbered prompts asked for per LLM call (paper: 10)")
    temperature: float = Field(1.0, ge=0, le=2)
    max_new_tokens: int = Field(1024, ge=16)
    max_attempts: int = Field(3, ge=1, description="asks again this many times while a call lacks k valid prompts")
    on_failure: Literal["template", "drop"] = Field(
        "drop", description="a class set with no valid LLM prompt: drop its jobs (counted), or use the template "
        "(counted as template_fallback)")
    max_consecutive_failures: int = Field(
        5, ge=1, description="this many LLM calls in a row refused by the server (400-type, not retried) stop "
        "the stage with the server's message")
    token_parameter: Literal["auto", "max_tokens", "max_completion_tokens"] = Field(
        "auto", description="how max_new_tokens is sent; auto = max_completion_tokens to api.openai.com, "
        "max_tokens elsewhere, switching once when the server rejects the one sent")
    template: str = Field("a photo of {classes}.", description="the paper's simple prompt (Table VII): class "
                          "prompt names, no article; two classes are joined by 'and'")
    template_scenes: bool = Field(False, description="vary the template with a few scene phrases")
    cache: str | None = Field(
        None, description="where LLM outputs are cached; None = OUT/prompts for builds, ~/.cache/magicseg otherwise")
    concurrency: int = Field(16, ge=1, description="LLM requests in flight at once")
    timeout_s: float = Field(60.0, gt=0, description="per LLM request")
    max_retries: int = Field(5, ge=0, description="per LLM request, on 429/5xx/timeouts (honours Retry-After)")
    resources: StageResources = StageResources(num_gpus=0.0)

    @model_validator(mode="before")
    @classmethod
    def _local_llm_gets_a_gpu(cls, data: Any) -> Any:
        # the hf backend runs the LLM inside its actors: a GPU share unless the user set one (API backends need
        # none; on a cluster without GPUs every stage runs with num_gpus=0 anyway)
        if not isinstance(data, dict) or data.get("backend") != "hf":
            return data
        resources = data.get("resources")
        if isinstance(resources, StageResources):
            if "num_gpus" in resources.model_fields_set:
                return data
            resources = resources.model_dump(exclude_unset=True)
        resources = dict(resources or {})
        if "num_gpus" not in resources:
            data = {**data, "resources": {**resources, "num_gpus": HF_PROMPTS_NUM_GPUS}}
        return data

    @field_validator("model")
    @classmethod
    def _local_model_path(cls, value: str, info: ValidationInfo) -> str:
        return resolve_local_path(value) if info.data.get("backend") == "hf" else value


class GeneratorConfig(Section):
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    revision: str | None = None
    variant: str | None = Field(
        None, description="weights variant to load (fp16: the *.fp16.* files, half the download); a component "
        "without them loads its plain files (one log line); tiny/random load nothing")
    weights: Weights = "pretrained"
    height: int = Field(512, ge=8)
    width: int = Field(512, ge=8)
    steps: int = Field(20, ge=1)
    guidance_scale: float = Field(7.5, ge=0)
    scheduler: str = Field("default", description="'default' = the model's own (PNDM for SD 1.5), or a class name")
    dtype: Literal["float16", "bfloat16", "float32"] = "float16"
    attention: Literal["sdpa", "default"] = "sdpa"
    # speed switches, each measured on and off by benchmarks/gpu_suite.sh; today's behaviour stays the default
    # until a GPU figure says otherwise
    compile: bool = Field(False, description="torch.compile the UNet and the VAE decoder (first batch compiles)")
    channels_last: bool = Field(False, description="UNet and VAE weights and activations in channels_last")
    vae_decode_batch: int = Field(
        16, ge=1, description="images per VAE decode call (1 = one image at a time; bounds activation memory)")
    tf32: bool = Field(False, description="TF32 tensor cores for float32 matmuls (GPU; fp16/bf16 are unaffected)")
    safety_checker: bool = Field(False, description="off for dataset building; flagged images dropped as 'nsfw'")
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(95, ge=1, le=100)
    resources: StageResources = StageResources()

    _local_model_path = field_validator("model")(lambda value: resolve_local_path(value))

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # the VAE downsamples by 8: other sizes fail deep inside the UNet
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value


class DetectorConfig(Section):
    backend: Literal["transformers", "official"] = "transformers"
    model: str = "IDEA-Research/grounding-dino-tiny"
    weights: Weights = "pretrained"
    config_file: str | None = Field(None, description="official backend: GroundingDINO_SwinT_OGC.py")
    checkpoint: str | None = Field(
        None, description="official backend: groundingdino_swint_ogc.pth, a path or URL (s3://, https://, hf://)")
    text_encoder: str | None = Field(
        None, description="official backend: its BERT, a folder or hub id; None = the config file's "
        "text_encoder_type (bert-base-uncased)")
    box_threshold: float = Field(0.3, ge=0, le=1)
    text_threshold: float = Field(0.25, ge=0, le=1)
    max_text_tokens: int = Field(256, ge=8, description="captions longer than this are split into chunks")
    image_size: int | None = Field(
        None, ge=32, description="shortest image side fed to the detector; None = 800 (longest side at most 1333)")
    nms_iou: float | None = Field(
        0.8, gt=0, le=1, description="per-class NMS of near-duplicate boxes at this IoU; None = off")
    max_boxes: int = Field(50, ge=1, description="at most this many boxes per class in an image, best first")
    batch_size: int = Field(8, ge=1, description="images per detector forward pass")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype on a GPU (a CPU runs float32)")
    tf32: bool = Field(False, description="TF32 tensor cores for the detector's float32 matmuls (GPU)")

    _local_paths = field_validator("model", "text_encoder")(lambda value: resolve_local_path(value))
    _local_files = field_validator("config_file", "checkpoint")(
        lambda value: resolve_local_path(value, hub_id_allowed=False))


class SegmenterConfig(Section):
    backend: Literal["segment-anything", "transformers"] = "segment-anything"
    model_type: Literal["vit_h", "vit_l", "vit_b"] = "vit_h"
    checkpoint: str | None = Field(
        None, description="segment-anything .pth: a path or URL (s3://, https://, hf://), fetched once per node "
        "into $MAGICSEG_CACHE/checkpoints; None = the official release file of model_type (dl.fbaipublicfiles.com); "
        "transformers backend: hub id or folder (None or a .pth = facebook/sam-vit-<size>)")
    weights: Weights = "pretrained"
    batch_size: int = Field(4, ge=1, description="images per SAM image-encoder pass (each image embedded once)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype on a GPU (a CPU runs float32)")
    encoder_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="weights of the SAM image encoder (its embeddings go on to the mask decoder in "
        "float32); bfloat16 applies on any device")
    tf32: bool = Field(False, description="TF32 tensor cores for SAM's float32 matmuls (GPU)")

    @field_validator("checkpoint")
    @classmethod
    def _local_checkpoint_path(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_local_path(value, hub_id_allowed=info.data.get("backend") == "transformers")

    @property
    def checkpoint_source(self) -> str:
        """The segment-anything .pth to load: ``checkpoint``, or the release file of ``model_type`` (a vit_b run
        must not download the 2.5 GB vit_h file only to refuse it)."""
        return self.checkpoint or SAM_CHECKPOINT_URLS[self.model_type]


class AnnotateConfig(Section):
    detector: DetectorConfig = DetectorConfig()
    segmenter: SegmenterConfig = SegmenterConfig()
    keep: Literal["all", "any"] = Field("all", description="all: every named class detected; any: at least one")
    counterfactual_threshold: float | None = Field(
        None, ge=0, le=1, description="drop pairs whose counterfactual still shows a class above this score")
    context_classes: bool = Field(
        True, description="also detect and mask the vocabulary classes a prompt names besides the asked ones "
        "(stored with asked=false); a sample is still kept or dropped on its asked classes alone")
    predicted_iou_min: float | None = Field(
        None, ge=0, le=1, description="drop a sample (low_mask_quality) whose asked-class mask has a lower SAM "
        "predicted IoU; None = keep every score (the score is stored either way)")
    stability_score_min: float | None = Field(
        None, ge=0, le=1, description="drop a sample (low_mask_quality) whose asked-class mask has a lower SAM "
        "stability score")
    box_fill_min: float | None = Field(
        None, ge=0, le=1, description="drop a sample (low_mask_quality) whose asked-class mask fills less of its "
        "box than this")
    # detector and segmenter run in one actor; half a GPU lets two annotators share one
    resources: StageResources = StageResources(num_gpus=0.5)


class DedupConfig(Section):
    method: Literal["off", "clip", "phash"] = Field(
        "off", description="near-duplicate images: clip = image-embedding cosine (the quality stage's CLIP); "
        "phash = perceptual hash distance; off = keep every image")
    threshold: float | None = Field(
        None, ge=0, description="clip: cosine at or above which a later image is a duplicate (None = 0.95); "
        "phash: Hamming distance in bits at or below which it is (None = 4)")


class QualityConfig(Section):
    """The quality stage: a CLIP image-prompt score for every kept sample, optional thresholds and dedup."""

    enabled: bool = Field(True, description="run the quality stage (false: clip_score is stored as null)")
    clip: str = Field("openai/clip-vit-base-patch16", description="CLIP image and text encoder: hub id, "
                      "transformers folder, or OpenAI's ViT-B-16.pt (the ViT-B/16 training uses)")
    tokenizer: str | None = Field(None, description="CLIP tokenizer; None = clip's own")
    weights: Weights = "pretrained"
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype on a GPU (a CPU runs float32)")
    clip_score_min: float | None = Field(
        None, ge=-1, le=1, description="drop a sample (low_clip_score) whose image-prompt cosine is lower")
    dedup: DedupConfig = DedupConfig()
    resources: StageResources = StageResources(num_gpus=0.25, batch_size=16)

    _local_paths = field_validator("clip", "tokenizer")(lambda value: resolve_local_path(value))


class StorageConfig(Section):
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options (e.g. endpoint_url); prefer the AWS_* environment")


class RayConfig(Section):
    address: str | None = Field(None, description="None = RAY_ADDRESS if set, else a local Ray for the run")
    num_cpus: int | None = None
    object_store_memory: int | None = None
    dashboard: bool = Field(False, description="a local Ray started for the run serves its dashboard "
                            "(http://127.0.0.1:8265); a joined cluster has its own")
    gpu_wait_s: float = Field(900.0, gt=0, description="how long a GPU stage waits for the cluster to offer its "
                              "GPU share (an autoscaler starting a node) before it counts as unobtainable")
    idle_actor_s: float = Field(60.0, gt=0, description="an actor above its stage's minimum is stopped after "
                                "this long without work")
    max_in_flight: int = Field(2, ge=1, description="calls queued on one actor at once: 2 keeps it busy while "
                               "the next batch travels, more only deepens the queue behind a slow actor")


class HealthConfig(Section):
    """What a healthy build looks like: checked before each shard commits, once ``min_samples`` rows are in.

    A run outside these limits stops as Failed with one line naming the figure and its limit, instead of
    finishing "Completed" with a dataset of drops or of template prompts. The defaults suit ``sd15`` (real
    weights, an LLM); random-weight presets and ``tiny`` turn the check off.
    """

    enabled: bool = Field(True, description="check the run's health live (off for random-weight presets)")
    min_samples: int = Field(50, ge=1, description="rows processed in this run before any figure is checked")
    max_drop_rate: dict[str, float] = Field(
        default_factory=lambda: {"all": 0.7, "prompt_failed": 0.1, "class_not_detected": 0.6,
                                 "counterfactual_contains_class": 0.3, "nsfw": 0.1, "black": 0.1, "nonfinite": 0.01},
        description="drop reason -> highest share of processed rows it may drop ('all': every reason together)")
    min_llm_prompt_share: float | None = Field(
        0.9, ge=0, le=1, description="lowest share of prompted rows whose prompt came from the LLM rather than a "
        "template fallback (LLM backends only; None = unchecked)")

    @field_validator("max_drop_rate")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        bad = {k: v for k, v in value.items() if not 0 <= v <= 1}
        if bad:
            raise ValueError(f"drop-rate ceilings are shares between 0 and 1, got {bad}")
        return value


class BuildConfig(Section):
    preset: str = "tiny"
    out: str | None = Field(None, description="dataset URI: local path, file://, s3://bucket/prefix, ...")
    num_samples: int = Field(16, ge=0)
    seed: int = Field(0, ge=0)
    shard_size: int = Field(1000, ge=1)
    shards_per_task: int = Field(1, ge=1, description="shards per Prefect task run (the unit of retry)")
    vocabulary: VocabularyConfig = VocabularyConfig()
    plan: PlanConfig = PlanConfig()
    prompts: PromptsConfig = PromptsConfig()
    generator: GeneratorConfig = GeneratorConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    quality: QualityConfig = QualityConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()
    health: HealthConfig = HealthConfig()


# ----------------------------------------------------------------------------------------------- train
class ZegCLIPConfig(Section):
    clip: str = Field("openai/clip-vit-base-patch16", description="hub id, transformers folder, or OpenAI's "
                      "ViT-B-16.pt (TorchScript archive or state dict; a path or URL)")
    tokenizer: str | None = Field(None, description="CLIP tokenizer, hub id or folder; None = model.clip's own "
                                  "(for an OpenAI .pt file: openai/clip-vit-base-patch16, the same BPE)")
    weights: Weights = "pretrained"
    image_size: int = 512
    prompt_tokens: int = Field(10, ge=0, description="deep prompt tokens per layer (100 in COCO configs)")
    prompt_dropout: float = 0.1
    decoder_layers: int = 3
    decoder_dim: int = 512
    decoder_heads: int = 8
    decoder_ffn: int = 2048
    text_templates: Literal["single", "imagenet15"] = "imagenet15"
    decoder_dropout: float = Field(0.1, ge=0, lt=1, description="decoder dropout (FFN, residuals, attention)")
    pos_interpolation: Literal["bilinear", "bicubic"] = Field(
        "bilinear", description="position-embedding resize (ZegCLIP: bilinear; transformers' CLIP: bicubic)")
    original_unused_self_attn: bool = Field(
        False, description="also build the decoder self-attention the official code builds but never calls "
        "(+3.15 M parameters that never train; only to reproduce the published 13.8 M count)")
    double_class_embedding: bool = Field(
        True, description="CLS input = 2 x CLIP's class embedding + its position, as the official ZegCLIP code "
        "computes it; false = once, as CLIP itself (docs/training.md)")
    text_cache_dir: str | None = Field(None, description="folder for cached class-name text embeddings; None = memory only")

    _local_paths = field_validator("clip", "tokenizer")(lambda value: resolve_local_path(value))


class SamplingConfig(Section):
    num_classes: int = Field(100, ge=1, description="m: classes per image per step; >= |V| means all")


class LossConfig(Section):
    focal_weight: float = 100.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    dice_weight: float = 1.0
    counterfactual: bool = True
    counterfactual_weight: float = 1.0
    focal_reduction: Literal["zegclip", "mean"] = Field(
        "zegclip", description="zegclip: per-mask pixel mean, summed over all sampled classes, divided by the "
        "number of present (image, class) masks; mean: mean over all pixels and classes")
    padding: Literal["negative", "ignore"] = Field(
        "negative", description="crop padding in focal and dice: negative = a negative pixel of every class, as "
        "ZegCLIP's SegLossPlus; ignore = left out of both terms (docs/training.md)")


class LabelsConfig(Section):
    context: Literal["ignore", "label", "off"] = Field(
        "ignore", description="context classes (named by the prompt, not asked for): ignore = never sampled as "
        "a negative of that image; label = found ones train as positives (the rest as under ignore); off = the "
        "paper (only asked classes are positives, context classes can be drawn as negatives)")


class TrainFilterConfig(Section):
    """Samples left out of training by their stored scores; the dataset is not rewritten. None = no filter."""

    clip_score_min: float | None = Field(None, ge=-1, le=1, description="samples with a lower clip_score")
    counterfactual_score_max: float | None = Field(
        None, ge=0, le=1, description="samples whose counterfactual shows an asked class above this score")
    predicted_iou_min: float | None = Field(None, ge=0, le=1, description="samples with an asked-class mask "
                                            "of lower SAM predicted IoU")
    stability_score_min: float | None = Field(None, ge=0, le=1, description="samples with an asked-class mask "
                                              "of lower stability score")
    box_fill_min: float | None = Field(None, ge=0, le=1, description="samples with an asked-class mask filling "
                                       "less of its box")


class OptimConfig(Section):
    # The authors' config (the paper text says Adam 2e-4: the same effective rate on prompts and head).
    optimizer: Literal["adamw", "adam"] = "adamw"
    lr: float = 2e-5
    head_lr_mult: float = 10.0
    weight_decay: float = 0.01
    schedule: Literal["poly", "constant"] = "poly"
    power: float = 0.9
    min_lr: float = 1e-6
    warmup_iters: int = 1500
    batch_size: int = Field(64, ge=1, description="global batch size over all workers")
    micro_batch_size: int | None = Field(
        None, ge=1, description="images per worker per forward pass; batch_size / (workers x micro_batch_size) "
        "steps of gradient accumulation. None = batch_size / workers (no accumulation)")


class AugmentConfig(Section):
    """mmseg's training pipeline as ZegCLIP uses it (details: ``magicseg_models/training/augment.py``)."""

    crop_size: int = Field(512, ge=1)
    scale: tuple[int, int] = Field(
        (2048, 512), description="mmseg img_scale (long, short): the image is fitted into it keeping its aspect "
        "ratio, then scaled by a ratio drawn from ratio_range; eval resizes to it")
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = Field(0.75, gt=0, le=1, description="retry a crop (10 draws) while one category "
                                 "covers this share of its labelled pixels or more; 1 = off")
    cat_count_background: bool = Field(
        False, description="count pixels of no class as a category in the cat_max_ratio rule (false = mmseg "
        "with reduce_zero_label, as ZegCLIP; docs/training.md)")
    crop_fallback: Literal["draw", "best"] = Field(
        "draw", description="when all 10 crops fail the rule: draw = an 11th unchecked crop (mmseg); best = the "
        "draw whose largest category share is smallest")
    flip_prob: float = Field(0.5, ge=0, le=1)
    photometric: bool = Field(True, description="mmseg PhotoMetricDistortion, same draw for image and "
                              "counterfactual")


class TrainConfig(Section):
    preset: str = "tiny"
    data: str | None = None
    out: str | None = None
    steps: int = Field(20000, ge=1)
    workers: int = Field(1, ge=1)
    use_gpu: bool | None = Field(
        None, description="true = GPUs required (refused before any work where the cluster has none and cannot "
        "start one); None = GPUs asked for, training on CPU with a logged note where none can be had; false = CPU")
    resume: bool = False
    seed: int = 0
    log_every: int = Field(50, ge=1)
    checkpoint_every: int = Field(2000, ge=1)
    keep_checkpoints: int = Field(3, ge=1, description="newest checkpoints kept under OUT/checkpoints")
    data_workers: int = Field(2, ge=0, description="DataLoader worker processes per training worker")
    pixel_work: Literal["auto", "device", "workers"] = Field(
        "auto", description="where images are resized, cropped, colour-jittered and normalised: workers = the "
        "DataLoader processes; device = batched on the training device (the workers only decode and draw); "
        "auto = device when training on a GPU")
    max_failures: int = Field(2, ge=0, description="Ray Train restarts of the worker group (from the latest "
                              "checkpoint) before the run fails")
    model: ZegCLIPConfig = ZegCLIPConfig()
    sampling: SamplingConfig = SamplingConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    augment: AugmentConfig = AugmentConfig()
    labels: LabelsConfig = LabelsConfig()
    filter: TrainFilterConfig = TrainFilterConfig()
    storage: StorageConfig = StorageConfig()
    ray: RayConfig = RayConfig()


# ------------------------------------------------------------------------------------------------ eval
class BenchmarkSettings(Section):
    bg_threshold: float = Field(0.95, ge=0, le=1, description="background where the best class score is below")
    prompt_names: str = Field("default", description="which prompt-name column of the benchmark's vocab to use")


def _default_benchmarks() -> dict[str, BenchmarkSettings]:
    # Paper: 0.95 everywhere (the GroupViT setting for VOC and COCO-Object; GroupViT uses 0.35 on Context).
    return {name: BenchmarkSettings() for name in ("voc", "context", "coco-object", "lvis", "oiv7-points")}


class InferenceConfig(Section):
    short_side: int = 512
    crop_size: int = 512
    stride: int = 426
    batch_size: int = Field(8, ge=1)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


class EvalConfig(Section):
    preset: str = "tiny"
    checkpoint: str | None = None
    benchmark: Literal["voc", "context", "coco-object", "lvis", "oiv7-points"] = "voc"
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


KINDS: dict[str, type[Section]] = {"build": BuildConfig, "train": TrainConfig, "eval": EvalConfig}


# --------------------------------------------------------------------------------------------- loading
def available_presets(kind: str) -> list[str]:
    folder = resources.files("magicseg_models") / "presets" / kind
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(kind: str, name: str) -> dict:
    path = resources.files("magicseg_models") / "presets" / kind / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown {kind} preset '{name}'; available: {', '.join(available_presets(kind))}")
    return yaml.safe_load(path.read_text()) or {}


def _read_yaml_file(path: str) -> dict:
    try:
        with fsspec.open(path, "rt") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {type(err).__name__}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"config file {path} is not valid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(data).__name__}")
    return data


def parse_override(item: str, model: type[BaseModel] | None = None) -> tuple[list[str], Any]:
    """``"generator.steps=30"`` -> (["generator", "steps"], 30); values are YAML (numbers, bools, lists).

    With ``model``, a key whose field is a string (``str`` or ``str | None``) takes the text as written, so that
    ``prompts.model=3.5`` or ``prompts.template={classes}`` stay strings; ``null``/``~``/empty still mean None
    for an optional one. A key whose field is a choice of names takes the name as written
    (``train.labels.context=off``).
    """
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set expects key.path=value, got '{item}'")
    path = key.split(".")
    annotation = _annotation(model, path) if model is not None else None
    if annotation is str:
        return path, raw
    if get_origin(annotation) is Literal and all(isinstance(v, str) for v in get_args(annotation)):
        return path, raw.strip()  # a choice of names: YAML would read "off" / "on" / "no" as booleans
    if annotation == str | None:
        return path, None if raw.strip() in ("", "~", "null", "Null", "NULL") else raw
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # unparseable YAML is taken as a plain string
    return path, value


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _nest(path: list[str], value: Any) -> dict:
    for part in reversed(path):
        value = {part: value}
    return value


def _format_validation_error(err: ValidationError, model: type[BaseModel]) -> str:
    first = err.errors()[0]
    path = ".".join(str(p) for p in first["loc"])
    if first["type"] == "extra_forbidden":
        hint = _closest_key(model, [str(p) for p in first["loc"]])
        return f"unknown config key '{path}'" + (f"; did you mean '{hint}'?" if hint else "")
    got = first.get("input")
    got_text = "" if isinstance(got, dict) else f" (got {got!r})"
    more = len(err.errors()) - 1
    tail = f" [+{more} more]" if more else ""
    return f"invalid config value for '{path}': {first['msg']}{got_text}{tail}"


def _annotation(model: type[BaseModel], path: list[str]) -> Any:
    """The type of the config field at ``path`` (``model`` itself for []), or None past the typed models."""
    current: Any = model
    i = 0
    while i < len(path):
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None  # inside a free-form value (e.g. storage_options)
        field = current.model_fields.get(path[i])
        if field is None:
            return None
        current = field.annotation
        if get_origin(current) is dict and i + 1 < len(path):  # dict[str, X]: the next part is a free key
            current = get_args(current)[1]
            i += 1
        i += 1
    return current


def _closest_key(model: type[BaseModel], loc: list[str]) -> str | None:
    current = _annotation(model, loc[:-1])
    if not (isinstance(current, type) and issubclass(current, BaseModel)):
        return None
    match = difflib.get_close_matches(loc[-1], list(current.model_fields), n=1)
    return ".".join(loc[:-1] + match) if match else None


def load_config(kind: str, preset: str | None = None, config_file: str | None = None,
                overrides: Sequence[str] = (), **fields: Any):
    """Build a validated config of ``kind`` (build | train | eval) from its layers.

    ``fields`` are explicit CLI flags (``out=..., num_samples=...``); ``None`` values are skipped.
    """
    model = KINDS[kind]
    file_layer = _read_yaml_file(config_file) if config_file else {}
    parsed = [parse_override(item, model) for item in overrides]
    set_preset = [value for path, value in parsed if path == ["preset"]]
    name = preset or (set_preset[-1] if set_preset else None) or file_layer.get("preset") \
        or model.model_fields["preset"].default
    if not isinstance(name, str):
        raise ConfigError(f"invalid config value for 'preset': expected a preset name, got {name!r}")
    data = _deep_merge(_read_preset(kind, name), file_layer)
    for path, value in parsed:
        data = _deep_merge(data, _nest(path, value))
    data = _deep_merge(data, {k: v for k, v in fields.items() if v is not None})
    data["preset"] = name
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, model)) from None


# -------------------------------------------------------------------------------------------- secrets
_SECRET_KEY = re.compile(
    r"secret|passw(or)?d|credential|authoriz|private[_-]?key|(access|account|api)[_-]?key|connection[_-]?string"
    r"|(^|[_-])(auth|token|key|sig|signature)$", re.I)  # e.g. sas_token, headers.Authorization, X-Amz-Signature
# userinfo may hold an unencoded '/' (AWS secret keys do): over-redacting a path with '@' is the safe side
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^@\s]+@", re.I)
# name=value pairs of query strings and fragments (and of connection strings, "AccountKey=...;")
_URL_PARAM = re.compile(r"(?P<name>(?<=[?&;#])[^=&;#\s]+)=[^&;#\s]*")
REDACTED = "<redacted>"
# Storage options are where credentials usually live, under names no pattern can foresee (client_kwargs, profile,
# sas URLs...): public copies keep the values of these harmless ones only.
PUBLIC_STORAGE_OPTIONS = ("endpoint_url", "region_name", "anon", "use_ssl", "requester_pays", "config_kwargs",
                          "default_block_size", "version_aware", "client_kwargs.endpoint_url",
                          "client_kwargs.region_name")


def redact(value: Any, key: str = "") -> Any:
    """Copy of a JSON-like value with secret-looking entries replaced, for manifests and artifacts.

    Everything under a secret-looking key goes, whatever its type (a numeric password, a service-account dict);
    in strings, URL userinfo and the values of secret-looking query parameters go.
    ``api_key_secret`` names a Prefect Secret block (not the secret itself) and is kept.
    """
    if key != "api_key_secret" and _SECRET_KEY.search(key) and value is not None and not isinstance(value, bool):
        return REDACTED
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, key) for v in value]
    if isinstance(value, str):
        value = _URL_USERINFO.sub(r"\g<scheme>" + REDACTED + "@", value)
        return _URL_PARAM.sub(lambda m: f"{m['name']}={REDACTED}" if _SECRET_KEY.search(m["name"]) else m[0], value)
    return value


def _keep_public_options(options: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in options.items():
        path = f"{prefix}{key}"
        if path in PUBLIC_STORAGE_OPTIONS:
            out[key] = value
        elif isinstance(value, dict) and any(p.startswith(path + ".") for p in PUBLIC_STORAGE_OPTIONS):
            out[key] = _keep_public_options(value, path + ".")
        else:
            out[key] = REDACTED
    return out


def public_config(config: BaseModel) -> dict:
    """The config as JSON with secrets removed: what manifests, artifacts and logs may show."""
    public = redact(config.model_dump(mode="json"))
    storage = public.get("storage")
    if isinstance(storage, dict) and isinstance(storage.get("storage_options"), dict):
        storage["storage_options"] = _keep_public_options(storage["storage_options"])
    return public


# ------------------------------------------------------------------------------------------ reference
def config_reference(kind: str) -> str:
    """Markdown table of every key of a config kind (docs/configuration.md is generated from this)."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(model: type[BaseModel], prefix: str, instance: BaseModel | None = None) -> None:
        # defaults come from the enclosing default instance: a section may override its class's own
        # defaults (e.g. `annotate.resources` shares a GPU by default, StageResources alone does not)
        for name, field in model.model_fields.items():
            ann = field.annotation
            default = getattr(instance, name) if instance is not None else field.get_default(
                call_default_factory=True)
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann, f"{prefix}{name}.", default)
                continue
            if isinstance(default, dict) and default and isinstance(next(iter(default.values())), BaseModel):
                default = {k: v.model_dump() for k, v in default.items()}
            type_text = getattr(ann, "__name__", None) if isinstance(ann, type) else str(ann)
            type_text = re.sub(r"[\w.]+\.(\w+)", r"\1", type_text or str(ann)).replace("|", "\\|")
            rows.append(f"| `{prefix}{name}` | {type_text} | `{default!r}` | {field.description or ''} |")

    walk(KINDS[kind], "")
    return "\n".join(rows)


def configuration_doc() -> str:
    """The whole of docs/configuration.md (regenerate with ``python -m magicseg_models.config``)."""
    parts = [
        "# Configuration reference",
        "",
        "Generated from `magicseg_models/config.py` by `python -m magicseg_models.config > docs/configuration.md`;",
        "a test fails when this file and the code disagree.",
        "",
        "Layers, later wins: these defaults (the paper's and the authors' values) -> a preset",
        "(`magicseg_models/presets/<kind>/<name>.yaml`) -> `--config FILE.yaml` -> `--set key.path=value`",
        "(values parsed as YAML, except that a string key takes the text as written: `--set prompts.model=3.5` is",
        "the string `3.5`; `null` or nothing still unsets an optional one) -> explicit flags such as `--num-samples`.",
        "Unknown keys and bad values fail with one line naming the key. Secrets never belong in a config: storage",
        "credentials come from the AWS environment, the LLM key from `OPENAI_API_KEY` or the Prefect Secret block",
        "named by `prompts.api_key_secret`. Configs as recorded (manifests, Parquet metadata, artifacts, dry runs)",
        "redact the values of secret-looking keys (`secret`, `key`, `token`, `password`, `auth`, `account_key`,",
        "`connection_string`, ...), URL userinfo, secret-looking URL query parameters, and every value of",
        "`storage.storage_options` except these harmless ones:",
        ", ".join(f"`{k}`" for k in PUBLIC_STORAGE_OPTIONS) + ".",
        "",
        "Presets: " + "; ".join(f"{kind}: " + ", ".join(f"`{p}`" for p in available_presets(kind)) for kind in KINDS),
    ]
    for kind, model in KINDS.items():
        parts += ["", f"## {kind}: `{model.__name__}`", "", config_reference(kind)]
    return "\n".join(parts) + "\n"


if __name__ == "__main__":
    # import the module by name so class paths render the same as for importers
    from magicseg_models.config import configuration_doc as _doc

    print(_doc(), end="")


# ------------------------------------------------------------------------------------------ comparing
# Keys that do not change what a build writes: how big, where, how fast. A rerun may change them freely;
# any other difference on an existing dataset would mix two datasets in one.
RERUN_FREE_KEYS = ("preset", "out", "num_samples", "shards_per_task", "ray", "storage", "health", "prompts.concurrency",
                   "prompts.timeout_s", "prompts.max_retries", "prompts.cache", "prompts.resources",
                   "prompts.token_parameter", "prompts.max_consecutive_failures",
                   "generator.resources", "annotate.resources", "generator.compile", "generator.attention",
                   "generator.channels_last", "generator.vae_decode_batch", "generator.tf32",
                   "annotate.detector.tf32", "annotate.segmenter.tf32")


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: value}


def config_differences(old: dict, new: dict, free: Sequence[str] = RERUN_FREE_KEYS) -> list[str]:
    """Dotted keys whose values differ between two public configs, ignoring ``free`` keys and their children."""
    a, b = _flatten(old), _flatten(new)

    def is_free(key: str) -> bool:
        return any(key == f or key.startswith(f + ".") for f in free)

    return sorted(k for k in set(a) | set(b) if not is_free(k) and a.get(k) != b.get(k))
