"""Run health: the figures of a build so far against ``build.health`` (plain Python, no Prefect, no Ray).

Two kinds of figure: the share of processed rows each drop reason took (``max_drop_rate``; ``all`` = every reason
together), and the share of prompted rows whose prompt came from the LLM rather than a template fallback
(``min_llm_prompt_share``, from the prompt stage's ``outcomes`` counters: ``llm`` against ``template_fallback``;
rows of the ``template`` backend chose templates and are not counted). A figure is checked once the run has
processed ``min_samples`` rows; :func:`check` raises :class:`HealthError` naming the first breached figure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from magicseg_models.config import HealthConfig
from magicseg_models.errors import HealthError

__all__ = ["Figure", "check", "figures", "llm_prompt_share"]


@dataclass(frozen=True)
class Figure:
    """One health figure: its value (None: nothing to measure yet) against its limit."""

    name: str  # "drop_rate.prompt_failed", "llm_prompt_share"
    value: float | None
    limit: float
    bound: str  # "max" or "min"
    checked: bool  # enough rows were in to hold the run to it

    @property
    def ok(self) -> bool:
        if not self.checked or self.value is None:
            return True
        return self.value <= self.limit if self.bound == "max" else self.value >= self.limit

    def as_dict(self) -> dict:
        return {"figure": self.name, "value": None if self.value is None else round(self.value, 4),
                "limit": self.limit, "bound": self.bound, "checked": self.checked, "ok": self.ok}

    def breach(self, rows: int) -> str:
        where = "above its maximum" if self.bound == "max" else "below its minimum"
        key = f"max_drop_rate.{self.name.removeprefix('drop_rate.')}" if self.bound == "max" \
            else "min_llm_prompt_share"
        return (f"run health: {self.name} is {self.value:.3f} over {rows} rows, {where} {self.limit} "
                f"(build.health.{key}); the shard was not committed")


def llm_prompt_share(outcomes: Mapping[str, int]) -> float | None:
    """``llm / (llm + template_fallback)`` of the prompt stage's outcomes; None when no row wanted an LLM prompt."""
    llm, fallback = int(outcomes.get("llm", 0)), int(outcomes.get("template_fallback", 0))
    return llm / (llm + fallback) if llm + fallback else None


def figures(config: HealthConfig, rows: int, drops: Mapping[str, int],
            prompt_outcomes: Mapping[str, int] | None = None) -> list[Figure]:
    """Every figure ``config`` limits, for ``rows`` processed rows with ``drops`` (reason -> count)."""
    checked = config.enabled and rows >= config.min_samples
    out = []
    # named reasons before "all": a breach then names its cause, not only the total
    for reason, limit in sorted(config.max_drop_rate.items(), key=lambda item: (item[0] == "all", item[0])):
        n = sum(drops.values()) if reason == "all" else drops.get(reason, 0)
        out.append(Figure(f"drop_rate.{reason}", n / rows if rows else None, limit, "max", checked))
    if config.min_llm_prompt_share is not None:
        share = llm_prompt_share(prompt_outcomes or {})
        out.append(Figure("llm_prompt_share", share, config.min_llm_prompt_share, "min", checked))
    return out


def check(config: HealthConfig, rows: int, drops: Mapping[str, int],
          prompt_outcomes: Mapping[str, int] | None = None) -> list[Figure]:
    """The figures; raises :class:`HealthError` for the first one outside its limit (when checked)."""
    found = figures(config, rows, drops, prompt_outcomes)
    for figure in found:
        if not figure.ok:
            raise HealthError(figure.breach(rows))
    return found
