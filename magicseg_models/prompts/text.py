"""Prompt text: the LLM instruction, parsing its answer, checking prompts, counterfactual text.

Pure functions (no network, no model). A class's *mentions* are its prompt name, its vocabulary name and the LVIS
synonyms reviewed as unambiguous (``VocabClass.mentions``, from
``magicseg_models/data/vocab_1205_mention_synonyms.tsv``), each matched as a whole word/phrase, case-insensitively,
also in plural. The validator and the counterfactual read the same mentions through one scan
(:func:`class_mentions`), so a prompt "contains" a class exactly when its counterfactual (every mention replaced by
``nothing``) has lost it. A mention inside a longer vocabulary name that is not one of the job's classes ("dog" in
"dog collar") is neither.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from magicseg_models.vocabulary import VocabClass

# Bump whenever the instruction text below changes: it is part of the prompt cache key.
INSTRUCTION_VERSION = "v1"

# ~60 words stay well inside CLIP's 77 tokens (about 1.3 tokens per English word).
MAX_PROMPT_WORDS = 60


# --------------------------------------------------------------------------- instruction


def _quoted(classes: Sequence[VocabClass]) -> str:
    names = [f'"{c.prompt_name}"' for c in classes]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def build_instruction(classes: Sequence[VocabClass], k: int = 10) -> list[dict]:
    """Chat messages asking for ``k`` numbered scene descriptions containing every class.

    Carries the paper's four requirements (busy background, diverse scenarios, detailed
    attributes, details differing between examples) plus what our checks need: the names
    verbatim, one prompt per line, short enough for Stable Diffusion's 77-token text window.
    """
    if not classes:
        raise ValueError("build_instruction needs at least one class")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    names = _quoted(classes)
    one = len(classes) == 1
    every, it, objects = ("the name", "it", "object") if one else ("each name", "them", "objects")
    system = (
        "You write prompts for a text-to-image model (Stable Diffusion). Each prompt is one "
        "vivid sentence describing a photograph. You follow the requested format exactly."
    )
    lines = [
        f"Write exactly {k} different image prompts, each showing {names}.",
        "",
        "Requirements:",
        "1. The background must be complex and rich in detail, never plain or monotonous.",
        "2. Make the scenarios as diverse as possible: different places, times of day, "
        "weather, viewpoints and situations.",
        f"3. Describe the {objects} in detail: colour, size, material, posture, pose and the "
        "actions taken.",
        "4. The details must differ from one prompt to the next; do not repeat a scene.",
        f"5. Each prompt must contain {every} {names} spelled exactly like that "
        f"(singular or plural), not a synonym, and should name {it} early in the sentence.",
        f"6. Keep each prompt under {MAX_PROMPT_WORDS} words.",
    ]
    hints = [c for c in classes if c.hint]
    if hints:
        lines += ["", *(f"By '{c.prompt_name}' we mean: {c.hint}" for c in hints)]
    lines += [
        "",
        f"Answer with the numbered list only (1. to {k}.), one prompt per line, "
        "with no title, no explanations and no text before or after the list.",
    ]
    return [{"role": "system", "content": system}, {"role": "user", "content": "\n".join(lines)}]


# --------------------------------------------------------------------------- parsing

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)
# "1. x", "1) x", "(1) x", "1: x", "Prompt 1: x"; markdown bold around the number is tolerated.
_NUMBERED = re.compile(
    r"^\s*(?:\*\*)?(?:(?:prompt|example)\s*)?(?:\(\d{1,3}\)|\d{1,3}[.):])(?:\*\*)?\s+(?P<text>\S.*)$",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*[-*•]\s+(?P<text>\S.*)$")
_QUOTES = "\"'“”‘’«»`"


def _clean(item: str) -> str:
    item = " ".join(item.split())  # JSON strings may hold newlines or tabs
    while True:  # quotes or markdown bold around the whole prompt, possibly nested
        if len(item) >= 2 and item[0] in _QUOTES and item[-1] in _QUOTES:
            stripped = item[1:-1].strip()  # only a pair: 'a sign saying "open"' keeps its quote
        elif len(item) >= 4 and item.startswith("**") and item.endswith("**"):
            stripped = item[2:-2].strip()
        else:
            return item
        item = stripped


def _strings_from_json(value: object) -> list[str]:
    if isinstance(value, dict):  # {"prompts": [...]}: the first list of strings
        for inner in value.values():
            found = _strings_from_json(inner) if isinstance(inner, list) else []
            if found:
                return found
        return []
    if isinstance(value, list):  # ["...", ...] or [{"prompt": "..."}, ...]: the first string of each item
        out = []
        for item in value:
            if isinstance(item, dict):
                item = next((v for v in item.values() if isinstance(v, str)), None)
            if isinstance(item, str):
                out.append(item)
        return out
    return []


def _from_json(text: str) -> list[str]:
    decoder = json.JSONDecoder()
    fenced = _FENCE.findall(text)
    for block in fenced or [text]:
        # unfenced JSON may follow a preamble ("Here you go: [...]"), but a numbered list that merely
        # contains brackets ('1. a sign reading ["open"]') is not JSON
        if not fenced and any(_NUMBERED.match(line) for line in block.splitlines()):
            continue
        start = min((i for i in (block.find("["), block.find("{")) if i >= 0), default=-1)
        if start < 0:
            continue
        try:
            value, _ = decoder.raw_decode(block[start:])
        except ValueError:
            continue
        found = [s for s in map(_clean, _strings_from_json(value)) if s]
        if found:
            return found
    return []


def parse_completion(text: str) -> list[str]:
    """The prompts in an LLM answer: a JSON array/object (fenced or not), else a numbered list,
    else a bulleted list. Preambles and unlisted lines are ignored; junk gives []."""
    if not text or not text.strip():
        return []
    found = _from_json(text)
    if found:
        return found
    lines = text.splitlines()
    for pattern in (_NUMBERED, _BULLET):  # numbered items win: bullets may be sub-points
        items: list[str] = []
        for line in lines:
            match = pattern.match(line)
            if match:
                items.append(match["text"])
            elif items and line.strip() and line[:1].isspace():
                items[-1] += " " + line.strip()  # an indented continuation of the item above
        items = [s for s in map(_clean, items) if s]
        if items:
            return items
    return []


# --------------------------------------------------------------------------- class matching

_PLURAL_ES = ("s", "x", "z", "ch", "sh")
# the irregular plurals of vocabulary words an LLM is likely to write: a counterfactual must not keep "people"
_IRREGULAR = {"person": "people", "mouse": "mice", "child": "children", "man": "men", "woman": "women",
              "foot": "feet", "tooth": "teeth", "goose": "geese", "ox": "oxen", "louse": "lice",
              "die": "dice", "fish": "fish", "sheep": "sheep", "deer": "deer", "cactus": "cacti"}


def _plurals(word: str) -> set[str]:
    """Regular English plurals of ``word`` (alternatives where the rule is not decidable)."""
    low = word.lower()
    if not low[-1:].isalpha():  # "c++": no plural form
        return set()
    if low in _IRREGULAR:
        return {_IRREGULAR[low], word + "s"}
    if low.endswith(_PLURAL_ES):
        return {word + "es"}
    if low.endswith("y") and len(low) > 1 and low[-2] not in "aeiou":
        return {word[:-1] + "ies"}
    if low.endswith("fe"):
        return {word[:-2] + "ves", word + "s"}
    if low.endswith("f"):  # leaf -> leaves, but roof -> roofs
        return {word[:-1] + "ves", word + "s"}
    if low.endswith("o") and len(low) > 1 and low[-2] not in "aeiou":  # tomatoes, but photos
        return {word + "es", word + "s"}
    return {word + "s"}


def _phrase_body(phrase: str) -> str:
    """Regex source for ``phrase`` without the word-boundary lookarounds (see :func:`_phrase_pattern`)."""
    words = [w for w in re.split(r"[\s\-]+", phrase.strip()) if w]
    if not words:
        raise ValueError("empty class phrase")
    last = sorted({words[-1], *_plurals(words[-1])}, key=len, reverse=True)
    body = [re.escape(w) for w in words[:-1]] + ["(?:" + "|".join(map(re.escape, last)) + ")"]
    return r"[\s\-]+".join(body)


_BEFORE, _AFTER = r"(?<!\w)", r"(?!\w)"


@functools.lru_cache(maxsize=4096)
def _phrase_pattern(phrase: str) -> str:
    """Regex source for ``phrase`` as a whole word/phrase, its last word also in plural.

    Words are split on whitespace and hyphens and rejoined by flexible whitespace/hyphens
    ("hot dog" matches "hot  dog" and "hot-dog"); every word is escaped, so names like "c++ book"
    are literal. Lookarounds instead of ``\\b`` so names starting or ending in a symbol work too.
    """
    return _BEFORE + _phrase_body(phrase) + _AFTER


@functools.lru_cache(maxsize=4096)
def _compiled(phrases: tuple[str, ...]) -> re.Pattern:
    # Longest names first so that "school bus" wins over "bus" at the same position. The lookarounds are the
    # same for every phrase, so they stand once outside the alternation: the same matches, and a scan over the
    # whole vocabulary's ~1800 phrases runs ~8x faster (the boundary is tested once per position, not per phrase).
    ordered = sorted(set(phrases), key=len, reverse=True)
    return re.compile(_BEFORE + "(?:" + "|".join(f"(?:{_phrase_body(p)})" for p in ordered) + ")" + _AFTER,
                      re.IGNORECASE)


def find_class(prompt: str, phrase: str) -> re.Match | None:
    """First whole-word, case-insensitive occurrence of ``phrase`` (or its regular plural)."""
    return _compiled((phrase,)).search(prompt)


def mention_phrases(c: VocabClass) -> tuple[str, ...]:
    """What counts as class ``c`` in prompt text (its prompt name when the class lists no mentions)."""
    return tuple(p for p in (c.mentions or (c.prompt_name,)) if _words(p))


def class_mentions(prompt: str, classes: Sequence[VocabClass],
                   covering: Mapping[str, Sequence[str]] | None = None) -> list[tuple[int, int, frozenset[int]]]:
    """Every mention of ``classes`` in ``prompt``, left to right: ``(start, end, {indices into classes})``.

    One scan over the job's mentions and the longer vocabulary names that contain them (``covering``, see
    :func:`covering_names`), longest first at each position: "school bus" is one mention of a class "school bus",
    and "dog collar" is no mention of "dog" unless "dog collar" is a mention of one of ``classes`` too.
    """
    own = [mention_phrases(c) for c in classes]
    phrases = {p for ps in own for p in ps}
    if not phrases:
        return []
    longer = {q for p in phrases for q in (covering or {}).get(p, ())} - phrases
    per_class = [_compiled(ps) for ps in own]
    found = []
    for match in _compiled(tuple(phrases | longer)).finditer(prompt):
        who = frozenset(i for i, pattern in enumerate(per_class) if pattern.fullmatch(match.group()))
        if who:
            found.append((match.start(), match.end(), who))
    return found


# --------------------------------------------------------------------------- validation


@dataclass
class Verdict:
    ok: bool
    reason: str | None = None  # see validate_prompt for the possible reasons


def _junk_fraction(text: str) -> float:
    """Share of characters that are not letters, digits, punctuation or spaces."""
    odd = sum(1 for ch in text if unicodedata.category(ch)[0] not in "LNPZ")
    return odd / len(text)


def dedup_key(prompt: str) -> str:
    return " ".join(prompt.lower().split())


def validate_prompt(
    prompt: str,
    classes: Sequence[VocabClass],
    token_counter: Callable[[str], int] | None = None,
    max_tokens: int = 77,
    min_words: int = 3,
    max_chars: int = 600,
    seen: set[str] | None = None,
    covering: Mapping[str, Sequence[str]] | None = None,
) -> Verdict:
    """Whether ``prompt`` is usable for ``classes``; an accepted prompt is added to ``seen``.

    Reasons, in the order checked: ``too_short``, ``too_long``, ``bad_characters`` (control
    characters or >10% symbols/junk), ``missing_class:<name>``, ``class_after_token_limit:<name>``
    (the class's first occurrence does not end inside the text encoder's window), ``duplicate``.
    ``<name>`` is the class's canonical vocabulary name. A class is present when one of its mentions is
    (:func:`class_mentions`; "two sofas", "the couch" for sofa). ``token_counter`` counts tokens without
    BOS/EOS (see :func:`tokenizer_counter`); None skips the token check. ``covering`` maps a mention
    to longer vocabulary names that contain it ("bear" -> "teddy bear", see
    :func:`covering_names`): an occurrence inside one of those does not count as the class.
    """
    if len(prompt.split()) < min_words:
        return Verdict(False, "too_short")
    if len(prompt) > max_chars:
        return Verdict(False, "too_long")
    if any(unicodedata.category(ch)[0] == "C" for ch in prompt) or _junk_fraction(prompt) > 0.1:
        return Verdict(False, "bad_characters")
    mentions = class_mentions(prompt, classes, covering)
    for i, c in enumerate(classes):
        end = next((e for _, e, who in mentions if i in who), None)
        if end is None:
            return Verdict(False, f"missing_class:{c.name}")
        # BOS and EOS take 2 of the window; the whole name must be readable, so count up to its
        # end (for a one-token name this equals "its start lies inside the window").
        if token_counter is not None and token_counter(prompt[:end]) > max_tokens - 2:
            return Verdict(False, f"class_after_token_limit:{c.name}")
    if seen is not None:
        key = dedup_key(prompt)
        if key in seen:
            return Verdict(False, "duplicate")
        seen.add(key)
    return Verdict(True, None)


def _words(name: str) -> tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s\-]+", name.lower()) if w)


# Everyday compounds that hold a vocabulary name but are no object of that class ("a hot dog" is no dog, "the bus
# stop" no bus). They are scanned like longer vocabulary names, so that neither validation, the counterfactual nor
# the context classes read the class inside them. Reviewed by hand: only compounds whose head is something else.
NOT_THE_CLASS = ("hot dog", "corn dog", "prairie dog", "dog house", "sea lion", "sea horse", "rocking horse",
                 "guinea pig", "gummy bear", "traffic jam", "bus stop", "car park", "lamp post", "bicycle lane")


@functools.lru_cache(maxsize=8)
def covering_names(names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """For each name, the longer names of ``names`` (and of :data:`NOT_THE_CLASS`) that contain it as whole words
    ("dog" -> "dog collar", "hot dog").

    A "dog" found only inside "dog collar" is not a dog: validation must not accept it for the class dog.
    """
    by_part: dict[tuple[str, ...], set[str]] = {}
    for name in (*names, *NOT_THE_CLASS):
        words = _words(name)
        for i in range(len(words)):
            for j in range(i + 1, len(words) + 1):
                if (i, j) != (0, len(words)):
                    by_part.setdefault(words[i:j], set()).add(name)
    return {name: tuple(sorted(by_part[_words(name)])) for name in names if _words(name) in by_part}


# --------------------------------------------------------------------------- context classes


def _variant_keys(phrase: str) -> set[tuple[str, ...]]:
    """The word tuples (lower case) :func:`_phrase_pattern` matches for ``phrase``: its last word also in plural."""
    words = _words(phrase)
    return {(*words[:-1], last.lower()) for last in {words[-1], *_plurals(words[-1])}}


class ContextMatcher:
    """Which vocabulary classes a prompt mentions besides the ones it was written for (its *context classes*).

    The matcher of :func:`class_mentions` over the whole vocabulary at once: every class's mentions
    (:func:`mention_phrases`: whole words, plurals) and :data:`NOT_THE_CLASS`, in one pattern compiled here (once
    per vocabulary), longest first at each position, so a name inside a longer name is not matched ("dog" in
    "dog collar" is the class dog collar, "dog" in "hot dog" is nothing). A mention is left out when it is
    ambiguous:

    - it is a mention of several classes ("fish": fish and fish (food); "bow": the weapon and the ribbon), or
    - it is the bare prompt name of a class with a ``hint``: the hint exists because that word has other senses
      ("mouse" for the computer mouse, "glass" for the drinking glass, "orange" for the fruit, "car" for the
      automobile). Such a class is still found through its other, reviewed mentions ("computer mouse",
      "drinking glass", "automobile").

    A mention of an asked class is never a context class. The asked classes' prompt was written with their
    hints, so their own mentions are read as them; nobody told the LLM what a context class's word meant.
    """

    def __init__(self, classes: Iterable[VocabClass]):
        owners: dict[tuple[str, ...], set[int]] = {}  # every class a matched word tuple is a mention of
        usable: dict[tuple[str, ...], set[int]] = {}  # ... of which it may name as a context class
        phrases: set[str] = set()
        for c in classes:
            for phrase in mention_phrases(c):
                phrases.add(phrase)
                bare = c.hint is not None and _words(phrase) == _words(c.prompt_name)
                for key in _variant_keys(phrase):
                    owners.setdefault(key, set()).add(c.id)
                    if not bare:
                        usable.setdefault(key, set()).add(c.id)
        self._owners, self._usable = owners, usable
        self._pattern = _compiled(tuple(sorted(phrases | set(NOT_THE_CLASS)))) if phrases else None

    def __call__(self, prompt: str, asked: Iterable[int] = ()) -> list[int]:
        """Vocabulary ids of the context classes of ``prompt``, in order of first mention, ``asked`` left out."""
        if self._pattern is None or not prompt:
            return []
        asked_ids, found = {int(i) for i in asked}, []
        for match in self._pattern.finditer(prompt):
            key = _words(match.group())
            owners = self._owners.get(key, set())
            if owners & asked_ids or len(owners) != 1:
                continue
            found += [i for i in self._usable.get(key, ()) if i not in found]
        return found


# --------------------------------------------------------------------------- counterfactual


def counterfactual(prompt: str, classes: Sequence[VocabClass], word: str = "nothing",
                   covering: Mapping[str, Sequence[str]] | None = None) -> str:
    """``prompt`` with every mention of ``classes`` (:func:`class_mentions`) replaced by ``word``, nothing else.

    "a woman on the couch" for (person, sofa) -> "a nothing on the nothing"; "a hotel lounge" and "the post
    office" keep their words (those synonyms are not mentions). Grammar is left alone ("a yellow school nothing").
    """
    out, last = [], 0
    for start, end, _ in class_mentions(prompt, classes, covering):
        out += [prompt[last:start], word]
        last = end
    return "".join(out) + prompt[last:]


# --------------------------------------------------------------------------- simple prompts

# Short scenes for the "simple prompt" ablation with a little diversity; "{classes}" becomes
# e.g. "a cat in a busy street market".
SCENES = (
    "in a busy street market",
    "on a wooden table in a sunlit kitchen",
    "in a park on a rainy afternoon",
    "in a cluttered living room at night",
    "on a snowy mountain road",
    "by a lake at sunset",
    "in a crowded train station",
    "in a garden full of flowers",
)


def _class_phrase(classes: Sequence[VocabClass]) -> str:
    # the prompt names as the paper's Table VII writes them ("a photo of bus."): no article, which also keeps
    # the counterfactual grammatical ("a photo of nothing.")
    parts = [c.prompt_name for c in classes]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def template_prompts(
    classes: Sequence[VocabClass],
    n: int,
    template: str = "a photo of {classes}.",
    scenes: bool = False,
) -> list[str]:
    """``n`` prompts from ``template``: "a photo of bus." (the paper's simple prompt), "a photo of cat and dog."
    for two classes; with ``scenes`` the class phrase cycles through :data:`SCENES` ("a photo of cat in a busy
    street market.", ...)."""
    if "{classes}" not in template:
        raise ValueError(f"template {template!r} has no {{classes}} placeholder")
    if not classes:
        raise ValueError("template_prompts needs at least one class")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    phrase = _class_phrase(classes)
    variants = [f"{phrase} {scene}" for scene in SCENES] if scenes else [phrase]
    # str.replace, not str.format: other braces in a user template stay literal.
    return [template.replace("{classes}", v) for v in itertools.islice(itertools.cycle(variants), n)]


def tokenizer_counter(tokenizer) -> Callable[[str], int]:
    """Token count without BOS/EOS for a transformers (CLIP) tokenizer, for validate_prompt."""

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False, truncation=False).input_ids)

    return count
