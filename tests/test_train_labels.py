"""train.labels.context and train.filter: the targets a sample with a context class trains on under ignore, label
and off; filters remove the samples their scores say, with the counts reported; schema-1 datasets still train."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from magicseg_models.config import LossConfig, TrainFilterConfig, load_config
from magicseg_models.dataset.codecs import box_fill, decode_mask, encode_mask
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.dataset.synthetic import synthetic_row
from magicseg_models.errors import ConfigError, StorageError
from magicseg_models.training.data import TrainDataset, filter_report
from magicseg_models.training.losses import MagicSegLoss
from magicseg_models.training.sampling import draw_batch, sample_batch
from magicseg_models.training.trainer import WorkerContext, check_output, train_worker
from tests.handmade import CLASSES as HANDMADE_CLASSES, write_handmade_dataset

VOCAB = ["cat", "dog", "bus", "sofa", "lamp", "tree", "car", "bird", "cup", "book", "door", "hat"]
CAT, SOFA, LAMP = 0, 3, 4
SIZE = 32


def _context_annotation(class_id: int, rows: slice, cols: slice, **scores) -> tuple[dict, np.ndarray]:
    mask = np.zeros((SIZE, SIZE), dtype=bool)
    mask[rows, cols] = True
    counts, area = encode_mask(mask)
    box = [float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)]
    annotation = {"class_id": class_id, "class_name": VOCAB[class_id], "box": box, "score": 0.6,
                  "mask_rle": counts, "area": area, "asked": False, "predicted_iou": 0.9,
                  "stability_score": 0.95, "box_fill": box_fill(mask, box)}
    annotation.update(scores)
    return annotation, mask


def _sofa_row(sample_id: str = "s-sofa", **context_scores) -> tuple[dict, np.ndarray]:
    """'a cat on a sofa under a lamp': cat asked and found, sofa found (asked=false), lamp named but not found."""
    row = synthetic_row(sample_id, [CAT], ["cat"], seed=4, height=SIZE, width=SIZE)
    sofa, sofa_mask = _context_annotation(SOFA, slice(20, 30), slice(2, 30), **context_scores)
    row["annotations"] = row["annotations"] + [sofa]
    row["context_class_ids"] = [SOFA, LAMP]
    row["prompt"] = "a cat asleep on a sofa under a lamp"
    return row, sofa_mask


def _write(uri: str, rows: list[dict], shard_rows: int | None = None) -> str:
    store = DatasetStore(uri)
    store.write_run_header(planned=len(rows), classes=VOCAB)
    shard_rows = shard_rows or len(rows)
    for index, start in enumerate(range(0, len(rows), shard_rows)):
        with store.open_shard(index) as writer:
            writer.write(rows[start:start + shard_rows])
            writer.commit()
    return uri


def _decoded(uri: str, context: str, **kwargs) -> dict:
    [sample] = list(TrainDataset(uri, context=context, epochs=1, shuffle=False, **kwargs))
    return sample


def _cat_mask(row: dict) -> np.ndarray:
    return decode_mask(row["annotations"][0]["mask_rle"], SIZE, SIZE)


# --------------------------------------------------------------------------------------------- labels
def test_ignore_never_draws_a_context_class_as_a_negative(tmp_path):
    row, _ = _sofa_row()
    sample = _decoded(_write(str(tmp_path / "ds"), [row]), "ignore")
    assert sample["class_ids"].tolist() == [CAT]  # only the asked class is a target
    assert np.array_equal(sample["masks"][0].numpy(), _cat_mask(row))
    assert sample["context_ids"].tolist() == [SOFA, LAMP]  # found and not found alike
    seen = set()
    for seed in range(300):
        draw = draw_batch([(sample["class_ids"], sample["masks"])], len(VOCAB), m=6,
                          generator=torch.Generator().manual_seed(seed), exclude=[sample["context_ids"]])
        subset = draw.subset[0].tolist()
        assert subset[0] == CAT and SOFA not in subset and LAMP not in subset
        assert draw.valid.all() and draw.present[0].tolist() == [True] + [False] * 5
        seen.update(subset[1:])
    assert seen == set(range(len(VOCAB))) - {CAT, SOFA, LAMP}  # every other class is still drawn


def test_label_trains_found_context_objects_as_positives(tmp_path):
    row, sofa_mask = _sofa_row()
    sample = _decoded(_write(str(tmp_path / "ds"), [row]), "label")
    assert sample["class_ids"].tolist() == [CAT, SOFA]
    assert np.array_equal(sample["masks"][1].numpy(), sofa_mask)
    assert sample["context_ids"].tolist() == [LAMP]  # named, not found: as under ignore
    for seed in range(100):
        draw = draw_batch([(sample["class_ids"], sample["masks"])], len(VOCAB), m=6,
                          generator=torch.Generator().manual_seed(seed), exclude=[sample["context_ids"]])
        assert draw.subset[0, :2].tolist() == [CAT, SOFA] and LAMP not in draw.subset[0].tolist()
        assert torch.equal(draw.targets[0, 1].bool(), torch.from_numpy(sofa_mask))
        assert draw.present[0, :2].all()


def test_off_is_the_papers_sampling(tmp_path):
    row, _ = _sofa_row()
    sample = _decoded(_write(str(tmp_path / "ds"), [row]), "off")
    assert sample["class_ids"].tolist() == [CAT] and sample["context_ids"].numel() == 0
    drawn_sofa = 0
    for seed in range(200):
        items = [(sample["class_ids"], sample["masks"])]
        draw = draw_batch(items, len(VOCAB), 6, torch.Generator().manual_seed(seed), exclude=[sample["context_ids"]])
        paper = sample_batch(items, len(VOCAB), 6, torch.Generator().manual_seed(seed))
        assert torch.equal(draw.subset, paper[0]) and torch.equal(draw.targets, paper[1])
        if SOFA in draw.subset[0].tolist():
            drawn_sofa += 1
            assert draw.targets[0, draw.subset[0].tolist().index(SOFA)].sum() == 0  # a negative everywhere
    assert drawn_sofa > 50


def test_label_falls_back_to_ignore_for_a_context_mask_that_fails_a_filter(tmp_path):
    row, _ = _sofa_row(predicted_iou=0.2)
    uri = _write(str(tmp_path / "ds"), [row])
    sample = _decoded(uri, "label", filters=TrainFilterConfig(predicted_iou_min=0.5))
    assert sample["class_ids"].tolist() == [CAT] and sample["context_ids"].tolist() == [SOFA, LAMP]
    # a context annotation never removes the sample itself
    assert filter_report(DatasetReader(uri), TrainFilterConfig(predicted_iou_min=0.5)).kept == 1


def test_padding_left_by_exclusions_changes_no_loss_value():
    """5 classes, m = 8 (all of them): the excluded ones leave 3 positions, padded to 5 and left out of the loss."""
    masks = torch.zeros(1, 8, 8, dtype=torch.bool)
    masks[0, 2:6, 2:6] = True
    draw = draw_batch([(torch.tensor([0]), masks), (torch.tensor([1]), masks)], vocab_size=5, m=8,
                      generator=torch.Generator().manual_seed(0), exclude=[[3, 4], []])
    assert draw.subset.shape == (2, 5) and draw.valid.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert not {3, 4} & set(draw.subset[0, :3].tolist()) and draw.targets[0, 3:].sum() == 0
    logits = torch.randn(2, 5, 8, 8, generator=torch.Generator().manual_seed(1))
    loss = MagicSegLoss(LossConfig(counterfactual=False))
    padded = loss(logits, draw.targets, draw.present, valid=draw.valid)
    alone = [loss(logits[b:b + 1, :n], draw.targets[b:b + 1, :n], draw.present[b:b + 1, :n], num_masks=2.0)
             for b, n in ((0, 3), (1, 5))]
    assert padded["loss"].item() == pytest.approx(sum(a["loss"].item() for a in alone), rel=1e-5)


# -------------------------------------------------------------------------------------------- filters
def _scored_rows() -> list[dict]:
    """Ten samples; the ones a filter should remove are named after it."""
    rows = [synthetic_row(f"s-{i}", [i % 3], [VOCAB[i % 3]], seed=10 + i, height=SIZE, width=SIZE) for i in range(10)]
    for row in rows:
        row["clip_score"] = 0.3
        row["counterfactual_scores"] = [0.05]
        for a in row["annotations"]:
            a.update(predicted_iou=0.9, stability_score=0.95, box_fill=0.8)
    rows[1]["clip_score"] = 0.1  # clip
    rows[2]["counterfactual_scores"] = [0.6]  # counterfactual
    rows[3]["annotations"][0]["predicted_iou"] = 0.4  # iou
    rows[4]["clip_score"], rows[4]["annotations"][0]["box_fill"] = 0.15, 0.1  # clip and fill
    rows[5]["annotations"].append(_context_annotation(SOFA, slice(0, 4), slice(0, 4), predicted_iou=0.1)[0])
    rows[5]["context_class_ids"] = [SOFA]  # a bad context mask does not remove the sample
    return rows


FILTERS = TrainFilterConfig(clip_score_min=0.2, counterfactual_score_max=0.5, predicted_iou_min=0.5,
                            box_fill_min=0.3)


def test_filters_remove_the_expected_samples_and_report_each_count(tmp_path):
    uri = _write(str(tmp_path / "ds"), _scored_rows(), shard_rows=4)
    report = filter_report(DatasetReader(uri), FILTERS)
    assert report.as_dict() == {"total": 10, "kept": 6, "thresholds": {
        "clip_score_min": 0.2, "counterfactual_score_max": 0.5, "predicted_iou_min": 0.5, "box_fill_min": 0.3},
        "removed": {"clip_score_min": 2, "counterfactual_score_max": 1, "predicted_iou_min": 1, "box_fill_min": 1}}
    assert report.line() == ("train.filter removed 4 of 10 samples (clip_score_min 0.2: 2, counterfactual_score_max "
                             "0.5: 1, predicted_iou_min 0.5: 1, box_fill_min 0.3: 1); 6 remain")
    expected = {f"s-{i}" for i in (0, 5, 6, 7, 8, 9)}
    # the loader applies the same rule, on every split of the data
    for world in (1, 2, 3):
        ids = [s["sample_id"] for rank in range(world)
               for s in TrainDataset(uri, rank=rank, world_size=world, epochs=1, filters=FILTERS)]
        assert sorted(ids) == sorted(expected), world
    assert filter_report(DatasetReader(uri), TrainFilterConfig()) is None
    # a score equal to the threshold stays, at the stored float32 precision (float32(0.9) < 0.9 as a double)
    assert filter_report(DatasetReader(uri), TrainFilterConfig(predicted_iou_min=0.9)).removed == {
        "predicted_iou_min": 1}
    with pytest.raises(ConfigError, match="nothing left to train on"):
        filter_report(DatasetReader(uri), TrainFilterConfig(clip_score_min=0.9))


def test_a_filter_on_a_score_the_dataset_lacks_is_refused_in_one_line(tmp_path):
    uri = write_handmade_dataset(str(tmp_path / "v1"), n=3)  # schema 1: no clip_score, no mask scores
    for name in ("clip_score_min", "predicted_iou_min", "stability_score_min", "box_fill_min"):
        with pytest.raises(ConfigError) as err:
            filter_report(DatasetReader(uri), TrainFilterConfig(**{name: 0.1}))
        assert f"train.filter.{name} is set" in str(err.value) and "3 of 3 samples" in str(err.value)
        assert "\n" not in str(err.value)
        with pytest.raises(ConfigError, match=f"train.filter.{name}"):
            next(iter(TrainDataset(uri, epochs=1, filters=TrainFilterConfig(**{name: 0.1}))))
    # schema 1 stores counterfactual scores: that filter works there
    assert filter_report(DatasetReader(uri), TrainFilterConfig(counterfactual_score_max=0.5)).kept == 3
    # a dataset whose quality stage was off (clip_score null) is refused the same way
    rows = _scored_rows()[:2]
    rows[1]["clip_score"] = None
    partial = _write(str(tmp_path / "nulls"), rows)
    with pytest.raises(ConfigError, match="does not store clip_score for 1 of 2 samples"):
        filter_report(DatasetReader(partial), TrainFilterConfig(clip_score_min=0.2))


def test_an_endless_reader_emptied_by_the_filters_stops_instead_of_hanging(tmp_path):
    rows = _scored_rows()[:4]
    rows[0]["clip_score"] = rows[1]["clip_score"] = 0.0  # one shard: reader 0 of 2 always gets rows 0-1
    uri = _write(str(tmp_path / "ds"), rows)
    with pytest.raises(StorageError, match="no sample in 10 epochs"):
        next(iter(TrainDataset(uri, rank=0, world_size=2, filters=TrainFilterConfig(clip_score_min=0.2))))
    assert next(iter(TrainDataset(uri, rank=1, world_size=2, filters=TrainFilterConfig(clip_score_min=0.2))))


# ----------------------------------------------------------------------------------- training runs
def _tiny(data: str, out: str, *overrides: str):
    return load_config("train", "tiny", overrides=[f"data={data}", f"out={out}", "data_workers=0", "steps=2",
                                                   "checkpoint_every=100", *overrides])


def test_training_logs_the_filter_counts_and_keeps_them_with_the_checkpoint(tmp_path):
    uri = _write(str(tmp_path / "ds"), _scored_rows(), shard_rows=4)
    config = _tiny(uri, str(tmp_path / "out"), "filter.clip_score_min=0.2", "filter.box_fill_min=0.3",
                   "labels.context=label")
    check_output(config)
    lines: list[str] = []
    result = train_worker(config, WorkerContext(log=lines.append))
    assert result["step"] == 2
    line = "train.filter removed 2 of 10 samples (clip_score_min 0.2: 2, box_fill_min 0.3: 1); 8 remain"
    assert line in lines and result["data_filter"]["kept"] == 8
    meta = json.loads((tmp_path / "out" / "checkpoints" / "step-00000002" / "meta.json").read_text())
    assert meta["data_filter"]["removed"] == {"clip_score_min": 2, "box_fill_min": 1}


def test_the_trainer_samples_by_the_context_mode(tmp_path):
    """One step each, same seed: with context classes in the data, off and ignore draw other negatives (other
    losses); label trains other targets; without context classes the three modes train identically."""
    with_context = [_sofa_row(f"s-{i}")[0] for i in range(4)]
    plain = [{**row, "context_class_ids": [], "annotations": row["annotations"][:1]} for row in with_context]
    for name, rows in (("context", with_context), ("plain", plain)):
        uri = _write(str(tmp_path / name), rows)
        losses = {}
        for mode in ("off", "ignore", "label"):
            out = tmp_path / f"{name}-{mode}"
            train_worker(_tiny(uri, str(out), "steps=1", f"labels.context={mode}", "augment.photometric=false"),
                         WorkerContext(log=lambda _: None))
            losses[mode] = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])["loss"]
        if name == "context":
            assert len(set(losses.values())) == 3, losses
        else:
            assert losses["off"] == losses["ignore"] == losses["label"], losses


def test_ablation_settings_parse_as_written():
    # YAML reads a bare off as false: --set labels.context=off must still mean the mode
    assert load_config("train", "tiny", overrides=["labels.context=off"]).labels.context == "off"


def test_a_schema_1_dataset_trains_under_every_context_mode(tmp_path):
    uri = write_handmade_dataset(str(tmp_path / "v1"), n=4)
    with open(os.path.join(uri, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["classes"] = list(HANDMADE_CLASSES)  # the names training maps class ids to
    with open(os.path.join(uri, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ConfigError, match="clip_score_min"):
        check_output(_tiny(uri, str(tmp_path / "refused"), "filter.clip_score_min=0.2"))
    for mode in ("ignore", "label", "off"):
        out = tmp_path / mode
        result = train_worker(_tiny(uri, str(out), f"labels.context={mode}"), WorkerContext(log=lambda _: None))
        assert result["step"] == 2 and result["data_filter"] is None
        records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)


# Through Prefect and Ray Train (the counts in the run log and the summary table): the filtered run of
# tests/test_train_flow.py, which a whole extra Ray Train run here would only repeat.
