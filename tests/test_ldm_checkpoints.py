"""The single-file writer of ``tests/ldm_checkpoints.py``, proved against diffusers' own readers.

Each test writes an original-layout file from tiny models and loads it back with ``from_single_file`` (model and
pipeline level, configs from a tiny diffusers folder, nothing downloaded); every tensor must come back exactly.
Before writing, every tensor of the models is filled with its own run of distinct integers: the folder's
weights then differ from the file's (a component read from the folder instead of the file fails), and tensors
that share an initial value (LayerNorm ones, zero biases) cannot be swapped unnoticed.
"""

from __future__ import annotations

import copy

import pytest
import torch

from tests.ldm_checkpoints import (SDXL_OPEN_CLIP_PREFIX, save_single_file, sd15_state_dict, sdxl_state_dict,
                                   unet_state_dict, vae_state_dict)
from tests.tiny_repos import save_tiny_family, save_tiny_sd

CPU = torch.device("cpu")
EXACT_FLOAT32_INTEGERS = 2 ** 24


def _components(family: str):
    from magicseg_models.config import load_config
    from magicseg_models.generation.components import load_components

    overrides = [] if family == "sd15" else [f"generator.family={family}"]
    return load_components(load_config("build", "tiny", overrides=overrides).generator, device=CPU)


def _fill_distinct(*modules) -> None:
    """Every tensor of ``modules`` set to consecutive integers, none repeated across tensors or modules."""
    start = 0
    with torch.no_grad():
        for module in modules:
            for tensor in module.state_dict().values():
                tensor.copy_(torch.arange(start, start + tensor.numel(), dtype=tensor.dtype).view_as(tensor))
                start += tensor.numel()
    assert start < EXACT_FLOAT32_INTEGERS  # every value exact in float32, so "distinct" holds after the cast


def _assert_same(loaded, original, name: str) -> None:
    got, want = loaded.state_dict(), original.state_dict()
    assert got.keys() == want.keys(), f"{name}: keys differ: {sorted(set(got) ^ set(want))[:8]}"
    meta = [k for k, t in got.items() if t.device.type == "meta"]
    assert not meta, f"{name}: never loaded from the file: {meta[:8]}"
    wrong = [k for k in want if not torch.equal(got[k], want[k])]
    assert not wrong, f"{name}: tensors differ from the original: {wrong[:8]}"


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_sd15")
    components = _components("sd15")
    _fill_distinct(components.unet, components.vae, components.text_encoder)
    return save_tiny_sd(root / "diffusers"), components, root


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    root = tmp_path_factory.mktemp("ldm_sdxl")
    components = _components("sdxl")
    _fill_distinct(components.unet, components.vae, components.text_encoder, components.text_encoder_2)
    path = save_single_file(sdxl_state_dict(components.unet, components.vae, components.text_encoder,
                                            components.text_encoder_2), root / "sdxl.safetensors")
    return save_tiny_family(root / "diffusers", "sdxl"), components, path


# ---------------------------------------------------------------------------------------------------- SD 1.5
@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd15_single_file_reads_back_exactly(sd15, suffix):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel

    folder, c, root = sd15
    path = str(save_single_file(sd15_state_dict(c.unet, c.vae, c.text_encoder), root / f"sd15{suffix}"))
    kw = {"config": str(folder), "local_files_only": True}
    _assert_same(UNet2DConditionModel.from_single_file(path, subfolder="unet", **kw), c.unet, "unet")
    _assert_same(AutoencoderKL.from_single_file(path, subfolder="vae", **kw), c.vae, "vae")
    pipe = StableDiffusionPipeline.from_single_file(path, safety_checker=None, **kw)
    for name in ("unet", "vae", "text_encoder"):
        _assert_same(getattr(pipe, name), getattr(c, name), f"pipeline {name}")


def test_sd15_file_has_the_original_layout(sd15):
    """Landmarks of the released SD 1.5 file, so the layout is the original one and not merely self-consistent."""
    _, c, _ = sd15
    sd = sd15_state_dict(c.unet, c.vae, c.text_encoder)
    assert sd["first_stage_model.encoder.mid.attn_1.q.weight"].shape == (16, 16, 1, 1)
    assert sd["first_stage_model.decoder.mid.attn_1.proj_out.weight"].shape == (16, 16, 1, 1)
    # the decoder's first diffusers block (nearest the latent) is the original's last level
    assert torch.equal(sd["first_stage_model.decoder.up.3.block.0.conv1.weight"],
                       c.vae.state_dict()["decoder.up_blocks.0.resnets.0.conv1.weight"])
    assert "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight" in sd
    assert "first_stage_model.decoder.up.0.upsample.conv.weight" not in sd
    for key in ("model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.input_blocks.2.0.op.weight",
                "model.diffusion_model.input_blocks.3.1.proj_in.weight",
                "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight",
                "model.diffusion_model.output_blocks.1.2.conv.weight", "model.diffusion_model.out.2.weight",
                "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight"):
        assert key in sd, key


# ------------------------------------------------------------------------------------------------------ SDXL
def test_sdxl_single_file_reads_back_exactly(sdxl):
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint, load_single_file_checkpoint

    folder, c, path = sdxl
    kw = {"config": str(folder), "local_files_only": True}
    _assert_same(UNet2DConditionModel.from_single_file(str(path), subfolder="unet", **kw), c.unet, "unet")
    _assert_same(AutoencoderKL.from_single_file(str(path), subfolder="vae", **kw), c.vae, "vae")
    pipe = StableDiffusionXLPipeline.from_single_file(str(path), **kw)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        _assert_same(getattr(pipe, name), getattr(c, name), f"pipeline {name}")
    # the second encoder through diffusers' OpenCLIP reader itself too
    second = copy.deepcopy(c.text_encoder_2)
    state = convert_open_clip_checkpoint(second, load_single_file_checkpoint(str(path)), prefix=SDXL_OPEN_CLIP_PREFIX)
    second.load_state_dict(state, strict=True)
    _assert_same(second, c.text_encoder_2, "text_encoder_2 (convert_open_clip_checkpoint)")


def test_sdxl_open_clip_names(sdxl):
    _, c, _ = sdxl
    sd = sdxl_state_dict(c.unet, c.vae, c.text_encoder, c.text_encoder_2)
    hf = c.text_encoder_2.state_dict()
    p = SDXL_OPEN_CLIP_PREFIX
    assert torch.equal(sd[p + "text_projection"], hf["text_projection.weight"].T)  # x @ P (distinct values)
    assert sd[p + "text_projection"].shape == (48, 48)
    layer = "text_model.encoder.layers.1.self_attn."
    assert torch.equal(sd[p + "transformer.resblocks.1.attn.in_proj_weight"],
                       torch.cat([hf[layer + f"{x}_proj.weight"] for x in "qkv"]))
    assert torch.equal(sd[p + "positional_embedding"], hf["text_model.embeddings.position_embedding.weight"])
    assert "model.diffusion_model.label_emb.0.2.weight" in sd
    assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in sd


# ----------------------------------------------------------------------------------------- completeness
def _values(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in tensors]).sort().values


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_every_model_tensor_is_in_the_file_exactly_once(family, sd15, sdxl):
    """With distinct values everywhere, the file's values as a multiset equal the models': nothing dropped,
    nothing written twice (fused q/k/v and reshaped convs included). Key counts follow: one fused in_proj
    weight and bias per OpenCLIP layer instead of three each."""
    c = sd15[1] if family == "sd15" else sdxl[1]
    models = [c.unet, c.vae, c.text_encoder] + ([c.text_encoder_2] if family == "sdxl" else [])
    sd = sd15_state_dict(*models) if family == "sd15" else sdxl_state_dict(*models)
    model_tensors = [t for m in models for t in m.state_dict().values()]
    assert torch.equal(_values(sd.values()), _values(model_tensors))
    fused = 4 * c.text_encoder_2.config.num_hidden_layers if family == "sdxl" else 0
    assert len(sd) == len(model_tensors) - fused


def test_deeper_unet_and_vae_layouts(tmp_path):
    """Generic over depth: three UNet levels with two layers each, attention in the first two (the SD 1.5 block
    pattern) and per-block transformer depth; a three-level VAE with two layers per block."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32, 64), layers_per_block=2, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        transformer_layers_per_block=(1, 2, 1), cross_attention_dim=16, attention_head_dim=4).eval()
    vae = AutoencoderKL(block_out_channels=(8, 16, 16), layers_per_block=2, norm_num_groups=8, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3).eval()
    _fill_distinct(unet, vae)
    unet.save_pretrained(tmp_path / "unet")
    vae.save_pretrained(tmp_path / "vae")
    sd = {**{"model.diffusion_model." + k: v for k, v in unet_state_dict(unet).items()},
          **{"first_stage_model." + k: v for k, v in vae_state_dict(vae).items()}}
    assert "model.diffusion_model.output_blocks.8.2.conv.weight" not in sd  # the last up block has no upsampler
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in sd  # after a plain (attention-free) block
    assert "model.diffusion_model.output_blocks.5.2.conv.weight" in sd  # after a transformer
    assert "model.diffusion_model.input_blocks.4.1.transformer_blocks.1.attn1.to_q.weight" in sd
    path = str(save_single_file(sd, tmp_path / "deep.safetensors"))
    kw = {"config": str(tmp_path), "local_files_only": True}
    _assert_same(UNet2DConditionModel.from_single_file(path, subfolder="unet", **kw), unet, "unet")
    _assert_same(AutoencoderKL.from_single_file(path, subfolder="vae", **kw), vae, "vae")
