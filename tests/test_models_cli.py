"""``magicseg models`` and offline runs from a filled Hugging Face cache.

The cache is a temporary ``HF_HOME`` holding tiny models under the real layout (``tests/tiny_repos.py``); every
command that reads it runs in a fresh interpreter with ``HF_HUB_OFFLINE=1``, as on a cluster without internet.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from flows.cli import main
from magicseg_models.dataset.inspect import inspect_dataset
from tests import tiny_repos

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict, timeout: float = 120) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **env}
    full.pop("PREFECT_API_URL", None)  # a CLI run uses its own local Prefect, never a test session's server
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=full, cwd=ROOT,
                          timeout=timeout)


def models(*args: str, env: dict) -> tuple[int, list[dict], str]:
    result = run("-m", "flows.cli", "models", "--json", *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, json.loads(result.stdout or "[]"), result.stderr


def test_presets_built_in_code_list_every_model_as_here(capsys):
    assert main(["models", "--preset", "tiny", "--json"]) == 0
    entries = json.loads(capsys.readouterr().out)
    assert [(e["kind"], e["role"]) for e in entries] == [
        ("build", "prompts"), ("build", "generator"), ("build", "detector"), ("build", "segmenter"),
        ("train", "clip"), ("eval", "clip")]
    assert all(e["available"] == "yes" and e["source"] == "built in code" for e in entries)
    assert main(["models", "--preset", "sd15-random"]) == 0
    out = capsys.readouterr().out
    assert "SD 1.5 architecture (random init)" in out and "template" in out


def test_missing_models_exit_1_with_the_command_that_fetches_each(tmp_path):
    env = {"HF_HOME": str(tmp_path / "hf"), "MAGICSEG_CACHE": str(tmp_path / "cache")}
    code, entries, err = models("--preset", "sd15", env=env)
    assert code == 1
    by_role = {e["role"]: e for e in entries}
    assert by_role["prompts"]["available"] == "remote"
    assert {by_role[r]["available"] for r in ("generator", "detector", "segmenter")} == {"no"}
    # only the fp16 weights are fetched (not the fp32 ones too), with the CLI huggingface_hub ships: `hf`
    assert by_role["generator"]["fetch"] == (
        'hf download stable-diffusion-v1-5/stable-diffusion-v1-5 --include "*.json" --include "*.txt" '
        '--include "unet/diffusion_pytorch_model.fp16.safetensors" '
        '--include "unet/diffusion_pytorch_model.fp16-*-of-*.safetensors" '
        '--include "vae/diffusion_pytorch_model.fp16.safetensors" '
        '--include "vae/diffusion_pytorch_model.fp16-*-of-*.safetensors" '
        '--include "text_encoder/model.fp16.safetensors" --include "text_encoder/model.fp16-*-of-*.safetensors"')
    assert by_role["detector"]["fetch"].startswith("hf download IDEA-Research/grounding-dino-tiny ")
    sam = "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth"
    assert by_role["segmenter"]["source"] == sam and sam in by_role["segmenter"]["fetch"]
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("magicseg models: missing ") for line in lines)
    hf = Path(sys.executable).with_name("hf")
    help_text = subprocess.run([str(hf), "download", "--help"], capture_output=True, text=True, timeout=60).stdout
    assert "--include" in help_text and "--revision" in help_text


def test_set_and_config_need_a_kind_when_the_preset_has_several(capsys):
    assert main(["models", "--preset", "tiny", "--set", "model.weights=tiny"]) == 2
    assert "need --kind" in capsys.readouterr().err
    assert main(["models", "--kind", "eval", "--set", "baseline=grounded-sam", "--json"]) == 0
    roles = [e["role"] for e in json.loads(capsys.readouterr().out)]
    assert roles == ["detector", "segmenter"]  # the baseline loads the annotation models, not CLIP


def test_hf_url_checkpoint_comes_from_the_hugging_face_cache(tmp_path):
    hf_home = tmp_path / "hf"
    repo = tmp_path / "sam-repo"
    repo.mkdir()
    torch.save({"w": torch.ones(3)}, repo / "sam_tiny.pth")
    tiny_repos.put_in_hf_cache(hf_home, "tiny-org/sam-weights", repo)
    env = {"HF_HOME": str(hf_home)}
    url = "hf://tiny-org/sam-weights/sam_tiny.pth"
    found = run("-c", f"from magicseg_models.weights.fetch import local_checkpoint; "
                      f"print(local_checkpoint({url!r}).path)", env=env)
    assert found.returncode == 0, found.stderr
    path = found.stdout.strip()
    assert path.startswith(str(hf_home)) and torch.load(path, weights_only=True)["w"].sum() == 3
    code, entries, _ = models("--kind", "build", "--set", f"annotate.segmenter.checkpoint={url}",
                              "--set", "annotate.segmenter.weights=pretrained", env=env)
    assert code == 0 and entries[-1]["source"] == url and entries[-1]["available"] == "yes"
    other = "hf://tiny-org/sam-weights@v2/other.pth"
    code, entries, err = models("--kind", "build", "--set", f"annotate.segmenter.checkpoint={other}",
                                "--set", "annotate.segmenter.weights=pretrained", env=env)
    assert code == 1 and entries[-1]["fetch"] == "hf download tiny-org/sam-weights other.pth --revision v2"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A Hugging Face cache holding a tiny model for every role, under hub ids of an organisation ``tiny-org``."""
    root = tmp_path_factory.mktemp("hub")
    hf_home = root / "hf"
    repos = {
        "tiny-org/tiny-sd": tiny_repos.save_tiny_sd(root / "sd", "fp16"),  # fp16 files only, as fetched
        "tiny-org/tiny-grounding-dino": tiny_repos.save_tiny_grounding_dino(root / "gd"),
        "tiny-org/tiny-sam": tiny_repos.save_tiny_sam(root / "sam"),
        "tiny-org/tiny-llm": tiny_repos.save_tiny_llm(root / "llm"),
        "tiny-org/tiny-clip": tiny_repos.save_tiny_clip(root / "clip"),
    }
    for repo_id, folder in repos.items():
        tiny_repos.put_in_hf_cache(hf_home, repo_id, folder)
    config = {
        "preset": "tiny", "num_samples": 4, "shard_size": 4,
        "prompts": {"backend": "hf", "model": "tiny-org/tiny-llm", "weights": "pretrained", "max_new_tokens": 16,
                    "resources": {"num_gpus": 0}},
        "generator": {"weights": "pretrained", "model": "tiny-org/tiny-sd", "variant": "fp16"},
        "annotate": {"detector": {"weights": "pretrained", "model": "tiny-org/tiny-grounding-dino"},
                     "segmenter": {"backend": "transformers", "weights": "pretrained",
                                   "checkpoint": "tiny-org/tiny-sam"}},
    }
    (root / "hub-ids.yaml").write_text(yaml.safe_dump(config))
    return {"root": root, "env": {"HF_HOME": str(hf_home), "MAGICSEG_CACHE": str(root / "cache")},
            "config": str(root / "hub-ids.yaml")}


def test_a_filled_cache_lists_every_model_as_here(hub_cache, tmp_path):
    code, entries, err = models("--kind", "build", "--config", hub_cache["config"], env=hub_cache["env"])
    assert code == 0, err
    assert [(e["role"], e["source"], e["available"]) for e in entries] == [
        ("prompts", "tiny-org/tiny-llm", "yes"), ("generator", "tiny-org/tiny-sd", "yes"),
        ("detector", "tiny-org/tiny-grounding-dino", "yes"), ("segmenter", "tiny-org/tiny-sam", "yes")]
    assert entries[1]["format"] == "diffusers SD 1.x folder, fp16 variant"
    code, entries, err = models("--kind", "train", "--set", "model.clip=tiny-org/tiny-clip",
                                "--set", "model.weights=pretrained", env=hub_cache["env"])
    assert code == 0 and entries[0]["available"] == "yes", err
    # the same listing from an empty cache: each missing, with its fetch command
    code, entries, _ = models("--kind", "build", "--config", hub_cache["config"],
                              env={**hub_cache["env"], "HF_HOME": str(tmp_path / "empty")})
    assert code == 1 and [e["available"] for e in entries] == ["no"] * 4
    assert entries[1]["fetch"].startswith('hf download tiny-org/tiny-sd --include "*.json"')


@pytest.mark.slow
def test_build_runs_offline_from_hub_ids_in_a_filled_cache(hub_cache, migrated_prefect_home):
    """prompts (a hub LLM), SD (fp16 files only in the cache), Grounding DINO with its processor and SAM, all by
    hub id, with HF_HUB_OFFLINE=1: the build completes and its dataset is healthy."""
    root = hub_cache["root"]
    out = root / "ds"
    shutil.copytree(migrated_prefect_home, root / "prefect")  # the one-off set-up of a first local Prefect, done
    env = {**hub_cache["env"], "PREFECT_HOME": str(root / "prefect"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}
    # the quality stage's tiny CLIP is built in code, not read from the cache: one actor less to start
    build = run("-m", "flows.cli", "build", "--config", hub_cache["config"], "--out", str(out),
                "--set", "quality.enabled=false", env=env, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    report = inspect_dataset(str(out))  # reading shards needs no model: no second interpreter for it
    assert report["ok"], report["problems"]
    assert report["planned"] == 4 and report["samples"] + report["dropped_total"] == 4
    assert report["samples"] > 0, report["dropped"]  # the hub models really labelled something
    # provenance from the generator itself: the fp16 files it loaded, in the manifest and every shard
    import pyarrow.parquet as pq

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["models"]["pairs"]["variants"]["unet"] == "fp16", manifest["models"]["pairs"]
    for shard in manifest["shards"]:
        settings = json.loads(pq.read_schema(out / shard["path"]).metadata[b"magicseg.settings"])
        assert settings["pairs"]["variants"]["unet"] == "fp16"
