"""Official weight formats load through the library that owns them: diffusers folders with an fp16 variant (and
without), OpenAI's CLIP file (TorchScript archive and plain state dict) checked against open_clip, and the
official Grounding DINO with its BERT from a configured folder. Tiny models, real classes, no network."""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import pytest
import torch

from magicseg_models.config import GeneratorConfig, load_config
from magicseg_models.errors import MagicSegError
from tests.tiny_repos import save_tiny_sd


def _generator(model: Path, **changes) -> GeneratorConfig:
    sets = [f"generator.{k}={v}" for k, v in {"weights": "pretrained", "model": str(model), "height": 32,
                                               "width": 32, "steps": 2, **changes}.items()]
    return load_config("build", "tiny", overrides=sets).generator


def _job() -> dict:
    return {"sample_id": "v-0", "class_ids": [224], "prompt": "a photo of a cat on a sofa",
            "counterfactual_prompt": "a photo of nothing on a sofa", "seed": 7}


# ------------------------------------------------------------------------------------------ SD variants
@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd")
    return {"fp16_only": save_tiny_sd(root / "fp16-only", "fp16"),
            "both": save_tiny_sd(root / "both", "fp16", plain_offset=0.01),
            "plain": save_tiny_sd(root / "plain")}


def test_fp16_variant_folder_loads_its_fp16_files(sd_folders):
    from magicseg_models.generation import PairGenerator
    from magicseg_models.generation.components import load_components

    reference = load_components(load_config("build", "tiny").generator, device=torch.device("cpu"))
    for name in ("fp16_only", "both"):  # "both": the plain files differ by +0.01, so a wrong pick shows
        loaded = load_components(_generator(sd_folders[name], variant="fp16"), device=torch.device("cpu"))
        assert loaded.source["variants"] == {"unet": "fp16", "vae": "fp16", "text_encoder": "fp16"}
        for part in ("unet", "vae", "text_encoder"):
            for (key, got), want in zip(getattr(loaded, part).state_dict().items(),
                                        getattr(reference, part).state_dict().values()):
                # the fp16 files hold the tiny weights rounded to half precision, loaded as float32 on a CPU
                torch.testing.assert_close(got, want.half().float(), atol=0, rtol=0, msg=key)
    with PairGenerator(_generator(sd_folders["fp16_only"], variant="fp16"), device="cpu") as gen:
        [row] = gen([_job()])
        assert row["image"] and gen.settings["variants"]["unet"] == "fp16"


def test_folder_without_fp16_files_builds_from_its_plain_files_saying_so_once(sd_folders, caplog):
    from magicseg_models.generation.components import load_components

    with caplog.at_level(logging.WARNING, logger="magicseg_models.generation.components"):
        loaded = load_components(_generator(sd_folders["plain"], variant="fp16"), device=torch.device("cpu"))
    lines = [r.getMessage() for r in caplog.records if r.name == "magicseg_models.generation.components"]
    assert len(lines) == 1 and "generator.variant=fp16" in lines[0] and "plain files" in lines[0]
    assert "unet, vae, text_encoder" in lines[0]
    assert loaded.source["variants"] == {"unet": None, "vae": None, "text_encoder": None}
    # without a variant nothing is said
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="magicseg_models.generation.components"):
        load_components(_generator(sd_folders["plain"]), device=torch.device("cpu"))
    assert not [r for r in caplog.records if r.name == "magicseg_models.generation.components"]


def test_diffusers_loads_with_low_cpu_memory_through_accelerate(sd_folders, monkeypatch):
    """accelerate is installed and diffusers builds the models on the meta device with it (no random init)."""
    import accelerate

    from magicseg_models.generation.components import load_components

    calls = []
    real = accelerate.init_empty_weights

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(accelerate, "init_empty_weights", counting)
    load_components(_generator(sd_folders["fp16_only"], variant="fp16"), device=torch.device("cpu"))
    assert len(calls) == 2  # the UNet and the VAE (transformers builds the text encoder on meta by itself)


def test_sd15_presets_ask_for_fp16_files():
    assert load_config("build", "sd15").generator.variant == "fp16"
    assert load_config("build", "sd15-random").generator.variant == "fp16"
    assert load_config("build", "tiny").generator.variant is None


# ----------------------------------------------------------------------------------------- OpenAI CLIP
TINY_OPENAI = dict(embed_dim=64, vision=dict(layers=2, width=128, patch_size=16, image_size=32),
                   text=dict(context_length=77, vocab_size=49408, width=128, heads=2, layers=2))


@pytest.fixture(scope="module")
def openai_clip(tmp_path_factory):
    """open_clip's implementation of OpenAI's CLIP architecture, random weights, saved in OpenAI's two formats."""
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    model = CLIP(embed_dim=TINY_OPENAI["embed_dim"], vision_cfg=CLIPVisionCfg(**TINY_OPENAI["vision"]),
                 text_cfg=CLIPTextCfg(**TINY_OPENAI["text"]), quick_gelu=True).eval()
    assert isinstance(model, open_clip.CLIP)
    folder = tmp_path_factory.mktemp("openai")
    torch.save(model.state_dict(), folder / "plain.pt")
    # OpenAI's archives are traced models that also carry these three sizes as tensors
    for name, value in (("input_resolution", 32), ("context_length", 77), ("vocab_size", 49408)):
        model.__dict__.pop(name, None)
        model.register_buffer(name, torch.tensor(value))
    image, ids = _clip_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes about constant shapes; jit deprecation
        torch.jit.trace(model, (image, ids), check_trace=False).save(str(folder / "ViT-tiny.pt"))
    return model, folder


def _clip_inputs():
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ids = torch.zeros(3, 77, dtype=torch.long)
    ids[:, 0] = 49406  # start of text; end of text (49407, the highest id) closes each prompt
    for row, tokens in enumerate(([320, 1125, 539, 320], [2368], [320, 4558, 530, 518, 2368, 1237])):
        ids[row, 1:1 + len(tokens)] = torch.tensor(tokens)
        ids[row, 1 + len(tokens)] = 49407
    return image, ids


@pytest.mark.parametrize("filename", ["plain.pt", "ViT-tiny.pt"])
def test_openai_clip_file_gives_open_clips_image_and_text_features(openai_clip, filename):
    from magicseg_models.weights.openai_clip import load_openai_clip

    reference, folder = openai_clip
    image, ids = _clip_inputs()
    clip = load_openai_clip(str(folder / filename))
    with torch.no_grad():
        want_image, want_text = reference.encode_image(image), reference.encode_text(ids)
        got_image = clip.get_image_features(pixel_values=image)
        got_text = clip.get_text_features(input_ids=ids)
    got_image = getattr(got_image, "pooler_output", got_image)
    got_text = getattr(got_text, "pooler_output", got_text)
    torch.testing.assert_close(got_image, want_image, atol=1e-5, rtol=0)
    torch.testing.assert_close(got_text, want_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(clip.logit_scale, reference.logit_scale.detach())


def test_zegclip_takes_an_openai_file_as_model_clip(openai_clip, tmp_path):
    from magicseg_models.config import ZegCLIPConfig
    from magicseg_models.generation.components import build_tiny_tokenizer
    from magicseg_models.zegclip import build_zegclip

    reference, folder = openai_clip
    build_tiny_tokenizer().save_pretrained(tmp_path / "tokenizer")
    config = ZegCLIPConfig(clip=str(folder / "ViT-tiny.pt"), tokenizer=str(tmp_path / "tokenizer"),
                           weights="pretrained", image_size=64, prompt_tokens=2, decoder_layers=1, decoder_dim=64,
                           decoder_heads=2, decoder_ffn=64, text_templates="single")
    bundle = build_zegclip(config, "cpu")
    torch.testing.assert_close(bundle.model.encoder.clip.embeddings.patch_embedding.weight,
                               reference.visual.conv1.weight.detach())
    # class-name embeddings: OpenAI's text tower on this tokenizer's ids, pooled at its end-of-text token
    tokenizer = bundle.tokenizer
    ids = tokenizer(["a photo of a cat"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        want = torch.nn.functional.normalize(reference.encode_text(ids), dim=-1)
        torch.testing.assert_close(bundle.text_encoder.encode_texts(["a photo of a cat"]), want, atol=1e-5, rtol=0)
        out = bundle.model(bundle.normalize(torch.rand(1, 3, 64, 64)), bundle.class_embeddings(["cat", "dog"]))
    assert out["mask_logits"].shape == (1, 2, 64, 64) and torch.isfinite(out["mask_logits"]).all()


def test_openai_clip_files_with_pickled_code_or_a_resnet_are_refused_in_one_line(tmp_path):
    from magicseg_models.weights.openai_clip import OpenAICLIPError, clip_from_state_dict, read_state_dict

    class Payload:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickled code ran')",))

    torch.save({"visual.proj": torch.ones(1), "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(OpenAICLIPError, match="cannot be read as an OpenAI CLIP checkpoint") as info:
        read_state_dict(str(tmp_path / "evil.pt"))
    assert "\n" not in str(info.value)
    with pytest.raises(OpenAICLIPError, match="ResNet CLIP"):
        clip_from_state_dict({"visual.layer1.0.conv1.weight": torch.ones(1)})


# --------------------------------------------------------------------------------- official Grounding DINO
# the official SwinT-OGC config, smaller where the code allows (its text position embedding fixes hidden_dim 256)
SMALL_GDINO = """
_base_ = {base!r}
enc_layers = 1
dec_layers = 1
dim_feedforward = 128
num_queries = 20
"""


def _package_fingerprint() -> str:
    import groundingdino

    root = Path(groundingdino.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_official_grounding_dino_takes_its_bert_from_detector_text_encoder(tmp_path):
    """A tiny BERT folder as ``detector.text_encoder``; a checkpoint saved from a random build loads back with it,
    gives the same boxes, and no file of the installed package is touched."""
    pytest.importorskip("groundingdino")
    from PIL import Image
    from transformers import BertConfig, BertModel

    from magicseg_models.annotation.detector_tokenizer import build_detector_tokenizer
    from magicseg_models.annotation.official import OfficialGroundingDino
    from magicseg_models.config import DetectorConfig
    from magicseg_models.weights.hub import groundingdino_config_file

    before = _package_fingerprint()
    tokenizer = build_detector_tokenizer()
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=256)).save_pretrained(tmp_path / "bert")
    tokenizer.save_pretrained(tmp_path / "bert")
    (tmp_path / "small_gdino.py").write_text(SMALL_GDINO.format(base=groundingdino_config_file()))

    common = dict(backend="official", config_file=str(tmp_path / "small_gdino.py"),
                  text_encoder=str(tmp_path / "bert"), image_size=64, box_threshold=0.0, text_threshold=0.0)
    built = OfficialGroundingDino(DetectorConfig(weights="random", **common), device="cpu")
    assert built.model.bert.config.hidden_size == 32 and len(built.tokenizer) == len(tokenizer)
    torch.save({"model": built.model.state_dict()}, tmp_path / "small_gdino.pth")

    loaded = OfficialGroundingDino(DetectorConfig(weights="pretrained", checkpoint=str(tmp_path / "small_gdino.pth"),
                                                  **common), device="cpu")
    assert loaded.settings["detector_text_encoder"] == str(tmp_path / "bert")
    for (key, got), want in zip(loaded.model.state_dict().items(), built.model.state_dict().values()):
        torch.testing.assert_close(got, want, msg=key)
    image = Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy())
    [a], [b] = built.detect([image], [["cat", "dog"]]), loaded.detect([image], [["cat", "dog"]])
    assert len(a) > 0 and (a.boxes == b.boxes).all() and (a.scores == b.scores).all()
    assert _package_fingerprint() == before

    with pytest.raises(MagicSegError, match="detector.text_encoder .*could not be loaded") as info:
        OfficialGroundingDino(DetectorConfig(weights="pretrained", checkpoint=str(tmp_path / "small_gdino.pth"),
                                             **{**common, "text_encoder": str(tmp_path / "no-bert")}), device="cpu")
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------ config defaults
def test_relative_model_paths_mean_the_directory_the_config_was_loaded_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.mkdir("sd")
    config = load_config("build", "sd15", overrides=[
        "annotate.segmenter.checkpoint=weights/sam_vit_h_4b8939.pth", "generator.model=sd",
        "annotate.detector.backend=official", "annotate.detector.checkpoint=gd.pth"])
    assert config.annotate.segmenter.checkpoint == str(tmp_path / "weights" / "sam_vit_h_4b8939.pth")
    assert config.generator.model == str(tmp_path / "sd")  # an existing folder, not a hub id
    assert config.annotate.detector.checkpoint == str(tmp_path / "gd.pth")
    assert config.annotate.detector.model == "IDEA-Research/grounding-dino-tiny"  # a hub id stays one
    # a URL stays a URL; the default is the official SAM release
    assert load_config("build", "sd15").annotate.segmenter.checkpoint == \
        "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    train = load_config("train", "zegclip-vitb16", overrides=["model.clip=ViT-B-16.pt"])
    assert train.model.clip == str(tmp_path / "ViT-B-16.pt")


def test_local_llm_backend_gets_a_gpu_share_unless_one_is_set():
    from magicseg_models.config import HF_PROMPTS_NUM_GPUS

    assert HF_PROMPTS_NUM_GPUS > 0
    assert load_config("build", "sd15", overrides=["prompts.backend=hf"]).prompts.resources.num_gpus == \
        HF_PROMPTS_NUM_GPUS
    assert load_config("build", "sd15", overrides=["prompts.backend=hf", "prompts.resources.actors=2"]) \
        .prompts.resources.num_gpus == HF_PROMPTS_NUM_GPUS
    assert load_config("build", "sd15", overrides=["prompts.backend=hf", "prompts.resources.num_gpus=0"]) \
        .prompts.resources.num_gpus == 0
    assert load_config("build", "sd15").prompts.resources.num_gpus == 0  # an API needs no GPU
    assert load_config("build", "tiny").prompts.resources.num_gpus == 0  # the tiny LM runs on the CPU


def test_an_openai_file_is_recognised_by_its_path_also_behind_a_query():
    from magicseg_models.weights.openai_clip import is_openai_file

    assert is_openai_file("https://bucket.s3.amazonaws.com/clip/ViT-B-16.pt?X-Amz-Signature=abc&X-Amz-Expires=60")
    assert is_openai_file("s3://weights/clip/ViT-B-16.pt")
    assert not is_openai_file("openai/clip-vit-base-patch16") and not is_openai_file("https://host/clip?f=x.pt")
