"""Paired FLUX.1-schnell on tiny components built from configs (real diffusers/transformers classes, CPU, offline).

What must hold: the paired path is two plain ``FluxPipeline`` calls on the same noise (to float tolerance); one
transformer call per step holds the 2N branches (no classifier-free guidance: no unconditional branch); image and
counterfactual start from the same packed noise; the validator reads T5's window (256 for schnell), not CLIP's;
a pretrained folder loads and its licence reaches the settings; an end-to-end tiny build with each new family
passes ``magicseg inspect`` (the FLUX one annotated by the other new backends, OWLv2 and SAM 2).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers_generation import (
    COUNTERFACTUALS, PROMPTS, SEEDS, SIZE, STEPS, DenoiserCalls, class_at_token, one_line, one_thread, pixels,
    rows, tiny_family_config, validate,
)
from magicseg_models.errors import ConfigError
from magicseg_models.generation import GenerationInputError, PairGenerator
from magicseg_models.generation.flux_pair_pipeline import PairedFluxPipeline

single_thread = pytest.fixture(scope="module", autouse=True)(one_thread)


@pytest.fixture(scope="module")
def gen():
    with PairGenerator(tiny_family_config("flux"), device="cpu") as generator:
        yield generator


def plain_flux(pipe: PairedFluxPipeline):
    """diffusers' own FLUX pipeline over the very same components."""
    from diffusers import FluxPipeline

    flux = FluxPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
                        tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, transformer=pipe.transformer,
                        scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config))
    flux.set_progress_bar_config(disable=True)
    return flux


def test_paired_flux_matches_two_plain_pipeline_calls(gen):
    pipe = gen.pipeline
    kw = {"height": SIZE, "width": SIZE, "num_inference_steps": STEPS}
    out = pipe(PROMPTS, COUNTERFACTUALS, SEEDS, output_type="np", **kw)
    flux = plain_flux(pipe)
    for i, seed in enumerate(SEEDS):
        for text, ours in ((PROMPTS[i], out.images[i]), (COUNTERFACTUALS[i], out.counterfactual_images[i])):
            ref = flux(text, generator=torch.Generator().manual_seed(seed), output_type="np",
                       max_sequence_length=pipe.max_sequence_length, **kw).images[0]
            np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    ref = flux(PROMPTS[1], latents=out.initial_latents[1:], output_type="np",
               max_sequence_length=pipe.max_sequence_length, **kw).images[0]
    np.testing.assert_allclose(out.images[1], ref, atol=1e-4, rtol=0)


def test_one_transformer_call_per_step_for_the_pair_without_unconditional_branches(gen):
    pipe = gen.pipeline
    n = len(SEEDS)
    with DenoiserCalls(pipe.transformer) as calls:
        out = pipe(PROMPTS, COUNTERFACTUALS, SEEDS, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                   guidance_scale=7.0)  # schnell has no guidance input: the scale changes nothing
    assert calls.calls == out.unet_calls == STEPS
    assert all(x.shape[0] == 2 * n for x in calls.inputs)  # [img | cf], no unconditional half
    cond = calls.kwargs[0]
    assert cond["guidance"] is None and cond["encoder_hidden_states"].shape[:2] == (2 * n, pipe.max_sequence_length)
    first = calls.inputs[0]
    for i, seed in enumerate(SEEDS):  # packed noise of seed i alone, shared by image and counterfactual
        noise = torch.randn((1, 4, SIZE // 8, SIZE // 8), generator=torch.Generator().manual_seed(seed))
        packed = noise.view(1, 4, 2, 2, 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, 4, 16)
        torch.testing.assert_close(out.initial_latents[i:i + 1], packed, rtol=0, atol=0)
        torch.testing.assert_close(first[i], packed[0], rtol=0, atol=0)
        torch.testing.assert_close(first[n + i], packed[0], rtol=0, atol=0)
    assert not torch.equal(calls.inputs[1][0], calls.inputs[1][n])  # then image and cf diverge
    same = pipe(PROMPTS, COUNTERFACTUALS, SEEDS, height=SIZE, width=SIZE, num_inference_steps=STEPS,
                guidance_scale=0.0)
    torch.testing.assert_close(same.images, out.images, rtol=0, atol=0)


def test_stage_rows_and_settings(gen):
    out = gen(rows(3))
    assert [r["drop_reason"] for r in out] == [None] * 3
    assert pixels(out[0]["image"]).shape == (SIZE, SIZE, 3) and out[0]["image"] != out[0]["counterfactual_image"]
    assert [r["image"] for r in gen(rows(3)[::-1])] == [r["image"] for r in out][::-1]  # the seed decides
    settings = gen.settings
    assert settings["family"] == "flux" and settings["max_sequence_length"] == 256
    assert settings["scheduler"] == "FlowMatchEulerDiscreteScheduler" and settings["license"].startswith("none")


def test_pretrained_folder_loads_and_records_its_licence(gen, tmp_path):
    folder = tmp_path / "FLUX.1-schnell"
    plain_flux(gen.pipeline).save_pretrained(folder)
    with PairGenerator(tiny_family_config("flux", weights="pretrained", model=str(folder)), device="cpu") as loaded:
        assert [r["image"] for r in loaded(rows(1))] == [r["image"] for r in gen(rows(1))]
        assert loaded.settings["license"] == "Apache-2.0"


@pytest.mark.parametrize("override,needle", [
    ("generator.height=40", "multiple of 16 for family flux"),
    ("generator.scheduler=ddim", "flow-matching scheduler"),
    ("generator.safety_checker=true", "ships no safety checker"),
])
def test_bad_flux_settings_fail_with_one_line(override, needle):
    with pytest.raises(ConfigError) as info:
        PairGenerator(load_config_with(override), device="cpu")
    assert needle in one_line(info.value)


def load_config_with(override: str):
    from magicseg_models.config import load_config

    return load_config("build", preset="tiny", overrides=["generator.family=flux", override]).generator


def test_check_inputs_raises_one_line(gen):
    with pytest.raises(GenerationInputError) as info:
        gen.pipeline(["a"], ["b"], [1], height=24, width=SIZE, num_inference_steps=2)
    assert "height must be a positive multiple of 16" in one_line(info.value)


# ------------------------------------------------------------------------------------------- text limit
def test_validator_reads_t5s_window_not_clips():
    """FLUX.1-schnell's T5 reads 256 tokens (255 of prompt + EOS): a class there is seen even past CLIP's 77 (CLIP
    gives FLUX only a pooled vector); one token later it is not; dev's 512 reads it."""
    from magicseg_models.generation.components import build_tiny_t5_tokenizer
    from magicseg_models.prompts.stage import generator_token_counter
    from magicseg_models.prompts.text import tokenizer_counter
    from magicseg_models.prompts.text_limits import encoder_limits

    config = tiny_family_config("flux")
    assert [(e.name, e.max_tokens, e.carries_content) for e in encoder_limits(config)] == [
        ("clip-l", 77, False), ("t5-xxl", 256, True)]
    counter = generator_token_counter(config)
    t5 = tokenizer_counter(build_tiny_t5_tokenizer())
    assert validate(class_at_token(t5, "cat", 100), "cat", counter).ok  # past CLIP's window, inside T5's
    assert validate(class_at_token(t5, "cat", 255), "cat", counter).ok
    late = class_at_token(t5, "cat", 256)
    assert validate(late, "cat", counter).reason == "class_after_token_limit:cat"
    assert generator_token_counter(tiny_family_config("flux", max_sequence_length=512))(late) <= 75


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_tiny_builds_with_sdxl_and_flux_pass_inspect(tmp_path, capsys, prefect_api, local_ray):
    """The real stages on a local Ray through the CLI's own entry point, with each new family's tiny models; the
    family and its licence line reach the manifest. The FLUX build is also annotated by OWLv2 and SAM 2 (one
    build for all of issue 19's new models: each build's cost is mostly starting its actors), whose settings
    reach the manifest and whose masks carry both SAM scores. In this process (the session's Prefect API and
    Ray): a subprocess per family would only pay Python's, Prefect's and Ray's start-up again, and a real
    ``magicseg`` process is tested in test_build_flow.py and test_cli.py."""
    from flows.cli import main as cli_main
    from magicseg_models.dataset.reader import DatasetReader

    annotators = {"sdxl": [], "flux": ["--set", "annotate.detector.backend=owlv2",
                                       "--set", "annotate.segmenter.backend=sam2"]}
    for family in ("sdxl", "flux"):
        out = tmp_path / family
        capsys.readouterr()
        code = cli_main(["build", "--preset", "tiny", "--out", str(out), "--num-samples", "4", "--shard-size", "4",
                         "--set", f"generator.family={family}", "--set", "generator.height=32",
                         "--set", "generator.width=32", *annotators[family],
                         # the generator is under test: the quality stage's actor is not needed here
                         "--set", "quality.enabled=false"])
        err = capsys.readouterr().err
        assert code == 0, err[-3000:]
        assert "next: magicseg inspect" in err  # the human summary ends by saying what to run next
        code = cli_main(["inspect", str(out), "--json"])
        report = json.loads(capsys.readouterr().out)
        assert code == 0 and report["ok"], report["problems"]
        assert report["planned"] == 4 and report["samples"] + report["dropped_total"] == 4
        models = json.loads((out / "manifest.json").read_text())["models"]
        assert models["pairs"]["family"] == family and models["pairs"]["license"].startswith("none")
        backends = (models["annotate"]["detector_backend"], models["annotate"]["segmenter_backend"])
        assert backends == (("owlv2", "sam2") if family == "flux" else ("transformers", "segment-anything"))
    annotations = [a for row in DatasetReader(str(tmp_path / "flux")).iter_rows(columns=["annotations"])
                   for a in row["annotations"] or []]
    assert annotations and all(a["predicted_iou"] is not None and a["stability_score"] is not None
                               for a in annotations)


def test_flux_schnell_random_builds_the_published_architecture():
    """flux-schnell-random: the 12B transformer and T5-XXL encoder at full size, built straight in bfloat16 (on
    the meta device here: no memory)."""
    from magicseg_models.config import load_config
    from magicseg_models.generation import load_components
    from magicseg_models.generation.components import parameter_count

    config = load_config("build", "flux-schnell-random").generator
    parts = load_components(config, torch.device("meta"), torch.bfloat16)
    assert parameter_count(parts.transformer) == 11_891_178_560 and parts.transformer.dtype == torch.bfloat16
    assert parameter_count(parts.text_encoder_2) == 4_762_310_656
    assert not parts.transformer.config.guidance_embeds  # schnell: no guidance input
