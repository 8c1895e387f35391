"""Training without Ray: the schedule, checkpoints on storage, the worker loop in one process, bad input."""

from __future__ import annotations

import io
import json

import pytest
import torch

from magicseg_models.config import OptimConfig, load_config
from magicseg_models.dataset.storage import Storage
from magicseg_models.errors import ConfigError, StorageError
from magicseg_models.training import checkpoints as ckpt
from magicseg_models.training.schedule import WARMUP_RATIO, build_optimizer, build_scheduler, lr_factor
from magicseg_models.training.trainer import accumulation_plan, check_output, train_worker


@pytest.fixture
def tiny_dataset(tmp_path, tiny_plan):
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    uri = str(tmp_path / "ds")
    write_synthetic_dataset(uri, jobs[:8], list(spec.class_names), height=64, width=64, config={"preset": "t"})
    return uri


def _train_config(data: str, out: str, *overrides: str):
    return load_config("train", "tiny", overrides=[f"data={data}", f"out={out}", "data_workers=0", *overrides])


# ------------------------------------------------------------------------------------------- schedule
def test_poly_schedule_with_linear_warmup_matches_mmcv():
    optim = OptimConfig(lr=2e-5, head_lr_mult=10, min_lr=1e-6, warmup_iters=1500, power=0.9)
    base = 2e-4

    def poly(step):  # mmcv PolyLrUpdaterHook, by hand
        return (base - 1e-6) * (1 - step / 20000) ** 0.9 + 1e-6

    assert lr_factor(0, base, optim, 20000) * base == pytest.approx(poly(0) * WARMUP_RATIO)
    k = (1 - 750 / 1500) * (1 - WARMUP_RATIO)
    assert lr_factor(750, base, optim, 20000) * base == pytest.approx(poly(750) * (1 - k))
    assert lr_factor(1500, base, optim, 20000) * base == pytest.approx(poly(1500))
    assert lr_factor(20000, base, optim, 20000) * base == pytest.approx(1e-6)


def test_optimizer_trains_only_trainable_parameters_at_ten_times_the_base_lr():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    optim = OptimConfig(lr=2e-5, head_lr_mult=10, warmup_iters=0, weight_decay=0.01)
    optimizer = build_optimizer(model, optim)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert all(p.requires_grad for p in params) and len(params) == 5
    assert all(g["lr"] == pytest.approx(2e-4) for g in optimizer.param_groups)
    assert all(g["weight_decay"] == 0.01 for g in optimizer.param_groups)  # as the authors' runs (see schedule.py)
    scheduler = build_scheduler(optimizer, optim, max_steps=10)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] < 2e-4


def test_accumulation_plan_reaches_the_global_batch():
    config = load_config("train", "zegclip-vitb16", overrides=["workers=4", "optim.micro_batch_size=8"])
    assert accumulation_plan(config) == (8, 2)  # 4 GPUs x 8 images x 2 accumulation steps = 64
    assert accumulation_plan(load_config("train", "zegclip-vitb16", overrides=["workers=16"])) == (4, 1)
    with pytest.raises(ConfigError, match="batch_size=64"):
        accumulation_plan(load_config("train", "zegclip-vitb16", overrides=["workers=3"]))


# ---------------------------------------------------------------------------------------- checkpoints
def test_checkpoints_roundtrip_prune_and_resolve(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    model = torch.nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    optimizer = torch.optim.AdamW([model.weight])
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(storage, step, model, {"optimizer": optimizer.state_dict(), "rng": ckpt.rng_state()},
                             {"note": "t"}, keep=2)
    assert ckpt.list_checkpoints(storage) == [3, 4] and ckpt.latest_checkpoint(storage) == 4
    assert not (tmp_path / "run" / "checkpoints" / "step-00000001").exists()
    folder = ckpt.resolve_checkpoint(str(tmp_path / "run"))
    assert folder.uri.endswith("step-00000004")
    assert ckpt.resolve_checkpoint(folder.uri).uri == folder.uri  # one checkpoint's own folder works too
    loaded = ckpt.load_checkpoint(folder)
    assert set(loaded["weights"]) == {"weight"}  # frozen parameters are not stored
    assert torch.equal(loaded["weights"]["weight"], model.weight.detach())
    assert loaded["state"]["step"] == 4 and loaded["meta"]["note"] == "t"
    # the training state is plain tensors and containers: loadable without unpickling code
    torch.load(io.BytesIO(folder.read_bytes("state.pt")), weights_only=True)


def test_a_checkpoint_interrupted_before_its_meta_is_not_the_latest(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    model = torch.nn.Linear(2, 2)
    ckpt.save_checkpoint(storage, 5, model, {}, {})
    storage.write_bytes_atomic("checkpoints/step-00000010/model.safetensors", b"partial")  # killed mid-save
    storage.write_json_atomic("checkpoints/latest.json", {"step": 10, "path": "checkpoints/step-00000010"})
    assert ckpt.latest_checkpoint(storage) == 5


def test_corrupt_or_missing_checkpoints_fail_in_one_line(tmp_path):
    with pytest.raises(StorageError, match="no checkpoint at"):
        ckpt.resolve_checkpoint(str(tmp_path / "nothing"))
    storage = Storage(str(tmp_path / "run"))
    ckpt.save_checkpoint(storage, 1, torch.nn.Linear(2, 2), {}, {})
    storage.write_bytes_atomic("checkpoints/step-00000001/model.safetensors", b"\x00garbage")
    with pytest.raises(StorageError, match="not a readable safetensors") as err:
        ckpt.load_checkpoint(ckpt.resolve_checkpoint(storage.uri))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------------------------------- the worker loop
def test_train_worker_writes_metrics_checkpoints_and_curve_then_resumes(tiny_dataset, tmp_path):
    out = str(tmp_path / "train")
    config = _train_config(tiny_dataset, out, "steps=3", "checkpoint_every=2")
    check_output(config)
    result = train_worker(config)
    assert result["step"] == 3
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    for r in records:
        assert {"step", "loss", "loss_focal", "loss_dice", "loss_cf", "lr", "samples_per_s"} <= set(r)
        assert r["loss"] == pytest.approx(r["loss_focal"] + r["loss_dice"] + r["loss_cf"], rel=1e-4)
        assert r["loss_cf"] > 0 and r["samples_per_s"] > 0
    assert (tmp_path / "train" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert ckpt.list_checkpoints(Storage(out)) == [2, 3]

    # the same output again without --resume is refused; with it, training continues at the next step
    with pytest.raises(ConfigError, match="--resume"):
        check_output(config)
    more = _train_config(tiny_dataset, out, "steps=5", "resume=true", "checkpoint_every=2")
    assert check_output(more) == 3
    assert train_worker(more)["step"] == 5
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]


def test_counterfactual_term_can_be_switched_off(tiny_dataset, tmp_path):
    config = _train_config(tiny_dataset, str(tmp_path / "nocf"), "steps=1", "loss.counterfactual=false")
    train_worker(config)
    [record] = [json.loads(x) for x in (tmp_path / "nocf" / "metrics.jsonl").read_text().splitlines()]
    assert record["loss_cf"] == 0.0 and record["loss"] == pytest.approx(record["loss_focal"] + record["loss_dice"],
                                                                         rel=1e-5)


def test_training_on_a_missing_dataset_fails_in_one_line(tmp_path):
    config = _train_config(str(tmp_path / "absent"), str(tmp_path / "out"), "steps=1")
    with pytest.raises(StorageError) as err:
        train_worker(config)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_tiny_model_overfits_eight_samples_through_the_training_pipeline(tmp_path, tiny_plan):
    """The whole loop (shards, loader, sampling, model, losses, AdamW) can fit 8 samples: focal + dice fall below
    half their initial value within 300 steps (augmentation held fixed so the targets do not move)."""
    from magicseg_models.dataset.synthetic import write_synthetic_dataset

    spec, jobs = tiny_plan
    data = str(tmp_path / "ds8")
    write_synthetic_dataset(data, jobs[:8], list(spec.class_names), height=64, width=64)
    config = _train_config(data, str(tmp_path / "fit"), "steps=300", "log_every=1", "checkpoint_every=1000",
                           "loss.counterfactual=false", "optim.batch_size=8", "optim.lr=1e-3",
                           "optim.head_lr_mult=1", "optim.schedule=constant", "optim.warmup_iters=0",
                           "augment.ratio_range=[1.0,1.0]", "augment.scale=[64,64]", "augment.flip_prob=0",
                           "augment.photometric=false")
    train_worker(config)
    records = [json.loads(x) for x in (tmp_path / "fit" / "metrics.jsonl").read_text().splitlines()]
    mask_loss = [r["loss_focal"] + r["loss_dice"] for r in records]
    first, last = sum(mask_loss[:5]) / 5, sum(mask_loss[-5:]) / 5
    assert last < 0.5 * first, (first, last)



def test_pixel_work_on_the_training_device_trains_like_the_workers(tiny_dataset, tmp_path):
    """pixel_work=device (what auto picks on a GPU) finishes images in the training process: same losses."""
    from magicseg_models.training.trainer import pixel_work_device

    losses = {}
    for where in ("workers", "device"):
        config = _train_config(tiny_dataset, str(tmp_path / where), "steps=2", f"pixel_work={where}",
                               "data_workers=0")
        train_worker(config)
        losses[where] = [json.loads(x)["loss"] for x in (tmp_path / where / "metrics.jsonl").read_text().splitlines()]
    # the same draws; pixels resampled by another kernel differ by a few grey levels, so losses agree closely
    assert losses["device"] == pytest.approx(losses["workers"], rel=0.05)
    auto = _train_config(tiny_dataset, str(tmp_path / "a"), "steps=1")
    assert pixel_work_device(auto, torch.device("cpu")) is None
    assert pixel_work_device(auto, torch.device("cuda", 0)) == torch.device("cuda", 0)
