"""Paired SDXL on tiny components built from configs (real diffusers/transformers classes, CPU, no network).

What must hold: the paired path is two plain ``StableDiffusionXLPipeline`` calls on the same latents (to float
tolerance); one UNet call per step holds the 4N branches (zeros for the unconditional ones, as SDXL base does);
image and counterfactual start from the same latents; the validator knows both CLIP encoders' 77-token window;
a pretrained folder loads and its licence reaches the settings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers_generation import (
    COUNTERFACTUALS, PROMPTS, SEEDS, SIZE, STEPS, DenoiserCalls, class_at_token, one_line, one_thread, pixels,
    rows, tiny_family_config, validate,
)
from magicseg_models.generation import GenerationInputError, PairGenerator, build_tiny_tokenizer
from magicseg_models.generation.sdxl_pair_pipeline import PairedStableDiffusionXLPipeline


single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def gen():
    with PairGenerator(tiny_family_config("sdxl"), device="cpu") as generator:
        yield generator


def plain_sdxl(pipe: PairedStableDiffusionXLPipeline):
    """diffusers' own SDXL pipeline over the very same components."""
    from diffusers import StableDiffusionXLPipeline

    sd = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2, tokenizer=pipe.tokenizer,
        tokenizer_2=pipe.tokenizer_2, unet=pipe.unet,
        scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config), add_watermarker=False)
    sd.set_progress_bar_config(disable=True)
    return sd


@pytest.mark.parametrize("scheduler", ["default", "euler-a"])
def test_paired_sdxl_matches_two_plain_pipeline_calls(scheduler):
    with PairGenerator(tiny_family_config("sdxl", scheduler=scheduler), device="cpu") as generator:
        pipe = generator.pipeline
        kw = {"height": SIZE, "width": SIZE, "num_inference_steps": STEPS, "guidance_scale": 5.0}
        out = pipe(PROMPTS, COUNTERFACTUALS, SEEDS, output_type="np", **kw)
        sd = plain_sdxl(pipe)
        for i, seed in enumerate(SEEDS):
            for text, ours in ((PROMPTS[i], out.images[i]), (COUNTERFACTUALS[i], out.counterfactual_images[i])):
                ref = sd(text, generator=torch.Generator().manual_seed(seed), output_type="np", **kw).images[0]
                np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
        if scheduler == "default":  # deterministic sampler: the latents alone decide
            ref = sd(PROMPTS[0], latents=out.initial_latents[:1], output_type="np", **kw).images[0]
            np.testing.assert_allclose(out.images[0], ref, atol=1e-4, rtol=0)


def test_one_unet_call_per_step_holds_the_four_branches_and_shared_latents(gen):
    pipe = gen.pipeline
    n = len(SEEDS)
    with DenoiserCalls(pipe.unet) as calls:
        out = pipe(PROMPTS, COUNTERFACTUALS, SEEDS, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   guidance_scale=5.0)
    assert calls.calls == out.unet_calls == STEPS  # Euler: one call per step for the whole batch
    assert all(x.shape[0] == 4 * n for x in calls.inputs)
    first, cond = calls.inputs[0], calls.kwargs[0]
    sigma = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sigma.set_timesteps(STEPS)
    for i, seed in enumerate(SEEDS):  # every branch of pair i starts from the noise of seed i alone
        noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(out.initial_latents[i:i + 1], noise, rtol=0, atol=0)
        for branch in range(4):
            torch.testing.assert_close(first[branch * n + i], sigma.scale_model_input(
                noise[0] * sigma.init_noise_sigma, sigma.timesteps[0]), rtol=1e-6, atol=1e-6)
    # [uncond img | uncond cf | cond img | cond cf]: zeros for the unconditional half (force_zeros_for_empty_prompt)
    hidden, added = cond["encoder_hidden_states"], cond["added_cond_kwargs"]
    assert hidden.shape == (4 * n, 77, 32 + 48) and added["text_embeds"].shape == (4 * n, 48)  # both towers, the pooled 2nd
    assert not hidden[:2 * n].any() and not added["text_embeds"][:2 * n].any()
    torch.testing.assert_close(hidden[2 * n:], pipe.encode_prompt([*PROMPTS, *COUNTERFACTUALS])[0])
    assert added["time_ids"].tolist() == [[SIZE, SIZE, 0, 0, SIZE, SIZE]] * (4 * n)
    assert not torch.equal(calls.inputs[1][2 * n], calls.inputs[1][3 * n])  # then image and cf diverge


def test_guidance_at_most_one_runs_only_the_conditional_branches(gen):
    with DenoiserCalls(gen.pipeline.unet) as calls:
        gen.pipeline(PROMPTS[:1], COUNTERFACTUALS[:1], SEEDS[:1], height=SIZE, width=SIZE, num_inference_steps=2,
                     guidance_scale=1.0)
    assert [x.shape[0] for x in calls.inputs] == [2, 2]


def test_stage_rows_and_settings(gen):
    out = gen(rows(3))
    assert [r["drop_reason"] for r in out] == [None] * 3
    assert pixels(out[0]["image"]).shape == (SIZE, SIZE, 3) and out[0]["image"] != out[0]["counterfactual_image"]
    assert [r["image"] for r in gen(rows(3)[::-1])] == [r["image"] for r in out][::-1]  # the seed decides
    settings = gen.settings
    assert settings["family"] == "sdxl" and settings["scheduler"] == "EulerDiscreteScheduler"
    assert settings["license"].startswith("none")  # tiny random weights carry no model licence


@pytest.mark.parametrize("kwargs,needle", [
    ({"height": 36}, "height must be a positive multiple of 8"),
    ({"seeds": [1]}, "one of each per job"),
    ({"latents": torch.zeros(2, 4, 8, 8)}, "latents must have shape"),
])
def test_check_inputs_raises_one_line(gen, kwargs, needle):
    call = {"prompt": ["a", "b"], "counterfactual_prompt": ["c", "d"], "seeds": [1, 2], "height": SIZE,
            "width": SIZE, "num_inference_steps": 2, **kwargs}
    with pytest.raises(GenerationInputError) as info:
        gen.pipeline(**call)
    assert needle in one_line(info.value)


def test_pretrained_folder_loads_and_records_its_licence(gen, tmp_path):
    """weights=pretrained from a local SDXL diffusers folder (the tiny models saved the way diffusers saves SDXL)."""
    plain_sdxl(gen.pipeline).save_pretrained(tmp_path / "sdxl")
    with PairGenerator(tiny_family_config("sdxl", weights="pretrained", model=str(tmp_path / "sdxl")),
                       device="cpu") as loaded:
        assert [r["image"] for r in loaded(rows(1))] == [r["image"] for r in gen(rows(1))]
        assert loaded.settings["license"] == "CreativeML Open RAIL++-M"
        assert loaded.settings["weights"] == "pretrained"


def test_folder_without_the_second_text_encoder_fails_with_one_line(tmp_path):
    from magicseg_models.generation import WeightsError

    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (tmp_path / sub).mkdir()
    with pytest.raises(WeightsError) as info:
        PairGenerator(tiny_family_config("sdxl", weights="pretrained", model=str(tmp_path)), device="cpu")
    assert "not a Stable Diffusion XL diffusers folder (missing text_encoder_2/, tokenizer_2/)" in one_line(info.value)


# ------------------------------------------------------------------------------------------- text limit
def test_validator_rejects_a_class_past_either_clip_window():
    """Both CLIP encoders read 77 tokens (75 of prompt): a class ending at token 75 is seen, at 76 it is not."""
    from magicseg_models.prompts.stage import generator_token_counter
    from magicseg_models.prompts.text import tokenizer_counter
    from magicseg_models.prompts.text_limits import encoder_limits

    config = tiny_family_config("sdxl")
    assert [(e.name, e.max_tokens, e.carries_content) for e in encoder_limits(config)] == [
        ("clip-l", 77, True), ("clip-bigg", 77, True)]
    counter = generator_token_counter(config)
    clip = tokenizer_counter(build_tiny_tokenizer())
    assert validate(class_at_token(clip, "cat", 75), "cat", counter).ok
    assert validate(class_at_token(clip, "cat", 76), "cat", counter).reason == "class_after_token_limit:cat"


def test_sdxl_random_builds_the_published_architecture():
    """sdxl-random: SDXL base's UNet and OpenCLIP bigG text tower at full size (on the meta device: no memory)."""
    from magicseg_models.config import load_config
    from magicseg_models.generation import load_components
    from magicseg_models.generation.components import parameter_count

    config = load_config("build", "sdxl-random").generator
    parts = load_components(config, torch.device("meta"), torch.float16)
    assert parameter_count(parts.unet) == 2_567_463_684 and parts.unet.dtype == torch.float16
    assert parameter_count(parts.text_encoder_2) == 694_659_840
    assert parts.vae.dtype == torch.float32  # SDXL's VAE overflows in float16: kept in float32
