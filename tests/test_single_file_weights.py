"""Single-file Stable Diffusion checkpoints (the original layout fine-tunes ship) as ``generator.model``.

The files are written from the tiny models by ``tests/ldm_checkpoints.py`` (an independent diffusers -> original
converter whose round trip through diffusers' readers is tested on its own); here they go through the generator
the way a user's file does: the pairs made from the file equal the pairs made from the diffusers folder, the
settings name the file and its hash, offline runs read the config repo from the Hugging Face cache, and bad
files or settings are one-line errors.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from magicseg_models.config import load_config
from magicseg_models.errors import MagicSegError
from tests import tiny_repos
from tests.ldm_checkpoints import save_single_file, sd15_state_dict, sdxl_state_dict

ROOT = Path(__file__).resolve().parents[1]


def _config(model: str, family: str = "sd15", **changes):
    sets = {"weights": "pretrained", "model": model, "family": family, "height": 32, "width": 32, "steps": 2,
            **changes}
    return load_config("build", "tiny", overrides=[f"generator.{k}={v}" for k, v in sets.items()]).generator


def _jobs() -> list[dict]:
    return [{"sample_id": "sf-0", "class_ids": [224], "prompt": "a photo of a cat on a sofa",
             "counterfactual_prompt": "a photo of nothing on a sofa", "seed": 7},
            {"sample_id": "sf-1", "class_ids": [224], "prompt": "a cat asleep in the sun",
             "counterfactual_prompt": "nothing asleep in the sun", "seed": 8}]


def _pairs(config) -> tuple[list[tuple[bytes, bytes]], dict]:
    from magicseg_models.generation import PairGenerator

    with PairGenerator(config, device="cpu") as gen:
        rows = gen(_jobs())
        return [(r["image"], r["counterfactual_image"]) for r in rows], gen.settings


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    """The tiny SD folder and the same weights as one original-layout file in both formats."""
    from magicseg_models.generation.components import load_components

    root = tmp_path_factory.mktemp("sd15-single")
    folder = tiny_repos.save_tiny_sd(root / "folder")
    parts = load_components(_config(str(folder)), device=torch.device("cpu"))
    state = sd15_state_dict(parts.unet, parts.vae, parts.text_encoder)
    files = {ext: save_single_file(state, root / f"my-finetune{ext}") for ext in (".safetensors", ".ckpt")}
    return {"root": root, "folder": folder, "files": files}


@pytest.mark.parametrize("ext", [".safetensors", ".ckpt"])
def test_sd15_single_file_makes_the_pairs_of_its_diffusers_folder(sd15, ext):
    path = sd15["files"][ext]
    from_folder, _ = _pairs(_config(str(sd15["folder"])))
    from_file, settings = _pairs(_config(str(path), single_file_config=str(sd15["folder"])))
    assert from_file == from_folder  # the same weights: byte-identical images and counterfactuals
    assert settings["single_file"] == path.name and settings["single_file_config"] == str(sd15["folder"])
    assert settings["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert settings["model"] == str(path) and settings["weights"] == "pretrained"


def test_sdxl_single_file_makes_the_pairs_of_its_diffusers_folder(tmp_path):
    from magicseg_models.generation.components import load_components

    folder = tiny_repos.save_tiny_family(tmp_path / "folder", "sdxl")
    parts = load_components(_config(str(folder), "sdxl"), device=torch.device("cpu"))
    path = save_single_file(sdxl_state_dict(parts.unet, parts.vae, parts.text_encoder, parts.text_encoder_2),
                            tmp_path / "sdxl-finetune.safetensors")
    from_folder, _ = _pairs(_config(str(folder), "sdxl"))
    from_file, settings = _pairs(_config(str(path), "sdxl", single_file_config=str(folder)))
    assert from_file == from_folder
    assert settings["family"] == "sdxl" and settings["single_file"] == path.name


def test_the_variant_does_not_apply_to_a_single_file_and_says_so(sd15, caplog):
    import logging

    from magicseg_models.generation.components import load_components

    config = _config(str(sd15["files"][".safetensors"]), single_file_config=str(sd15["folder"]), variant="fp16")
    with caplog.at_level(logging.INFO, logger="magicseg_models.generation.components"):
        loaded = load_components(config, device=torch.device("cpu"))
    assert any("does not apply to the single file" in r.getMessage() for r in caplog.records)
    assert "variants" not in loaded.source and loaded.source["single_file"] == "my-finetune.safetensors"


def test_the_safety_checker_comes_from_the_config_repo(tmp_path, sd15):
    """A single file holds no safety checker: with generator.safety_checker it loads from the config repo."""
    from diffusers import StableDiffusionPipeline

    from magicseg_models.generation.components import load_components

    with_checker = load_components(_config("unused", weights="tiny", safety_checker="true"), device=torch.device("cpu"))
    repo = tmp_path / "with-checker"
    StableDiffusionPipeline(**with_checker.as_kwargs(), requires_safety_checker=True).save_pretrained(repo)
    path = str(sd15["files"][".safetensors"])
    loaded = load_components(_config(path, single_file_config=str(repo), safety_checker="true"),
                             device=torch.device("cpu"))
    want = with_checker.safety_checker.state_dict()
    assert all(torch.equal(got, want[k]) for k, got in loaded.safety_checker.state_dict().items())
    assert loaded.feature_extractor is not None
    with pytest.raises(MagicSegError, match="no safety checker in") as err:
        load_components(_config(path, single_file_config=str(sd15["folder"]), safety_checker="true"),
                        device=torch.device("cpu"))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes, message", [
    ({"family": "flux"}, "single-file checkpoints load for families sd15, sdxl; for flux give its diffusers folder"),
    ({"revision": "abc"}, "generator.revision is for a hub id"),
])
def test_settings_a_single_file_cannot_take_are_refused_in_one_line(changes, message):
    with pytest.raises(MagicSegError, match=message) as err:
        _config("/models/my-finetune.safetensors", **changes)
    assert "\n" not in str(err.value)


def test_a_config_repo_without_a_single_file_is_refused_in_one_line(sd15):
    with pytest.raises(MagicSegError, match="single_file_config describes a single-file checkpoint") as err:
        _config(str(sd15["folder"]), single_file_config=str(sd15["folder"]))
    assert "\n" not in str(err.value)


def test_unreadable_files_and_config_repos_are_one_line_errors(sd15, tmp_path):
    from magicseg_models.generation.components import load_components

    folder = str(sd15["folder"])
    broken = tmp_path / "truncated.safetensors"
    broken.write_bytes(sd15["files"][".safetensors"].read_bytes()[:5000])
    xl = tiny_repos.save_tiny_family(tmp_path / "xl", "sdxl")
    cases = [
        (_config(str(tmp_path / "missing.safetensors"), single_file_config=folder), "not found"),
        (_config(str(broken), single_file_config=folder), "could not be read as a sd15 single-file checkpoint"),
        # an SD 1.5 file described as SDXL: the wrong architecture is refused, not half-loaded
        (_config(str(sd15["files"][".safetensors"]), "sdxl", single_file_config=str(xl)),
         "could not be read as a sdxl single-file checkpoint"),
        (_config(str(sd15["files"][".safetensors"]), single_file_config=str(tmp_path)), "is not a diffusers folder"),
    ]
    for config, message in cases:
        with pytest.raises(MagicSegError, match=message) as err:
            load_components(config, device=torch.device("cpu"))
        assert "\n" not in str(err.value), str(err.value)


_OFFLINE_SNIPPET = """
import contextlib, io, json, sys
import torch
from flows.cli import main
from magicseg_models.config import load_config
from magicseg_models.errors import MagicSegError
from magicseg_models.generation.components import load_components
url, cached, other = sys.argv[1:]
sets = lambda repo: [f"generator.{k}={v}" for k, v in dict(weights="pretrained", model=url,
                                                           single_file_config=repo).items()]
loaded = load_components(load_config("build", "tiny", overrides=sets(cached)).generator, device=torch.device("cpu"))
out = {"source": loaded.source, "unet": float(sum(p.double().sum() for p in loaded.unet.parameters()))}
try:
    load_components(load_config("build", "tiny", overrides=sets(other)).generator, device=torch.device("cpu"))
except MagicSegError as err:
    out["missing"] = str(err)
listing = io.StringIO()
with contextlib.redirect_stdout(listing):
    out["models_exit"] = main(["models", "--json", "--kind", "build", "--preset", "tiny", *[
        a for s in sets(other) for a in ("--set", s)]])
out["models"] = json.loads(listing.getvalue())
print(json.dumps(out))
"""


def test_offline_a_hub_file_and_a_cached_config_repo_load_and_magicseg_models_lists_both(sd15, tmp_path):
    """As on a cluster without internet: the file is an hf:// URL and the config repo a hub id, both in the
    Hugging Face cache (the config repo with its small files only, as the printed command fetches it). One fresh
    interpreter with HF_HUB_OFFLINE=1 loads it, tries a config repo that is not cached, and runs
    ``magicseg models`` on that one."""
    hf_home = tmp_path / "hf"
    weights_repo = tmp_path / "weights-repo"
    weights_repo.mkdir()
    (weights_repo / "my-finetune.safetensors").write_bytes(sd15["files"][".safetensors"].read_bytes())
    tiny_repos.put_in_hf_cache(hf_home, "tiny-org/my-finetune", weights_repo)
    configs_only = tmp_path / "configs"
    for path in sd15["folder"].rglob("*"):
        if path.is_file() and path.suffix in (".json", ".txt"):
            (configs_only / path.relative_to(sd15["folder"])).parent.mkdir(parents=True, exist_ok=True)
            (configs_only / path.relative_to(sd15["folder"])).write_bytes(path.read_bytes())
    tiny_repos.put_in_hf_cache(hf_home, "tiny-org/tiny-sd-configs", configs_only)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "MAGICSEG_CACHE": str(tmp_path / "cache")}
    env.pop("PREFECT_API_URL", None)
    url = "hf://tiny-org/my-finetune/my-finetune.safetensors"
    result = subprocess.run([sys.executable, "-c", _OFFLINE_SNIPPET, url, "tiny-org/tiny-sd-configs",
                             "tiny-org/other-configs"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    from magicseg_models.generation.components import load_components

    local = load_components(_config(str(sd15["folder"])), device=torch.device("cpu"))
    assert got["unet"] == pytest.approx(float(sum(p.double().sum() for p in local.unet.parameters())), abs=1e-9)
    assert got["source"]["single_file_config"] == "tiny-org/tiny-sd-configs"
    # the config repo that is not cached: one line with the command that fetches it
    assert "\n" not in got["missing"] and 'hf download tiny-org/other-configs --include "*.json"' in got["missing"]
    entries = {e["role"]: e for e in got["models"]}
    assert got["models_exit"] == 1  # the other config repo is not in the cache
    assert entries["generator"]["available"] == "yes" and entries["generator"]["source"] == url
    assert entries["generator config"]["available"] == "no"
    assert entries["generator config"]["fetch"].startswith("hf download tiny-org/other-configs")
    assert "safetensors" not in entries["generator config"]["fetch"]  # configs and tokenizers only, no weights
