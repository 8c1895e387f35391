"""``magicseg models`` for the SDXL and FLUX generator families and the OWLv2 / SAM 2 annotator backends: the
files each model's folder must hold, checked the way ``from_pretrained`` will find them (a local folder, or the
Hugging Face cache with ``HF_HUB_OFFLINE=1``).

The folders are written by the libraries' own ``save_pretrained`` (diffusers' ``StableDiffusionXLPipeline`` /
``FluxPipeline``, transformers' OWLv2 and SAM 2 models and processors) over tiny models, so their layout is the one
the released repos have.
"""

from __future__ import annotations

import shutil

import pytest

from magicseg_models.config import load_config
from magicseg_models.weights.inventory import list_models
from tests import tiny_repos

FAMILIES = {"sdxl": "diffusers SDXL folder", "flux": "diffusers FLUX.1 folder"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {family: tiny_repos.save_tiny_family(root / family, family) for family in FAMILIES}


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline, for this test only (the cache API reads these at call time)."""
    import huggingface_hub.constants as constants

    hub = tmp_path / "hf" / "hub"
    hub.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def generator_entry(family: str, model: str, *more: str):
    config = load_config("build", "tiny", overrides=[f"generator.family={family}", "generator.weights=pretrained",
                                                      f"generator.model={model}", *more])
    entries = [e for e in list_models(config) if e.role == "generator"]
    assert len(entries) == 1
    return entries[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_saved_folder_is_here_and_each_missing_component_is_named(family, folders, tmp_path):
    entry = generator_entry(family, str(folders[family]))
    assert (entry.available, entry.format, entry.missing) == ("yes", FAMILIES[family], [])
    broken = shutil.copytree(folders[family], tmp_path / "broken")
    for path in (broken / "text_encoder_2").glob("model*.safetensors*"):
        path.unlink()
    shutil.rmtree(broken / "tokenizer_2")
    entry = generator_entry(family, str(broken))
    assert entry.available == "no"
    assert entry.missing == ["text_encoder_2/model.safetensors", "tokenizer_2/tokenizer.json"]
    assert "text_encoder_2/model.safetensors" in entry.fetch


@pytest.mark.parametrize("family", FAMILIES)
def test_a_hub_id_is_here_once_in_the_cache_and_else_gets_its_download_command(family, folders, hf_cache):
    repo_id = f"tiny-org/tiny-{family}"
    entry = generator_entry(family, repo_id)
    assert entry.available == "no"
    denoiser = "unet" if family == "sdxl" else "transformer"
    assert entry.fetch.startswith(f'hf download {repo_id} --include "*.json" --include "*.txt"')
    for weights in (f"{denoiser}/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                    "text_encoder/model.safetensors", "text_encoder_2/model.safetensors"):
        assert f'--include "{weights}"' in entry.fetch
    assert "safety_checker" not in entry.fetch  # SD 1.x only
    tiny_repos.put_in_hf_cache(hf_cache, repo_id, folders[family])
    assert generator_entry(family, repo_id).available == "yes"


def test_sdxl_fp16_variant_files_alone_are_enough(tmp_path):
    folder = tiny_repos.save_tiny_family(tmp_path / "sdxl-fp16", "sdxl", variant="fp16")
    assert list((folder / "unet").glob("*.fp16.safetensors"))
    entry = generator_entry("sdxl", str(folder), "generator.variant=fp16")
    assert (entry.available, entry.format) == ("yes", "diffusers SDXL folder, fp16 variant")


@pytest.mark.parametrize("preset,family", [("sdxl", "sdxl"), ("flux-schnell", "flux"), ("sdxl-random", "sdxl")])
def test_the_family_presets_list_their_generator(preset, family, hf_cache):
    entry = next(e for e in list_models(load_config("build", preset)) if e.role == "generator")
    if preset.endswith("-random"):
        assert (entry.available, entry.source) == ("yes", "built in code")
        assert "SDXL base architecture" in entry.format
    else:
        assert entry.available == "no" and entry.format.startswith(FAMILIES[family])


def test_the_download_command_fetches_a_sharded_flux_whole(tmp_path, hf_cache):
    """What ``hf download --include ...`` would fetch (huggingface_hub's own pattern filter over the repo's files)
    is enough: the released FLUX transformer and T5 encoder are sharded, and a pattern naming only
    ``model.safetensors`` would leave the shards behind."""
    from huggingface_hub.utils import filter_repo_objects

    repo_id = "tiny-org/tiny-flux-sharded"
    full = tiny_repos.save_tiny_family(tmp_path / "full", "flux", max_shard_size="200KB")
    files = sorted(str(p.relative_to(full)) for p in full.rglob("*") if p.is_file())
    assert any("transformer/diffusion_pytorch_model-00001-of-" in f for f in files)
    assert any("text_encoder_2/model-00001-of-" in f for f in files)
    entry = generator_entry("flux", repo_id)
    patterns = entry.fetch.split('--include "')[1:]
    fetched = list(filter_repo_objects(files, allow_patterns=[p.split('"')[0] for p in patterns]))
    partial = tmp_path / "fetched"
    for name in fetched:
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(full / name, partial / name)
    tiny_repos.put_in_hf_cache(hf_cache, repo_id, partial)
    assert generator_entry("flux", repo_id).available == "yes"
    assert not [f for f in files if f.endswith(".safetensors") and f not in fetched]


def annotate_entry(role: str, *overrides: str):
    config = load_config("build", "tiny", overrides=list(overrides))
    return next(e for e in list_models(config) if e.role == role)


def test_owlv2_is_listed_as_an_owlv2_model_with_its_processor(tmp_path, hf_cache):
    built = annotate_entry("detector", "annotate.detector.backend=owlv2")
    assert (built.available, built.format) == ("yes", "OWLv2 (tiny, random init), local tokenizer")
    folder = tiny_repos.save_tiny_owlv2(tmp_path / "owlv2")
    pretrained = ("annotate.detector.backend=owlv2", "annotate.detector.weights=pretrained")
    entry = annotate_entry("detector", *pretrained, f"annotate.detector.model={folder}")
    assert (entry.available, entry.format) == ("yes", "transformers Owlv2ForObjectDetection + processor")
    (folder / "processor_config.json").unlink()  # transformers 5 saves the processor's settings in one file
    assert annotate_entry("detector", *pretrained, f"annotate.detector.model={folder}").missing == [
        "processor_config.json"]
    # the backend's own default model, by hub id, not Grounding DINO's
    entry = annotate_entry("detector", *pretrained)
    assert entry.source == "google/owlv2-base-patch16-ensemble" and entry.available == "no"
    assert entry.fetch.startswith('hf download google/owlv2-base-patch16-ensemble --include "*.json"')
