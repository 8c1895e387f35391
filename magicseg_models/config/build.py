"""The build config (``magicseg build``): vocabulary, plan, prompts, generator, annotation, quality, health."""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from magicseg_models.config.base import RayConfig, Section, StageResources, StorageConfig, Weights, resolve_local_path
from magicseg_models.weights.hub import FAMILY_BASE_MODELS, HF_SAM2_IDS, SINGLE_FILE_FAMILIES, is_single_file


# segment-anything's released checkpoints, one per model_type (its README's download links)
SAM_CHECKPOINT_URLS = {
    "vit_h": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
    "vit_l": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
    "vit_b": "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
}


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
    family: Literal["sd15", "sdxl", "flux"] = Field(
        "sd15", description="the model family and so the paired pipeline: sd15 (Stable Diffusion 1.x), sdxl "
        "(Stable Diffusion XL), flux (FLUX.1-schnell/-dev); docs/generators.md says which to pick")
    model: str = Field(
        FAMILY_BASE_MODELS["sd15"], description="a hub id, a diffusers folder, or a single-file checkpoint "
        "(.safetensors / .ckpt in the original layout: a path, or an hf://, s3://, https:// URL fetched once per "
        "node) for sd15 and sdxl")
    single_file_config: str | None = Field(
        None, description="single-file checkpoints: the diffusers repo (hub id or folder) whose configs, "
        "tokenizers and scheduler describe the file's architecture; None = the family's base model "
        f"({FAMILY_BASE_MODELS['sd15']}, {FAMILY_BASE_MODELS['sdxl']}); only its small files are read")
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
    safety_checker: bool = Field(
        False, description="off for dataset building; flagged images dropped as 'nsfw' (sd15 only: SDXL and FLUX "
        "ship no checker)")
    max_sequence_length: int = Field(
        256, ge=8, le=512, description="flux: T5 tokens the transformer reads (FLUX.1-schnell was trained with 256, "
        "FLUX.1-dev with 512); the prompt validator checks class names fall inside")
    license: str | None = Field(
        None, description="licence of the generator's outputs, recorded in the settings and the manifest; None = "
        "the family's base model licence (sd15 CreativeML OpenRAIL-M, sdxl CreativeML Open RAIL++-M, flux "
        "Apache-2.0 for schnell); set it for a fine-tune or FLUX.1-dev (non-commercial licence)")
    image_format: Literal["jpeg", "png"] = "jpeg"
    jpeg_quality: int = Field(95, ge=1, le=100)
    resources: StageResources = StageResources()

    _local_model_path = field_validator("model", "single_file_config")(lambda value: resolve_local_path(value))

    @field_validator("height", "width")
    @classmethod
    def _multiple_of_8(cls, value: int) -> int:
        # the VAE downsamples by 8: other sizes fail deep inside the UNet
        if value % 8:
            raise ValueError("must be a multiple of 8")
        return value

    @model_validator(mode="after")
    def _flux_packs_2x2_latents(self) -> GeneratorConfig:
        # FLUX packs 2x2 latent patches into one token: the image side must divide by 8 x 2
        if self.family == "flux":
            for name in ("height", "width"):
                if getattr(self, name) % 16:
                    raise ValueError(f"generator.{name} must be a multiple of 16 for family flux (8x VAE, 2x2 "
                                     f"latent patches), got {getattr(self, name)}")
        if self.safety_checker and self.family != "sd15":
            raise ValueError(f"generator.safety_checker: family {self.family} ships no safety checker (sd15 only)")
        return self

    @model_validator(mode="after")
    def _single_file_settings(self) -> GeneratorConfig:
        single = is_single_file(self.model)
        if not single:
            if self.single_file_config is not None:
                raise ValueError(f"generator.single_file_config describes a single-file checkpoint; {self.model!r} "
                                 f"is a hub id or diffusers folder, which holds its own configs")
            return self
        if self.family not in SINGLE_FILE_FAMILIES:
            raise ValueError(f"generator.model: single-file checkpoints load for families "
                             f"{', '.join(SINGLE_FILE_FAMILIES)}; for {self.family} give its diffusers folder or hub "
                             f"id (such as {FAMILY_BASE_MODELS[self.family]})")
        if self.revision is not None:
            raise ValueError("generator.revision is for a hub id; a single file on the hub names its revision in "
                             "the URL (hf://org/name@revision/file.safetensors)")
        return self


GROUNDING_DINO_MODEL = "IDEA-Research/grounding-dino-tiny"
OWLV2_MODEL = "google/owlv2-base-patch16-ensemble"
OWLV2_TEXT_WINDOW = 16  # token positions of OWLv2's text encoder per query (BOS and EOS included), every release
# what backend owlv2 uses for the fields nobody set: its hub model, the threshold transformers' OWLv2
# post-processing uses (a box's two scores are one number there), and its text encoder's 16 positions per phrase
OWLV2_DEFAULTS = {"model": OWLV2_MODEL, "box_threshold": 0.1, "text_threshold": 0.1,
                  "max_text_tokens": OWLV2_TEXT_WINDOW}
_OFFICIAL_ONLY = ("config_file", "checkpoint", "text_encoder")
# Named query-template sets of backend owlv2. clip-best: the seven templates of CLIP's ImageNet prompt study that
# OWL-ViT's own LVIS evaluation averages each class's logits over (its published AP figures are measured so).
QUERY_TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "clip-best": ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                  "a {} in a video game.", "art of the {}.", "a photo of the small {}."),
}


class DetectorConfig(Section):
    backend: Literal["transformers", "official", "owlv2"] = Field(
        "transformers", description="transformers / official: Grounding DINO (transformers port / groundingdino-py); "
        "owlv2: OWLv2 (transformers), one query per class phrase; docs/annotators.md says which to pick")
    model: str = Field(
        GROUNDING_DINO_MODEL, description=f"hub id or folder; follows the backend: owlv2 unset (or left at the "
        f"Grounding DINO default the presets spell out) = {OWLV2_MODEL}")
    weights: Weights = "pretrained"
    config_file: str | None = Field(None, description="official backend: GroundingDINO_SwinT_OGC.py")
    checkpoint: str | None = Field(
        None, description="official backend: groundingdino_swint_ogc.pth, a path or URL (s3://, https://, hf://)")
    text_encoder: str | None = Field(
        None, description="official backend: its BERT, a folder or hub id; None = the config file's "
        "text_encoder_type (bert-base-uncased)")
    box_threshold: float = Field(
        0.3, ge=0, le=1, description="a box is kept above it: Grounding DINO's best caption token; owlv2 (default "
        "0.1 there): its best class probability, the same number as its class score")
    text_threshold: float = Field(
        0.25, ge=0, le=1, description="the box's class score must be above it: mean probability over the class "
        "phrase's tokens; owlv2 (default 0.1 there): the class's sigmoid probability")
    max_text_tokens: int = Field(
        256, ge=8, description="captions longer than this are split into chunks; owlv2: tokens per class phrase, "
        "at most (and by default) its text encoder's 16")
    image_size: int | None = Field(
        None, ge=32, description="shortest image side fed to the detector; None = 800 (longest side at most 1333); "
        "owlv2: the side of the square each image is padded and resized to, None = the model's own (960)")
    nms_iou: float | None = Field(
        0.8, gt=0, le=1, description="per-class NMS of near-duplicate boxes at this IoU; None = off")
    max_boxes: int = Field(50, ge=1, description="at most this many boxes per class in an image, best first")
    batch_size: int = Field(8, ge=1, description="images per detector forward pass")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="autocast dtype on a GPU (a CPU runs float32)")
    tf32: bool = Field(False, description="TF32 tensor cores for the detector's float32 matmuls (GPU)")
    query_templates: list[str] | None = Field(
        None, description="owlv2: prompt ensembling, each class phrase queried through every template ('{}' is "
        "the phrase) and its logits averaged over them, as OWL-ViT's LVIS evaluation does; a list, or the name of "
        f"a set ({', '.join(QUERY_TEMPLATE_SETS)}); None = the bare phrase")

    _local_paths = field_validator("model", "text_encoder")(lambda value: resolve_local_path(value))
    _local_files = field_validator("config_file", "checkpoint")(
        lambda value: resolve_local_path(value, hub_id_allowed=False))

    @model_validator(mode="before")
    @classmethod
    def _defaults_follow_the_backend(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("backend") != "owlv2":
            return data
        data = {**{k: v for k, v in OWLV2_DEFAULTS.items() if k not in data}, **data}
        if data.get("model") == GROUNDING_DINO_MODEL:  # the pretrained presets name it; it is no OWLv2
            data["model"] = OWLV2_MODEL
        return data

    @field_validator("query_templates", mode="before")
    @classmethod
    def _named_template_set(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value not in QUERY_TEMPLATE_SETS:
                close = difflib.get_close_matches(value, list(QUERY_TEMPLATE_SETS), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"detector.query_templates: no template set {value!r}{hint}; give a list of "
                                 f"templates or one of {', '.join(QUERY_TEMPLATE_SETS)}")
            return list(QUERY_TEMPLATE_SETS[value])
        return value

    @field_validator("query_templates")
    @classmethod
    def _one_slot_per_template(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("detector.query_templates is empty: give templates, or leave it unset for the "
                                 "bare phrase")
            bad = [t for t in value if t.count("{}") != 1 or set("{}") & set(t.replace("{}", "", 1))]
            if bad:
                raise ValueError(f"detector.query_templates: {bad[0]!r} must hold '{{}}' (the class phrase) once "
                                 f"and no other braces")
        return value

    @model_validator(mode="after")
    def _owlv2_combinations(self) -> DetectorConfig:
        if self.backend != "owlv2":
            if self.query_templates is not None:
                raise ValueError(f"detector.query_templates is for backend owlv2 (one query per phrase); Grounding "
                                 f"DINO (backend {self.backend}) reads one caption of all phrases")
            return self
        official = [k for k in _OFFICIAL_ONLY if getattr(self, k) is not None]
        if official:
            raise ValueError(f"detector.{official[0]} is for backend official (groundingdino-py); backend owlv2 "
                             f"loads detector.model")
        if self.max_text_tokens > OWLV2_TEXT_WINDOW:
            raise ValueError(f"detector.max_text_tokens {self.max_text_tokens}: OWLv2's text encoder reads at most "
                             f"{OWLV2_TEXT_WINDOW} tokens per class phrase")
        return self


class SegmenterConfig(Section):
    backend: Literal["segment-anything", "transformers", "sam2"] = Field(
        "segment-anything", description="segment-anything: Meta's SAM package; transformers: SamModel; sam2: SAM 2 "
        "through transformers' Sam2Model (no CUDA extension to build)")
    model_type: Literal["vit_h", "vit_l", "vit_b"] = Field(
        "vit_h", description="SAM (ViT) size of the segment-anything and transformers backends")
    sam2_size: Literal["tiny", "small", "base-plus", "large"] = Field(
        "large", description="SAM 2.1 Hiera size of backend sam2: the architecture weights=random builds and the "
        "hub id checkpoint=None loads (facebook/sam2.1-hiera-<size>)")
    checkpoint: str | None = Field(
        None, description="segment-anything .pth: a path or URL (s3://, https://, hf://), fetched once per node "
        "into $MAGICSEG_CACHE/checkpoints; None = the official release file of model_type (dl.fbaipublicfiles.com); "
        "transformers backend: hub id or folder (None or a .pth = facebook/sam-vit-<size>); sam2 backend: hub id "
        "or save_pretrained folder (None = facebook/sam2.1-hiera-<sam2_size>)")
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
        return resolve_local_path(value, hub_id_allowed=info.data.get("backend") in ("transformers", "sam2"))

    @model_validator(mode="before")
    @classmethod
    def _checkpoint_follows_the_backend(cls, data: Any) -> Any:
        # the pretrained presets spell out SAM's release file; switching the backend to sam2 means its own model
        # (as detector.model follows backend owlv2); any other .pth is the user's and is refused below
        if isinstance(data, dict) and data.get("backend") == "sam2" \
                and data.get("checkpoint") in SAM_CHECKPOINT_URLS.values():
            data = {**data, "checkpoint": None}
        return data

    @model_validator(mode="after")
    def _sam2_reads_transformers_folders(self) -> SegmenterConfig:
        # Sam2Model.from_pretrained reads a hub id or a folder; a .pt/.pth file or a URL would fail only on a worker
        c = self.checkpoint
        if self.backend == "sam2" and c and (c.lower().endswith((".pt", ".pth")) or
                                                  ("://" in c and not c.startswith("file://"))):
            raise ValueError(f"segmenter.backend=sam2 loads a transformers Sam2Model (hub id or save_pretrained "
                             f"folder), not '{c}': set segmenter.checkpoint to one, or to null for "
                             f"{HF_SAM2_IDS[self.sam2_size]}")
        return self

    @property
    def checkpoint_source(self) -> str:
        """The segment-anything .pth to load: ``checkpoint``, or the release file of ``model_type`` (a vit_b run
        must not download the 2.5 GB vit_h file only to refuse it)."""
        return self.checkpoint or SAM_CHECKPOINT_URLS[self.model_type]

    @property
    def sam2_source(self) -> str:
        """The hub id or folder backend sam2 loads: ``checkpoint``, or Meta's SAM 2.1 repo of ``sam2_size``."""
        return self.checkpoint or HF_SAM2_IDS[self.sam2_size]


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


class HealthConfig(Section):
    """What a healthy build looks like: checked before each shard commits, once ``min_samples`` rows are in.

    A run outside these limits stops as Failed with one line naming the figure and its limit, instead of
    finishing "Completed" with a dataset of drops or of template prompts. The defaults suit ``sd15`` (real
    weights, an LLM); random-weight presets and ``tiny`` turn the check off.
    """

    enabled: bool = Field(True, description="check the run's health live (off for random-weight presets)")
    min_samples: int = Field(50, ge=1, description="rows processed in this run before any figure is checked")
    max_drop_rate: dict[str, float] = Field(
        # the quality drops (low_mask_quality, low_clip_score, duplicate) come from opt-in thresholds: their
        # ceilings catch a threshold set far off the model's scale, or an LLM that keeps repeating one prompt
        default_factory=lambda: {"all": 0.7, "prompt_failed": 0.1, "class_not_detected": 0.6,
                                 "counterfactual_contains_class": 0.3, "nsfw": 0.1, "black": 0.1, "nonfinite": 0.01,
                                 "low_mask_quality": 0.3, "low_clip_score": 0.3, "duplicate": 0.1},
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
