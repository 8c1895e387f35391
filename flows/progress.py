"""Terminal progress bars for long commands (build, inspect, train, eval).

Shown on stderr when it is a terminal, so piped output and CI logs stay clean; ``MAGICSEG_PROGRESS=1`` forces the
bar (useful under ``script`` or in a notebook), ``MAGICSEG_PROGRESS=0`` hides it. The Prefect UI gets its own
progress artifact; this is the same figure for the person at the terminal.
"""

from __future__ import annotations

import os
import sys


def progress_enabled() -> bool:
    forced = os.environ.get("MAGICSEG_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "yes", "always"):
        return True
    if forced in ("0", "false", "no", "never"):
        return False
    return sys.stderr.isatty()


class TerminalProgress:
    """One rich progress bar; every method is a no-op when progress is disabled."""

    def __init__(self, label: str, total: int | None = None):
        self.label = label
        self.total = total
        self._bar = None
        self._task = None
        if progress_enabled():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
                TimeRemainingColumn

            console = Console(stderr=True, force_terminal=True)
            self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                                 console=console, transient=False, refresh_per_second=2)
            self._bar.start()
            self._task = self._bar.add_task(label, total=total, info="")

    def update(self, done: int, total: int | None = None, info: str = "") -> None:
        if self._bar is None:
            return
        if total is not None:
            self.total = total
        self._bar.update(self._task, completed=done, total=self.total, info=info)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "TerminalProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_callback(label: str):
    """A ``callback(done, total)`` drawing a bar, or None when progress is disabled (callers skip the work)."""
    if not progress_enabled():
        return None
    bar = TerminalProgress(label)

    def update(done: int, total: int) -> None:
        bar.update(done, total)
        if done >= total:
            bar.close()

    return update
