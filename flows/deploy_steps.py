"""The Prefect pull step of prefect.yaml: where a deployment's flow run starts.

A process worker starts each flow run in a fresh temporary folder. The entrypoints (``flows/build_dataset.py:...``)
are paths relative to the working directory, so the run must first enter a MagicSeg checkout or installation. The
step tries three places, first match wins:

1. ``MAGICSEG_WORKDIR`` in the worker's environment at run time (the image sets ``/opt/magicseg``);
2. ``directory``, the same variable as it was when ``prefect deploy`` ran (empty when unset);
3. the installation the worker imports MagicSeg from (the checkout, for ``pip install -e``).

So the commands at the top of prefect.yaml work from a checkout as written, with nothing exported. A run that finds
no entrypoint anywhere stops with one line naming what it tried.
"""

from __future__ import annotations

import os

ENTRYPOINT = os.path.join("flows", "build_dataset.py")


def installed_root() -> str:
    """The folder that holds the imported ``flows`` package (a checkout, or site-packages)."""
    import flows

    return os.path.dirname(os.path.dirname(os.path.abspath(flows.__file__)))


def enter_project(directory: str = "", installed: str | None = None) -> dict[str, str]:
    """Change into the first of the places above that holds the flows; returns ``{"directory": ...}``.

    ``installed``: the third place (default: :func:`installed_root`)."""
    from magicseg_models.errors import ConfigError

    tried = [("MAGICSEG_WORKDIR", os.environ.get("MAGICSEG_WORKDIR", "")), ("prefect deploy's MAGICSEG_WORKDIR",
             directory), ("the MagicSeg installation", installed or installed_root())]
    for _, place in tried:
        if place and os.path.isfile(os.path.join(place, ENTRYPOINT)):
            os.chdir(place)
            return {"directory": place}
    looked = "; ".join(f"{what} ({place or 'unset'})" for what, place in tried)
    raise ConfigError(f"no {ENTRYPOINT} to run: looked in {looked}; set MAGICSEG_WORKDIR on the worker to the "
                      "MagicSeg checkout")
