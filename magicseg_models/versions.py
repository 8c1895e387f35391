"""The library versions the code runs on, checked when ``magicseg_models`` is imported.

An older transformers (4.x) does not fail at import: it fails mid-run, deep inside training, with a TypeError
(its ``CLIPEncoderLayer`` wants a ``causal_attention_mask`` and returns a tuple). Checking the installed versions
first (``importlib.metadata`` only: no heavy import) turns that into one line naming what to install. The
minimums equal the lower bounds in ``pyproject.toml`` (a test keeps them equal).
"""

from __future__ import annotations

import re
from importlib import metadata

from magicseg_models.errors import MagicSegError

# the oldest releases the test suite passes on (torch: not tested below the pinned release); pyproject.toml says why
MINIMUM_VERSIONS: dict[str, str] = {
    "torch": "2.4",
    "transformers": "5.23",
    "diffusers": "0.37",
    "huggingface_hub": "1.32",
    "accelerate": "1.0",
    "openai": "1.45",  # the first release that sends max_completion_tokens
}


class LibraryVersionError(MagicSegError, ImportError):
    """An installed library is older than the code needs; the message says which and how to upgrade."""


def _release(version: str) -> tuple[int, ...]:
    """``"5.0.0rc1"`` -> (5, 0, 0): the release numbers, enough to compare against a minimum."""
    match = re.match(r"\d+(\.\d+)*", version.strip())
    return tuple(int(p) for p in match.group(0).split(".")) if match else (0,)


def _at_least(installed: str, minimum: str) -> bool:
    a, b = _release(installed), _release(minimum)
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)) >= b + (0,) * (width - len(b))


def too_old(minimums: dict[str, str] = MINIMUM_VERSIONS) -> list[tuple[str, str, str]]:
    """(distribution, installed, minimum) of every installed library older than its minimum."""
    found = []
    for name, minimum in minimums.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # missing altogether: its import fails with its own clear ImportError
        if not _at_least(installed, minimum):
            found.append((name, installed, minimum))
    return found


def check_versions() -> None:
    """Raise :class:`LibraryVersionError` (one line) when an installed library is too old."""
    old = too_old()
    if old:
        need = ", ".join(f"{name}>={minimum} (installed: {installed})" for name, installed, minimum in old)
        pins = " ".join(f"'{name}>={minimum}'" for name, _, minimum in old)
        raise LibraryVersionError(f"magicseg needs {need}: pip install -U {pins}")
