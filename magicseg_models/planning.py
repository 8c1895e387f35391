"""Job planning: which classes each sample shows, and with which image seed.

A plan is a pure function of a :class:`PlanSpec`. Job ``i`` depends only on the run seed, the
class list, the two-class fraction and ``i`` - never on ``num_samples`` - so a plan is
*prefix-stable*: rerunning with a larger ``num_samples`` keeps every earlier job (and therefore
every finished shard) identical and only appends, which is how a dataset grows.

Every random choice is keyed with ``hashlib.blake2b`` and computed with plain integers, so the same
spec gives the same plan on any machine, Python or numpy version.

Coverage is even for *every* prefix of the plan: single-class jobs draw classes from an endless
stream of successive random permutations of the class list, and two-class jobs take consecutive
pairs from a second such stream. Any prefix of a stream holds each class either ``k`` or ``k + 1``
times, so per-class counts differ by at most one (separately for single- and two-class jobs).
Because job ``i`` knows how many jobs of each kind come before it (integer arithmetic on the
fraction), any window ``[start, stop)`` is computed without generating the jobs before it.

With a single class, two-class jobs are impossible: every job is then single-class, whatever
``two_class_fraction`` says.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Callable, Iterator

from magicseg_models.errors import ConfigError

__all__ = ["Job", "PlanSpec", "Shard", "plan_jobs", "iter_jobs", "shard_jobs", "plan_shard", "num_shards",
           "plan_summary", "spec_from_config"]

# The fraction is snapped to the nearest ratio with a denominator of at most this, so 0.3 means
# exactly 3/10 (not the binary float just below it) and 1/3 means exactly 1/3.
_MAX_DENOMINATOR = 1_000_000
_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True, slots=True)
class Job:
    """One sample to generate."""

    index: int  # position in the plan, 0-based
    sample_id: str  # f"s{run_seed}-{index:09d}"
    class_ids: tuple[int, ...]  # 1 or 2 distinct vocabulary ids, sorted by id
    class_names: tuple[str, ...]  # matching canonical names
    seed: int  # image seed in [0, 2**63), from blake2b(run seed, index)
    shard: int  # index // shard_size
    # Which pass over the class list this job's classes came from: jobs asking for the same classes get
    # distinct variants, so the prompt stage gives them distinct prompts (k prompts per LLM call serve k variants).
    variant: int = 0


@dataclass(frozen=True)
class PlanSpec:
    """What to plan; validated on construction (bad values raise :class:`ConfigError`)."""

    class_ids: tuple[int, ...]
    class_names: tuple[str, ...]
    num_samples: int
    seed: int
    shard_size: int
    two_class_fraction: float  # share of two-class jobs, 0..1 (ignored with a single class)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_ids", tuple(self.class_ids))
        object.__setattr__(self, "class_names", tuple(self.class_names))
        ids, names = self.class_ids, self.class_names
        if not ids:
            raise ConfigError("plan.class_ids must not be empty")
        for cid in ids:
            if not _is_int(cid):
                raise ConfigError(f"plan.class_ids must be integers, got {cid!r}")
        if len(set(ids)) != len(ids):
            dup = next(c for c in ids if ids.count(c) > 1)
            raise ConfigError(f"plan.class_ids must be distinct, got id {dup} more than once")
        if len(names) != len(ids):
            raise ConfigError(
                f"plan.class_names must match plan.class_ids, got {len(names)} names for {len(ids)} ids"
            )
        if not _is_int(self.num_samples) or self.num_samples < 0:
            raise ConfigError(f"plan.num_samples must be an integer >= 0, got {self.num_samples!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ConfigError(f"plan.seed must be an integer >= 0, got {self.seed!r}")
        if not _is_int(self.shard_size) or self.shard_size < 1:
            raise ConfigError(f"plan.shard_size must be an integer >= 1, got {self.shard_size!r}")
        f = self.two_class_fraction
        if isinstance(f, bool) or not isinstance(f, (int, float, Fraction)) or not 0 <= f <= 1:
            raise ConfigError(f"plan.two_class_fraction must be in [0, 1], got {f!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _two_class_ratio(spec: PlanSpec) -> tuple[int, int]:
    """The two-class fraction as an exact ``(numerator, denominator)``; 0 with a single class."""
    if len(spec.class_ids) < 2:
        return 0, 1
    frac = Fraction(spec.two_class_fraction).limit_denominator(_MAX_DENOMINATOR)
    return frac.numerator, frac.denominator


def _hasher(prefix: str) -> Callable[[int], int]:
    """``h(x)`` = 64-bit big-endian blake2b of ``f"{prefix}{x}"``: stable on any machine/Python.

    The prefix state is hashed once and copied per call (same digest, less Python overhead).
    """
    base = hashlib.blake2b(prefix.encode(), digest_size=8)

    def h(x: int) -> int:
        state = base.copy()
        state.update(b"%d" % x)
        return int.from_bytes(state.digest(), "big")

    return h


@lru_cache(maxsize=64)
def raw_permutation(seed: int, stream: str, class_ids: tuple[int, ...], r: int) -> tuple[int, ...]:
    """Permutation ``r`` of a stream: class ids sorted by a blake2b key (ties broken by id)."""
    h = _hasher(f"{seed}/{stream}/{r}/")
    return tuple(sorted(class_ids, key=lambda cid: (h(cid), cid)))


@lru_cache(maxsize=64)
def permutation(seed: int, stream: str, class_ids: tuple[int, ...], r: int) -> tuple[int, ...]:
    """Permutation ``r`` of a stream, fixed so that stream positions ``(2k, 2k+1)`` never repeat.

    Only a pair that straddles two permutations can repeat a class; that happens when the first
    position of permutation ``r`` (``r * n``) is odd. If its first class equals the last class of
    permutation ``r - 1``, it swaps with its second class (n is odd here, so n >= 3). The swap
    never touches a last element, so this depends on raw permutation ``r - 1`` only: no chain.
    """
    perm = raw_permutation(seed, stream, class_ids, r)
    n = len(class_ids)
    if stream == "pair" and r > 0 and (r * n) % 2 == 1:
        if perm[0] == raw_permutation(seed, stream, class_ids, r - 1)[-1]:
            perm = (perm[1], perm[0]) + perm[2:]
    return perm


class _Stream:
    """An endless stream of successive permutations of the class ids; remembers the current one."""

    def __init__(self, spec: PlanSpec, name: str) -> None:
        self.key = (spec.seed, name, spec.class_ids)
        self.n = len(spec.class_ids)
        self.r, self.perm = -1, ()

    def __getitem__(self, pos: int) -> int:
        r, j = divmod(pos, self.n)
        if r != self.r:  # the lru_cache lookup hashes the id tuple: do it once per permutation
            self.r, self.perm = r, permutation(*self.key, r)
        return self.perm[j]


def _iter_window(spec: PlanSpec, start: int, stop: int) -> Iterator[Job]:
    num, den = _two_class_ratio(spec)
    singles, pairs = _Stream(spec, "single"), _Stream(spec, "pair")
    name_of = dict(zip(spec.class_ids, spec.class_names))
    seed, shard_size = spec.seed, spec.shard_size
    image_hash = _hasher(f"{seed}/image/")
    for i in range(start, stop):
        pairs_before = i * num // den  # two-class jobs among [0, i)
        if (i + 1) * num // den > pairs_before:
            a, b = pairs[2 * pairs_before], pairs[2 * pairs_before + 1]
            ids = (a, b) if a < b else (b, a)
            names = (name_of[ids[0]], name_of[ids[1]])
            variant = 2 * pairs_before // pairs.n
        else:
            ids = (singles[i - pairs_before],)
            names = (name_of[ids[0]],)
            variant = (i - pairs_before) // singles.n
        image_seed = image_hash(i) & _SEED_MASK
        yield Job(i, f"s{seed}-{i:09d}", ids, names, image_seed, i // shard_size, variant)


def plan_jobs(spec: PlanSpec, start: int = 0, stop: int | None = None) -> list[Job]:
    """Jobs ``[start, stop)`` of the plan (``stop`` defaults to ``num_samples``).

    Like a list slice, ``start`` and ``stop`` are clipped to ``num_samples``; negative bounds raise
    ``ValueError``. Equals ``list(iter_jobs(spec))[start:stop]`` at O(stop - start) cost.
    """
    stop = spec.num_samples if stop is None else stop
    if start < 0 or stop < 0:
        raise ValueError(f"plan window must be non-negative, got [{start}, {stop})")
    stop = min(stop, spec.num_samples)
    return list(_iter_window(spec, min(start, stop), stop))


def iter_jobs(spec: PlanSpec) -> Iterator[Job]:
    """All jobs of the plan, lazily, in index order."""
    return _iter_window(spec, 0, spec.num_samples)


def num_shards(spec: PlanSpec) -> int:
    """How many shards the plan has (the last may be short)."""
    return -(-spec.num_samples // spec.shard_size)


def shard_jobs(spec: PlanSpec, shard: int) -> list[Job]:
    """The jobs of one shard: indices ``[shard * shard_size, (shard + 1) * shard_size)``."""
    if not _is_int(shard) or not 0 <= shard < num_shards(spec):
        raise ConfigError(f"shard must be in [0, {num_shards(spec)}), got {shard!r}")
    return plan_jobs(spec, shard * spec.shard_size, (shard + 1) * spec.shard_size)


@dataclass(frozen=True)
class Shard:
    """One shard of the plan with its jobs: the unit of work, retry, naming and commit."""

    index: int
    jobs: tuple[Job, ...]

    @property
    def planned(self) -> int:
        return len(self.jobs)

    def is_complete(self, record) -> bool:
        """Whether a commit record covers this shard as planned now (one committed under a smaller
        ``num_samples`` may be short: it is then redone with its full job list)."""
        return record is not None and record.planned == self.planned


def plan_shard(spec: PlanSpec, shard: int) -> Shard:
    """The shard ``shard`` of the plan, with its jobs."""
    return Shard(shard, tuple(shard_jobs(spec, shard)))


def _stream_counts(spec: PlanSpec, stream: str, length: int) -> dict[int, int]:
    """How often each class appears in the first ``length`` elements of a stream."""
    full, rest = divmod(length, len(spec.class_ids))
    counts = dict.fromkeys(spec.class_ids, full)
    if rest:
        for cid in permutation(spec.seed, stream, spec.class_ids, full)[:rest]:
            counts[cid] += 1
    return counts


def plan_summary(spec: PlanSpec) -> dict:
    """Counts for ``--dry-run``, computed without generating jobs (touches two permutations).

    ``per_class_min`` / ``per_class_max`` count the jobs each class appears in (either kind).
    """
    num, den = _two_class_ratio(spec)
    pairs = spec.num_samples * num // den
    singles = spec.num_samples - pairs
    single_counts = _stream_counts(spec, "single", singles)
    pair_counts = _stream_counts(spec, "pair", 2 * pairs)
    totals = [single_counts[c] + pair_counts[c] for c in spec.class_ids]
    return {
        "jobs": spec.num_samples,
        "shards": num_shards(spec),
        "single_class_jobs": singles,
        "two_class_jobs": pairs,
        "classes": len(spec.class_ids),
        "per_class_min": min(totals),
        "per_class_max": max(totals),
        "shard_size": spec.shard_size,
    }


def spec_from_config(config, vocabulary) -> PlanSpec:
    """The plan of a BuildConfig over a (possibly selected) Vocabulary: ids of the full vocabulary are kept."""
    return PlanSpec(
        class_ids=tuple(vocabulary.ids), class_names=tuple(vocabulary.names), num_samples=config.num_samples,
        seed=config.seed, shard_size=config.shard_size, two_class_fraction=config.plan.two_class_fraction,
    )
