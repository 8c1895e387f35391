"""Refuse a transformers checkpoint of the wrong kind before loading it.

``from_pretrained`` of one architecture on another's folder (an OWLv2 repo given to the Grounding DINO backend, a
SAM repo to the SAM 2 backend) either fails deep inside with a traceback, or - where the key names overlap -
loads what matches and initialises the rest at random with a warning in a worker's log: labels from half-random
weights. The ``model_type`` in the checkpoint's ``config.json`` says what it is; reading it costs one small file.
"""

from __future__ import annotations

from typing import Sequence

from magicseg_models.errors import MagicSegError, one_line


def check_model_type(source: str, expected: Sequence[str], *, label: str, backend: str,
                     error: type[MagicSegError]) -> str:
    """``source``'s ``model_type`` (hub id or folder), or ``error`` in one line when it is not one of ``expected``
    or its config cannot be read."""
    from transformers import AutoConfig

    try:
        kind = AutoConfig.from_pretrained(source).model_type
    except (OSError, ValueError, KeyError) as err:
        raise error(f"{label} '{source}' could not be loaded: {one_line(err)}") from None
    if kind not in expected:
        raise error(f"{label} '{source}' is a {kind} model, not the {' / '.join(expected)} that {backend} loads")
    return kind
