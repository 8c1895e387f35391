"""Paired generation on the tiny preset: real diffusers/transformers model classes at a tiny size, CPU, no network.

What must hold: same seed -> byte-identical images whatever the batch; image and counterfactual start from the
same latents; the paired path is two plain StableDiffusionPipeline calls (to float tolerance); one UNet call per
step per batch; bad settings fail with one line; the output policy drops NaN/black/flagged pairs with a reason.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_generation import one_line, pixels

from magicseg_models.config import GeneratorConfig, load_config
from magicseg_models.errors import ConfigError
from magicseg_models.generation import (
    GenerationInputError,
    PairedStableDiffusionPipeline,
    PairGenerator,
    WeightsError,
    build_tiny_tokenizer,
    make_scheduler,
)
from magicseg_models.generation.components import (
    SD15_TEXT_CONFIG,
    SD15_UNET_CONFIG,
    SD15_VAE_CONFIG,
    parameter_count,
)

ROOT = Path(__file__).resolve().parents[1]
SIZE, STEPS = 32, 3


def tiny_config(**changes) -> GeneratorConfig:
    """The tiny preset's generator section at 32x32, 3 steps, PNG (lossless: compare pixels through bytes)."""
    overrides = [f"generator.height={SIZE}", f"generator.width={SIZE}", f"generator.steps={STEPS}",
                 "generator.image_format=png"]
    overrides += [f"generator.{key}={value}" for key, value in changes.items()]
    return load_config("build", preset="tiny", overrides=overrides).generator


def job(i: int, seed: int | None = None, same: bool = False) -> dict:
    prompt = f"a photo of a cat sitting on a red sofa near a window, number {i}"
    return {"sample_id": f"t-{i}", "class_ids": [224], "prompt": prompt,
            "counterfactual_prompt": prompt if same else prompt.replace("cat", "nothing"),
            "seed": 1000 + i if seed is None else seed}


class CallCounter:
    def __init__(self, module):
        self.calls, self.inputs = 0, []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        self.calls += 1
        self.inputs.append((args[0].detach().clone(), kwargs.get("encoder_hidden_states")))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture(scope="module")
def gen():
    with PairGenerator(tiny_config(), device="cpu") as generator:
        yield generator


def plain_pipeline(pipe: PairedStableDiffusionPipeline):
    """The authors' way, built from the very same components."""
    from diffusers import StableDiffusionPipeline

    sd = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                 unet=pipe.unet, scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    return sd


# ----------------------------------------------------------------------------------------- the stage
def test_rows_in_rows_out(gen):
    rows = [job(i) for i in range(3)]
    out = gen(rows)
    assert [r["sample_id"] for r in out] == ["t-0", "t-1", "t-2"]
    for row, original in zip(out, rows):
        assert row["drop_reason"] is None
        assert (row["height"], row["width"]) == (SIZE, SIZE)
        assert row["class_ids"] == [224] and row["seed"] == original["seed"]  # other fields pass through
        for key in ("image", "counterfactual_image"):
            assert row[key].startswith(b"\x89PNG")
            assert pixels(row[key]).shape == (SIZE, SIZE, 3)
        assert row["image"] != row["counterfactual_image"]  # different prompts, different images
    assert rows[0].get("image") is None  # inputs are not modified


def test_an_injected_pipeline_is_used_as_it_is(gen):
    """``PairGenerator(config, pipeline=...)`` loads nothing: the pipeline handed in makes the images."""
    rows = [job(i) for i in range(2)]
    with PairGenerator(tiny_config(), pipeline=gen.pipeline) as shared:
        assert shared.pipeline is gen.pipeline
        assert [r["image"] for r in shared(rows)] == [r["image"] for r in gen(rows)]
        assert shared.settings == gen.settings


def test_jpeg_is_the_default_format():
    assert GeneratorConfig().image_format == "jpeg" and GeneratorConfig().jpeg_quality == 95
    assert GeneratorConfig().safety_checker is False  # off for dataset building


# ------------------------------------------------------------------------------------ reproducibility
def test_same_seed_gives_byte_identical_images_across_batch_compositions(gen):
    rows = [job(i) for i in range(5)]  # tiny preset: 4 pairs per UNet batch -> batches of 4 and 1
    reference = {r["sample_id"]: (r["image"], r["counterfactual_image"]) for r in gen(rows)}
    for batch in ([rows[3]], [rows[4], rows[3], rows[0]], rows[::-1], rows):
        for r in gen(batch):
            assert (r["image"], r["counterfactual_image"]) == reference[r["sample_id"]], r["sample_id"]
    # the job's seed, not its position, decides: the same prompt with another seed changes the image
    other = gen([job(0, seed=7)])[0]
    assert other["image"] != reference["t-0"][0]


def test_same_seed_gives_identical_images_across_model_loads(gen):
    rows = [job(i) for i in range(2)]
    with PairGenerator(tiny_config(), device="cpu") as fresh:  # fixed init seed: the same tiny weights
        assert [r["image"] for r in fresh(rows)] == [r["image"] for r in gen(rows)]
    torch.manual_seed(123)  # the global RNG plays no part
    assert [r["image"] for r in gen(rows)] == [r["image"] for r in fresh(rows)]


def test_image_and_counterfactual_start_from_the_same_latents(gen):
    pipe = gen.pipeline
    seeds = [11, 22, 33]
    with CallCounter(pipe.unet) as counter:
        out = pipe([job(i)["prompt"] for i in range(3)], [job(i)["counterfactual_prompt"] for i in range(3)],
                   seeds, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="np")
    n = len(seeds)
    first = counter.inputs[0][0]  # what the sampler actually fed the UNet at the first step
    assert first.shape[0] == 4 * n  # [uncond img | uncond cf | cond img | cond cf]
    sigma = pipe.scheduler.init_noise_sigma
    for i, seed in enumerate(seeds):
        noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out.initial_latents[i:i + 1], noise, rtol=0, atol=0)
        for branch in range(4):
            torch.testing.assert_close(first[branch * n + i], noise[0] * sigma, rtol=0, atol=0)
    # after the first step each branch keeps its own latents: image and counterfactual diverge
    second = counter.inputs[1][0]
    assert not torch.equal(second[0], second[n])


def test_same_prompt_in_both_slots_gives_identical_images(gen):
    rows = [job(i, same=True) for i in range(3)]
    for row in gen(rows):
        assert row["image"] == row["counterfactual_image"]


# ------------------------------------------------------------------------------ equivalence, call count
@pytest.mark.parametrize("scheduler", ["default", "dpm-solver++", "euler-a"])
def test_paired_path_matches_two_plain_pipeline_calls(scheduler):
    with PairGenerator(tiny_config(scheduler=scheduler), device="cpu") as generator:
        pipe = generator.pipeline
        sd = plain_pipeline(pipe)
        rows = [job(i) for i in range(3)]
        kw = {"height": SIZE, "width": SIZE, "num_inference_steps": STEPS, "guidance_scale": 7.5}
        out = pipe([r["prompt"] for r in rows], [r["counterfactual_prompt"] for r in rows],
                   [r["seed"] for r in rows], output_type="np", **kw)
        for i, row in enumerate(rows):
            for text, ours in ((row["prompt"], out.images[i]), (row["counterfactual_prompt"],
                                                                out.counterfactual_images[i])):
                # one image per call, with the seed's generator: same latents (and same ancestral noise)
                ref = sd(text, generator=torch.Generator().manual_seed(row["seed"]), output_type="np",
                         **kw).images[0]
                np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
                if scheduler != "euler-a":  # deterministic samplers: passing the latents is enough
                    ref = sd(text, latents=out.initial_latents[i:i + 1], output_type="np", **kw).images[0]
                    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("scheduler,extra", [("ddim", 0), ("dpm-solver++", 0), ("euler", 0), ("default", 1)])
def test_one_unet_call_per_step_for_the_whole_batch(gen, scheduler, extra):
    """A pair costs `steps` UNet calls (PNDM: one warm-up call more), not twice that; pairs share each call."""
    pipe = gen.pipeline
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(scheduler, original)
    try:
        rows = [job(i) for i in range(3)]
        with CallCounter(pipe.unet) as counter:
            out = pipe([r["prompt"] for r in rows], [r["counterfactual_prompt"] for r in rows],
                       [r["seed"] for r in rows], height=SIZE, width=SIZE, num_inference_steps=STEPS)
        assert counter.calls == out.unet_calls == STEPS + extra
        assert all(x.shape[0] == 4 * len(rows) for x, _ in counter.inputs)
        # the plain pipeline needs that many calls for EACH image: 2x per pair
        with CallCounter(pipe.unet) as plain:
            plain_pipeline(pipe)(rows[0]["prompt"], height=SIZE, width=SIZE, num_inference_steps=STEPS)
        assert plain.calls == STEPS + extra
    finally:
        pipe.scheduler = original


def test_stage_batches_pairs_by_config_batch_size(gen):
    assert gen.config.resources.batch_size == 4
    with CallCounter(gen.pipeline.unet) as counter:
        gen([job(i) for i in range(6)])  # 4 + 2 pairs
    timesteps = STEPS + 1  # PNDM
    assert counter.calls == 2 * timesteps
    assert [x.shape[0] for x, _ in counter.inputs] == [16] * timesteps + [8] * timesteps


def test_empty_prompt_embedding_is_computed_once_per_model_load(gen):
    pipe = gen.pipeline
    cached = pipe.negative_prompt_embeds
    seen = []
    handle = pipe.text_encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[0]))
    try:
        gen([job(i) for i in range(3)])
        gen([job(9)])
    finally:
        handle.remove()
    assert seen == [6, 2]  # only the conditional texts of each batch, in one call
    assert pipe.negative_prompt_embeds is cached
    # and it is what the unconditional branches get
    with CallCounter(pipe.unet) as counter:
        pipe(["a cat"], ["a nothing"], [1], height=SIZE, width=SIZE, num_inference_steps=1)
    hidden = counter.inputs[0][1]
    torch.testing.assert_close(hidden[0], cached[0], rtol=0, atol=0)
    torch.testing.assert_close(hidden[1], cached[0], rtol=0, atol=0)
    torch.testing.assert_close(hidden[2:], pipe.encode_prompt(["a cat", "a nothing"]))


def test_guidance_at_most_one_runs_without_unconditional_branches(gen):
    with CallCounter(gen.pipeline.unet) as counter:
        gen.pipeline(["a cat"], ["a nothing"], [1], height=SIZE, width=SIZE, num_inference_steps=2,
                     guidance_scale=1.0)
    assert all(x.shape[0] == 2 for x, _ in counter.inputs)


# ------------------------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize("override,needle", [
    ("generator.height=100", "multiple of 8"),
    ("generator.width=30", "multiple of 8"),
    ("generator.steps=0", "generator.steps"),
    ("generator.guidance_scale=-1", "generator.guidance_scale"),
    ("generator.stepz=3", "did you mean 'generator.steps'"),
])
def test_bad_settings_fail_with_one_line_in_config(override, needle):
    with pytest.raises(ConfigError) as info:
        load_config("build", preset="tiny", overrides=[override])
    assert needle in one_line(info.value)


def test_unknown_scheduler_fails_with_one_line_listing_known_ones():
    with pytest.raises(ConfigError) as info:
        PairGenerator(tiny_config(scheduler="dpm-solver+++"), device="cpu")
    message = one_line(info.value)
    assert "generator.scheduler" in message and "dpm-solver++" in message and "euler" in message


def test_scheduler_needing_a_missing_library_says_what_to_install():
    try:
        import scipy  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError) as info:
            PairGenerator(tiny_config(scheduler="lms"), device="cpu")
        assert "pip install scipy" in one_line(info.value)
    else:
        pytest.skip("scipy is installed: LMS works")


@pytest.mark.parametrize("model,needle", [
    ("/nonexistent/sd15", "no such folder"),
    ("./no/such/model", "no such folder"),
])
def test_missing_weights_path_fails_with_one_line(model, needle):
    with pytest.raises(WeightsError) as info:
        PairGenerator(GeneratorConfig(model=model, weights="pretrained", dtype="float32"), device="cpu")
    # a relative path means the directory the config was loaded in, and the error names it in full
    assert needle in one_line(info.value) and os.path.abspath(model) in str(info.value)


def test_folder_that_is_not_a_diffusers_model_fails_with_one_line(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsError) as info:
        PairGenerator(GeneratorConfig(model=str(tmp_path), weights="pretrained"), device="cpu")
    assert "missing vae/, text_encoder/, tokenizer/, scheduler/" in one_line(info.value)


@pytest.mark.filterwarnings("ignore:The `local_dir_use_symlinks` argument is deprecated")
def test_unreachable_hub_id_fails_with_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsError) as info:
        PairGenerator(GeneratorConfig(model="nobody-here/not-a-model", weights="pretrained"), device="cpu")
    assert "nobody-here/not-a-model" in one_line(info.value)


def test_pretrained_loads_a_local_diffusers_folder(gen, tmp_path):
    """weights=pretrained from a local SD folder (here: the tiny models saved the way diffusers saves SD 1.5)."""
    from diffusers import StableDiffusionPipeline

    with PairGenerator(tiny_config(safety_checker=True), device="cpu") as tiny:
        p = tiny.pipeline
        StableDiffusionPipeline(vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
                                scheduler=p.scheduler, safety_checker=p.safety_checker,
                                feature_extractor=p.feature_extractor).save_pretrained(tmp_path / "sd")
    config = tiny_config(weights="pretrained", model=str(tmp_path / "sd"), safety_checker=True)
    with PairGenerator(config, device="cpu") as loaded:
        assert loaded.pipeline.safety_checker is not None
        assert loaded.settings["weights"] == "pretrained" and loaded.settings["model"] == str(tmp_path / "sd")
        assert [r["image"] for r in loaded([job(0)])] == [r["image"] for r in gen([job(0)])]


@pytest.mark.parametrize("kwargs,needle", [
    ({"height": 36}, "height must be a positive multiple of 8"),
    ({"width": 0}, "width must be a positive multiple of 8"),
    ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1"),
    ({"guidance_scale": float("nan")}, "guidance_scale"),
    ({"seeds": [1, -2]}, "seeds[1]"),
    ({"seeds": [1]}, "one of each per job"),
    ({"prompt": "a cat"}, "prompt must be a list"),
    ({"counterfactual_prompt": ["x", None]}, "counterfactual_prompt[1] must be a string"),
    ({"output_type": "pil"}, "output_type"),
    ({"latents": torch.zeros(2, 4, 8, 8)}, "latents must have shape"),
])
def test_pipeline_check_inputs_raises_one_line(gen, kwargs, needle):
    call = {"prompt": ["a", "b"], "counterfactual_prompt": ["c", "d"], "seeds": [1, 2], "height": SIZE,
            "width": SIZE, "num_inference_steps": 2, **kwargs}
    with pytest.raises(GenerationInputError) as info:
        gen.pipeline(**call)
    assert needle in one_line(info.value)


@pytest.mark.parametrize("row,needle", [
    ({"prompt": "a", "seed": 1}, "missing 'counterfactual_prompt'"),
    ({"prompt": "a", "counterfactual_prompt": "b", "seed": "7"}, "'seed' must be an integer"),
    ({"prompt": 3, "counterfactual_prompt": "b", "seed": 1}, "'prompt' must be a string"),
])
def test_bad_rows_raise_one_line_naming_the_row(gen, row, needle):
    with pytest.raises(GenerationInputError) as info:
        gen([job(0), {"sample_id": "bad-1", **row}])
    message = one_line(info.value)
    assert needle in message and "row 1 (bad-1)" in message


# ------------------------------------------------------------------------------------------ output policy
def test_nonfinite_outputs_are_dropped_with_a_reason():
    with PairGenerator(tiny_config(), device="cpu") as generator:
        with torch.no_grad():
            generator.pipeline.vae.decoder.conv_out.bias.fill_(float("nan"))  # what fp16 overflow looks like
        out = generator([job(i) for i in range(2)])
    assert [r["drop_reason"] for r in out] == ["nonfinite", "nonfinite"]
    assert all(r["image"] is None and r["counterfactual_image"] is None for r in out)


def test_all_black_outputs_are_dropped_with_a_reason():
    with PairGenerator(tiny_config(), device="cpu") as generator:
        with torch.no_grad():
            generator.pipeline.vae.decoder.conv_out.weight.zero_()
            generator.pipeline.vae.decoder.conv_out.bias.fill_(-5.0)  # clamps to 0 everywhere
        out = generator([job(0)])
    assert out[0]["drop_reason"] == "black" and out[0]["image"] is None


def test_safety_checker_is_off_by_default_and_flags_drop_as_nsfw(gen):
    assert gen.pipeline.safety_checker is None
    with PairGenerator(tiny_config(safety_checker=True), device="cpu") as generator:
        checker = generator.pipeline.safety_checker
        assert checker is not None
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(-10.0)  # every image scores above every threshold
        out = generator([job(0), job(1)])
        assert [r["drop_reason"] for r in out] == ["nsfw", "nsfw"]
        with torch.no_grad():
            checker.concept_embeds_weights.fill_(10.0)
            checker.special_care_embeds_weights.fill_(10.0)
        assert [r["drop_reason"] for r in generator([job(0)])] == [None]


# --------------------------------------------------------------------------------------- models, presets
def test_tiny_tokenizer_behaves_like_clip():
    from transformers import CLIPTokenizer

    from magicseg_models.vocabulary import Vocabulary

    tok = build_tiny_tokenizer()
    assert isinstance(tok, CLIPTokenizer) and tok.model_max_length == 77
    ids = tok(["a photo of a bus (vehicle)", ""], padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tok.bos_token_id and ids[1, 1] == tok.eos_token_id
    assert tok.convert_ids_to_tokens(ids[0, 1:4].tolist()) == ["a</w>", "photo</w>", "of</w>"]
    long = tok(" ".join(["cat"] * 200), padding="max_length", max_length=77, truncation=True).input_ids
    assert len(long) == 77 and long[-1] == tok.eos_token_id
    # every vocabulary name tokenizes into known tokens, most of them whole words
    names = Vocabulary.default().names
    encoded = [tok(name, add_special_tokens=False).input_ids for name in names]
    assert all(tok.unk_token_id not in e or tok.unk_token_id == tok.eos_token_id for e in encoded)
    assert np.mean([len(e) for e in encoded]) < 4


def test_sd15_random_builds_the_published_architecture():
    """Parameter counts of SD 1.5's UNet, VAE and CLIP ViT-L/14 text tower (built on the meta device: no memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        assert parameter_count(UNet2DConditionModel(**SD15_UNET_CONFIG)) == 859_520_964
        assert parameter_count(AutoencoderKL(**SD15_VAE_CONFIG)) == 83_653_863
        assert parameter_count(CLIPTextModel(CLIPTextConfig(**SD15_TEXT_CONFIG))) == 123_060_480


@pytest.mark.slow
def test_sd15_random_generates_a_pair_on_cpu():
    """The full-size random models end to end (about 20 s and 5 GB of RAM on a CPU)."""
    config = load_config("build", preset="sd15-random",
                         overrides=["generator.height=64", "generator.width=64", "generator.steps=1"]).generator
    with PairGenerator(config, device="cpu") as generator:
        assert parameter_count(generator.pipeline.unet) == 859_520_964
        out = generator([job(0)])
    assert out[0]["drop_reason"] is None and pixels(out[0]["image"]).shape == (64, 64, 3)


def test_presets_carry_the_papers_generator_settings():
    sd15 = load_config("build", preset="sd15").generator
    assert (sd15.model, sd15.weights, sd15.height, sd15.width, sd15.steps, sd15.guidance_scale, sd15.scheduler,
            sd15.dtype) == ("stable-diffusion-v1-5/stable-diffusion-v1-5", "pretrained", 512, 512, 20, 7.5,
                            "default", "float16")
    assert load_config("build", preset="sd15-random").generator.weights == "random"
    assert load_config("build", preset="tiny").generator.weights == "tiny"


def test_default_scheduler_is_pndm_and_others_are_configurable(gen):
    assert type(gen.pipeline.scheduler).__name__ == "PNDMScheduler"
    settings = gen.settings
    json.dumps(settings, allow_nan=False)  # goes into shard metadata and manifests as plain JSON
    assert settings["scheduler"] == "PNDMScheduler" and settings["dtype"] == "float32"
    assert settings["weights"] == "tiny" and settings["steps"] == STEPS
    base = gen.pipeline.scheduler
    assert make_scheduler("dpm-solver++", base).config.algorithm_type == "dpmsolver++"
    assert type(make_scheduler("EulerDiscreteScheduler", base)).__name__ == "EulerDiscreteScheduler"
    assert make_scheduler("euler", base).config.beta_schedule == "scaled_linear"  # the model's betas carry over


def test_float16_runs_as_float32_on_cpu_and_options_apply():
    with PairGenerator(tiny_config(dtype="float16", channels_last=True, attention="default"),
                       device="cpu") as generator:
        assert generator.dtype == torch.float32
        assert generator.pipeline.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        out = generator([job(0)])
        assert out[0]["drop_reason"] is None


@pytest.mark.slow
def test_compiled_unet_gives_the_same_images(gen):
    with PairGenerator(tiny_config(compile=True), device="cpu") as generator:
        ours = generator([job(0)])[0]
    reference = gen([job(0)])[0]
    np.testing.assert_allclose(pixels(ours["image"]).astype(int), pixels(reference["image"]).astype(int), atol=2)
