"""The train config (``magicseg train``): the ZegCLIP model, class sampling, losses, optimiser, augmentation,
training labels and filters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from magicseg_models.config.base import RayConfig, Section, StorageConfig, Weights, resolve_local_path


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
    text_cache_dir: str | None = Field(
        None, description="folder for cached class-name text embeddings; None = memory only")

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
