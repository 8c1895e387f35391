"""What each generator's text encoders read, and one token counter that checks a prompt against all of them.

A class name the text encoder never reads is invisible to the generator: the image would miss the class the
sample is labelled with. Each family reports its encoders (:func:`encoder_limits`):

- ``sd15``: CLIP ViT-L/14, 77 tokens (BOS and EOS included: 75 for the prompt).
- ``sdxl``: CLIP ViT-L/14 and OpenCLIP ViT-bigG/14, 77 each; both hidden-state sequences are the UNet's
  cross-attention input, so a class must fit both (they share one BPE vocabulary, so in practice one limit).
- ``flux``: T5-XXL, ``generator.max_sequence_length`` tokens (EOS included; 256 for FLUX.1-schnell, 512 for
  dev), and CLIP ViT-L/14, 77 tokens, of which FLUX uses only the pooled vector. Decision: the T5 limit alone
  decides. The T5 sequence is the only text the transformer attends to token by token, so it is what carries a
  class name into the image; the pooled CLIP vector is one global modulation of every block, computed from the
  first 77 tokens, and a class past them is still fully present in the T5 sequence. CLIP is reported
  (``carries_content=False``) but not checked; checking it would cut FLUX prompts back to SD 1.5's length.

``validate_prompt`` compares a count with CLIP's 75 prompt tokens, so :class:`LimitCounter` reports counts in
that frame: 75 plus the largest overshoot over any checked encoder's own window, i.e. a prompt prefix is inside
every window exactly when the count is at most 75.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

CLIP_TOKENS = 77
CLIP_PROMPT_TOKENS = CLIP_TOKENS - 2  # what validate_prompt's default window leaves for the prompt


@dataclass(frozen=True)
class EncoderLimit:
    """One text encoder of a generator: how many tokens it reads and whether a class must fit inside them."""

    name: str  # clip-l, clip-bigg, t5-xxl
    tokenizer: str  # the diffusers subfolder of its tokenizer: tokenizer, tokenizer_2
    kind: str  # clip | t5 (which tokenizer class)
    max_tokens: int  # what the encoder reads, special tokens included
    special_tokens: int  # BOS + EOS for CLIP, EOS for T5
    carries_content: bool = True  # False: only a pooled vector reaches the generator (FLUX's CLIP)

    @property
    def prompt_tokens(self) -> int:
        return self.max_tokens - self.special_tokens


def encoder_limits(generator) -> list[EncoderLimit]:
    """The text encoders of a ``GeneratorConfig``'s family, in the order the pipeline calls them."""
    family = getattr(generator, "family", "sd15")
    clip_l = EncoderLimit("clip-l", "tokenizer", "clip", CLIP_TOKENS, 2)
    if family == "sdxl":
        return [clip_l, EncoderLimit("clip-bigg", "tokenizer_2", "clip", CLIP_TOKENS, 2)]
    if family == "flux":
        return [EncoderLimit("clip-l", "tokenizer", "clip", CLIP_TOKENS, 2, carries_content=False),
                EncoderLimit("t5-xxl", "tokenizer_2", "t5", generator.max_sequence_length, 1)]
    return [clip_l]


def load_tokenizer(generator, limit: EncoderLimit):
    """The tokenizer of one encoder: the model's own (``pretrained``) or the tiny one built in code."""
    if generator.weights == "pretrained":
        from transformers import AutoTokenizer, CLIPTokenizer

        kw = {"revision": generator.revision} if generator.revision else {}
        cls = CLIPTokenizer if limit.kind == "clip" else AutoTokenizer
        return cls.from_pretrained(generator.model, subfolder=limit.tokenizer, **kw)
    from magicseg_models.weights.tiny_tokenizers import build_tiny_t5_tokenizer, build_tiny_tokenizer

    return build_tiny_tokenizer() if limit.kind == "clip" else build_tiny_t5_tokenizer(limit.max_tokens)


class LimitCounter:
    """Token count in CLIP's 75-prompt-token frame over several encoders (see the module docstring).

    ``counters``: (limit, count without special tokens) per checked encoder. ``limits``: every encoder of the
    generator, checked or not (what ``magicseg prompts`` and the docs report).
    """

    def __init__(self, limits: Sequence[EncoderLimit], counters: Sequence[tuple[EncoderLimit, Callable[[str], int]]]):
        self.limits = list(limits)
        self.counters = list(counters)

    def __call__(self, text: str) -> int:
        return CLIP_PROMPT_TOKENS + max(count(text) - limit.prompt_tokens for limit, count in self.counters)

    def __repr__(self) -> str:
        checked = ", ".join(f"{limit.name} {limit.max_tokens}" for limit, _ in self.counters)
        return f"LimitCounter({checked})"


def combine(limits: Sequence[EncoderLimit], counters: Sequence[tuple[EncoderLimit, Callable[[str], int]]]):
    """One counter for ``validate_prompt``: a single CLIP-sized encoder's own count as it is, else a
    :class:`LimitCounter`."""
    if len(counters) == 1 and counters[0][0].prompt_tokens == CLIP_PROMPT_TOKENS:
        return counters[0][1]
    return LimitCounter(limits, counters)
