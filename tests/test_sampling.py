"""Category random sampling: own classes first, m in total, targets remapped to subset positions, multi-label."""

from __future__ import annotations

import pytest
import torch

from magicseg_models.errors import VocabularyError
from magicseg_models.training.sampling import build_targets, draw_batch, sample_batch, sample_classes


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_own_classes_first_then_random_others():
    subset = sample_classes([5, 2, 5], vocab_size=20, m=6, generator=gen())
    assert subset.dtype == torch.long and subset.shape == (6,)
    assert subset[:2].tolist() == [5, 2]
    rest = subset[2:].tolist()
    assert len(set(subset.tolist())) == 6
    assert all(0 <= c < 20 and c not in (5, 2) for c in rest)
    # reproducible from the generator, different with another seed
    assert torch.equal(subset, sample_classes([5, 2, 5], 20, 6, gen()))
    assert not all(torch.equal(subset, sample_classes([5, 2], 20, 6, gen(s))) for s in range(1, 6))
    # uniform over the other classes: every one of them turns up over a few hundred draws
    g = gen(1)
    seen = set()
    for _ in range(300):
        seen.update(sample_classes(torch.tensor([5, 2]), 20, 4, g)[2:].tolist())
    assert seen == set(range(20)) - {5, 2}


def test_more_own_classes_than_m_keeps_them_all():
    assert sample_classes([1, 2, 3, 4], vocab_size=50, m=2, generator=gen()).tolist() == [1, 2, 3, 4]
    assert sample_classes([], vocab_size=50, m=3, generator=gen()).shape == (3,)


def test_m_at_least_the_vocabulary_gives_every_class():
    subset = sample_classes([3, 7], vocab_size=10, m=50, generator=gen())
    assert subset[:2].tolist() == [3, 7]
    assert sorted(subset.tolist()) == list(range(10))
    assert sorted(sample_classes([3], 10, 10, gen()).tolist()) == list(range(10))


def test_class_ids_outside_the_vocabulary_fail_with_one_line():
    with pytest.raises(VocabularyError, match="outside the training vocabulary of 10 classes"):
        sample_classes([3, 12], vocab_size=10, m=5, generator=gen())


def test_targets_are_remapped_to_subset_positions():
    masks = torch.zeros(2, 4, 4, dtype=torch.bool)
    masks[0, 0, :] = True   # class 7: top row
    masks[1, :, 0] = True   # class 3: left column (overlaps class 7 at (0, 0))
    targets, present = build_targets(torch.tensor([7, 3]), masks, torch.tensor([3, 9, 7]))
    assert targets.shape == (3, 4, 4) and targets.dtype == torch.float32
    assert torch.equal(targets[0].bool(), masks[1])
    assert torch.equal(targets[2].bool(), masks[0])
    assert targets[1].sum() == 0
    assert present.tolist() == [True, False, True]
    # multi-label: the overlap pixel is positive for both classes
    assert targets[0, 0, 0] == 1 and targets[2, 0, 0] == 1
    # several masks of one class are unioned; an empty mask is not present
    masks3 = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks3[0, 0, 0] = True
    masks3[1, 3, 3] = True
    targets, present = build_targets([4, 4, 6], masks3, torch.tensor([6, 4]))
    assert targets[1].sum() == 2 and targets[1, 0, 0] == 1 and targets[1, 3, 3] == 1
    assert present.tolist() == [False, True]
    # an image without annotations: all negatives
    targets, present = build_targets([], torch.zeros(0, 4, 4, dtype=torch.bool), torch.tensor([1, 2]))
    assert targets.shape == (2, 4, 4) and targets.sum() == 0 and not present.any()
    with pytest.raises(ValueError, match="K x H x W"):
        build_targets([1, 2], masks3, torch.tensor([1]))


def test_batch_draws_a_subset_per_image():
    items = []
    for i in range(3):
        masks = torch.zeros(2, 8, 8, dtype=torch.bool)
        masks[0, i, :] = True
        masks[1, :, i] = True
        items.append((torch.tensor([i, 10 + i]), masks))
    subset, targets, present = sample_batch(items, vocab_size=100, m=6, generator=gen())
    assert subset.shape == (3, 6) and targets.shape == (3, 6, 8, 8) and present.shape == (3, 6)
    for b, (ids, masks) in enumerate(items):
        assert subset[b, :2].tolist() == ids.tolist()
        assert torch.equal(targets[b, 0].bool(), masks[0]) and torch.equal(targets[b, 1].bool(), masks[1])
        assert present[b].tolist() == [True, True, False, False, False, False]
        assert targets[b, 2:].sum() == 0
    assert len({tuple(row[2:].tolist()) for row in subset}) == 3  # the random parts differ between images


def test_batch_widens_to_the_largest_own_class_count_and_checks_sizes():
    many = (torch.arange(5), torch.ones(5, 4, 4, dtype=torch.bool))
    few = (torch.tensor([9]), torch.ones(1, 4, 4, dtype=torch.bool))
    subset, targets, present = sample_batch([many, few], vocab_size=20, m=3, generator=gen())
    assert subset.shape == (2, 5)
    assert subset[0].tolist() == [0, 1, 2, 3, 4] and subset[1, 0] == 9
    assert present[0].all() and present[1].tolist() == [True, False, False, False, False]
    everything, _, _ = sample_batch([few], vocab_size=20, m=1000, generator=gen())
    assert sorted(everything[0].tolist()) == list(range(20))
    with pytest.raises(ValueError, match="same H x W"):
        sample_batch([few, (torch.tensor([1]), torch.ones(1, 5, 5, dtype=torch.bool))], 20, 3, gen())


def test_excluded_classes_are_never_random_negatives_and_own_classes_stay():
    g = gen(2)
    seen = set()
    for _ in range(300):
        subset = sample_classes([5, 2], vocab_size=20, m=6, generator=g, exclude=[7, 5, 11])
        assert subset[:2].tolist() == [5, 2] and len(set(subset.tolist())) == 6  # an own class in exclude stays
        seen.update(subset[2:].tolist())
    assert seen == set(range(20)) - {5, 2, 7, 11}
    # nothing left to draw: the subset is as long as the classes allowed
    assert sorted(sample_classes([0], vocab_size=4, m=10, generator=gen(), exclude=[1]).tolist()) == [0, 2, 3]


def test_draw_batch_without_exclusions_is_sample_batch_and_checks_its_arguments():
    masks = torch.zeros(1, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    items = [(torch.tensor([3]), masks), (torch.tensor([1]), masks)]
    draw = draw_batch(items, vocab_size=30, m=5, generator=gen(4), exclude=[[], []])
    subset, targets, present = sample_batch(items, vocab_size=30, m=5, generator=gen(4))
    assert torch.equal(draw.subset, subset) and torch.equal(draw.targets, targets) and draw.valid.all()
    with pytest.raises(ValueError, match="one entry per image"):
        draw_batch(items, 30, 5, gen(), exclude=[[1]])
