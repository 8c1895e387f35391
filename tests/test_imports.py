"""The import structure: no circle anywhere, and layers that only point down (flows -> tasks -> magicseg_models).

The import graph is read from the source with ``ast`` rather than by importing every module in a fresh
interpreter: it takes a fraction of a second instead of about 18 (loading torch, diffusers, Prefect and Ray once,
then re-running each of our modules), and it is stricter, since it also sees the imports inside functions (a lazy
back-import is still a circle, one that only hides until the function runs). Without a cycle every module
imports on its own, in any order. ``if TYPE_CHECKING:`` blocks never run and are left out.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("magicseg_models", "tasks", "flows")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> dict[str, int]:
    """Every module this one imports (ours and third-party top-level names) -> the line of its first import."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        ours = target
        while ours and ours not in MODULES:
            ours = ours.rpartition(".")[0]
        out.setdefault(ours or target.split(".")[0], line)

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only: never executed
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, child.lineno)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package[: len(package) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, child.lineno)
            visit(child)

    visit(ast.parse(path.read_text("utf-8"), str(path)))
    out.pop(name, None)
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycle() -> list[str] | None:
    """One import cycle among our modules (as a path that returns to its start), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in GRAPH[node]:
            if target not in MODULES:
                continue
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = walk(target)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for name in MODULES:
        if name not in state:
            found = walk(name)
            if found:
                return found
    return None


def test_the_packages_have_modules_to_check():
    assert {"magicseg_models.config", "magicseg_models.evaluation.readers", "tasks.executor", "flows.cli"} \
        <= set(MODULES)


def test_no_import_circle_anywhere():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(
        f"{a} (line {GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_layers_point_down():
    """flows -> tasks -> magicseg_models: the library never imports Prefect, Ray or the layers above it."""
    for name, imported in GRAPH.items():
        layer = name.split(".")[0]
        banned = {"magicseg_models": {"prefect", "ray", "tasks", "flows"}, "tasks": {"flows"}}.get(layer, set())
        wrong = sorted(t for t in imported if t.split(".")[0] in banned)
        assert not wrong, f"{name} imports {wrong[0]} (line {imported[wrong[0]]}): layers are flows -> tasks -> " \
                          "magicseg_models"


# the library's modules that users import outside a build, and what each may not load at run time (a static import
# graph cannot see a third-party package loading Prefect or Ray)
RUNTIME_BANS = {
    "magicseg_models.evaluation": ("prefect", "ray", "torch"),  # scoring saved label maps needs no torch
    "magicseg_models.evaluation.readers": ("prefect", "ray", "torch"),
    "magicseg_models.generation": ("prefect", "ray"),
    "magicseg_models.prompts.openai_writer": ("prefect", "ray"),
    "magicseg_models.dataset.preview": ("prefect", "ray"),
}


def test_library_modules_load_no_orchestration_at_run_time():
    """One interpreter imports the modules in order (the torch-free ones first) and checks after each import what
    it has loaded so far."""
    code = ("import importlib, json, sys\n"
            "for name, banned in json.loads(sys.argv[1]).items():\n"
            "    importlib.import_module(name)\n"
            "    bad = sorted({m.split('.')[0] for m in sys.modules} & set(banned))\n"
            "    assert not bad, f'importing {name} loaded {bad}'\n")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(RUNTIME_BANS)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
