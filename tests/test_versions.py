"""Library versions: the minimums the code checks equal pyproject's lower bounds, and an older library stops the
import (and the CLI) with one line naming the version needed, not a TypeError mid-run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from magicseg_models.versions import MINIMUM_VERSIONS, too_old

ROOT = Path(__file__).resolve().parents[1]


def _lower_bounds() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    bounds = {}
    for dep in deps:
        match = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*>=\s*([0-9.]+)", dep)
        if match:
            bounds[match.group(1).lower().replace("-", "_")] = match.group(2)
    return bounds


def test_checked_minimums_are_pyprojects_lower_bounds():
    bounds = _lower_bounds()
    for name, minimum in MINIMUM_VERSIONS.items():
        assert bounds.get(name) == minimum, (name, bounds.get(name), minimum)
    assert too_old() == []  # the environment the tests run in is a supported one


def _old_transformers(tmp_path: Path) -> dict:
    """An environment whose transformers reports 4.46.3 (a distribution record first on the path)."""
    info = tmp_path / "transformers-4.46.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: transformers\nVersion: 4.46.3\n")
    return {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


NEEDED = MINIMUM_VERSIONS["transformers"]
LINE = f"magicseg needs transformers>={NEEDED} (installed: 4.46.3): pip install -U 'transformers>={NEEDED}'"


def test_an_old_transformers_stops_the_import_with_one_line(tmp_path):
    env = _old_transformers(tmp_path)
    result = subprocess.run([sys.executable, "-c", "import magicseg_models.config"], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"magicseg_models.versions.LibraryVersionError: {LINE}"


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "flows.cli", "models"], capture_output=True, text=True,
                            env=_old_transformers(tmp_path), cwd=ROOT, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"magicseg: error: {LINE}"]
