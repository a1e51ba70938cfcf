"""Progress on long work, on the terminal only: silent when stderr is not a terminal or with ``--json``.

:class:`RunProgress` follows a matrix run's events (cells done, with an ETA;
skipped cells are taken off the total instead of counted as done, so the bar
never jumps); :class:`StageProgress` shows what a one-off job (an audit, the
adjoint grid, a triage) is doing now.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from detaudit.core.vocabulary import Status

__all__ = ["RunProgress", "StageProgress"]

_L = TypeVar("_L", bound="_Live")


class _Live:
    """A rich Progress shown while the ``with`` block runs (and not at all when disabled)."""

    _progress: Progress

    def __enter__(self: _L) -> _L:
        self._progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._progress.__exit__(kind, value, traceback)


class RunProgress(_Live):
    """A progress bar over a run's cells: ``with RunProgress(console, enabled) as p: run(..., on_event=p.on_event)``."""

    def __init__(self, console: Console, enabled: bool):
        # markup=False: descriptions hold cell ids and stages, text from outside (detaudit.render.text)
        self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("eta"), TimeRemainingColumn(), TimeElapsedColumn(),
                                  console=console, transient=True, disable=not enabled)
        self._task = self._progress.add_task("starting workers", total=None)
        self._total = 0

    def on_event(self, event: Any) -> None:
        """The runner's progress callback."""
        if event.kind == "planned":
            self._total = event.total
            self._progress.update(self._task, total=self._total, description=event.message)
        elif event.kind == "cell_finished" and event.record is not None:
            status = event.record["status"]
            if status == Status.SKIPPED:  # not work done: the ETA counts only cells that run
                self._total -= 1
                self._progress.update(self._task, total=self._total)
            else:
                self._progress.update(self._task, advance=1, description=f"{event.cell_id} {status}")


class StageProgress(_Live):
    """A spinner with the current stage: ``with StageProgress(console, enabled) as p: job(on_progress=p.update)``."""

    def __init__(self, console: Console, enabled: bool, first: str = "starting"):
        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}", markup=False), TimeElapsedColumn(),
                                  console=console, transient=True, disable=not enabled)
        self._task = self._progress.add_task(first, total=None)

    def update(self, stage: Any) -> None:
        """Show ``stage``: a string, or a probe's progress event ``{"stage", "done", "total"}``."""
        if isinstance(stage, dict):
            total = f" {stage['done']}/{stage['total']}" if stage.get("total") else ""
            stage = f"{stage['stage']}{total}"
        self._progress.update(self._task, description=str(stage))

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """Print above the spinner (a finished step of a live view)."""
        self._progress.console.print(*objects, **kwargs)
