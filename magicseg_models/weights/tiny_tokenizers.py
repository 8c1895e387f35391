"""Tokenizers of the tiny models, trained here on the vocabulary's names and common prompt words (no download).

A real ``transformers.CLIPTokenizer`` (SD 1.5, SDXL, CLIP) and a T5 tokenizer (FLUX). They live apart from the
generation package so that the stages that only count tokens or score text (prompts, quality) do not import
diffusers to get one.
"""

from __future__ import annotations

import functools
import json

MAX_TOKENS = 77  # CLIP's context, BOS and EOS included

# Words that prompts and counterfactual prompts are made of, besides class names (the tokenizer is trained on
# both, so typical prompts tokenize into whole words rather than bytes).
_COMMON_WORDS = """
a an the of in on at by with and or near next to under over behind beside between across along through into
onto from for while is are sits stands lies hangs rests parked leaning standing sitting lying walking running
flying floating holding wearing eating looking playing nothing photo picture image scene view close up detailed
realistic bright dark sunny cloudy rainy snowy morning evening night light shadow colorful red orange yellow
green blue purple pink brown black white gray grey silver golden wooden metal plastic glass old new small large
big tiny tall short round long street road park garden kitchen table room house building city field forest
beach river lake mountain sky water grass tree trees window door wall floor background foreground corner shelf
desk bed sofa market shop store office school station farm yard countryside indoors outdoors busy quiet crowded
empty people man woman child children dog cat bird car bus bicycle person horse bottle plant potted tv monitor
its their his her two three several many some one
"""


@functools.lru_cache(maxsize=1)
def _tiny_vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    """Train a CLIP-style byte-level BPE (``</w>`` word ends) on vocabulary names and common words."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    corpus = _tiny_corpus()
    tok = Tokenizer(models.BPE(continuing_subword_prefix="", end_of_word_suffix="</w>"))
    # the normalizer and pre-tokenizer of transformers' CLIPTokenizer, so training sees the words it will see
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|"""
                                   r"""[\p{N}]|[^\s\p{L}\p{N}]+"""), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=4096, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), end_of_word_suffix="</w>")
    tok.train_from_iterator(corpus, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    # CLIP's layout: every byte symbol alone and as a word end, then the merges, then the two special tokens
    # last (so EOS has the highest id, which CLIP's pooled output relies on).
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet),
                  *sorted(model["vocab"], key=model["vocab"].get), "<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    merges = tuple(tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"])
    return vocab, merges  # type: ignore[return-value]


def build_tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """A real ``transformers.CLIPTokenizer`` (max length 77, pads with EOS) over a vocabulary trained here.

    ``pad_token="!"`` makes SDXL's second tokenizer (OpenCLIP pads with "!", token 0). A new instance each call:
    tokenizers keep padding state, so threads should not share one.
    """
    from transformers import CLIPTokenizer

    vocab, merges = _tiny_vocab_and_merges()
    return CLIPTokenizer(vocab=dict(vocab), merges=[tuple(m) for m in merges], model_max_length=MAX_TOKENS,
                         pad_token=pad_token)


def _tiny_corpus() -> list[str]:
    from magicseg_models.vocabulary import Vocabulary

    vocabulary = Vocabulary.default()
    return sorted(set(vocabulary.names) | {c.prompt_name for c in vocabulary} | set(_COMMON_WORDS.split()))


@functools.lru_cache(maxsize=1)
def _tiny_t5_pieces() -> tuple[tuple[str, float], ...]:
    """A SentencePiece-style unigram vocabulary trained on the same corpus (T5's layout: pad 0, EOS 1, unk 2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(vocab_size=2000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>",
                                      show_progress=False)
    tok.train_from_iterator([name.replace("_", " ") for name in _tiny_corpus()], trainer=trainer)
    pieces = [tuple(p) for p in json.loads(tok.to_str())["model"]["vocab"]]
    return tuple((str(piece), float(score)) for piece, score in pieces)


def build_tiny_t5_tokenizer(max_length: int = 512):
    """A real ``transformers`` T5 tokenizer (unigram, appends EOS, pads with id 0) over a vocabulary trained here."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast(vocab=list(_tiny_t5_pieces()), extra_ids=0, model_max_length=max_length)
