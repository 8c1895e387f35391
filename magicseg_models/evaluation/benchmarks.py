"""Class lists, label numbering and text-prompt names of the evaluation benchmarks.

Label numbering (the label space the readers in :mod:`.readers` produce):

- ``voc``: 0 = background, 1..20 = ``voc20.txt`` line N, 255 = ignore (object borders).
- ``context``: 0 = background, 1..59 = ``context59.txt`` line N (mmseg's ``PascalContextDataset59``
  order), 255 = ignore. mmseg trains with ``reduce_zero_label=True`` (raw 0 ignored, raw N -> N-1);
  we evaluate the "59 + background" setting of the paper (GroupViT protocol): raw 0 is background
  class 0 and raw 1..59 are classes 1..59, so background pixels are scored.
- ``coco-object``: 0 = background (all stuff and unlabeled pixels), 1..80 = ``coco_object80.txt``
  line N; built from COCO-Stuff-164k PNGs with ``coco_object80_ids.tsv``. No pixel is ignored.
- ``lvis``: 0 = background (covered by no instance), 1..1203 = LVIS v1 category id (``lvis_v1.txt``
  line N). Labels are int64 and ``ignore_index`` is -1: 255 is a real LVIS class (id 255) here.
- ``oiv7-points``: no dense labels and no background class; point labels carry a 0-based index
  into ``names`` (the classes that occur in the point-label CSV, sorted by their MID).

Prompt names (``prompt_names`` setting; "default" or one of :func:`prompt_columns`):

- ``voc``: columns of ``voc_prompt_names.tsv``. Default ``ZegCLIP``: the names MagicSeg's released
  fork of ZegCLIP encodes (identical to the canonical VOC names), so paper numbers are reproduced.
- ``context``: columns of ``context59_prompt_names.tsv``. Default ``mmseg_name`` (canonical; TCL and
  ZegCLIP-style configs encode these verbatim).
- ``coco-object``: ``name`` (default, the canonical COCO names) or ``SCLIP_cls_coco_object``
  (SCLIP's expanded names; its background line becomes :attr:`BenchmarkClasses.background_prompts`).
- ``lvis``: ``text`` (default: underscores to spaces, qualifier kept, e.g. "bat (animal)": unique per
  class and equal to the project vocabulary's canonical names), ``name`` (verbatim LVIS, e.g.
  ``bat_(animal)``), ``base`` (the project vocabulary's prompt name, qualifier dropped, e.g. "bat":
  not unique) or ``synonyms`` (all LVIS synonyms as alternatives).
- ``oiv7-points``: ``DisplayName`` (default) from ``oidv7-class-descriptions.csv``.

Some columns hold several names per class separated by ``", "`` (SCLIP-style: score a class by the
max over its names); :attr:`BenchmarkClasses.prompt_alternatives` splits them, one tuple per class.

Data files live in ``magicseg_models/data/benchmarks`` (sources in their header comments); the LVIS
synonyms come from ``magicseg_models/data/lvis_v1_synonyms.tsv``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib import resources
from os import PathLike

from magicseg_models.config import BENCHMARKS
from magicseg_models.errors import ConfigError
from magicseg_models.evaluation.oiv7_csv import oiv7_files, read_oiv7_points

IGNORE_INDEX = 255

DEFAULT_PROMPT_COLUMN = {
    "voc": "ZegCLIP",
    "context": "mmseg_name",
    "coco-object": "name",
    "lvis": "text",
    "oiv7-points": "DisplayName",
}

# Columns whose cells hold several names separated by ", ".
_MULTI_NAME = {"SCLIP_cls_voc20", "SCLIP_cls_context59", "SCLIP_cls_coco_object", "synonyms"}
_STATIC_COLUMNS = {
    "coco-object": ("name", "SCLIP_cls_coco_object"),
    "lvis": ("text", "name", "base", "synonyms"),
    "oiv7-points": ("DisplayName",),
}
_TSV = {"voc": ("voc_prompt_names.tsv", "voc20.txt"), "context": ("context59_prompt_names.tsv", "context59.txt")}


@dataclass(frozen=True)
class BenchmarkClasses:
    """The classes of one benchmark and the names the text encoder gets for them."""

    benchmark: str
    names: tuple[str, ...]  # canonical names in label order (label k = names[k-1] with background)
    prompt_names: tuple[str, ...]  # one cell per class, as in the chosen column
    prompt_column: str  # the resolved column ("default" resolved to its column)
    has_background: bool  # label 0 is background and names start at label 1
    ignore_index: int = IGNORE_INDEX
    multi_name: bool = False  # prompt cells hold ", "-separated alternatives
    background_prompts: tuple[str, ...] = ()  # extra background names some columns define (SCLIP)
    mids: tuple[str, ...] = ()  # oiv7-points: the OpenImages label MID of each class

    @property
    def num_classes(self) -> int:
        """Size of the label space (background included where the benchmark has it)."""
        return len(self.names) + int(self.has_background)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names indexed by label value ("background" at 0 where the benchmark has it)."""
        return (("background",) if self.has_background else ()) + self.names

    @property
    def prompt_alternatives(self) -> tuple[tuple[str, ...], ...]:
        """Per class, the names to encode: several for multi-name columns, else the one cell."""
        if not self.multi_name:
            return tuple((p,) for p in self.prompt_names)
        return tuple(tuple(n.strip() for n in p.split(", ") if n.strip()) for p in self.prompt_names)


def _data_text(filename: str) -> str:
    return resources.files("magicseg_models").joinpath("data", "benchmarks", filename).read_text("utf-8")


def _lines(filename: str) -> list[str]:
    """Data lines of a vocab file: ``#`` header comments and blank lines dropped, cells verbatim."""
    return [
        line.rstrip("\r")
        for line in _data_text(filename).split("\n")
        if line.strip() and not line.startswith("#")
    ]


@functools.lru_cache(maxsize=None)
def _names(filename: str) -> tuple[str, ...]:
    return tuple(_lines(filename))


@functools.lru_cache(maxsize=None)
def data_table(filename: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(header, rows) of a TSV whose first data line is the column header."""
    header, *rows = (tuple(line.split("\t")) for line in _lines(filename))
    for n, row in enumerate(rows, 1):
        if len(row) != len(header) or row[0] != str(n):
            raise AssertionError(f"{filename}: row {n} is malformed: {row}")
    return header, tuple(rows)


def prompt_columns(name: str) -> tuple[str, ...]:
    """The prompt-name columns a benchmark offers (``"default"`` picks one of them)."""
    name = _check_benchmark(name)
    if name in _TSV:
        return data_table(_TSV[name][0])[0][1:]
    return _STATIC_COLUMNS[name]


def _check_benchmark(name: str) -> str:
    if name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return name


def _resolve_column(name: str, prompt_names: str) -> str:
    columns = prompt_columns(name)
    if prompt_names == "default":
        return DEFAULT_PROMPT_COLUMN[name]
    if prompt_names in columns:
        return prompt_names
    folded = [c for c in columns if c.casefold() == str(prompt_names).casefold()]
    if len(folded) == 1:
        return folded[0]
    raise ConfigError(
        f"unknown prompt_names {prompt_names!r} for benchmark {name}; "
        f"available: default (= {DEFAULT_PROMPT_COLUMN[name]}), {', '.join(columns)}"
    )


def benchmark_classes(
    name: str, prompt_names: str = "default", data_root: str | PathLike | None = None
) -> BenchmarkClasses:
    """The classes of benchmark ``name`` with the prompt names of column ``prompt_names``.

    ``data_root`` is needed only for ``oiv7-points``, whose classes come from the CSVs there (see
    :class:`magicseg_models.evaluation.readers.OIV7PointsReader`; parsing the point CSV is slow,
    so prefer ``open_benchmark(...).classes`` when a reader is open anyway).
    """
    name = _check_benchmark(name)
    column = _resolve_column(name, prompt_names)
    if name == "oiv7-points":
        _, points, classes = oiv7_files(data_root)
        parsed = read_oiv7_points(points, classes)
        return oiv7_benchmark_classes(parsed.mids, parsed.names, column)
    return _static_classes(name, column)


@functools.lru_cache(maxsize=None)
def _static_classes(name: str, column: str) -> BenchmarkClasses:
    background: tuple[str, ...] = ()
    if name in _TSV:
        table_file, names_file = _TSV[name]
        header, rows = data_table(table_file)
        names = _names(names_file)
        canonical = [row[1] for row in rows]
        if canonical != list(names):
            raise AssertionError(f"{table_file} column {header[1]} differs from {names_file}")
        prompts = tuple(row[header.index(column)] for row in rows)
    elif name == "coco-object":
        names = _names("coco_object80.txt")
        if column == "name":
            prompts = names
        else:  # SCLIP: line 1 = background words, lines 2..81 = labels 1..80
            background_line, *prompts_list = _names("coco_object_prompt_names_sclip.txt")
            background = tuple(n.strip() for n in background_line.split(", ") if n.strip())
            prompts = tuple(prompts_list)
    else:  # lvis
        names = _names("lvis_v1.txt")
        prompts = _lvis_prompts(names, column)
    if len(prompts) != len(names):
        raise AssertionError(f"{name}: {len(prompts)} prompt names for {len(names)} classes")
    return BenchmarkClasses(
        benchmark=name,
        names=names,
        prompt_names=prompts,
        prompt_column=column,
        has_background=True,
        ignore_index=-1 if name == "lvis" else IGNORE_INDEX,
        multi_name=column in _MULTI_NAME,
        background_prompts=background,
    )


def _text(name: str) -> str:
    return " ".join(name.replace("_", " ").split())


def _lvis_prompts(names: tuple[str, ...], column: str) -> tuple[str, ...]:
    if column == "name":
        return names
    if column == "text":
        return tuple(_text(n) for n in names)
    if column == "base":
        from magicseg_models.vocabulary import Vocabulary

        vocab = Vocabulary.default()
        return tuple(vocab.resolve(n).prompt_name for n in names)
    # synonyms: the LVIS synonym list (name first), as text, ", "-separated
    text = resources.files("magicseg_models").joinpath("data", "lvis_v1_synonyms.tsv").read_text("utf-8")
    rows = [line.split("\t") for line in text.splitlines() if line.strip() and not line.startswith("#")][1:]
    by_id = {int(row[0]): row for row in rows}
    out = []
    for class_id, name in enumerate(names, 1):
        row = by_id[class_id]
        if row[1] != name:
            raise AssertionError(f"lvis_v1_synonyms.tsv id {class_id} is {row[1]!r}, lvis_v1.txt says {name!r}")
        synonyms = [_text(s) for s in row[2].split(";") if s]
        ordered = list(dict.fromkeys([_text(name), *synonyms]))
        out.append(", ".join(ordered))
    return tuple(out)


def oiv7_benchmark_classes(
    mids: tuple[str, ...], display_names: tuple[str, ...], column: str = "DisplayName"
) -> BenchmarkClasses:
    """OpenImages-v7 point classes (built by the reader from the CSVs at the data root)."""
    column = _resolve_column("oiv7-points", column)
    if len(mids) != len(display_names):
        raise AssertionError(f"{len(mids)} MIDs for {len(display_names)} names")
    return BenchmarkClasses(
        benchmark="oiv7-points",
        names=display_names,
        prompt_names=display_names,
        prompt_column=column,
        has_background=False,
        mids=mids,
    )
