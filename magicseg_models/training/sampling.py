"""Category random sampling: which m vocabulary classes each image is trained against, and its targets on them.

MagicSeg trains on a large vocabulary (1205 classes) but scores only m classes per image and step (paper: 100):
the image's own classes first, then uniformly random other classes. Ground truth is remapped to positions in that
subset (the authors' release skipped this step), and every image in a batch draws its own subset.

Rules:

- Own classes come first, deduplicated, in the order given. An image with more own classes than m keeps all of
  them (its subset is then longer than m; :func:`sample_batch` widens every subset of that batch to the longest,
  filling with more random classes, so the batch stays rectangular). m >= |V| gives every class: own first, the
  rest in random order.
- Targets are multi-label: a pixel under the masks of two classes is positive for both (the losses use one sigmoid
  per class), a pixel under no mask is negative for every class. Several masks of one class are unioned.
- ``present`` marks subset positions with at least one positive pixel. An own class whose mask is empty (cropped
  away) is therefore not present: the dice term skips it and the focal term treats it as a negative everywhere.
- Randomness comes only from the ``torch.Generator`` passed in, so a seeded generator reproduces the subsets.

Context classes (``train.labels.context``, docs/quality.md): ``exclude`` names, per image, classes that must never
be drawn as its random negatives - vocabulary classes its prompt named besides the asked ones. They are struck out
of the random pool exactly like the own classes, from the same permutation, so an image without exclusions draws
exactly the subset it drew before. When the exclusions leave fewer classes than a batch's width (small
vocabularies, m >= |V|), the short subsets are padded and :func:`draw_batch` marks the padding in ``valid``: a
padded position repeats the image's first subset class with an all-zero target and must be left out of the loss.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import torch

from magicseg_models.errors import VocabularyError


def _own_classes(image_class_ids, vocab_size: int) -> list[int]:
    ids = image_class_ids.tolist() if isinstance(image_class_ids, torch.Tensor) else list(image_class_ids)
    own: list[int] = []
    seen: set[int] = set()
    for raw in ids:
        cid = int(raw)
        if not 0 <= cid < vocab_size:
            raise VocabularyError(f"class id {cid} is outside the training vocabulary of {vocab_size} classes "
                                  f"(dataset built with another vocabulary?)")
        if cid not in seen:
            seen.add(cid)
            own.append(cid)
    return own


def sample_classes(image_class_ids, vocab_size: int, m: int, generator: torch.Generator | None = None,
                   exclude=()) -> torch.LongTensor:
    """The image's classes (deduplicated, in order), then uniformly random other classes, up to m in total.

    ``exclude``: classes never drawn as random others (an own class in it stays: own classes always come first).
    Returns a CPU ``LongTensor`` of length ``max(min(m, vocab_size - |exclude - own|), number of own classes)``.
    """
    if vocab_size < 1:
        raise ValueError("vocab_size must be at least 1")
    if m < 1:
        raise ValueError("m (sampling.num_classes) must be at least 1")
    own = _own_classes(image_class_ids, vocab_size)
    banned = own + [c for c in _own_classes(exclude, vocab_size) if c not in own]
    need = min(m, vocab_size) - len(own)
    own_t = torch.tensor(own, dtype=torch.long)
    if need <= 0:
        return own_t
    # a permutation of the whole vocabulary with the own (and excluded) classes struck out: uniform without
    # replacement, and the same generator draws whatever is excluded
    perm = torch.randperm(vocab_size, generator=generator)
    if banned:
        is_banned = torch.zeros(vocab_size, dtype=torch.bool)
        is_banned[torch.tensor(banned, dtype=torch.long)] = True
        perm = perm[~is_banned[perm]]
    return torch.cat([own_t, perm[:need]])


def build_targets(class_ids, masks: torch.Tensor, subset: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remap per-class masks to subset positions.

    ``class_ids`` (K,) vocabulary ids, ``masks`` K x H x W bool (one per entry of ``class_ids``), ``subset`` (m,)
    -> (targets m x H x W float32, present m bool), on ``masks``' device. Position j of the targets is the union
    of the masks whose class is ``subset[j]`` (all zeros when the image has no such class).
    """
    class_ids = torch.as_tensor(class_ids, dtype=torch.long).reshape(-1)
    if masks.dim() != 3 or masks.shape[0] != class_ids.numel():
        raise ValueError(f"masks must be K x H x W with K = {class_ids.numel()} class ids, got {tuple(masks.shape)}")
    device = masks.device
    subset = subset.to(device=device, dtype=torch.long)
    k, h, w = masks.shape
    # (m x K) matching matrix times the flattened masks: union of every mask of each subset class in one matmul
    match = (subset[:, None] == class_ids.to(device)[None, :]).float()
    if k == 0:
        targets = torch.zeros(subset.numel(), h, w, device=device)
    else:
        targets = (match @ masks.reshape(k, h * w).float()).clamp_(max=1.0).reshape(-1, h, w)
    present = (targets.flatten(1) > 0).any(dim=1)
    return targets, present


class BatchDraw(NamedTuple):
    """One batch's class subsets and targets; ``valid`` (B x m' bool) is False only on padding (module doc)."""

    subset: torch.Tensor
    targets: torch.Tensor
    present: torch.Tensor
    valid: torch.Tensor


def draw_batch(items: Sequence[tuple[object, torch.Tensor]], vocab_size: int, m: int,
               generator: torch.Generator | None = None, exclude: Sequence[object] | None = None) -> BatchDraw:
    """A different subset per image: ``items`` = [(class_ids (K,), masks K x H x W bool), ...] (same H x W),
    ``exclude`` one sequence of never-negative class ids per image (or None).

    -> :class:`BatchDraw`: subset B x m' long on CPU, targets B x m' x H x W float and present B x m' bool on the
    masks' device, valid B x m' bool on CPU; m' = min(m, vocab_size), widened to the largest number of own classes
    in the batch.
    """
    if not items:
        raise ValueError("sample_batch needs at least one image")
    if exclude is not None and len(exclude) != len(items):
        raise ValueError(f"exclude needs one entry per image: {len(exclude)} for {len(items)} images")
    sizes = {tuple(masks.shape[-2:]) for _, masks in items}
    if len(sizes) != 1:
        raise ValueError(f"all masks of a batch must have the same H x W, got {sorted(sizes)}")
    width = max([min(m, vocab_size), *(len(_own_classes(ids, vocab_size)) for ids, _ in items)])
    subsets, targets, present, valid = [], [], [], []
    for b, (ids, masks) in enumerate(items):
        subset = sample_classes(ids, vocab_size, width, generator, () if exclude is None else exclude[b])
        keep = torch.ones(width, dtype=torch.bool)
        if subset.numel() < width:  # the exclusions used up the vocabulary: pad, and say so
            keep[subset.numel():] = False
            filler = subset[:1] if subset.numel() else torch.zeros(1, dtype=torch.long)
            subset = torch.cat([subset, filler.repeat(width - subset.numel())])
        t, p = build_targets(ids, masks, subset)
        t[~keep.to(t.device)] = 0
        subsets.append(subset)
        targets.append(t)
        present.append(p & keep.to(p.device))
        valid.append(keep)
    return BatchDraw(torch.stack(subsets), torch.stack(targets), torch.stack(present), torch.stack(valid))


def sample_batch(items: Sequence[tuple[object, torch.Tensor]], vocab_size: int, m: int,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`draw_batch` without exclusions (the paper's sampling; nothing is padded): (subset, targets, present)."""
    draw = draw_batch(items, vocab_size, m, generator)
    return draw.subset, draw.targets, draw.present
