"""Helpers several test modules share (tests never import one another)."""

from __future__ import annotations

import itertools
import re


def varied_responder():
    """Like a sampling LLM: every answer differs (10 numbered prompts naming the quoted classes)."""
    counter = itertools.count()

    def respond(messages):
        n = next(counter)
        names = list(dict.fromkeys(re.findall(r'"([^"]+)"', messages[-1]["content"])))
        subject = " and a ".join(names)
        return "\n".join(f"{i}. A {subject} in scene {n}-{i}, with a detailed busy background" for i in range(1, 11))

    return respond


def fresh_run_env(tmp_path, **extra: str) -> dict:
    """The environment of a build run in a subprocess: the repository importable, Prefect's local mode in a
    private home, and a local Ray of its own (no PREFECT_API_URL or RAY_ADDRESS inherited)."""
    import os
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PREFECT_HOME": str(tmp_path / "prefect"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           **extra}
    env.pop("PREFECT_API_URL", None)
    env.pop("RAY_ADDRESS", None)
    return env


def server_run_env(tmp_path, **extra: str) -> dict:
    """Like :func:`fresh_run_env`, but the run reports to this session's Prefect API (the ``prefect_api`` fixture)
    instead of starting a local Prefect of its own (a server start-up per run): for tests whose point is not
    Prefect's local mode."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise RuntimeError("server_run_env needs the prefect_api fixture (a Prefect API for the session)")
    return {**fresh_run_env(tmp_path, **extra), "PREFECT_API_URL": url}
