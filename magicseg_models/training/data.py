"""Training data: shards at any fsspec URI -> augmented (image, counterfactual, class masks) batches.

Why an ``IterableDataset`` (not map-style + sampler): Parquet shards are read efficiently as a stream of row
groups; random access to single rows would refetch a row group (tens of MB on object stores) per sample. A
stream with a shuffle buffer reads every byte once per epoch, keeps memory bounded and needs no index.

How the data is split (per epoch ``e``, deterministic from ``seed``):

1. The manifest's shards are put in a random order (seeded by ``(seed, e)``); their rows, concatenated in that
   order, form one sequence of ``T`` rows.
2. There are ``N = world_size x num_workers`` consumers (a consumer is one DataLoader worker of one rank;
   consumer ``c = rank x num_workers + worker``). Consumer ``c`` takes the contiguous slice
   ``[c T / N, (c + 1) T / N)`` of that sequence. The slices are disjoint and together cover every row once,
   and their sizes differ by at most one row - so round-robin DataLoader workers and DDP ranks advance through
   epochs in step and no sample is drawn more often than another over time.
   With many shards a slice is whole shards (the split is by shard) plus at most a partial shard at either end;
   with few shards (1 shard, 2 ranks x 2 workers) the slices are row ranges of the same shard, of which a consumer
   reads only the Parquet row groups overlapping its range. Compared with a row stride (``rows[c::N]``), every
   consumer reads ~1/N of the bytes instead of all of them.
3. Within its slice a consumer streams rows through a shuffle buffer (``shuffle_buffer`` undecoded rows, seeded
   by ``(seed, e, c, N)``), drained at the end of the epoch so each epoch is complete before the next starts.

Epochs repeat forever (``epochs=None``) or ``epochs`` times, starting at ``epoch_start`` (resume restarts the
epoch it was in). Each yielded sample carries its ``epoch``. Augmentation randomness is seeded per sample from
``(seed, epoch, sample_id)``, so results do not depend on the number of workers or ranks.

Storage is opened lazily in the process that iterates (each DataLoader worker opens its own
:class:`DatasetReader`; nothing open is pickled). Only the columns needed are read: ``sample_id``, ``image``,
``counterfactual_image``, ``height``, ``width`` and the ``class_id`` and ``mask_rle`` fields of ``annotations``;
unless ``train.labels.context`` is ``off``, ``context_class_ids``; the annotations' ``asked``; and the score
columns of the active ``train.filter`` entries. Schema-1 shards lack the version-2 columns: those read as their
defaults (no context classes, every annotation asked; a filter on a score they lack is refused).

Labels and filters (:mod:`magicseg_models.training.selection`): each sample's targets are the annotations its
``train.labels.context`` mode trains on, and ``context_ids`` the classes never drawn as its random negatives.
Filtered rows are skipped after the split, inside a consumer's slice, so the split stays the deterministic one
above (a consumer's share of kept rows then depends on where the removed rows lie).

Decoding is split so the augmentation decodes only what it needs: the dataset opens the images (headers only,
sizes checked) and decodes the masks at the image's size; :class:`JointAugment` decodes the pixels (at reduced
size for strong downscales) and picks the crop. An image whose pixel data fails to decode raises the same
one-line :class:`ShardError` as one whose header does.

Samples without annotations are KEPT as all-negative samples (``class_ids`` empty, ``masks`` 0xSxS): every
sampled class is then a negative for every pixel, and the counterfactual loss still applies. Builds drop
images where a named class is not found, so such rows come from other tools or hand-edited data.

Errors: an unreadable shard or undecodable row raises :class:`ShardError` with one line naming the shard (and
the sample). Inside DataLoader workers such an error (any MagicSegError: a missing manifest is a StorageError) is
carried to the main process as a batch and re-raised there, same type and message, by :class:`TrainLoader`:
torch's own re-raise would turn the message into a multi-line traceback.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image as PILImage
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms.v2 import functional as F

from magicseg_models.config import AugmentConfig
from magicseg_models.dataset.codecs import decode_mask
from magicseg_models.dataset.reader import DatasetReader
from magicseg_models.errors import ConfigError, MagicSegError, ShardError, StorageError, one_line
from magicseg_models.training.augment import CLIP_MEAN, CLIP_STD, JointAugment, finish_pixels
from magicseg_models.training.selection import (FilterReport, active_filters, filter_fields, keeps,
                                                missing_score_error, training_targets)

ROW_COLUMNS = ("sample_id", "image", "counterfactual_image", "height", "width")
ANNOTATION_FIELDS = ("class_id", "mask_rle")
EMPTY_EPOCHS_MAX = 10  # an endless reader whose slices the filters emptied this often in a row stops (no hang)
ERROR_KEY = "__shard_error__"  # a sample/batch that carries a ShardError message out of a DataLoader worker


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one shard."""

    path: str
    start: int
    stop: int
    rows: int  # the shard's row count as the manifest lists it


def epoch_pieces(shards: Sequence[dict], epoch: int, seed: int, consumer: int, num_consumers: int,
                 shuffle: bool = True) -> list[Piece]:
    """The row ranges consumer ``consumer`` of ``num_consumers`` reads in ``epoch`` (module docstring, steps 1-2)."""
    order = (np.random.default_rng([int(seed), int(epoch)]).permutation(len(shards)) if shuffle
             else np.arange(len(shards)))
    rows = [int(shards[i].get("rows", 0)) for i in order]
    total = sum(rows)
    lo, hi = consumer * total // num_consumers, (consumer + 1) * total // num_consumers
    pieces, offset = [], 0
    for i, n in zip(order, rows):
        start, stop = max(lo, offset), min(hi, offset + n)
        if start < stop:
            pieces.append(Piece(shards[i]["path"], start - offset, stop - offset, n))
        offset += n
    return pieces


@dataclass(frozen=True)
class Columns:
    """What to read: required row columns and annotation fields, and optional ones (absent in older schemas)."""

    row: tuple[str, ...] = ROW_COLUMNS
    annotation: tuple[str, ...] = ANNOTATION_FIELDS
    optional_row: tuple[str, ...] = ()
    optional_annotation: tuple[str, ...] = ()


def needed_columns(context: str = "ignore", filters: dict[str, float] | None = None) -> Columns:
    """The training loader's columns for a ``train.labels.context`` mode and the active filters."""
    score_row, score_annotation = filter_fields(filters or {})
    context_row = () if context == "off" else ("context_class_ids",)
    return Columns(optional_row=(*context_row, *score_row), optional_annotation=("asked", *score_annotation))


def _select_columns(pf: pq.ParquetFile, path: str, columns: Columns = Columns()) -> list[str]:
    """Parquet leaf paths to read, found in the file's own schema (list element names differ between writers)."""
    leaves = [pf.schema.column(i).path for i in range(len(pf.schema))]
    top = set(pf.schema_arrow.names)  # a top-level name selects the whole column (lists included)
    # annotations.<list>.<element>.<field>; exactly 3 dots, so no field of a list nested inside an annotation
    fields = {p.rsplit(".", 1)[-1]: p for p in leaves if p.startswith("annotations.") and p.count(".") == 3}
    missing = ([c for c in columns.row if c not in top]
               + [f"annotations.{f}" for f in columns.annotation if f not in fields])
    if missing:
        raise ShardError(f"shard {path} lacks column(s) {', '.join(missing)}")
    return ([c for c in (*columns.row, *columns.optional_row) if c in top]
            + [fields[f] for f in (*columns.annotation, *columns.optional_annotation) if f in fields])


def iter_piece_rows(reader: DatasetReader, piece: Piece, batch_rows: int = 64,
                    columns: Columns = Columns()) -> Iterator[dict]:
    """Undecoded rows of ``piece``; reads only the row groups that overlap it and only ``columns``."""
    try:
        pf = reader.parquet_file(piece.path)
    except ShardError as err:
        raise ShardError(one_line(err, 300)) from None
    meta = pf.metadata
    if meta.num_rows != piece.rows:
        raise ShardError(f"shard {piece.path} has {meta.num_rows} rows but the manifest lists {piece.rows}")
    selected = _select_columns(pf, piece.path, columns)
    groups, first_row, offset = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if offset < piece.stop and offset + n > piece.start:
            groups.append(g)
            first_row = offset if first_row is None else first_row
        offset += n
    if not groups:
        return
    position = first_row
    try:
        for batch in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=selected):
            lo, hi = max(piece.start - position, 0), min(piece.stop - position, batch.num_rows)
            position += batch.num_rows
            if lo < hi:
                yield from batch.slice(lo, hi - lo).to_pylist()
            if position >= piece.stop:
                return
    except (pa.ArrowException, OSError, StorageError) as err:
        raise ShardError(f"shard {piece.path} could not be read: {one_line(err, 300)}") from None


def _open_image(data: Any, key: str, sample_id: str, shard: str) -> PILImage.Image:
    """The image's header only: pixels are decoded later, by the augmentation (at reduced size where it can)."""
    try:
        return PILImage.open(io.BytesIO(data))
    except (OSError, SyntaxError, ValueError, TypeError):  # PIL's ways of saying "not an image I can read"
        raise ShardError(f"shard {shard}: sample {sample_id}: {key} is not a decodable image") from None


def _class_masks(annotations: list[dict], height: int, width: int, sample_id: str,
                 shard: str) -> tuple[list[int], np.ndarray]:
    """Instance masks united per class (classes sorted by id), decoded at the image's own size."""
    if any(a.get("class_id") is None for a in annotations):
        raise ShardError(f"shard {shard}: sample {sample_id}: an annotation has no class_id")
    class_ids = sorted({int(a["class_id"]) for a in annotations})
    masks = np.zeros((len(class_ids), height, width), dtype=bool)
    index = {c: k for k, c in enumerate(class_ids)}
    try:
        for a in annotations:
            masks[index[int(a["class_id"])]] |= decode_mask(a["mask_rle"], height, width)
    except (ValueError, TypeError, AttributeError):
        raise ShardError(f"shard {shard}: sample {sample_id}: annotations.mask_rle is not a valid COCO RLE of "
                         f"{height}x{width} pixels") from None
    return class_ids, masks


def decode_sample(row: dict, shard: str = "?", lazy: bool = False, context: str = "ignore",
                  filters: dict[str, float] | None = None) -> dict:
    """A row (needed columns) -> dict(image, counterfactual_image: uint8 3xHxW, class_ids: int64 K,
    masks: bool KxHxW (instance masks united per class, classes sorted by id), context_ids: int64 (classes never
    drawn as random negatives), sample_id).

    ``context`` (``train.labels.context``) and ``filters`` (the active ``train.filter`` entries) pick the target
    annotations and ``context_ids`` (:func:`~magicseg_models.training.selection.training_targets`).
    ``lazy``: the images stay undecoded PIL images (size checked from their headers), for :class:`JointAugment`
    to decode only what it needs."""
    sample_id = str(row.get("sample_id", "?"))
    height, width = int(row["height"]), int(row["width"])
    images = [_open_image(row.get(key), key, sample_id, shard) for key in ("image", "counterfactual_image")]
    if any(im.size != (width, height) for im in images):
        raise ShardError(f"shard {shard}: sample {sample_id}: image is {images[0].height}x{images[0].width}, "
                         f"counterfactual {images[1].height}x{images[1].width}, row says {height}x{width}")
    if not lazy:
        images = [_to_tensor(im, key, sample_id, shard) for im, key in zip(images, ("image", "counterfactual_image"))]
    annotations, context_ids = training_targets(row, context, filters)
    class_ids, masks = _class_masks(annotations, height, width, sample_id, shard)
    return {"image": images[0], "counterfactual_image": images[1],
            "class_ids": torch.tensor(class_ids, dtype=torch.int64), "masks": torch.from_numpy(masks),
            "context_ids": torch.tensor(context_ids, dtype=torch.int64), "sample_id": sample_id}


def _to_tensor(image: PILImage.Image, key: str, sample_id: str, shard: str) -> torch.Tensor:
    try:
        return F.pil_to_tensor(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError):  # truncated or corrupt pixel data shows only when decoded
        raise ShardError(f"shard {shard}: sample {sample_id}: {key} is not a decodable image") from None


def sample_seed(seed: int, epoch: int, sample_id: str) -> int:
    """The augmentation seed of one sample in one epoch: independent of how the data is split among workers."""
    digest = hashlib.blake2b(sample_id.encode(), digest_size=8).digest()
    entropy = [int(seed) & (2**64 - 1), int(epoch), int.from_bytes(digest, "little")]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0])


class TrainDataset(IterableDataset):
    """Endless (or ``epochs``-long) stream of augmented samples for one rank; see the module docstring.

    Each sample: ``image``, ``counterfactual_image`` (3xSxS float32, normalised), ``class_ids`` (int64 K),
    ``masks`` (bool KxSxS), ``context_ids`` (int64, never-negative classes), ``ignore`` (bool SxS, padding),
    ``sample_id`` (str), ``epoch`` (int). ``context``: ``train.labels.context``; ``filters``: a
    ``TrainFilterConfig`` (or {name: threshold}) whose active entries skip rows.
    ``augment`` is any callable like :class:`JointAugment` (called with ``seed=``; the images arrive as undecoded
    PIL images, the masks decoded); None yields decoded samples unaugmented (uint8 images at their own size, no
    ``ignore``).
    """

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None,
                 augment: Callable[..., dict] | None = None, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 epoch_start: int = 0, epochs: int | None = None, shuffle: bool = True, shuffle_buffer: int = 256,
                 batch_rows: int = 64, context: str = "ignore", filters: Any = None):
        super().__init__()
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.uri, self.storage_options = uri, dict(storage_options or {})
        self.augment = augment
        self.rank, self.world_size = int(rank), int(world_size)
        self.seed, self.epoch_start, self.epochs = int(seed), int(epoch_start), epochs
        self.shuffle, self.shuffle_buffer, self.batch_rows = shuffle, max(1, int(shuffle_buffer)), batch_rows
        self.context, self.filters = context, active_filters(filters)
        self.columns = needed_columns(context, self.filters)
        self._reader: DatasetReader | None = None
        self._reader_pid: int | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_reader"] = state["_reader_pid"] = None  # open storage never travels to workers
        return state

    def reader(self) -> DatasetReader:
        """This process's reader, opened on first use (a forked worker opens its own)."""
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader, self._reader_pid = DatasetReader(self.uri, self.storage_options), os.getpid()
        return self._reader

    def _consumer(self) -> tuple[int, int, bool]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world_size * workers, info is not None

    def __iter__(self) -> Iterator[dict]:
        consumer, num_consumers, in_worker = self._consumer()
        try:
            yield from self._iter(consumer, num_consumers)
        except MagicSegError as err:
            if not in_worker:
                raise
            # TrainLoader re-raises it, one line, in the main process
            yield {ERROR_KEY: (type(err), one_line(err, 300))}

    def _iter(self, consumer: int, num_consumers: int) -> Iterator[dict]:
        reader = self.reader()
        total = len(reader)
        if self.epochs is None and total < num_consumers:
            # an endless consumer with no rows would spin forever without yielding and hang the DataLoader
            raise StorageError(f"{self.uri} has {total} samples, fewer than world_size x num_workers = "
                               f"{num_consumers} readers; use fewer workers")
        epoch, empty = self.epoch_start, 0
        while self.epochs is None or epoch < self.epoch_start + self.epochs:
            pieces = epoch_pieces(reader.shards, epoch, self.seed, consumer, num_consumers, self.shuffle)
            rng = np.random.default_rng([self.seed, epoch, consumer, num_consumers])
            yielded = False
            for row, shard in self._shuffled(self._rows(reader, pieces), rng):
                yielded = True
                yield self._make_sample(row, shard, epoch)
            empty = 0 if yielded else empty + 1
            if self.epochs is None and empty >= EMPTY_EPOCHS_MAX:
                # filters emptied this reader's slices: an endless stream would spin without yielding (a hang)
                raise StorageError(f"train.filter left reader {consumer} of {num_consumers} no sample in "
                                   f"{empty} epochs in a row: loosen the filters or use fewer workers")
            epoch += 1

    def _rows(self, reader: DatasetReader, pieces: list[Piece]) -> Iterator[tuple[dict, str]]:
        for piece in pieces:
            for row in iter_piece_rows(reader, piece, self.batch_rows, self.columns):
                if keeps(row, self.filters, f"shard {piece.path} of {self.uri}"):
                    yield row, piece.path

    def _shuffled(self, items: Iterator, rng: np.random.Generator) -> Iterator:
        if not self.shuffle:
            yield from items
            return
        buffer: list = []
        for item in items:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            j = int(rng.integers(len(buffer)))
            buffer[j], item = item, buffer[j]
            yield item
        rng.shuffle(buffer)  # drain within the epoch: epoch boundaries stay exact
        yield from buffer

    def _make_sample(self, row: dict, shard: str, epoch: int) -> dict:
        sample = decode_sample(row, shard, lazy=self.augment is not None, context=self.context,
                               filters=self.filters)
        if self.augment is not None:
            try:
                out = self.augment(sample["image"], sample["counterfactual_image"], sample["masks"],
                                   seed=sample_seed(self.seed, epoch, sample["sample_id"]))
            except (OSError, SyntaxError) as err:  # pixel data that fails to decode (the header was readable)
                raise ShardError(f"shard {shard}: sample {sample['sample_id']}: an image is not decodable: "
                                 f"{one_line(err, 300)}") from None
            except ValueError as err:
                raise ShardError(f"shard {shard}: sample {sample['sample_id']}: {one_line(err, 300)}") from None
            sample.update(out)
        sample["epoch"] = epoch
        return sample


def collate(samples: Sequence[dict]) -> dict:
    """Stack what has a fixed shape; K varies per image, so ``class_ids`` and ``masks`` stay lists.

    Returns ``image``, ``counterfactual_image`` (Bx3xSxS), ``ignore`` (BxSxS), ``class_ids`` (list of int64 K_i),
    ``masks`` (list of bool K_ixSxS), ``context_ids`` (list of int64), ``sample_id`` (list of str), ``epoch``
    (int64 B). From a ``defer_pixels`` augmentation: ``image`` and ``counterfactual_image`` are lists of decoded
    uint8 images (sizes vary) and ``pixels`` (Bx12) says what :func:`finish_pixels` has left to do.
    """
    for s in samples:
        if ERROR_KEY in s:
            return {ERROR_KEY: s[ERROR_KEY]}
    deferred = "pixels" in samples[0]
    batch = {key: [s[key] for s in samples] if deferred and key != "ignore" else torch.stack([s[key] for s in samples])
             for key in ("image", "counterfactual_image", "ignore")}
    batch["class_ids"] = [s["class_ids"] for s in samples]
    batch["masks"] = [s["masks"] for s in samples]
    # samples made elsewhere (benchmarks, other decoders) may carry no context classes
    batch["context_ids"] = [s.get("context_ids", torch.zeros(0, dtype=torch.int64)) for s in samples]
    batch["sample_id"] = [s["sample_id"] for s in samples]
    batch["epoch"] = torch.tensor([s["epoch"] for s in samples], dtype=torch.int64)
    if deferred:
        batch["pixels"] = torch.stack([s["pixels"] for s in samples])
    return batch


class TrainLoader(DataLoader):
    """A DataLoader that re-raises a worker's MagicSegError (ShardError, StorageError) in the main process with its
    one-line message, and finishes ``defer_pixels`` batches (resize, crop, flip, colour, normalisation) on
    ``pixel_device``."""

    def __init__(self, *args: Any, pixel_device: torch.device | str | None = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pixel_device, self.mean, self.std = pixel_device, mean, std

    def __iter__(self):
        for batch in super().__iter__():
            if isinstance(batch, dict) and ERROR_KEY in batch:
                error_type, message = batch[ERROR_KEY]
                raise error_type(message)
            if "pixels" in batch:
                batch = finish_pixels(batch, self.pixel_device, self.mean, self.std)
            yield batch


def make_train_loader(uri: str, storage_options: dict[str, Any] | None = None,
                      augment_cfg: AugmentConfig | None = None, batch_size: int = 8, rank: int = 0,
                      world_size: int = 1, num_workers: int = 2, seed: int = 0,
                      mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, epoch_start: int = 0, *,
                      epochs: int | None = None, shuffle_buffer: int = 256, pin_memory: bool | None = None,
                      prefetch_factor: int | None = None, multiprocessing_context: Any = None,
                      pixel_device: torch.device | str | None = None, context: str = "ignore",
                      filters: Any = None) -> TrainLoader:
    """Batches (see :func:`collate`) of rank ``rank``'s share of the data, endless unless ``epochs`` is given.

    Iterate it once for the whole run: a new iterator restarts at ``epoch_start``. ``pixel_device`` (the training
    GPU): the workers only decode (images, masks) and draw the augmentation; resampling, crop, flip, photometric
    distortion and normalisation of the images run there, in the iterating process, batched, and ``image`` /
    ``counterfactual_image`` arrive as float32 on that device (masks and ignore as usual, on the CPU). None: the
    workers do everything (float32 CPU tensors). ``context`` / ``filters``: ``train.labels.context`` and
    ``train.filter`` (:class:`TrainDataset`).
    """
    augment = JointAugment(augment_cfg, mean, std, train=True, defer_pixels=pixel_device is not None)
    dataset = TrainDataset(uri, storage_options, augment, rank=rank, world_size=world_size, seed=seed,
                           epoch_start=epoch_start, epochs=epochs, shuffle_buffer=shuffle_buffer, context=context,
                           filters=filters)
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor or 2
        kwargs["multiprocessing_context"] = multiprocessing_context
    return TrainLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=num_workers,
                       pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
                       pixel_device=pixel_device, mean=mean, std=std, **kwargs)


def iter_decoded(uri: str, storage_options: dict[str, Any] | None = None, limit: int | None = None,
                 batch_rows: int = 64) -> Iterator[dict]:
    """Decode-only baseline: samples in manifest order, one process, no shuffle or augmentation.

    Yields ``image``, ``counterfactual_image`` (uint8 3xHxW), ``class_ids`` (int64 K), ``masks`` (bool KxHxW),
    ``sample_id`` - the same decoding and column selection as the training loader.
    """
    reader = DatasetReader(uri, storage_options)
    count = 0
    for piece in epoch_pieces(reader.shards, 0, 0, 0, 1, shuffle=False):
        for row in iter_piece_rows(reader, piece, batch_rows, needed_columns()):
            if limit is not None and count >= limit:
                return
            yield decode_sample(row, piece.path)
            count += 1


def filter_report(reader: DatasetReader, filters: Any, batch_rows: int = 4096) -> FilterReport | None:
    """How many samples each active ``train.filter`` entry removes, from the score columns alone (no image is
    read); None when no filter is on. A score the filters need and the dataset lacks raises one ConfigError line
    naming the filter (after counting, so it says for how many samples); so does a filter that removes everything.
    """
    thresholds = active_filters(filters)
    if not thresholds:
        return None
    row_fields, annotation_fields = filter_fields(thresholds)
    # class_id (every annotation has it) makes a shard without the score fields read as annotations lacking them
    columns = Columns(row=(), annotation=("class_id",) if annotation_fields else (), optional_row=tuple(row_fields),
                      optional_annotation=("asked", *annotation_fields) if annotation_fields else ())
    report, missing = FilterReport(thresholds=thresholds), {}
    for shard in reader.shards:
        piece = Piece(shard["path"], 0, int(shard.get("rows", 0)), int(shard.get("rows", 0)))
        for row in iter_piece_rows(reader, piece, batch_rows, columns):
            for name in report.add(row):
                missing[name] = missing.get(name, 0) + 1
    for name in thresholds:
        if name in missing:
            raise missing_score_error(name, reader.uri, missing[name], report.total)
    if report.total and not report.kept:
        raise ConfigError(f"{report.line()}: nothing left to train on; loosen the filters")
    return report
