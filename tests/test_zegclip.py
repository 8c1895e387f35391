"""ZegCLIP: parameter counts of the real ViT-B/16 architecture, and the tiny model's behaviour on CPU.

What must hold: ViT-B/16 with 10 prompt tokens has exactly 10,666,240 trainable parameters (13,821,184 with the
official never-called self-attention); outputs are unit vectors of the right shapes for any input size; only the
prompts, the final LayerNorm and the decoder get gradients; the build is deterministic; the text side averages
normalised template embeddings and caches them (memory and disk); weights load from a local folder and fail with
one line when missing; a tiny model overfits a few synthetic images.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from magicseg_models.config import LossConfig, ZegCLIPConfig, load_config
from magicseg_models.errors import ConfigError, MagicSegError
from magicseg_models.zegclip import (IMAGENET15_TEMPLATES, CLIPWeightsError, ZegCLIPDecoder, ZegCLIPError,
                                     build_zegclip, parameter_summary, prompt_text, trainable_parameters)
from magicseg_models.zegclip.text import clear_memory_cache

# ViT-B/16, 10 prompt tokens, decoder 3 x (d 512, 8 heads, FFN 2048), written out term by term
PROMPTS = 12 * 10 * 768                        # one row of 10 tokens per layer
PROMPT_LINEAR = 768 * 768 + 768                # shared by all layers
PROMPT_NORM = 2 * 768
RELATIONSHIP = 1024 * 512 + 512                # Linear(2D, D)
LAYER = 4 * (512 * 512 + 512) + (512 * 2048 + 2048) + (2048 * 512 + 512) + 2 * 2 * 512
UNUSED_SELF_ATTN = 3 * 512 * 512 + 3 * 512 + 512 * 512 + 512 + 2 * 512   # MultiheadAttention + its LayerNorm
OURS = PROMPTS + PROMPT_LINEAR + PROMPT_NORM + RELATIONSHIP + 3 * LAYER


def tiny_config(**changes) -> ZegCLIPConfig:
    return load_config("train", "tiny").model.model_copy(update=changes)


@pytest.fixture(scope="module")
def tiny():
    return build_zegclip(tiny_config(), "cpu")


# ------------------------------------------------------------------------------------------ parameter counts
def test_vit_b16_parameter_counts_match_the_published_ones():
    assert OURS == 10_666_240
    assert OURS + 3 * UNUSED_SELF_ATTN == 13_821_184               # the paper / official code's 13.8 M
    assert OURS + 12 * 90 * 768 == 11_495_680                      # 100 prompt tokens (COCO configs): 11.50 M
    assert OURS + 3 * UNUSED_SELF_ATTN + 12 * 90 * 768 == 14_650_624  # 14.65 M

    bundle = build_zegclip(ZegCLIPConfig(weights="random"), "cpu")
    model = bundle.model
    assert trainable_parameters(model) == OURS
    assert model.info["name"] == "ViT-B/16"
    assert tuple(model.encoder.prompt_embeddings.shape) == (12, 10, 768)
    encoder = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    assert encoder == PROMPTS + PROMPT_LINEAR + PROMPT_NORM
    assert parameter_summary(model).startswith("ZegCLIP (ViT-B/16, 10 prompt tokens): 10,666,240 trainable of ")
    # the last layer reaches the loss through its q/k projections only
    unreached = sum(dict(model.named_parameters())[n].numel() for n in model.parameters_without_gradient())
    assert unreached == LAYER - 2 * (512 * 512 + 512)

    # the official decoder (same CLIP, so built alone here: a second ViT-B/16 costs seconds for nothing)
    original = ZegCLIPDecoder(512, 8, 2048, 3, 0.1, unused_self_attn=True)
    assert encoder + sum(p.numel() for p in original.parameters()) == 13_821_184
    assert sum(p.numel() for n, p in original.named_parameters() if ".unused_" in n) == 3 * UNUSED_SELF_ATTN


def test_original_unused_self_attention_option_is_built_and_never_reached():
    bundle = build_zegclip(tiny_config(original_unused_self_attn=True, decoder_layers=2), "cpu")
    model = bundle.model
    tiny_block = 3 * 32 * 32 + 3 * 32 + 32 * 32 + 32 + 2 * 32
    assert trainable_parameters(model) == trainable_parameters(build_zegclip(tiny_config(decoder_layers=2),
                                                                             "cpu").model) + 2 * tiny_block
    unused = {n for n in model.parameters_without_gradient() if ".unused_" in n}
    assert unused == {n for n, _ in model.named_parameters() if ".unused_" in n} and unused
    model(torch.randn(1, 3, 64, 64), bundle.class_embeddings(["cat"]))["mask_logits"].sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if ".unused_" in n)


# ------------------------------------------------------------------------------------------- tiny forward
def test_forward_shapes_and_unit_embeddings(tiny):
    model = tiny.model.eval()
    names = ["cat", "dog", "bus_(vehicle)"]
    text = tiny.class_embeddings(names)
    assert text.shape == (3, 32)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    images = tiny.normalize(torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        out = model(images, text)
    assert out["mask_logits"].shape == (2, 3, 64, 64)
    assert out["cls"].shape == (2, 32)
    assert out["patch"].shape == (2, 32, 8, 8)
    torch.testing.assert_close(out["cls"].norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(out["patch"].norm(dim=1), torch.ones(2, 8, 8))
    # per-image class lists (B x C x D) give the same as one shared list
    with torch.no_grad():
        per_image = model(images, text.expand(2, -1, -1).clone())
        patch, cls = model.encode_image(images)
    torch.testing.assert_close(per_image["mask_logits"], out["mask_logits"])
    torch.testing.assert_close(cls, out["cls"])
    torch.testing.assert_close(patch, out["patch"])


def test_position_embedding_is_resized_for_any_grid(tiny):
    encoder = tiny.model.encoder
    assert (encoder.pretrained_grid, encoder.base_grid, encoder.patch_size) == (4, 8, 8)
    weight = encoder.clip.embeddings.position_embedding.weight.detach()
    grid4 = weight[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    grid8 = F.interpolate(grid4, size=(8, 8), mode="bilinear", align_corners=False)
    at_base = encoder.position_embedding(8, 8).detach()
    assert at_base.shape == (1, 65, 32)
    torch.testing.assert_close(at_base[0, 0], weight[0])
    torch.testing.assert_close(at_base[0, 1:], grid8.flatten(2)[0].T)
    # a non-square input: the base grid is resized again (official: 14 -> 32 at load, 32 -> h x w per image)
    wide = encoder.position_embedding(6, 10).detach()
    expected = F.interpolate(grid8, size=(6, 10), mode="bilinear", align_corners=False)
    torch.testing.assert_close(wide[0, 1:], expected.flatten(2)[0].T)
    model = tiny.model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 48, 80), tiny.class_embeddings(["cat", "dog"]))
    assert out["patch"].shape == (1, 32, 6, 10)
    assert out["mask_logits"].shape == (1, 2, 48, 80)
    torch.testing.assert_close(out["patch"].norm(dim=1), torch.ones(1, 6, 10))


def test_without_prompts_the_cls_embedding_is_clips_own_image_embedding():
    # no prompts and the pretrained grid: the encoder must reduce to CLIP's get_image_features (the extra
    # LayerNorm starts as the identity on CLIP's layer output up to its eps), with the class embedding added once
    # as CLIP adds it (the official ZegCLIP default adds it twice)
    bundle = build_zegclip(tiny_config(prompt_tokens=0, image_size=32, double_class_embedding=False), "cpu")
    encoder = bundle.model.encoder.eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        _, cls = encoder(images)
        hidden = encoder.clip(pixel_values=images).last_hidden_state
        reference = encoder.visual_projection(encoder.clip.post_layernorm(F.layer_norm(hidden[:, 0], (32,),
                                                                                       eps=1e-6)))
        plain = encoder.visual_projection(encoder.clip(pixel_values=images).pooler_output)
    torch.testing.assert_close(cls, F.normalize(reference, dim=-1))
    torch.testing.assert_close(cls, F.normalize(plain, dim=-1), atol=1e-3, rtol=1e-3)


def test_mask_logits_are_the_head_averaged_pre_softmax_attention_of_the_last_layer(tiny):
    model = tiny.model.eval()
    decoder = model.decoder
    text = tiny.class_embeddings(["cat", "dog", "person"])
    with torch.no_grad():
        patch, cls = model.encode_image(torch.randn(2, 3, 64, 64))
        low = model.decode(patch, cls, text)
        # the official Attention, written out per head: logits = q_h k_h^T * head_dim^-0.5, summed / heads
        queries = decoder.q_proj(torch.cat([text[None] * cls[:, None], text[None].expand(2, -1, -1)], dim=-1))
        memory = patch.flatten(2).transpose(1, 2)
        attn = decoder.layers[-1].cross_attn
        heads = attn.heads
        q = attn.q(queries).reshape(2, 3, heads, -1).permute(0, 2, 1, 3)
        k = attn.k(memory).reshape(2, 64, heads, -1).permute(0, 2, 1, 3)
        per_head = (q @ k.transpose(-2, -1)) * (32 // heads) ** -0.5
        expected = (per_head.sum(dim=1) / heads).transpose(1, 2).reshape(2, 8, 8, 3).permute(0, 3, 1, 2)
    assert low.shape == (2, 3, 8, 8)
    torch.testing.assert_close(low, expected)
    with torch.no_grad():
        full = model.decode(patch, cls, text, (64, 64))
    torch.testing.assert_close(full, F.interpolate(expected, size=(64, 64), mode="bilinear", align_corners=False))


def test_only_prompts_norm_and_decoder_train_and_get_gradients():
    bundle = build_zegclip(tiny_config(decoder_layers=2), "cpu")
    model = bundle.model.train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters()
                         if n.startswith(("encoder.prompt_", "decoder."))}
    assert "encoder.prompt_norm.weight" in trainable and "encoder.prompt_proj.weight" in trainable
    text = bundle.class_embeddings(["cat", "dog"])
    out = model(torch.randn(2, 3, 64, 64), text)
    (out["mask_logits"].square().mean() + out["cls"].sum()).backward()
    unreached = set(model.parameters_without_gradient())
    assert unreached and all(n.startswith("decoder.layers.1.") for n in unreached)
    for name, p in model.named_parameters():
        if name in trainable and name not in unreached:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    assert all(p.grad is None for p in bundle.text_encoder.parameters())
    assert not any(p.requires_grad for p in bundle.text_encoder.parameters())


def test_tiny_build_is_deterministic_and_leaves_the_global_rng_alone(tiny):
    state = torch.get_rng_state()
    again = build_zegclip(tiny_config(), "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    a, b = tiny.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    clear_memory_cache()
    torch.testing.assert_close(again.class_embeddings(["cat", "bus (vehicle)"]),
                               tiny.class_embeddings(["cat", "bus (vehicle)"]), rtol=0, atol=0)
    other = build_zegclip(tiny_config(), "cpu", seed=1)
    assert not torch.equal(other.model.encoder.prompt_embeddings, tiny.model.encoder.prompt_embeddings)


def test_trainable_state_dict_round_trip(tiny):
    state = {k: v.clone() for k, v in tiny.model.trainable_state_dict().items()}
    assert set(state) == {n for n, p in tiny.model.named_parameters() if p.requires_grad}
    other = build_zegclip(tiny_config(), "cpu", seed=5)
    other.model.load_trainable_state_dict(state)
    assert all(torch.equal(other.model.state_dict()[k], v) for k, v in state.items())
    with pytest.raises(ZegCLIPError, match="does not match"):
        other.model.load_trainable_state_dict({"decoder.q_proj.weight": state["decoder.q_proj.weight"]})


# --------------------------------------------------------------------------------------------------- text
def test_prompt_text_and_template_averaging(tiny):
    assert prompt_text("bus_(vehicle)") == "bus (vehicle)"
    assert prompt_text("  potted   plant ") == "potted plant"
    assert len(IMAGENET15_TEMPLATES) == 15 and IMAGENET15_TEMPLATES[0] == "a photo of a {}."
    enc = tiny.text_encoder
    many = enc.embed(["bus_(vehicle)", "cat"], "imagenet15")
    per = enc.encode_texts([t.format("bus (vehicle)") for t in IMAGENET15_TEMPLATES])
    mean = per.mean(dim=0)
    torch.testing.assert_close(many[0], mean / mean.norm())
    single = enc.embed(["cat"], "single")
    torch.testing.assert_close(single[0], enc.encode_texts(["a photo of a cat"])[0])
    assert not torch.allclose(many[1], single[0])
    with pytest.raises(TypeError):
        enc.embed("cat")


def test_text_embeddings_are_cached_on_disk(tmp_path):
    bundle = build_zegclip(tiny_config(text_cache_dir=str(tmp_path)), "cpu")
    clear_memory_cache()
    first = bundle.class_embeddings(["cat", "dog"])
    files = list(tmp_path.glob("text-embeddings-*.safetensors"))
    assert len(files) == 1
    # overwrite the cached tensor: a fresh process (memory cache empty) must read it back instead of recomputing
    from safetensors.torch import save_file

    marker = F.normalize(torch.arange(64, dtype=torch.float32).reshape(2, 32), dim=-1)
    save_file({"embeddings": marker}, str(files[0]))
    clear_memory_cache()
    torch.testing.assert_close(bundle.class_embeddings(["cat", "dog"]), marker)
    # another vocabulary is another key; a damaged file is recomputed
    bundle.class_embeddings(["dog", "cat"])
    assert len(list(tmp_path.glob("text-embeddings-*.safetensors"))) == 2
    files[0].write_bytes(b"not a safetensors file")
    clear_memory_cache()
    torch.testing.assert_close(bundle.class_embeddings(["cat", "dog"]), first)


# ---------------------------------------------------------------------------------------- loading / errors
def test_pretrained_loads_from_a_local_folder(tmp_path):
    from magicseg_models.generation.components import build_tiny_tokenizer
    from magicseg_models.zegclip.build import TINY_TEXT_CONFIG, TINY_VISION_CONFIG, clip_from_configs

    tokenizer = build_tiny_tokenizer()
    torch.manual_seed(3)
    clip = clip_from_configs(TINY_VISION_CONFIG, TINY_TEXT_CONFIG, 32, tokenizer)
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    config = tiny_config(weights="pretrained", clip=str(tmp_path / "clip"))
    bundle = build_zegclip(config, "cpu")
    torch.testing.assert_close(bundle.model.encoder.clip.embeddings.patch_embedding.weight,
                               clip.vision_model.embeddings.patch_embedding.weight)
    assert bundle.model.info["weights"] == "pretrained"
    with torch.no_grad():
        ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
        expected = F.normalize(clip.get_text_features(input_ids=ids).pooler_output, dim=-1)
    torch.testing.assert_close(bundle.text_encoder.encode_texts(["a photo of a cat"]), expected)
    with pytest.raises(ConfigError, match=r"model.decoder_dim.*projection width 32"):
        build_zegclip(config.model_copy(update={"decoder_dim": 64, "decoder_heads": 2}), "cpu")


def test_missing_weights_and_bad_sizes_fail_with_one_line(tmp_path):
    with pytest.raises(CLIPWeightsError, match="no such folder") as err:
        build_zegclip(tiny_config(weights="pretrained", clip=str(tmp_path / "nowhere")), "cpu")
    assert "\n" not in str(err.value)
    with pytest.raises(CLIPWeightsError, match="cannot load CLIP weights") as err:
        build_zegclip(tiny_config(weights="pretrained", clip="magicseg-test/no-such-clip"), "cpu")
    assert "\n" not in str(err.value) and isinstance(err.value, MagicSegError)
    with pytest.raises(ConfigError, match="decoder_heads"):
        build_zegclip(tiny_config(decoder_heads=3), "cpu")
    with pytest.raises(ConfigError, match="image_size"):
        build_zegclip(tiny_config(image_size=60), "cpu")


# ------------------------------------------------------------------------------------------- overfit smoke
def test_tiny_model_overfits_a_few_synthetic_images():
    from magicseg_models.training.losses import MagicSegLoss
    from magicseg_models.training.sampling import sample_batch

    bundle = build_zegclip(tiny_config(), "cpu")
    model = bundle.model.train()
    names = ["cat", "dog", "bus (vehicle)", "bicycle", "person", "car", "tree", "horse"]
    text = bundle.class_embeddings(names)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 64, 64, generator=g)
    items = []
    for i in range(4):
        masks = torch.zeros(2, 64, 64, dtype=torch.bool)
        masks[0, 8 * i:8 * i + 24, 4:30] = True
        masks[1, 30:60, 20 + 4 * i:50 + 4 * i] = True
        images[i, :, masks[0]] = torch.tensor([0.9, 0.1, 0.1])[:, None]
        images[i, :, masks[1]] = torch.tensor([0.1, 0.1, 0.9])[:, None]
        items.append((torch.tensor([i, i + 3]), masks))
    x = bundle.normalize(images)
    subset, targets, present = sample_batch(items, len(names), 4, torch.Generator().manual_seed(1))
    loss_fn = MagicSegLoss(LossConfig(counterfactual=False))
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    threads = torch.get_num_threads()
    # one thread: this model is so small that two OpenMP threads on a busy 2-core machine run 10-50x slower
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # dropout draws
            for step in range(100):
                losses = loss_fn(model(x, text[subset])["mask_logits"], targets, present)
                if step == 0:
                    first = (losses["loss_focal"] + losses["loss_dice"]).item()
                optimizer.zero_grad()
                losses["loss"].backward()
                optimizer.step()
        model.eval()
        with torch.no_grad():
            losses = loss_fn(model(x, text[subset])["mask_logits"], targets, present)
    finally:
        torch.set_num_threads(threads)
    last = (losses["loss_focal"] + losses["loss_dice"]).item()
    assert math.isfinite(last) and last < 0.5 * first, (first, last)
