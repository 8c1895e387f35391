"""The detector's local tokenizer: a BERT-style WordPiece vocabulary made from the builtin vocabulary's words."""

from __future__ import annotations

import functools
import re


def _vocabulary_words() -> list[str]:
    from magicseg_models.vocabulary import Vocabulary

    words: set[str] = set()
    for c in Vocabulary.default():
        for text in (c.detector_phrase, c.prompt_name, *c.synonyms):
            words.update(re.findall(r"[a-z0-9]+", text.lower()))
    return sorted(words)


@functools.lru_cache(maxsize=1)
def build_detector_tokenizer():
    """A BERT-style uncased WordPiece tokenizer made here from the builtin vocabulary's words (no download).

    Every word of every class name, prompt name and synonym is one token; anything else falls back to word
    pieces (``a``-``z``, ``##a``-``##z``, digits), so custom vocabularies tokenize too. Ids fit inside BERT's
    30522, so the full-size random model takes them.
    """
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    chars = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    pieces = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "?", ",", "-", "'", "(", ")", "/", "&"]
    pieces += chars + ["##" + c for c in chars]
    pieces += [w for w in _vocabulary_words() if w not in set(pieces)]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(pieces))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    return BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                             cls_token="[CLS]", mask_token="[MASK]", do_lower_case=True)
