"""Typed configuration: presets carry the paper's values, layers merge in order, errors are one line, no secrets leak."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from magicseg_models.config import (
    REDACTED,
    BuildConfig,
    EvalConfig,
    TrainConfig,
    available_presets,
    load_config,
    parse_override,
    public_config,
    redact,
)
from magicseg_models.errors import ConfigError, MagicSegError

EXPECTED_PRESETS = {
    "build": {"tiny", "sd15", "sd15-random"},
    "train": {"tiny", "zegclip-vitb16", "zegclip-vitb16-plus"},
    "eval": {"tiny", "zegclip-vitb16"},
}
MODELS = {"build": BuildConfig, "train": TrainConfig, "eval": EvalConfig}


def _write(tmp_path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _config_error(*args, **kwargs) -> str:
    """The message of the ConfigError that load_config raises; it must be a single line."""
    with pytest.raises(ConfigError) as info:
        load_config(*args, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, MagicSegError)  # so the CLI turns it into exit 2 + one line
    assert message and "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------- presets
@pytest.mark.parametrize("kind", sorted(EXPECTED_PRESETS))
def test_expected_presets_are_shipped(kind):
    assert EXPECTED_PRESETS[kind] <= set(available_presets(kind))


@pytest.mark.parametrize(
    "kind,name", [(kind, name) for kind in sorted(EXPECTED_PRESETS) for name in available_presets(kind)])
def test_every_preset_loads_and_validates(kind, name):
    config = load_config(kind, name)
    assert isinstance(config, MODELS[kind])
    assert config.preset == name
    # what a manifest records must validate again as the same config (round trip through JSON)
    assert MODELS[kind].model_validate(public_config(config)) == config


def test_sd15_is_the_papers_setup():
    c = load_config("build", "sd15")
    g = c.generator
    assert g.model.endswith("stable-diffusion-v1-5") and g.weights == "pretrained"
    assert (g.height, g.width, g.steps, g.guidance_scale) == (512, 512, 20, 7.5)
    assert g.scheduler == "default" and g.dtype == "float16"
    d = c.annotate.detector
    assert (d.box_threshold, d.text_threshold) == (0.3, 0.25)
    assert "grounding-dino" in d.model.lower() and d.weights == "pretrained"
    s = c.annotate.segmenter
    assert s.model_type == "vit_h" and s.weights == "pretrained" and "vit_h" in (s.checkpoint or "")
    assert c.annotate.keep == "all"  # images where a named class is not detected are dropped
    assert c.prompts.backend == "openai" and c.prompts.prompts_per_call == 10


def test_sd15_random_has_the_same_architectures_without_downloads():
    paper, rnd = load_config("build", "sd15"), load_config("build", "sd15-random")
    g = rnd.generator
    assert (g.height, g.width, g.steps, g.guidance_scale, g.dtype) == (512, 512, 20, 7.5, "float16")
    assert g.weights == rnd.annotate.detector.weights == rnd.annotate.segmenter.weights == "random"
    assert rnd.annotate.segmenter.model_type == paper.annotate.segmenter.model_type == "vit_h"
    assert rnd.annotate.segmenter.checkpoint is None
    assert rnd.prompts.backend == "template"  # no LLM endpoint needed for a throughput benchmark
    for config in (paper, rnd):  # never SD on a CPU by accident
        assert config.generator.resources.gpu == config.annotate.resources.gpu == "required"
        assert config.generator.resources.num_gpus == 1 and config.annotate.resources.num_gpus == 0.5


def test_stage_actors_are_a_number_or_a_range():
    from magicseg_models.config import StageResources

    assert StageResources(actors=3).actor_range == (3, 3)
    assert StageResources(actors=[1, 4]).actor_range == (1, 4)
    assert load_config("build", "tiny", overrides=["generator.resources.actors=[2, 6]"]).generator.resources \
        .actor_range == (2, 6)
    for bad in ([3, 1], [0, 2], 0):
        with pytest.raises(ConfigError, match="actors must be >= 1"):
            load_config("build", "tiny", overrides=[f"generator.resources.actors={bad}"])


def test_build_tiny_runs_anywhere_with_tiny_weights():
    c = load_config("build", "tiny")
    assert c.prompts.resources.num_gpus == 0  # the tiny LM on the CPU
    for res in (c.generator.resources, c.annotate.resources):  # a GPU where one can be had, else the CPU
        assert res.num_gpus > 0 and res.gpu == "optional"
    assert c.generator.weights == c.annotate.detector.weights == c.annotate.segmenter.weights == "tiny"
    # no network: the prompt stage runs the tiny local LM (hf backend), never an endpoint
    assert c.prompts.backend == "hf" and c.prompts.weights == "tiny"
    assert c.generator.height % 8 == 0 and c.generator.height <= 128 and c.generator.steps <= 4
    assert len(c.vocabulary.classes) == 8


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_train_and_eval_tiny_use_tiny_weights_on_cpu(kind):
    c = load_config(kind, "tiny")
    assert c.model.weights == "tiny"
    assert c.model.image_size <= 128
    if kind == "train":
        assert c.use_gpu is False
        assert c.steps <= 10 and c.optim.batch_size <= 4
    else:
        assert c.inference.dtype == "float32"  # bf16 kernels are a GPU matter


def test_zegclip_vitb16_train_is_the_authors_config():
    c = load_config("train", "zegclip-vitb16")
    assert c.model.clip == "openai/clip-vit-base-patch16" and c.model.weights == "pretrained"
    assert c.model.prompt_tokens == 10 and c.model.image_size == 512
    loss = c.loss
    assert (loss.focal_weight, loss.focal_alpha, loss.focal_gamma) == (100, 0.25, 2)
    assert loss.dice_weight == 1 and loss.counterfactual and loss.counterfactual_weight == 1
    assert c.sampling.num_classes == 100
    o = c.optim
    assert o.optimizer == "adamw" and math.isclose(o.lr, 2e-5) and o.head_lr_mult == 10
    assert math.isclose(o.lr * o.head_lr_mult, 2e-4)  # the paper's effective rate
    assert o.weight_decay == 0.01 and o.schedule == "poly" and o.power == 0.9
    assert math.isclose(o.min_lr, 1e-6) and o.warmup_iters == 1500
    assert c.steps == 20000 and o.batch_size == 64
    a = c.augment
    assert a.crop_size == 512 and tuple(a.ratio_range) == (0.5, 2.0) and a.cat_max_ratio == 0.75
    # what the official ZegCLIP code computes (tests/test_official_defaults.py checks each against its formula)
    assert c.model.double_class_embedding and c.loss.padding == "negative"
    assert not a.cat_count_background and a.crop_fallback == "draw"


def test_zegclip_vitb16_plus_differs_only_by_the_projects_variants():
    from magicseg_models.config import config_differences

    official = public_config(load_config("train", "zegclip-vitb16"))
    plus = public_config(load_config("train", "zegclip-vitb16-plus"))
    assert config_differences(official, plus, free=("preset",)) == [
        "augment.cat_count_background", "augment.crop_fallback", "loss.padding", "model.double_class_embedding"]


def test_zegclip_vitb16_eval_is_the_papers_protocol():
    c = load_config("eval", "zegclip-vitb16")
    assert c.model.clip == "openai/clip-vit-base-patch16" and c.model.prompt_tokens == 10
    assert (c.inference.short_side, c.inference.crop_size, c.inference.stride) == (512, 512, 426)
    assert c.benchmarks["voc"].bg_threshold == 0.95
    # paper: 0.95 everywhere
    assert {name: b.bg_threshold for name, b in c.benchmarks.items()} == {
        name: 0.95 for name in ("voc", "context", "coco-object", "lvis", "oiv7-points")}


# ------------------------------------------------------------------------------------------- layering
def test_layers_later_wins(tmp_path):
    cfg = _write(tmp_path, "num_samples: 100\nseed: 9\ngenerator: {steps: 5, guidance_scale: 3.0}\n")
    c = load_config("build", "tiny", cfg, ["generator.steps=7", "seed=11"], seed=13, num_samples=None)
    assert c.generator.height == 64  # preset over the model default (512)
    assert c.generator.guidance_scale == 3.0  # file over preset/default
    assert c.num_samples == 100  # file over preset; an explicit None flag is skipped
    assert c.generator.steps == 7  # --set over file
    assert c.seed == 13  # explicit flag over --set
    assert c.shard_size == 8  # untouched preset value


@pytest.mark.parametrize("item,path,value", [
    ("generator.steps=30", "generator.steps", 30),
    ("generator.guidance_scale=5.5", "generator.guidance_scale", 5.5),
    ("generator.compile=true", "generator.compile", True),
    ("generator.channels_last=False", "generator.channels_last", False),
    ("vocabulary.classes=[cat, dog]", "vocabulary.classes", ["cat", "dog"]),
    ("generator.revision=null", "generator.revision", None),
    ("generator.revision=", "generator.revision", None),
    ("prompts.base_url=http://127.0.0.1:8000/v1", "prompts.base_url", "http://127.0.0.1:8000/v1"),
    ("prompts.template=a photo of {classes}", "prompts.template", "a photo of {classes}"),
    # not valid YAML (a flow mapping followed by text): taken as the plain string
    ("prompts.template={classes} in a field", "prompts.template", "{classes} in a field"),
    ("prompts.template=a=b", "prompts.template", "a=b"),
])
def test_set_values_are_typed_as_yaml(item, path, value):
    keys, parsed = parse_override(item)
    assert keys == path.split(".")
    assert parsed == value and type(parsed) is type(value)
    config = load_config("build", "tiny", overrides=[item])
    got = config
    for key in keys:
        got = getattr(got, key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("item,path,value", [
    ("prompts.model=3.5", "prompts.model", "3.5"),  # YAML would make these a float, a mapping, a bool, a date
    ("prompts.template={classes}", "prompts.template", "{classes}"),
    ("generator.model=yes", "generator.model", "yes"),
    ("generator.revision=2024-01-01", "generator.revision", "2024-01-01"),
    ("prompts.template=a photo: {classes}", "prompts.template", "a photo: {classes}"),
    ("generator.revision=~", "generator.revision", None),  # optional strings can still be unset
    ("prompts.base_url=null", "prompts.base_url", None),
    ("benchmarks.voc.prompt_names=1", "benchmarks.voc.prompt_names", "1"),  # through dict[str, model]
])
def test_set_string_keys_take_the_text_as_written(item, path, value):
    kind = "eval" if path.startswith("benchmarks") else "build"
    got = load_config(kind, "tiny", overrides=[item])
    for key in path.split("."):
        got = got[key] if isinstance(got, dict) else getattr(got, key)
    assert got == value and type(got) is type(value)


def test_set_keeps_yaml_typing_for_other_keys():
    c = load_config("build", "tiny", overrides=["storage.storage_options.anon=true",
                                                "storage.storage_options.client_kwargs={verify: false}",
                                                "vocabulary.classes=[cat, dog]", "generator.steps=3"])
    assert c.storage.storage_options == {"anon": True, "client_kwargs": {"verify": False}}
    assert c.vocabulary.classes == ["cat", "dog"] and c.generator.steps == 3


def test_config_file_that_names_a_preset_uses_it(tmp_path):
    cfg = _write(tmp_path, "preset: sd15\nnum_samples: 5\n")
    c = load_config("build", config_file=cfg)
    assert c.preset == "sd15"
    assert (c.generator.height, c.generator.steps, c.annotate.segmenter.model_type) == (512, 20, "vit_h")
    assert c.num_samples == 5  # the file's own keys still override the preset
    # an explicit --preset wins over the file's
    c = load_config("build", "tiny", config_file=cfg)
    assert c.preset == "tiny" and c.generator.height == 64 and c.num_samples == 5


def test_nested_merge_keeps_siblings(tmp_path):
    cfg = _write(tmp_path, "storage:\n  storage_options: {endpoint_url: 'http://127.0.0.1:9000'}\n"
                           "annotate:\n  detector: {box_threshold: 0.35}\n")
    c = load_config("build", "sd15", cfg, ["storage.storage_options.anon=true", "annotate.detector.text_threshold=0.2"])
    assert c.storage.storage_options == {"endpoint_url": "http://127.0.0.1:9000", "anon": True}
    d = c.annotate.detector
    assert (d.box_threshold, d.text_threshold) == (0.35, 0.2)
    assert "grounding-dino" in d.model.lower()  # sibling from the preset kept
    assert c.annotate.segmenter.model_type == "vit_h" and c.annotate.keep == "all"
    assert c.generator.steps == 20 and c.prompts.backend == "openai"


def test_no_layer_is_mutated_between_loads():
    load_config("build", "tiny", overrides=["generator.steps=3", "vocabulary.classes=[cat]"])
    c = load_config("build", "tiny")
    assert c.generator.steps == 2 and len(c.vocabulary.classes) == 8


def test_overriding_one_benchmark_keeps_the_others():
    c = load_config("eval", "zegclip-vitb16", overrides=["benchmarks.context.bg_threshold=0.35"])
    assert c.benchmarks["context"].bg_threshold == 0.35
    assert c.benchmarks["voc"].bg_threshold == 0.95
    assert set(c.benchmarks) == {"voc", "context", "coco-object", "lvis", "oiv7-points"}
    with pytest.raises(ConfigError):
        load_config("eval", "zegclip-vitb16", overrides=["benchmarks.vocc.bg_threshold=0.5"])


def test_set_preset_is_honoured_or_rejected():
    try:
        c = load_config("build", overrides=["preset=sd15"])
    except ConfigError:
        return
    assert c.preset == "sd15" and c.generator.height == 512


# ------------------------------------------------------------------------------------------- errors
def test_unknown_key_names_it_and_suggests():
    msg = _config_error("build", overrides=["generator.stesp=3"])
    assert "generator.stesp" in msg and "did you mean 'generator.steps'" in msg
    msg = _config_error("train", "zegclip-vitb16", overrides=["optim.weigth_decay=0.1"])
    assert "optim.weigth_decay" in msg and "optim.weight_decay" in msg


def test_unknown_key_in_config_file(tmp_path):
    msg = _config_error("build", config_file=_write(tmp_path, "num_sample: 3\n"))
    assert "num_sample" in msg and "num_samples" in msg


@pytest.mark.parametrize("override,key", [
    ("generator.steps=abc", "generator.steps"),
    ("generator.steps=[1, 2]", "generator.steps"),
    ("prompts.backend=anthropic", "prompts.backend"),
    ("plan.two_class_fraction=1.5", "plan.two_class_fraction"),
    ("num_samples=-1", "num_samples"),
    ("shard_size=0", "shard_size"),
    ("annotate.detector.box_threshold=2", "annotate.detector.box_threshold"),
    ("generator.height=100", "generator.height"),
    ("generator.width=513", "generator.width"),
])
def test_bad_value_names_the_key(override, key):
    msg = _config_error("build", "tiny", overrides=[override])
    assert f"'{key}'" in msg


def test_height_must_be_a_multiple_of_8():
    assert "multiple of 8" in _config_error("build", overrides=["generator.height=100"])
    assert load_config("build", overrides=["generator.height=96"]).generator.height == 96


def test_bad_value_in_train_and_eval():
    assert "'augment.ratio_range'" in _config_error("train", overrides=["augment.ratio_range=[1, 2, 3]"])
    assert "'inference.dtype'" in _config_error("eval", overrides=["inference.dtype=int8"])


@pytest.mark.parametrize("item", ["generator.steps", "=3", "generator..steps=3", ".steps=3", "generator.=3"])
def test_malformed_set(item):
    msg = _config_error("build", overrides=[item])
    assert "key.path=value" in msg and item in msg


@pytest.mark.parametrize("kind", sorted(EXPECTED_PRESETS))
def test_unknown_preset_lists_available(kind):
    msg = _config_error(kind, "sd14")
    assert "sd14" in msg
    for name in available_presets(kind):
        assert name in msg


def test_missing_config_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    msg = _config_error("build", config_file=path)
    assert path in msg and "not found" in msg


def test_invalid_yaml(tmp_path):
    path = _write(tmp_path, "generator:\n  steps: [1, 2\nseed: 3\n")
    msg = _config_error("build", config_file=path)
    assert path in msg and "YAML" in msg


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_config_file_must_be_a_mapping(tmp_path, text):
    path = _write(tmp_path, text)
    msg = _config_error("build", config_file=path)
    assert path in msg and "mapping" in msg


def test_empty_config_file_is_the_preset(tmp_path):
    assert load_config("build", "tiny", _write(tmp_path, "# nothing\n")) == load_config("build", "tiny")


@pytest.mark.parametrize("case", ["directory", "not-utf8"])
def test_unreadable_config_file_is_a_config_error(tmp_path, case):
    if case == "directory":
        path = str(tmp_path)
    else:
        path = str(tmp_path / "latin1.yaml")
        (tmp_path / "latin1.yaml").write_bytes(b"prompts:\n  template: caf\xe9 {classes}\n")
    msg = _config_error("build", config_file=path)
    assert path in msg


def test_unknown_key_under_a_benchmark_suggests():
    msg = _config_error("eval", overrides=["benchmarks.voc.bg_thresold=0.5"])
    assert "bg_threshold" in msg


# ------------------------------------------------------------------------------------------- secrets
SECRETS = {"secret": "S3CR3T-value", "key": "AKIAEXAMPLEKEY", "token": "tok-123456",
           "password": "hunter2-pw", "session_token": "sess-tok-987"}


def test_public_config_redacts_storage_secrets():
    overrides = [f"storage.storage_options.{k}={v}" for k, v in SECRETS.items()]
    overrides += ["storage.storage_options.endpoint_url=http://127.0.0.1:9000",
                  "storage.storage_options.client_kwargs={region_name: eu-west-1, aws_secret_access_key: CK-SECRET}",
                  "prompts.api_key_secret=my-openai-block", "prompts.max_new_tokens=2048"]
    config = load_config("build", "tiny", overrides=overrides)
    public = public_config(config)
    text = json.dumps(public)
    for value in [*SECRETS.values(), "CK-SECRET"]:
        assert value not in text
    options = public["storage"]["storage_options"]
    assert all(options[k] == REDACTED for k in SECRETS)
    assert options["endpoint_url"] == "http://127.0.0.1:9000"
    assert options["client_kwargs"]["region_name"] == "eu-west-1"
    assert public["prompts"]["api_key_secret"] == "my-openai-block"  # a block name, not a secret
    assert public["prompts"]["max_new_tokens"] == 2048
    assert public["generator"]["steps"] == config.generator.steps
    # the run itself still has the credentials
    assert config.storage.storage_options["secret"] == SECRETS["secret"]
    # and the redacted config still validates (what a manifest records)
    assert BuildConfig.model_validate(public).generator == config.generator


def test_public_config_redacts_userinfo_in_urls():
    config = load_config("build", "tiny", out="s3://AKIAUSERINFO:verysecretpw@bucket/prefix", overrides=[
        "storage.storage_options.endpoint_url=https://minio-user:minio-pass@minio.local:9000",
        "prompts.base_url=http://llmuser:llmpass@127.0.0.1:8000/v1"])
    public = public_config(config)
    text = json.dumps(public)
    for value in ("AKIAUSERINFO", "verysecretpw", "minio-user", "minio-pass", "llmuser", "llmpass"):
        assert value not in text
    assert public["out"].startswith("s3://") and public["out"].endswith("@bucket/prefix")
    assert public["storage"]["storage_options"]["endpoint_url"].endswith("@minio.local:9000")
    assert public["prompts"]["base_url"].endswith("@127.0.0.1:8000/v1")


def test_public_config_keeps_plain_urls():
    config = load_config("build", "tiny", out="s3://bucket/prefix",
                         overrides=["prompts.base_url=http://127.0.0.1:8000/v1"])
    public = public_config(config)
    assert public["out"] == "s3://bucket/prefix"
    assert public["prompts"]["base_url"] == "http://127.0.0.1:8000/v1"


def test_numeric_secret_is_redacted():
    config = load_config("build", overrides=["storage.storage_options.password=731904"])
    assert "731904" not in json.dumps(public_config(config))


def test_secret_dict_is_redacted_whole():
    config = load_config("build", overrides=[
        "storage.storage_options.token={type: service_account, private_key: PRIVATE-KEY-PEM}"])
    assert "PRIVATE-KEY-PEM" not in json.dumps(public_config(config))


def test_public_config_is_yaml_dumpable():
    # --dry-run prints it as YAML: every value must be a plain type
    config = load_config("train", "zegclip-vitb16")
    assert yaml.safe_load(yaml.safe_dump(public_config(config))) == public_config(config)


def test_rerun_differences_ignore_size_place_and_speed_but_not_content():
    from magicseg_models.config import config_differences

    base = public_config(load_config("build", "tiny"))
    grown = public_config(load_config("build", "tiny", overrides=[
        "num_samples=500", "out=s3://b/x", "ray.num_cpus=8", "generator.resources.batch_size=16",
        "prompts.concurrency=64"]))
    assert config_differences(base, grown) == []
    changed = public_config(load_config("build", "tiny", overrides=["generator.steps=9", "seed=3",
                                                                    "annotate.keep=any"]))
    assert config_differences(base, changed) == ["annotate.keep", "generator.steps", "seed"]


@pytest.mark.parametrize("name", ["account_key", "connection_string", "auth", "authorization", "Authorization",
                                  "access_key", "sas_token", "api-key", "AccountKey", "aws_access_key_id",
                                  "client_secret", "X-Amz-Signature"])
def test_common_secret_key_names_are_redacted(name):
    assert redact({"headers": {name: "Bearer SEKRIT-1"}}) == {"headers": {name: REDACTED}}


@pytest.mark.parametrize("name", ["api_key_secret", "max_new_tokens", "prompt_tokens", "keep", "author",
                                  "signature_version", "endpoint_url"])
def test_ordinary_key_names_are_kept(name):
    assert redact({name: "plain"}) == {name: "plain"}


@pytest.mark.parametrize("url,public", [
    ("https://llm.local/v1?api-key=SEKRIT-1&model=x", "https://llm.local/v1?api-key=<redacted>&model=x"),
    ("https://h/p?x=1&token=SEKRIT-1#top", "https://h/p?x=1&token=<redacted>#top"),
    ("https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=SEKRIT-1",
     "https://acct.blob.core.windows.net/c?sv=2022-11-02&sig=<redacted>"),
    ("AccountName=acct;AccountKey=SEKRIT-1;EndpointSuffix=core.windows.net",
     "AccountName=acct;AccountKey=<redacted>;EndpointSuffix=core.windows.net"),
    ("https://h/p?q=cat&page=2", "https://h/p?q=cat&page=2"),
])
def test_secret_query_parameters_in_urls_are_redacted(url, public):
    assert redact({"base_url": url}) == {"base_url": public}


def test_public_config_keeps_only_harmless_storage_options():
    config = load_config("build", "tiny", overrides=[
        "storage.storage_options.profile=prod-admin", "storage.storage_options.region_name=eu-west-1",
        "storage.storage_options.anon=false", "storage.storage_options.config_kwargs={max_pool_connections: 50}",
        "storage.storage_options.client_kwargs={endpoint_url: 'http://127.0.0.1:9000', verify: /ca.pem}",
        "storage.storage_options.s3_additional_kwargs={SSECustomerKey: SEKRIT-1}"])
    options = public_config(config)["storage"]["storage_options"]
    assert options == {"profile": REDACTED, "region_name": "eu-west-1", "anon": False,
                       "config_kwargs": {"max_pool_connections": 50},
                       "client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "verify": REDACTED},
                       "s3_additional_kwargs": REDACTED}
