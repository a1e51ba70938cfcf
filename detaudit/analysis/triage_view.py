"""The view model of a triage run: every decision made once, for the terminal, HTML and JSON.

Pure Python. :class:`TriageView` reads a stored triage (triage.json) and says
what to show per triaged cell: the finding in words, the op behind it, what
each setting changed, the answer to the mode's question (labelled for the
mode), the upstream state, the cause, the minimal case and the files; and the
run's outcome. Renderers only format it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from detaudit.core.vocabulary import RunStatus, ToggleOutcome, TriageMode

__all__ = ["Toggle", "TriageView", "TriagedCell"]

NOT_REPORTED = "not yet reported"


@dataclasses.dataclass(frozen=True)
class Toggle:
    """One setting changed on its own, and what that did to the finding."""

    setting: str  # ``axis=value``
    outcome: ToggleOutcome | str  # a str only for an outcome this version does not know (an older run's)
    max_ulp: int | None
    detail: str


def _outcome(word: Any) -> ToggleOutcome | str:
    try:
        return ToggleOutcome(word)
    except ValueError:
        return str(word)


def _mode(word: Any) -> TriageMode:
    try:
        return TriageMode(word)
    except ValueError:
        return TriageMode.REPEAT  # the only mode triage had before modes were stored


def _title(data: dict[str, Any]) -> str:
    """``Conv2DTranspose(filters=8, ...) on [4, 16, 16, 8] [xla=on, seed=0]`` from a stored cell, else its id."""
    from detaudit.core.config import Cell
    from detaudit.errors import ConfigError

    try:
        cell = Cell.from_dict(data["cell"])
    except (ConfigError, KeyError, TypeError, ValueError):
        return str(data.get("cell_id", "?"))
    return f"{cell.layer.describe()} [{cell.settings.label()}, seed={cell.seed}]"


@dataclasses.dataclass(frozen=True)
class TriagedCell:
    """One triaged cell as every renderer shows it; ``reproduced`` False leaves the rest empty."""

    cell_id: str
    title: str
    mode: TriageMode
    reproduced: bool
    tensor: str = ""
    confirmed: str = ""
    op: str = ""
    question: str = ""
    toggles: tuple[Toggle, ...] = ()
    answer_label: str = ""  # what the answer is to this mode's question: removed by, fixed by, closer
    answer: str = ""
    upstream: str = ""  # the issue of a reported known bug, else "not yet reported"
    cause: str = ""
    fix: str = ""
    source: str = ""
    minimal: str = ""
    shrunk: str = ""
    repro: str = ""  # the command that runs the reproducer
    repro_is_short: bool = False
    repro_full: str = ""
    report: str = ""
    steps: tuple[dict[str, Any], ...] = ()

    @property
    def finding(self) -> str:
        """``run-to-run difference in grad_kernel: 3/8 elements differ ...``."""
        return f"{self.mode.description} in {self.tensor or 'the pass'}: {self.confirmed}"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TriagedCell:
        """A cell of triage.json."""
        mode, title = _mode(data.get("mode")), _title(data)
        if not data.get("reproduced"):
            return cls(str(data.get("cell_id", "?")), title, mode, False)
        explanation = data.get("explanation") or {}
        removed = ", ".join(data.get("removed_by") or []) or "no single setting"
        if mode is TriageMode.DRIFT:
            label, answer = "Closer to float64", data.get("closer") or "not known (no float64 reference)"
        elif mode.judged_by_accuracy:
            label, answer = "Fixed by (precision and device kept)", removed
        else:
            label, answer = "Removed by", removed
        toggles = tuple(Toggle(f"{t.get('axis')}={t.get('value')}", _outcome(t.get("outcome")), t.get("max_ulp"),
                               str(t.get("detail") or "")) for t in data.get("toggles") or [])
        return cls(
            cell_id=str(data["cell_id"]), title=title, mode=mode, reproduced=True, tensor=str(data.get("tensor") or ""),
            confirmed=str((data.get("confirmed") or {}).get("detail", "")), op=str(data.get("op") or ""),
            question=str(data.get("question") or mode.question), toggles=toggles, answer_label=label, answer=answer,
            upstream=str(explanation.get("known")) if explanation.get("reported") else NOT_REPORTED,
            cause=str(explanation.get("cause", "")), fix=str(explanation.get("fix", "")),
            source=str(explanation.get("source") or ""), minimal=str(data.get("minimal_description", "")),
            shrunk=str(data.get("shrunk", "")), repro=f"python {data['repro']}" if data.get("repro") else "",
            repro_is_short=bool(data.get("repro_is_short")),
            repro_full=f"python {data['repro_full']}" if data.get("repro_full") else "",
            report=str(data.get("report") or ""), steps=tuple(data.get("steps") or []))


@dataclasses.dataclass(frozen=True)
class TriageView:
    """Everything a renderer shows of one triage run."""

    source_run: str
    environment: dict[str, Any]
    cells: tuple[TriagedCell, ...]
    other_findings: tuple[str, ...]  # one line per other finding of the source run, with its cell id

    @property
    def reproduced(self) -> int:
        return sum(cell.reproduced for cell in self.cells)

    @property
    def status(self) -> RunStatus:
        """PASS when every triaged cell reproduced (and was explained); INCOMPLETE otherwise."""
        return RunStatus.PASS if self.cells and self.reproduced == len(self.cells) else RunStatus.INCOMPLETE

    @property
    def headline(self) -> str:
        return f"{self.reproduced} of {len(self.cells)} cell(s) reproduced and explained"

    @classmethod
    def from_result(cls, result: dict[str, Any]) -> TriageView:
        """The view of a stored triage (triage.json)."""
        return cls(source_run=str(result.get("source_run", "?")), environment=dict(result.get("environment") or {}),
                   cells=tuple(TriagedCell.from_dict(c) for c in result.get("cells") or []),
                   other_findings=tuple(str(o.get("line", "")) for o in result.get("other_findings") or []))
