"""Caption planning: detector phrases -> captions with each phrase's token span, cut into chunks that fit.

The phrases of an image's classes are lower-cased and joined the authors' way (``"cat. hot dog."``); a
phrase's token span is the set of caption token positions its characters produced (the fast tokenizer's
offsets). A caption longer than the text encoder's window is cut between phrases into several captions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from magicseg_models.errors import MagicSegError

DELIMITERS = ("[CLS]", "[SEP]", ".", "?")  # the tokens Grounding DINO splits phrases at


class PhraseTooLongError(MagicSegError):
    """A detector phrase needs more token positions than the detector's text encoder reads."""


def clean_phrase(phrase: str) -> str:
    """Lower case, and no ``.``/``?`` inside (they split phrases in Grounding DINO's text attention)."""
    text = re.sub(r"[.?]", " ", str(phrase).lower())
    return " ".join(text.split())


@dataclass(frozen=True)
class Caption:
    """One detector caption: its text and, for each of its phrases, the token positions that phrase fills."""

    text: str
    spans: tuple[tuple[int, ...], ...]  # token positions of each phrase, in caption order
    phrase_index: tuple[int, ...]  # position of each phrase in the image's phrase list
    num_tokens: int  # with [CLS] and [SEP]


def build_caption(phrases: Sequence[str], tokenizer, phrase_index: Sequence[int] | None = None) -> Caption:
    """``["cat", "hot dog"]`` -> ``"cat. hot dog."`` with each phrase's token span (from character offsets)."""
    cleaned = [clean_phrase(p) for p in phrases]
    if any(not p for p in cleaned):
        raise ValueError(f"empty detector phrase in {list(phrases)!r}")
    starts, text = [], ""
    for p in cleaned:
        starts.append(len(text))
        text += p + ". "
    text = text.rstrip()
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    spans: list[list[int]] = [[] for _ in cleaned]
    for pos, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:  # special tokens have empty offsets
            continue
        for k, (start, p) in enumerate(zip(starts, cleaned)):
            if start <= s and e <= start + len(p):
                spans[k].append(pos)
                break
    for p, span in zip(cleaned, spans):
        if not span:
            raise ValueError(f"phrase {p!r} produced no tokens in caption {text!r}")
    index = tuple(phrase_index) if phrase_index is not None else tuple(range(len(cleaned)))
    return Caption(text, tuple(tuple(s) for s in spans), index, len(enc["input_ids"]))


def plan_captions(phrases: Sequence[str], tokenizer, max_tokens: int) -> list[Caption]:
    """One caption when it fits in ``max_tokens``, else chunks cut between phrases, each within the limit."""
    lengths = [len(tokenizer(clean_phrase(p), add_special_tokens=False)["input_ids"]) + 1 for p in phrases]  # + "."
    chunks: list[list[int]] = []
    used = 2  # [CLS] ... [SEP]
    for k, n in enumerate(lengths):
        if 2 + n > max_tokens:
            raise PhraseTooLongError(f"detector phrase {phrases[k]!r} needs {n + 2} tokens, more than the "
                                f"text encoder's {max_tokens}")
        if not chunks or used + n > max_tokens:
            chunks.append([])
            used = 2
        chunks[-1].append(k)
        used += n
    captions = []
    for members in chunks:
        caption = build_caption([phrases[k] for k in members], tokenizer, phrase_index=members)
        if caption.num_tokens > max_tokens:  # tokenization in context differed: split this chunk further
            half = len(members) // 2
            captions += [build_caption([phrases[k] for k in part], tokenizer, phrase_index=part)
                         for part in (members[:half], members[half:])]
        else:
            captions.append(caption)
    return captions
