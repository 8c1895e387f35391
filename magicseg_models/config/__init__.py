"""Typed configuration: BuildConfig, TrainConfig, EvalConfig, layered from presets.

Layers, later wins: the model defaults (the paper's and the authors' values) -> a preset shipped as package data
(``presets/<kind>/<name>.yaml``) -> ``--config FILE.yaml`` -> ``--set a.b=c`` overrides -> explicit CLI flags.
Every model forbids unknown keys, so a typo fails with one line naming the key instead of being silently ignored.

One job per module; import the names from here:

- :mod:`.base`: the strict ``Section`` base, ``Weights``, local-path resolution, shared sections (resources,
  storage, Ray);
- :mod:`.build`, :mod:`.train`, :mod:`.eval`: the three config kinds and their sections (``BENCHMARKS`` is the
  one list of benchmark names);
- :mod:`.loading`: presets, YAML files, ``--set`` parsing, ``load_config``;
- :mod:`.redaction`: ``redact`` and ``public_config`` (what manifests and logs may show);
- :mod:`.reference`: docs/configuration.md (``python -m magicseg_models.config``);
- :mod:`.rerun`: which config differences a rerun on an existing dataset may have.
"""

from magicseg_models.config.base import (
    RayConfig,
    Section,
    StageResources,
    StorageConfig,
    Weights,
    resolve_local_path,
)
from magicseg_models.config.build import (
    HF_PROMPTS_NUM_GPUS,
    SAM_CHECKPOINT_URLS,
    AnnotateConfig,
    BuildConfig,
    DedupConfig,
    DetectorConfig,
    GeneratorConfig,
    HealthConfig,
    PlanConfig,
    PromptsConfig,
    QualityConfig,
    SegmenterConfig,
    VocabularyConfig,
)
from magicseg_models.config.eval import BENCHMARKS, BenchmarkName, BenchmarkSettings, EvalConfig, InferenceConfig
from magicseg_models.config.loading import KINDS, available_presets, load_config, parse_override
from magicseg_models.config.redaction import PUBLIC_STORAGE_OPTIONS, REDACTED, public_config, redact
from magicseg_models.config.reference import config_reference, configuration_doc
from magicseg_models.config.rerun import RERUN_FREE_KEYS, config_differences
from magicseg_models.config.train import (
    AugmentConfig,
    LabelsConfig,
    LossConfig,
    OptimConfig,
    SamplingConfig,
    TrainConfig,
    TrainFilterConfig,
    ZegCLIPConfig,
)


__all__ = [
    "BENCHMARKS", "HF_PROMPTS_NUM_GPUS", "KINDS", "PUBLIC_STORAGE_OPTIONS", "REDACTED", "RERUN_FREE_KEYS",
    "SAM_CHECKPOINT_URLS", "AnnotateConfig", "AugmentConfig", "BenchmarkName", "BenchmarkSettings", "BuildConfig",
    "DedupConfig", "DetectorConfig", "EvalConfig", "GeneratorConfig", "HealthConfig", "InferenceConfig",
    "LabelsConfig", "LossConfig", "OptimConfig", "PlanConfig", "PromptsConfig", "QualityConfig", "RayConfig",
    "SamplingConfig", "Section", "SegmenterConfig", "StageResources", "StorageConfig", "TrainConfig",
    "TrainFilterConfig", "VocabularyConfig", "Weights", "ZegCLIPConfig", "available_presets", "config_differences",
    "config_reference", "configuration_doc", "load_config", "parse_override", "public_config", "redact",
    "resolve_local_path",
]
