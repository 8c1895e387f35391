"""The class vocabulary: which classes exist, their ids, and how to name them in prompts.

A class id is the class's 0-based index in the *full* vocabulary (the 1205 builtin classes, or every
class line of a custom file), never its position in a ``--classes`` selection. Datasets built from
different subsets therefore share one id space: ``cat`` is 224 whether it was built alone or with 50
other classes, so datasets can be merged and evaluated together without remapping. Manifests record
:meth:`Vocabulary.full_names` so every id can be turned back into a name.

Builtin data (``magicseg_models/data``, sources and rules in the file headers): ``vocab_1205.txt`` (LVIS v1
names + 2 VOC classes), ``lvis_v1_synonyms.tsv`` (synonyms, definitions),
``vocab_1205_voc_mapping.tsv`` (VOC names that resolve to LVIS classes, e.g. ``motorbike``), and two reviewed
tables: ``vocab_1205_detector_phrases.tsv`` (what Grounding DINO is asked for, per qualified class: "archery bow"
for ``bow (weapon)``) and ``vocab_1205_mention_synonyms.tsv`` (which LVIS synonyms count as mentions of their class
in prompt text: "couch" for sofa, but not "lounge").

No two classes of a vocabulary share a detector phrase: the detector could not tell their boxes apart.
"""

from __future__ import annotations

import difflib
import functools
import operator
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources

import fsspec

from magicseg_models.errors import AmbiguousClassError, VocabularyError

BUILTIN_SOURCE = "builtin:vocab_1205"

_QUALIFIER = re.compile(r"^(?P<base>.*?)\s*\((?P<qualifier>[^()]*)\)$")

# Names the qualifier rule cannot make readable: the 2 VOC-only classes are spelled as one word
# in VOC (and in our vocab file, to stay faithful to the source), and one LVIS name has its
# qualifier in the middle. Prompts and Grounding DINO need real words. Value: (prompt, qualifier).
_READABLE = {
    "pottedplant": ("potted plant", None),
    "tvmonitor": ("tv monitor", None),
    "monitor (computer equipment) computer monitor": ("computer monitor", "computer equipment"),
}


@dataclass(frozen=True)
class VocabClass:
    id: int  # 0-based index into the full vocabulary; the `class_ids` value written to datasets
    name: str  # canonical vocabulary name, e.g. "bus (vehicle)"
    prompt_name: str  # natural name for prompts, e.g. "bus"
    detector_phrase: str  # lower-case phrase for Grounding DINO
    hint: str | None  # disambiguation for the LLM; None when the name is unambiguous
    synonyms: tuple[str, ...] = ()  # LVIS synonyms other than the name, with spaces
    definition: str | None = None  # LVIS definition
    # what counts as this class in prompt text (each also in plural): prompt name, name, reviewed synonyms;
    # () = the prompt name only (see magicseg_models/prompts/text.py)
    mentions: tuple[str, ...] = ()


def _norm(text: str) -> str:
    return " ".join(text.split())


def _key(text: str) -> str:
    return _norm(text).lower()


def _prompt_and_qualifier(name: str) -> tuple[str, str | None]:
    text = _norm(name.replace("_", " "))
    if text.lower() in _READABLE:
        return _READABLE[text.lower()]
    match = _QUALIFIER.match(text)
    if match and match["base"]:  # a name that is only "(...)" keeps its parentheses
        return match["base"], _norm(match["qualifier"]) or None
    return text, None


def _data_lines(filename: str) -> list[str]:
    text = resources.files("magicseg_models").joinpath("data", filename).read_text("utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


@functools.lru_cache(maxsize=1)
def _lvis() -> dict[str, tuple[tuple[str, ...], str | None]]:
    """Canonical name (lower case, spaces) -> (synonyms without the name, definition)."""
    info = {}
    for line in _data_lines("lvis_v1_synonyms.tsv")[1:]:  # [0] is the column header
        _, name, synonyms, definition, *_ = line.split("\t")
        others = tuple(s.replace("_", " ") for s in synonyms.split(";") if s != name)
        info[name.replace("_", " ").lower()] = (others, definition or None)
    return info


@functools.lru_cache(maxsize=1)
def _reviewed_phrases() -> dict[str, str]:
    """Canonical name (lower case) -> reviewed detector phrase (vocab_1205_detector_phrases.tsv)."""
    rows = (line.split("\t") for line in _data_lines("vocab_1205_detector_phrases.tsv")[1:])
    return {_key(name): _norm(phrase) for name, phrase, *_ in rows}


@functools.lru_cache(maxsize=1)
def _mention_synonyms() -> dict[str, tuple[str, ...]]:
    """Canonical name (lower case) -> the text of its synonyms reviewed as mentions (vocab_1205_mention_synonyms.tsv)."""
    out: dict[str, tuple[str, ...]] = {}
    for line in _data_lines("vocab_1205_mention_synonyms.tsv")[1:]:
        name, _, matched, mention, *_ = line.split("\t")
        if mention == "yes":
            out[_key(name)] = (*out.get(_key(name), ()), _norm(matched))
    return out


@functools.lru_cache(maxsize=1)
def _voc_aliases() -> dict[str, tuple[str, ...]]:
    """LVIS canonical name (lower case, spaces) -> VOC names that mean it (resolve-only aliases:
    spellings like ``diningtable`` are good for lookup but not for prompts)."""
    aliases: dict[str, tuple[str, ...]] = {}
    for line in _data_lines("vocab_1205_voc_mapping.tsv")[1:]:
        voc_name, status, _, lvis_name, *_ = line.split("\t")
        if status == "in_LVIS":
            key = _key(lvis_name.replace("_", " "))
            aliases[key] = (*aliases.get(key, ()), voc_name)
    return aliases


def _parse_lines(
    lines: Sequence[str], source: str, where: str = "line"
) -> list[list[str]]:
    """Rows of [name, prompt_name, detector_phrase, hint] ("" = derive), checked for empty and
    duplicate names. ``where="item"`` parses a list of names: nothing is skipped there."""
    rows: list[list[str]] = []
    first_seen: dict[str, int] = {}
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        # A line holding only a tab is not blank: it is a row whose name is missing.
        is_blank = not line.strip() and "\t" not in line
        if where == "line" and (is_blank or line.lstrip().startswith("#")):
            continue
        cols = [_norm(col) for col in line.split("\t")]
        if len(cols) > 4:
            raise VocabularyError(
                f"{source} {where} {lineno}: {len(cols)} tab-separated columns, expected at most 4 "
                "(name, prompt_name, detector_phrase, hint)"
            )
        if not cols[0]:
            raise VocabularyError(f"{source} {where} {lineno}: empty class name")
        key = _key(cols[0])
        if key in first_seen:
            raise VocabularyError(
                f"{source}: duplicate class {cols[0]!r} on {where} {lineno} "
                f"(first on {where} {first_seen[key]})"
            )
        first_seen[key] = lineno
        rows.append(cols + [""] * (4 - len(cols)))
    if not rows:
        raise VocabularyError(f"{source}: no classes")
    return rows


def _build(rows: list[list[str]], source: str) -> Vocabulary:
    lvis, reviewed, mention_synonyms = _lvis(), _reviewed_phrases(), _mention_synonyms()
    drafts = []
    for name, prompt, phrase, hint in rows:
        derived, qualifier = _prompt_and_qualifier(name)
        spaced = _key(name.replace("_", " "))
        synonyms, definition = lvis.get(spaced, ((), None))
        phrase = (phrase or reviewed.get(spaced) or prompt or derived).lower()
        drafts.append((name, prompt or derived, phrase, hint, qualifier, synonyms, definition))
    _check_phrases_unique([(d[0], d[2]) for d in drafts], source)

    shared = Counter(_key(d[1]) for d in drafts)
    classes = []
    for i, (name, prompt, phrase, hint, qualifier, synonyms, definition) in enumerate(drafts):
        if not hint and definition and (qualifier or shared[_key(prompt)] > 1):
            label = f"{prompt} ({qualifier})" if qualifier else prompt
            hint = f"{label}: {definition}"
        classes.append(
            VocabClass(
                id=i,
                name=name,
                prompt_name=prompt,
                detector_phrase=phrase,
                hint=hint or None,
                synonyms=synonyms,
                definition=definition,
                mentions=tuple(dict.fromkeys(
                    [prompt, _norm(name.replace("_", " ")),
                     *mention_synonyms.get(_key(name.replace("_", " ")), ())])),
            )
        )
    return Vocabulary(classes, source)


def _check_phrases_unique(pairs: Sequence[tuple[str, str]], source: str) -> None:
    first: dict[str, str] = {}
    for name, phrase in pairs:
        key = _key(phrase)
        if key in first:
            raise VocabularyError(
                f"{source}: classes {first[key]!r} and {name!r} share the detector phrase {phrase!r}, so their "
                "boxes could not be told apart; give one its own phrase (third column of a vocabulary file)"
            )
        first[key] = name


def _split_names(names: Sequence[str] | str) -> list[str]:
    if isinstance(names, str):  # the CLI's --classes "cat, bus"
        names = names.split(",")
    return [_norm(n) for n in names if _norm(n)]


@functools.lru_cache(maxsize=1)
def _default() -> Vocabulary:
    lines = resources.files("magicseg_models").joinpath("data", "vocab_1205.txt").read_text("utf-8")
    return _build(_parse_lines(lines.splitlines(), BUILTIN_SOURCE), BUILTIN_SOURCE)


class Vocabulary:
    """An ordered set of classes; a selection keeps the ids of the vocabulary it came from."""

    def __init__(
        self,
        classes: Sequence[VocabClass],
        source: str,
        full_names: Sequence[str] | None = None,
        root_source: str | None = None,
    ):
        self.classes = tuple(classes)
        self.source = source
        self._full_names = tuple(full_names if full_names is not None else (c.name for c in classes))
        self._root_source = root_source or source  # so a selection of a selection is not "[..][..]"
        self._by_id = {c.id: c for c in self.classes}
        self._canonical = {_key(c.name): c for c in self.classes}
        self._aliases: dict[str, list[VocabClass]] = {}
        for c in self.classes:
            keys = {c.prompt_name, *c.synonyms, *_voc_aliases().get(_key(c.name), ())}
            for key in dict.fromkeys(_key(k) for k in keys):
                self._aliases.setdefault(key, []).append(c)

    @classmethod
    def default(cls) -> Vocabulary:
        """The 1205 builtin classes with LVIS synonyms and definitions (cached)."""
        return _default()

    @classmethod
    def from_file(cls, path: str) -> Vocabulary:
        """A custom vocabulary: one class per line, ``name[<TAB>prompt_name[<TAB>detector_phrase
        [<TAB>hint]]]``; ``#`` comments and blank lines are ignored. Any fsspec URL works."""
        try:
            with fsspec.open(path, "rt", encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise VocabularyError(f"vocabulary file not found: {path}") from None
        except UnicodeDecodeError as err:
            raise VocabularyError(f"vocabulary file {path} is not UTF-8 text ({err.reason})") from None
        if lines and lines[0].startswith("\ufeff"):  # editors on Windows write a BOM
            lines[0] = lines[0][1:]
        return _build(_parse_lines(lines, path), path)

    @classmethod
    def from_names(cls, names: Sequence[str], source: str = "inline") -> Vocabulary:
        """A vocabulary of exactly these names (ids 0..n-1), with derived prompt names and hints."""
        names = [names] if isinstance(names, str) else list(names)
        return _build(_parse_lines([n.replace("\t", " ") for n in names], source, "item"), source)

    @classmethod
    def load(cls, file: str | None = None, classes: Sequence[str] | str | None = None) -> Vocabulary:
        """The builtin (or ``file``) vocabulary, restricted to ``classes`` (list or "a,b,c") if given."""
        vocab = cls.default() if file is None else cls.from_file(file)
        return vocab if classes is None else vocab.select(classes)

    def select(self, names: Sequence[str] | str) -> Vocabulary:
        """The named classes, in the given order, keeping their ids."""
        picked: dict[int, tuple[str, VocabClass]] = {}
        for name in _split_names(names):
            c = self.resolve(name)
            if c.id in picked:
                raise VocabularyError(
                    f"class {c.name!r} selected twice (as {picked[c.id][0]!r} and {name!r})"
                )
            picked[c.id] = (name, c)
        if not picked:
            raise VocabularyError(f"empty class selection from {self.source}")
        root = self._root_source
        return Vocabulary(
            [c for _, c in picked.values()],
            f"{root}[{len(picked)} of {len(self._full_names)}]",
            self._full_names,
            root,
        )

    def resolve(self, name: str) -> VocabClass:
        """Canonical name, LVIS underscore form, or a prompt name/synonym naming exactly one class;
        case and whitespace do not matter."""
        spaced = _key(name.replace("_", " "))
        if not spaced:
            raise VocabularyError("empty class name")
        hit = self._canonical.get(_key(name)) or self._canonical.get(spaced)
        if hit:
            return hit
        matches = self._aliases.get(spaced, [])
        if len(matches) == 1:
            return matches[0]
        if matches:
            candidates = ", ".join(c.name for c in matches)
            raise AmbiguousClassError(f"ambiguous class {name!r}: {candidates}; use the full name")
        lookup = {k: [c] for k, c in self._canonical.items()} | self._aliases
        close = difflib.get_close_matches(spaced, lookup, n=20)
        suggestions = list(dict.fromkeys(c.name for k in close for c in lookup[k]))[:5]
        if not suggestions:
            raise VocabularyError(f"unknown class {name!r}; nothing similar in {self.source}")
        raise VocabularyError(f"unknown class {name!r}; closest: {', '.join(suggestions)}")

    by_name = resolve

    def __len__(self) -> int:
        return len(self.classes)

    def __iter__(self) -> Iterator[VocabClass]:
        return iter(self.classes)

    def __getitem__(self, class_id: int) -> VocabClass:
        """The class with this id (its id in the full vocabulary, also on a selection)."""
        try:
            return self._by_id[operator.index(class_id)]
        except KeyError:
            raise VocabularyError(f"class id {class_id} is not in {self.source}") from None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def ids(self) -> list[int]:
        return [c.id for c in self.classes]

    def full_names(self) -> list[str]:
        """Names of the full vocabulary, indexed by id (the id->name map manifests record)."""
        return list(self._full_names)

    def __repr__(self) -> str:
        return f"Vocabulary({self.source!r}, {len(self)} classes)"
