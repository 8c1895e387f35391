"""Training data loader: disjoint and complete splits over ranks x workers, decoding, S3, corrupt shards."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import torch

from magicseg_models.config import AugmentConfig, TrainFilterConfig
from magicseg_models.dataset.codecs import decode_mask
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.dataset.store import DatasetStore
from magicseg_models.dataset.synthetic import synthetic_row, write_synthetic_dataset
from magicseg_models.errors import ShardError, StorageError
from magicseg_models.planning import PlanSpec, plan_jobs
from magicseg_models.training.augment import JointAugment
from magicseg_models.training.data import (TrainDataset, collate, epoch_pieces, iter_decoded, iter_piece_rows,
                                           make_train_loader, needed_columns)
from magicseg_models.training.selection import active_filters
from tests.handmade import write_handmade_dataset

# 64px synthetic images, fitted into (64, 64) at ratio 0.5-2 and cropped to 32: small and fast
SMALL = AugmentConfig(crop_size=32, scale=(64, 64))


def _all_ids(uri: str) -> list[str]:
    return [r["sample_id"] for r in DatasetReader(uri).iter_rows(columns=["sample_id"])]


def _one_shard_dataset(uri: str, num_samples: int = 9) -> str:
    names = ("cat", "dog", "bus")
    spec = PlanSpec(class_ids=(0, 1, 2), class_names=names, num_samples=num_samples, seed=5, shard_size=100,
                    two_class_fraction=0.5)
    write_synthetic_dataset(uri, plan_jobs(spec), list(names), height=48, width=48)
    return uri


@pytest.mark.parametrize("shards", [[5], [6, 5, 5, 2], [1, 0, 3], [7] * 9, [256, 300, 10]])
@pytest.mark.parametrize("consumers", [1, 3, 4, 8])
def test_epoch_pieces_are_disjoint_complete_and_balanced(shards, consumers):
    manifest = [{"path": f"s{i}", "rows": n} for i, n in enumerate(shards)]
    for epoch in range(3):
        seen, sizes = collections.Counter(), []
        for c in range(consumers):
            pieces = epoch_pieces(manifest, epoch, seed=1, consumer=c, num_consumers=consumers)
            sizes.append(sum(p.stop - p.start for p in pieces))
            seen.update((p.path, row) for p in pieces for row in range(p.start, p.stop))
        assert set(seen) == {(f"s{i}", r) for i, n in enumerate(shards) for r in range(n)}
        assert max(seen.values()) == 1
        assert max(sizes) - min(sizes) <= 1


def test_ranks_and_workers_read_disjoint_complete_epochs(synthetic_dataset):
    """2 ranks x 2 DataLoader workers, endless stream: every sample exactly once per epoch, epochs reshuffled."""
    ids = _all_ids(synthetic_dataset)
    assert len(ids) == 18
    per_epoch = {0: collections.Counter(), 1: collections.Counter()}
    orders = collections.defaultdict(list)
    for rank in range(2):
        loader = make_train_loader(synthetic_dataset, None, SMALL, batch_size=3, rank=rank, world_size=2,
                                   num_workers=2, seed=11)
        taken = 0
        for batch in loader:  # endless: 3 epochs' worth of this rank (~9 per epoch) finishes epochs 0 and 1
            assert batch["image"].shape == batch["counterfactual_image"].shape == (3, 3, 32, 32)
            assert batch["ignore"].shape == (3, 32, 32) and batch["ignore"].dtype == torch.bool
            for m, cids in zip(batch["masks"], batch["class_ids"]):
                assert m.dtype == torch.bool and m.shape == (len(cids), 32, 32) and cids.dtype == torch.int64
            for epoch, sid in zip(batch["epoch"].tolist(), batch["sample_id"]):
                if epoch in per_epoch:
                    per_epoch[epoch][sid] += 1
                    orders[epoch].append(sid)
            taken += 3
            if taken >= 27:
                break
    for epoch, counts in per_epoch.items():
        assert sorted(counts) == sorted(ids), epoch
        assert max(counts.values()) == 1, epoch
    assert orders[0] != orders[1]


def test_tiny_single_shard_dataset_splits_by_rows(tmp_path):
    uri = _one_shard_dataset(str(tmp_path / "one"))
    assert len(DatasetReader(uri).shards) == 1
    ids = _all_ids(uri)
    by_rank = []
    for rank in range(2):
        loader = make_train_loader(uri, None, SMALL, batch_size=2, rank=rank, world_size=2, num_workers=2,
                                   seed=0, epochs=1)
        by_rank.append([sid for batch in loader for sid in batch["sample_id"]])
    assert not set(by_rank[0]) & set(by_rank[1])
    assert sorted(by_rank[0] + by_rank[1]) == sorted(ids)
    assert abs(len(by_rank[0]) - len(by_rank[1])) <= 1


def test_endless_stream_needs_a_sample_per_reader(tmp_path):
    uri = _one_shard_dataset(str(tmp_path / "few"), num_samples=3)  # 3 rows, 4 readers
    dataset = TrainDataset(uri, augment=JointAugment(SMALL), rank=0, world_size=4)
    with pytest.raises(StorageError, match="fewer than"):
        next(iter(dataset))


def test_decoded_masks_match_the_rle(synthetic_dataset):
    rows = {r["sample_id"]: r for r in DatasetReader(synthetic_dataset).iter_rows(
        columns=["sample_id", "height", "width", "annotations"])}
    decoded = list(iter_decoded(synthetic_dataset))
    assert [d["sample_id"] for d in decoded] == _all_ids(synthetic_dataset)
    for d in decoded:
        row = rows[d["sample_id"]]
        expected = collections.defaultdict(lambda: np.zeros((row["height"], row["width"]), bool))
        for ann in row["annotations"]:
            expected[ann["class_id"]] |= decode_mask(ann["mask_rle"], row["height"], row["width"])
        assert d["class_ids"].tolist() == sorted(expected)
        assert d["image"].dtype == torch.uint8 and d["image"].shape == (3, row["height"], row["width"])
        for k, class_id in enumerate(d["class_ids"].tolist()):
            assert np.array_equal(d["masks"][k].numpy(), expected[class_id])
    assert len(list(iter_decoded(synthetic_dataset, limit=5))) == 5


def test_loader_masks_match_the_rle_without_random_geometry(tmp_path):
    """Eval-mode augmentation at the images' own size is the identity on masks: the loader's masks are the RLE's."""
    uri = _one_shard_dataset(str(tmp_path / "id"), num_samples=6)
    truth = {d["sample_id"]: d for d in iter_decoded(uri)}
    dataset = TrainDataset(uri, augment=JointAugment(AugmentConfig(scale=(48, 48)), train=False), seed=3, epochs=1)
    samples = list(dataset)
    assert sorted(s["sample_id"] for s in samples) == sorted(truth)
    for s in samples:
        assert torch.equal(s["masks"], truth[s["sample_id"]]["masks"])
        assert torch.equal(s["class_ids"], truth[s["sample_id"]]["class_ids"])
        assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 48, 48)


def test_same_seed_same_stream(tmp_path):
    uri = _one_shard_dataset(str(tmp_path / "rep"), num_samples=6)
    runs = [list(TrainDataset(uri, augment=JointAugment(SMALL), seed=4, epochs=2)) for _ in range(2)]
    assert [s["sample_id"] for s in runs[0]] == [s["sample_id"] for s in runs[1]]
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(*runs))
    batch = collate(runs[0][:4])
    assert batch["image"].shape == (4, 3, 32, 32) and len(batch["masks"]) == 4 and batch["epoch"].tolist() == [0] * 4


def _corrupt(uri: str, rel: str) -> None:
    with open(os.path.join(uri, rel), "r+b") as f:
        f.seek(0)
        f.write(b"not parquet at all" * 64)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_shard_names_the_shard_in_one_line(tmp_path, tiny_plan, num_workers):
    spec, jobs = tiny_plan
    uri = str(tmp_path / "bad")
    write_synthetic_dataset(uri, jobs, list(spec.class_names), height=32, width=32)
    _corrupt(uri, "shards/part-00002.parquet")
    loader = make_train_loader(uri, None, AugmentConfig(crop_size=32, scale=(32, 32)), batch_size=2,
                               num_workers=num_workers, epochs=1)
    with pytest.raises(ShardError) as err:
        for _ in loader:
            pass
    assert "part-00002" in str(err.value) and "\n" not in str(err.value)


def test_corrupt_row_names_shard_and_sample_and_empty_samples_are_kept(tmp_path):
    uri = str(tmp_path / "rows")
    store = DatasetStore(uri)
    store.write_run_header(planned=3, classes=["cat", "dog"])
    good = synthetic_row("s-good", [0], ["cat"], seed=1, height=32, width=32)
    empty = {**synthetic_row("s-empty", [1], ["dog"], seed=2, height=32, width=32), "annotations": []}
    with store.open_shard(0) as writer:
        writer.write([good, empty])
        writer.commit()
    with store.open_shard(1) as writer:
        writer.write([{**synthetic_row("s-bad", [0], ["cat"], seed=3, height=32, width=32), "image": b"garbage"}])
        writer.commit()
    dataset = TrainDataset(uri, augment=JointAugment(AugmentConfig(crop_size=32, scale=(32, 32))), epochs=1,
                           shuffle=False)
    stream = iter(dataset)
    samples = [next(stream), next(stream)]
    assert [s["sample_id"] for s in samples] == ["s-good", "s-empty"]
    assert samples[1]["masks"].shape == (0, 32, 32) and samples[1]["class_ids"].numel() == 0
    with pytest.raises(ShardError) as err:
        next(stream)
    message = str(err.value)
    assert "shards/part-00001.parquet" in message and "s-bad" in message and "\n" not in message


def test_only_needed_columns_are_read(tmp_path):
    uri = _one_shard_dataset(str(tmp_path / "cols"), num_samples=4)
    reader = DatasetReader(uri)
    piece = epoch_pieces(reader.shards, 0, 0, 0, 1, shuffle=False)[0]
    base = {"sample_id", "image", "counterfactual_image", "height", "width", "annotations"}
    row = next(iter_piece_rows(reader, piece))
    assert set(row) == base and set(row["annotations"][0]) == {"class_id", "mask_rle"}
    # what each train.labels.context mode and the active filters add
    row = next(iter_piece_rows(reader, piece, columns=needed_columns("off")))
    assert set(row) == base and set(row["annotations"][0]) == {"class_id", "mask_rle", "asked"}
    row = next(iter_piece_rows(reader, piece, columns=needed_columns("ignore")))
    assert set(row) == base | {"context_class_ids"}
    row = next(iter_piece_rows(reader, piece, columns=needed_columns(
        "label", active_filters(TrainFilterConfig(clip_score_min=0.1, box_fill_min=0.2)))))
    assert set(row) == base | {"context_class_ids", "clip_score"}
    assert set(row["annotations"][0]) == {"class_id", "mask_rle", "asked", "box_fill"}


def test_a_schema_1_shard_reads_with_the_version_2_defaults(tmp_path):
    uri = write_handmade_dataset(str(tmp_path / "v1"), n=3)
    reader = DatasetReader(uri)
    piece = epoch_pieces(reader.shards, 0, 0, 0, 1, shuffle=False)[0]
    row = next(iter_piece_rows(reader, piece, columns=needed_columns("label")))
    assert "context_class_ids" not in row and set(row["annotations"][0]) == {"class_id", "mask_rle"}
    samples = list(TrainDataset(uri, epochs=1, shuffle=False, context="label"))
    assert [s["sample_id"] for s in samples] == ["hand-0000", "hand-0001", "hand-0002"]
    assert all(s["context_ids"].numel() == 0 for s in samples)  # no context classes
    assert [s["class_ids"].tolist() for s in samples] == [[0], [0, 1], [2]]  # every annotation asked


def test_an_image_with_a_readable_header_but_broken_pixels_names_the_sample(tmp_path):
    # images are decoded by the augmentation (the dataset reads headers only): the error still says where
    uri = str(tmp_path / "truncated")
    store = DatasetStore(uri)
    store.write_run_header(planned=1, classes=["cat"])
    row = synthetic_row("s-cut", [0], ["cat"], seed=1, height=64, width=64)
    with store.open_shard(0) as writer:
        writer.write([{**row, "counterfactual_image": row["counterfactual_image"][: len(row["image"]) // 3]}])
        writer.commit()
    dataset = TrainDataset(uri, augment=JointAugment(SMALL), epochs=1)
    with pytest.raises(ShardError) as err:
        next(iter(dataset))
    message = str(err.value)
    assert "part-00000" in message and "s-cut" in message and "not decodable" in message and "\n" not in message


def test_pixel_device_batches_match_the_in_worker_batches(tmp_path):
    # pixel work moved out of the workers ("cpu" stands in for the training GPU): same samples, same masks and
    # padding, float images of the crop size, values within the two resamplers' rounding
    uri = _one_shard_dataset(str(tmp_path / "dev"), num_samples=6)
    kwargs = dict(batch_size=3, num_workers=1, epochs=1, seed=2)
    plain = list(make_train_loader(uri, None, SMALL, **kwargs))
    moved = list(make_train_loader(uri, None, SMALL, pixel_device="cpu", **kwargs))
    assert [b["sample_id"] for b in plain] == [b["sample_id"] for b in moved]
    for a, b in zip(plain, moved):
        assert "pixels" not in b and b["image"].dtype == torch.float32 and b["image"].shape == a["image"].shape
        assert torch.equal(a["ignore"], b["ignore"]) and all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"]))
        assert (a["image"] - b["image"]).abs().mean() < 0.1 and (a["counterfactual_image"] - b[
            "counterfactual_image"]).abs().mean() < 0.1
