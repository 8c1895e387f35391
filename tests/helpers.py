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
