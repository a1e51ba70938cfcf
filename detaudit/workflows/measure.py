"""Measure cells for a triage: run them in workers and say, per cell, whether the finding is still there.

Every measurement goes through the runner (:func:`run_cells`), each cell in its
own worker process like any other. What "the finding" means depends on the
triage mode: bits that differ run to run, a gap to the baseline, a tensor
beyond its limit of float64, or a failed adjoint test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.analysis.findings import relative_error
from detaudit.analysis.summary import cell_facts
from detaudit.analysis.verdicts import ADJOINT_LIMIT_EPS
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Cell, Config
from detaudit.core.knowledge import judge_known_bugs
from detaudit.core.vocabulary import Status, TriageMode
from detaudit.engine.runner import run_cells
from detaudit.workflows.targets import accuracy_limit, percent

__all__ = ["Measurement", "baseline_for", "measure_cells"]


@dataclasses.dataclass
class Measurement:
    """What one measured cell showed for the finding triaged."""

    differs: bool
    max_ulp: int
    detail: str
    tensors: list[str]
    measurable: bool = True
    errors: dict[str, float] = dataclasses.field(default_factory=dict)  # vs float64, per tensor
    ops: dict[str, str] = dataclasses.field(default_factory=dict)  # the op behind each tensor
    known: list[dict[str, str]] = dataclasses.field(default_factory=list)  # known upstream bugs it shows
    adjoint_eps: float | None = None



def baseline_for(cell: Cell, config: Config) -> Cell:
    return Cell(cell.layer, config.baseline, cell.seed, cell.repeats)


def _ops(rows: pd.DataFrame) -> dict[str, str]:
    return {str(r["tensor"]): str(r["op"]) for r in rows.to_dict("records")
            if isinstance(r.get("tensor"), str) and isinstance(r.get("op"), str) and r["op"]}


def _known(rows: pd.DataFrame, onednn: str, tf_version: str | None) -> list[dict[str, str]]:
    """The known upstream bugs the cell's reference and adjoint rows show."""
    out: dict[str, dict[str, str]] = {}
    checked = rows[rows["comparison"].isin([ComparisonKind.REFERENCE.value, ComparisonKind.ADJOINT.value])]
    for row in checked.to_dict("records"):
        for bug, shows in judge_known_bugs(cell_facts(row, onednn, tf_version)):
            if shows:
                out[bug.id] = {"id": bug.id, "title": bug.title, "link": bug.link, "reference": bug.reference(),
                               "effect": bug.effect, "workaround": bug.workaround}
    return list(out.values())


def _errors(rows: pd.DataFrame) -> dict[str, float]:
    """Each tensor's error against float64, from the reference rows among ``rows``."""
    reference = rows[rows["comparison"] == ComparisonKind.REFERENCE.value]
    return {str(r["tensor"]): e for r in reference.to_dict("records") if (e := relative_error(r)) is not None}


def _accuracy(cell: Cell, rows: pd.DataFrame, mode: TriageMode, focus: str | None) -> tuple[bool, int, str, dict]:
    """Whether ``focus`` (or any tensor) is beyond its limit of float64 (or the adjoint test fails)."""
    limit = accuracy_limit(cell.settings.precision)
    errors = _errors(rows)
    if mode is TriageMode.ADJOINT:
        eps = rows[rows["comparison"] == ComparisonKind.ADJOINT.value]["adjoint_eps"].dropna()
        value = float(eps.max()) if len(eps) else None
        detail = ("adjoint test not measured" if value is None
                  else f"adjoint test {value:.3g} eps (limit {ADJOINT_LIMIT_EPS:g})")
        return value is not None and value > ADJOINT_LIMIT_EPS, 0, detail, errors
    beyond = [t for t, e in errors.items() if e > limit and (focus is None or t == focus)]
    shown = [focus] if focus in errors else sorted(errors, key=lambda t: -errors[t])[:1]
    detail = "; ".join(f"{t} {percent(errors[t])} off float64 (limit {percent(limit)})" for t in shown) or \
        "no float64 reference for this layer"
    ref = rows[(rows["comparison"] == ComparisonKind.REFERENCE.value) & rows["tensor"].isin(shown)]["max_ulp"].dropna()
    return bool(beyond), int(ref.max()) if len(ref) else 0, detail, errors


def measure_cells(cells: list[Cell], mode: TriageMode, config: Config, work: Path, label: str,
             on_event: Callable[[Any], None] | None = None, focus: str | None = None,
             onednn: str = "", tf_version: str | None = None) -> dict[str, Measurement]:
    """Run cells (with their baselines for a drift) in workers; say per cell whether the finding is there."""
    todo = list(cells) + ([baseline_for(c, config) for c in cells] if mode is TriageMode.DRIFT else [])
    table = run_cells(todo, config, out=work, run_id=label, on_event=on_event)
    deciding = {TriageMode.REPEAT: ComparisonKind.deciding_determinism(),
                TriageMode.DRIFT: (ComparisonKind.BASELINE.value,)}
    out = {}
    for cell in cells:
        own = table[table["cell_id"] == cell.cell_id]
        ops = _ops(own[own["comparison"] == ComparisonKind.REPEAT.value])
        rows = own[own["comparison"].isin(deciding.get(mode, ComparisonKind.deciding_determinism()))]
        failed = rows[rows["status"] != Status.OK.value]
        if not failed.empty or rows.empty:
            message = failed["message"].iloc[0] if not failed.empty else "no comparison"
            out[cell.cell_id] = Measurement(False, 0, f"not measurable: {message}"[:200], [], False, ops=ops)
            continue
        path = onednn if cell.settings.onednn == "default" else cell.settings.onednn  # the path it ran on
        known = _known(own, path, tf_version)
        adjoint = own[own["comparison"] == ComparisonKind.ADJOINT.value]["adjoint_eps"].dropna()
        eps = float(adjoint.max()) if len(adjoint) else None
        if mode.judged_by_accuracy:
            differs, ulp, detail, errors = _accuracy(cell, own, mode, focus)
            out[cell.cell_id] = Measurement(differs, ulp, detail, [focus] if focus and differs else [], True,
                                            errors, ops, known, eps)
            continue
        differing = rows[rows["bitwise_equal"] == False]  # noqa: E712
        errors = _errors(own)
        max_ulp = int(differing["max_ulp"].max()) if not differing.empty else 0
        detail = ", ".join(f"{r['tensor']} {int(r['n_mismatch'])}/{int(r['n_elements'])} max {int(r['max_ulp'])} ULP"
                           for r in differing.to_dict("records"))
        repeats = differing["n_repeats_differ"].dropna()
        if mode is TriageMode.REPEAT and len(repeats):
            detail = f"{int(repeats.max())} of {cell.repeats - 1} repeats differ: {detail}"
        out[cell.cell_id] = Measurement(not differing.empty, max_ulp, detail or "identical",
                                        list(differing["tensor"]), True, errors, ops, known, eps)
    for baseline in todo[len(cells):]:  # a drift's other side: its errors against float64, for "which is closer"
        if baseline.cell_id not in out:
            out[baseline.cell_id] = Measurement(False, 0, "the baseline", [], True,
                                                _errors(table[table["cell_id"] == baseline.cell_id]))
    return out
