"""The ``magicseg`` command line: help, dry runs, one-line errors with exit 2, end to end on local and S3, no leaks."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from flows.cli import main
from magicseg_models.config import BuildConfig, load_config
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import VocabularyError
from magicseg_models.vocabulary import Vocabulary

COMMANDS = ["build", "prompts", "inspect", "preview", "export", "train", "eval", "models"]
REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """The CLI as a user runs it: a fresh interpreter, its exit code, its stdout and stderr."""
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=REPO, timeout=timeout)


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def call(capsys, *args: str) -> tuple[int, str, str]:
    """The CLI in-process (fast): exit code, stdout, stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def dry_run(capsys, *args: str) -> tuple[BuildConfig, dict, str]:
    """``build --dry-run``: the config alone on stdout (valid YAML), the plan on stderr."""
    code, out, err = call(capsys, "build", "--dry-run", *args)
    assert code == 0, err
    config = BuildConfig.model_validate(yaml.safe_load(out))
    plan_text = err[err.index("# plan over"):]
    plan_text = plan_text[:plan_text.index("\n# ", 1) + 1] if "\n# " in plan_text[1:] else plan_text
    return config, yaml.safe_load(plan_text)["plan"], plan_text


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------------------------------- help
def test_help_lists_every_command():
    script = Path(sys.executable).with_name("magicseg")  # the installed console script
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "flows.cli"]
    result = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_subcommand_help_exits_0(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"magicseg {command}" in out and "usage" in out.lower()


def test_no_command_prints_help_and_fails(capsys):
    code, out, _ = call(capsys)
    assert code != 0
    assert all(command in out for command in COMMANDS)


# ------------------------------------------------------------------------------------------- dry run
def test_dry_run_prints_effective_config_and_plan(capsys):
    config, plan, _ = dry_run(capsys, "--num-samples", "10", "--seed", "5", "--shard-size", "3",
                              "--set", "generator.steps=3", "--set", "plan.two_class_fraction=0.5")
    assert (config.num_samples, config.seed, config.shard_size) == (10, 5, 3)
    assert config.generator.steps == 3
    assert config.preset == "tiny" and config.generator.height == 64  # the rest comes from the preset
    assert plan["jobs"] == 10
    assert plan["shards"] == math.ceil(10 / 3) == 4
    assert plan["shard_size"] == 3
    assert plan["single_class_jobs"] + plan["two_class_jobs"] == 10
    assert plan["two_class_jobs"] == 5
    assert plan["classes"] == 8  # the tiny preset's selection
    assert plan["per_class_min"] <= plan["per_class_max"]
    # each job names 1 or 2 classes: the per-class counts add up to the class slots
    slots = plan["single_class_jobs"] + 2 * plan["two_class_jobs"]
    assert plan["per_class_min"] * 8 <= slots <= plan["per_class_max"] * 8


def test_dry_run_matches_load_config(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("generator: {guidance_scale: 4.0}\nnum_samples: 40\n")
    config, plan, _ = dry_run(capsys, "--preset", "sd15", "--config", str(cfg), "--set", "generator.steps=30",
                              "--num-samples", "25")
    expected = load_config("build", "sd15", str(cfg), ["generator.steps=30"], num_samples=25)
    assert config == expected
    assert plan["jobs"] == 25 and plan["shards"] == 1  # sd15 shards hold 1000
    assert plan["classes"] == 1205  # sd15 draws from the whole vocabulary


def test_dry_run_with_zero_samples(capsys):
    _, plan, _ = dry_run(capsys, "--num-samples", "0")
    assert plan["jobs"] == 0 and plan["shards"] == 0


def test_classes_list_restricts_the_plan(capsys):
    config, plan, _ = dry_run(capsys, "--classes", "cat,dog", "--num-samples", "6")
    assert config.vocabulary.classes == ["cat", "dog"]
    assert plan["classes"] == 2 and plan["jobs"] == 6


def test_classes_file_is_a_custom_vocabulary(capsys, tmp_path):
    vocab = tmp_path / "my_vocab.txt"
    vocab.write_text("# my classes\nzebra crossing\ntraffic cone\n\nmanhole cover\tmanhole cover\n")
    config, plan, plan_text = dry_run(capsys, "--classes", str(vocab), "--num-samples", "9")
    assert config.vocabulary.file == str(vocab)
    assert config.vocabulary.classes is None  # the file replaces the preset's selection
    assert plan["classes"] == 3 and plan["jobs"] == 9
    assert str(vocab) in plan_text


def test_dry_run_redacts_secrets(capsys):
    code, out, err = call(capsys, "build", "--dry-run", "--set", "storage.storage_options.secret=DRYRUNSECRET42")
    assert code == 0
    assert "DRYRUNSECRET42" not in out + err


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("args,expected", [
    (["build", "--dry-run", "--set", "generator.stesp=3"], ["generator.stesp", "generator.steps"]),
    (["build", "--dry-run", "--set", "generator.steps=abc"], ["generator.steps"]),
    (["build", "--dry-run", "--set", "plan.two_class_fraction=1.5"], ["plan.two_class_fraction"]),
    (["build", "--dry-run", "--set", "generator.steps"], ["key.path=value"]),
    (["build", "--dry-run", "--num-samples", "abc"], ["--num-samples", "abc"]),
    (["build", "--dry-run", "--num-samples", "-1"], ["num_samples"]),
    (["build", "--dry-run", "--preset", "sd14"], ["sd14", "sd15", "tiny"]),
    (["build", "--dry-run", "--config", "/nonexistent/magicseg.yaml"], ["/nonexistent/magicseg.yaml"]),
    (["build", "--dry-run", "--classes", "cat,dgo"], ["dgo", "dog"]),
    (["build", "--dry-run", "--classes", "cat,cat"], ["cat"]),
    (["build", "--dry-run", "--frobnicate"], ["--frobnicate"]),
    (["build", "--synthetic"], ["--out"]),
    (["build"], ["--out"]),
    (["preview", "somewhere"], ["--out"]),
    (["train", "--out", "x"], ["--data"]),
    (["eval", "--benchmark", "pascal", "--data-root", "x"], ["pascal"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, expected):
    code, _, err = call(capsys, *args)
    assert code == 2
    line = one_line_error(err)
    for text in expected:
        assert text in line


def test_bad_config_file_is_one_line(capsys, tmp_path):
    for name, text, expected in [("list.yaml", "- a\n- b\n", "mapping"), ("broken.yaml", "a: [1, 2\n", "YAML"),
                                 ("typo.yaml", "num_sample: 3\n", "num_samples")]:
        path = tmp_path / name
        path.write_text(text)
        code, _, err = call(capsys, "build", "--dry-run", "--config", str(path))
        assert code == 2
        assert expected in one_line_error(err)


def test_inspect_folder_without_manifest(capsys, tmp_path):
    (tmp_path / "shards").mkdir()
    code, _, err = call(capsys, "inspect", str(tmp_path))
    assert code == 2
    line = one_line_error(err)
    assert str(tmp_path) in line and "manifest" in line


def test_preview_of_missing_dataset(capsys, tmp_path):
    code, _, err = call(capsys, "preview", str(tmp_path / "nothing"), "--out", str(tmp_path / "g.png"))
    assert code == 2
    one_line_error(err)
    assert not (tmp_path / "g.png").exists()


def test_unknown_class_subprocess():
    result = run_cli("build", "--dry-run", "--classes", "cat,dgo")
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "dgo" in line and "dog" in line
    assert result.stdout == ""


def test_unknown_command_subprocess():
    result = run_cli("frobnicate")
    assert result.returncode == 2
    assert "frobnicate" in one_line_error(result.stderr)


def test_inspect_without_manifest_subprocess(tmp_path):
    result = run_cli("inspect", str(tmp_path))
    assert result.returncode == 2
    assert "manifest" in one_line_error(result.stderr)


def test_inspect_unreachable_s3_endpoint():
    endpoint = f"http://127.0.0.1:{closed_port()}"
    # one attempt, so the test does not sit through botocore's retry back-off
    result = run_cli("inspect", "s3://some-bucket/ds", env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"})
    assert result.returncode == 2
    line = one_line_error(result.stderr)
    assert "s3://some-bucket/ds" in line


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(VocabularyError):
        main(["--debug", "build", "--dry-run", "--classes", "cat,dgo"])
    result = run_cli("--debug", "build", "--dry-run", "--classes", "cat,dgo")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "dgo" in result.stderr


@pytest.mark.parametrize("args,expected", [
    (["train", "--data", "MISSING", "--out", "OUT"], "no dataset at"),
    (["eval", "--benchmark", "voc", "--data-root", "MISSING", "--checkpoint", "OUT"], "MISSING"),
    (["eval", "--benchmark", "voc", "--data-root", "MISSING"], "--checkpoint"),
])
def test_train_and_eval_refuse_bad_input_in_one_line(capsys, tmp_path, args, expected):
    args = [str(tmp_path / "missing") if a == "MISSING" else str(tmp_path / "out") if a == "OUT" else a
            for a in args]
    code, _, err = call(capsys, *args)
    assert code != 0
    line = one_line_error(err)
    assert expected.replace("MISSING", str(tmp_path / "missing")) in line
    assert not (tmp_path / "out").exists()  # nothing written


# ------------------------------------------------------------------------------------------- end to end
def test_build_inspect_preview(dataset_root, tmp_path):
    env = {"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]} if dataset_root.startswith("s3://") else {}
    build = run_cli("build", "--preset", "tiny", "--out", dataset_root, "--synthetic", env=env)
    assert build.returncode == 0, build.stderr
    assert "Traceback" not in build.stderr

    inspect = run_cli("inspect", dataset_root, "--json", env=env)
    assert inspect.returncode == 0, inspect.stderr
    report = json.loads(inspect.stdout)
    tiny = load_config("build", "tiny")
    assert report["ok"] is True and report["problems"] == []
    assert report["planned"] == tiny.num_samples
    assert report["samples"] == report["planned"] - report["dropped_total"]
    assert 0 < report["samples"] <= report["planned"]
    names = Vocabulary.load(None, tiny.vocabulary.classes).names
    assert set(report["per_class"]) == set(names) and len(names) == 8
    assert sum(report["per_class"].values()) >= report["samples"]
    assert report["coverage"]["classes_with_none"] == []
    assert len(report["shards"]) == math.ceil(tiny.num_samples / tiny.shard_size)
    assert all(s["status"] == "ok" for s in report["shards"])

    grid = tmp_path / "grid.png"
    preview = run_cli("preview", dataset_root, "--out", str(grid), env=env)
    assert preview.returncode == 0, preview.stderr
    with Image.open(grid) as image:
        assert image.format == "PNG" and image.width > 0 and image.height > 0


def test_inspect_human_report(capsys, tmp_path):
    uri = str(tmp_path / "ds")
    assert call(capsys, "build", "--out", uri, "--synthetic", "--num-samples", "5", "--shard-size", "5")[0] == 0
    code, out, _ = call(capsys, "inspect", uri)
    assert code == 0
    assert "shards/part-00000.parquet" in out and "healthy" in out


def test_inspect_reports_a_corrupt_shard(capsys, tmp_path):
    uri = tmp_path / "ds"
    assert call(capsys, "build", "--out", str(uri), "--synthetic")[0] == 0
    shard = uri / "shards" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    code, out, err = call(capsys, "inspect", str(uri), "--json")
    assert code == 1  # unhealthy dataset, not bad input
    report = json.loads(out)
    assert report["ok"] is False
    assert "part-00001" in err and "Traceback" not in err


def test_build_respects_flags(capsys, tmp_path):
    uri = str(tmp_path / "ds")
    code, _, err = call(capsys, "build", "--out", uri, "--synthetic", "--classes", "cat,dog",
                        "--num-samples", "6", "--shard-size", "4", "--seed", "3")
    assert code == 0, err
    code, out, _ = call(capsys, "inspect", uri, "--json")
    report = json.loads(out)
    assert report["planned"] == 6 and len(report["shards"]) == 2
    assert set(report["per_class"]) == {"cat", "dog"}
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["config"]["seed"] == 3 and manifest["config"]["vocabulary"]["classes"] == ["cat", "dog"]


# ------------------------------------------------------------------------------------------- secrets
def _tree_bytes(uri: str) -> bytes:
    storage = Storage(uri)
    return b"".join(storage.fs.cat_file(p) for p in storage.fs.find(storage.root))


def test_no_secret_leak_local(capsys, tmp_path):
    uri = str(tmp_path / "ds")
    code, out, err = call(capsys, "build", "--out", uri, "--synthetic",
                          "--set", "storage.storage_options.secret=SUPERSECRET123")
    assert code == 0, err
    blob = _tree_bytes(uri)
    assert b"shards/part-00000.parquet" in blob  # the manifest was read
    assert (tmp_path / "ds" / "_magicseg").is_dir()
    assert b"SUPERSECRET123" not in blob
    assert "SUPERSECRET123" not in out + err
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["config"]["storage"]["storage_options"]["secret"] != "SUPERSECRET123"


def test_no_secret_leak_s3(s3_bucket):
    uri = f"{s3_bucket}/ds"
    # moto accepts any credentials: these are the ones the run really uses
    key, secret = "AKIALEAKCHECK0001", "SUPERSECRET123s3"
    result = run_cli("build", "--out", uri, "--synthetic",
                     "--set", f"storage.storage_options.key={key}",
                     "--set", f"storage.storage_options.secret={secret}",
                     env={"AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"]})
    assert result.returncode == 0, result.stderr
    blob = _tree_bytes(uri)
    assert b"shards/part-00000.parquet" in blob  # the manifest is in there
    for value in (key, secret):
        assert value.encode() not in blob
        assert value not in result.stdout + result.stderr


@pytest.mark.parametrize("command", [
    ["build", "--preset", "tiny", "--out", "OUT"],
    ["train", "--data", "OUT", "--out", "OUT"],
    ["eval", "--benchmark", "voc", "--data-root", "OUT", "--checkpoint", "OUT"],
])
def test_storage_credentials_never_become_flow_parameters(capsys, tmp_path, command):
    """A flow stores its parameters (visible in the UI) before its body runs: secrets are refused up front."""
    args = [str(tmp_path / "out") if a == "OUT" else a for a in command]
    code, out, err = call(capsys, *args, "--set", "storage.storage_options.secret=NOTINPARAMS99")
    assert code != 0
    line = one_line_error(err)
    assert "flow parameters" in line and "NOTINPARAMS99" not in out + err
    assert not (tmp_path / "out").exists()


def test_a_signed_url_in_the_config_never_becomes_a_flow_parameter(capsys, tmp_path):
    signed = "https://bucket.s3.amazonaws.com/sam.pth?X-Amz-Signature=NOTINPARAMS77&X-Amz-Expires=60"
    code, out, err = call(capsys, "build", "--preset", "tiny", "--out", str(tmp_path / "out"),
                          "--set", f"annotate.segmenter.checkpoint={signed}")
    assert code != 0
    line = one_line_error(err)
    assert "annotate.segmenter.checkpoint" in line and "NOTINPARAMS77" not in out + err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- habits (#15)
def test_dry_run_output_is_a_config_that_comes_back_unchanged(capsys, tmp_path):
    code, first, _ = call(capsys, "build", "--preset", "sd15", "--num-samples", "500", "--classes", "cat,dog",
                          "--set", "generator.steps=25", "--dry-run")
    assert code == 0
    path = tmp_path / "run.yaml"
    path.write_text(first)
    code, again, _ = call(capsys, "build", "--config", str(path), "--dry-run")
    assert code == 0 and yaml.safe_load(again) == yaml.safe_load(first)
    result = run_cli("build", "--config", str(path), "--dry-run")  # as a shell redirect would see it
    assert result.returncode == 0 and yaml.safe_load(result.stdout) == yaml.safe_load(first)


def test_dry_run_estimates_gpu_hours_for_real_models_only(capsys):
    _, _, err = call(capsys, "build", "--preset", "sd15", "--num-samples", "100000", "--dry-run")
    line = next(line for line in err.splitlines() if "GPU hours" in line)
    low, high = (float(v) for v in line.split(": ", 1)[1].split(" ")[0].split("-"))
    assert 5 < low < high < 30  # docs/operations.md's arithmetic: 8.2-15.7 H100 hours per 100k pairs
    assert "estimate" in line and "pairs per GPU hour" in line
    _, _, err = call(capsys, "build", "--preset", "sd15", "--num-samples", "100000", "--set", "generator.steps=40",
                     "--dry-run")
    slower = next(line for line in err.splitlines() if "GPU hours" in line)
    assert float(slower.split(": ", 1)[1].split("-")[0]) > low  # twice the steps, more hours
    _, _, err = call(capsys, "build", "--preset", "tiny", "--dry-run")
    assert "GPU hours" not in err


def test_dry_run_checks_storage_without_writing(capsys, tmp_path):
    out = tmp_path / "not-yet"
    code, _, err = call(capsys, "build", "--out", str(out), "--dry-run")
    assert code == 0 and "reachable, no dataset yet" in err and not out.exists()
    endpoint = f"http://127.0.0.1:{closed_port()}"
    result = run_cli("build", "--out", "s3://some-bucket/ds", "--dry-run",
                     env={"AWS_ENDPOINT_URL": endpoint, "AWS_MAX_ATTEMPTS": "1"})
    assert result.returncode == 2 and "s3://some-bucket/ds" in result.stderr.strip().splitlines()[-1]


def test_train_and_eval_dry_runs_print_their_config(capsys, synthetic_dataset, tmp_path):
    capsys.readouterr()  # what the fixtures printed (the S3 server starting) is not the command's output
    code, out, err = call(capsys, "train", "--data", synthetic_dataset, "--out", str(tmp_path / "t"), "--dry-run")
    assert code == 0, err
    assert yaml.safe_load(out)["data"] == synthetic_dataset and "readable" in err
    assert not (tmp_path / "t").exists()
    code, out, _ = call(capsys, "eval", "--benchmark", "voc", "--data-root", str(tmp_path), "--checkpoint", "x",
                        "--dry-run")
    assert code == 2  # the benchmark folder is missing: refused before anything runs


def test_debug_works_after_the_subcommand_and_help_shows_defaults_examples_env(capsys):
    with pytest.raises(VocabularyError):
        main(["build", "--dry-run", "--classes", "cat,dgo", "--debug"])
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    assert "{flux-schnell,flux-schnell-random,sd15,sd15-random,sdxl,sdxl-random,tiny}" in text  # --preset choices
    assert "examples:" in text and "magicseg build --preset tiny --out out/demo" in text
    assert "environment:" in text and "RAY_ADDRESS" in text and "PREFECT_API_URL" in text
    with pytest.raises(SystemExit):
        main(["preview", "--help"])
    assert "(default: 16)" in capsys.readouterr().out


def test_env_prints_versions_and_never_a_secret(capsys):
    result = run_cli("env", env={"OPENAI_API_KEY": "sk-envsecret123", "PREFECT_API_URL":
                                 "https://user:hunter2pass@prefect.example/api", "RAY_ADDRESS": "ray://head:10001"})
    assert result.returncode == 0, result.stderr
    assert "sk-envsecret123" not in result.stdout + result.stderr
    assert "hunter2pass" not in result.stdout + result.stderr
    assert "torch" in result.stdout and "prefect" in result.stdout and "RAY_ADDRESS=ray://head:10001" in result.stdout
    assert "OPENAI_API_KEY" in result.stdout.splitlines()[-1]  # said to be set, not shown
    code, out, _ = call(capsys, "env", "--json")
    info = json.loads(out)
    assert code == 0 and info["packages"]["ray"] and "available" in info["cuda"]
