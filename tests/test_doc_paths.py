"""Every repository path a doc or docstring cites exists, and nothing cites a file outside the repository.

Read: ``README.md``, ``docs/*.md``, ``benchmarks/README.md``, ``deploy/README.md`` and the docstrings and comments
of every Python file in the repository's own folders. A cited path is a word that starts with one of the
repository's top-level folders (``magicseg_models/...``, ``docs/...``, ``tests/...``); a dotted module name of
ours (``magicseg_models.evaluation.readers``) must name a module, and the name after it (a class, a function)
must occur in that module. Paths with placeholders (``<kind>``, ``{name}``, ``*``) are patterns, not files.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("magicseg_models", "tasks", "flows", "tests", "docs", "benchmarks", "deploy")
PACKAGES = ("magicseg_models", "tasks", "flows")
PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./<>{}*-]*)" % "|".join(FOLDERS))
MODULE = re.compile(r"(?<![\w./-])((?:%s)(?:\.\w+)+)" % "|".join(PACKAGES))
# what a text written here must never point at: notes that live outside the repository
OUTSIDE = re.compile(r"DESIGN\.md|ray-prefect-pitfalls|pitfalls\.md|facts\.md|\.\./shared|\.\./paper|/work/")

DOCS = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"), ROOT / "benchmarks" / "README.md",
               ROOT / "deploy" / "README.md"])
SOURCES = sorted(p for folder in FOLDERS if (ROOT / folder).is_dir() for p in (ROOT / folder).rglob("*.py"))


def _python_prose(path: Path) -> str:
    """The docstrings and comments of a Python file (its code is checked by running it, not here)."""
    text = path.read_text("utf-8")
    parts = [tok.string for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                parts.append(doc)
    return "\n".join(parts)


def _texts() -> list[tuple[str, str]]:
    texts = [(str(p.relative_to(ROOT)), p.read_text("utf-8")) for p in DOCS if p.is_file()]
    return texts + [(str(p.relative_to(ROOT)), _python_prose(p)) for p in SOURCES]


TEXTS = _texts()


def _module_file(dotted: str) -> Path | None:
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _missing_paths(text: str) -> list[str]:
    missing = []
    for match in PATH.finditer(text):
        cited = match.group(1).rstrip(".,:;")
        if re.search(r"[<>{}*]", cited) or cited.endswith("/."):
            continue
        if not (ROOT / cited).exists():
            missing.append(cited)
    return missing


def _missing_modules(text: str) -> list[str]:
    missing = []
    for match in MODULE.finditer(text):
        parts = match.group(1).rstrip(".").split(".")
        known = max((n for n in range(1, len(parts) + 1) if _module_file(".".join(parts[:n]))), default=0)
        if known == 0:
            missing.append(match.group(1))
        elif known < len(parts):
            name = parts[known]
            source = _module_file(".".join(parts[:known])).read_text("utf-8")
            if not re.search(rf"\b{re.escape(name)}\b", source):
                missing.append(match.group(1))
    return missing


def test_the_texts_are_found():
    names = {name for name, _ in TEXTS}
    assert {"README.md", "docs/configuration.md", "magicseg_models/config/__init__.py"} <= names


def test_cited_paths_exist():
    wrong = {name: sorted(set(_missing_paths(text) + _missing_modules(text))) for name, text in TEXTS}
    wrong = {name: cited for name, cited in wrong.items() if cited}
    assert not wrong, "cited but not in the repository: " + "; ".join(
        f"{name}: {', '.join(cited)}" for name, cited in wrong.items())


def test_nothing_cites_files_outside_the_repository():
    wrong = {name: sorted({m.group(0) for m in OUTSIDE.finditer(text)}) for name, text in TEXTS}
    wrong = {name: found for name, found in wrong.items() if found}
    assert not wrong, "cites files outside the repository: " + "; ".join(
        f"{name}: {', '.join(found)}" for name, found in wrong.items())
