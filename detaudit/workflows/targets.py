"""What triage looks at: every finding of a run as a target (cell, kind of finding, tensor), worst first.

Pure pandas; no TensorFlow. A finding is one of four kinds (:class:`TriageMode`):
run-to-run nondeterminism, a drift against the baseline, an error against the
float64 reference beyond the compute dtype's limit, or a failed adjoint test.
:func:`pick_targets` orders them: a broken expectation first, then the largest
error against float64 (a KNOWN bug is a target like any other), then failed
adjoint tests, then drifts by their scaled ULP gap.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pandas as pd

from detaudit.analysis.findings import relative_error
from detaudit.analysis.runs import StoredRun
from detaudit.analysis.summary import build_summary
from detaudit.analysis.verdicts import ADJOINT_LIMIT_EPS, Verdict, cell_label, settings_of
from detaudit.core.axes import AXES, compute_dtype
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.vocabulary import Status, TriageMode
from detaudit.errors import UsageError

__all__ = ["ACCURACY_LIMITS", "Target", "TriageMode", "accuracy_limit", "distinct", "percent", "pick_targets", "resolve_cell_id",
           "target_for_cell"]

#: Largest error against the float64 truth (over the truth's largest magnitude) a tensor may have in each compute
#: dtype: torch.testing.assert_close's rtol for the 16-bit types; for float32 1e-5, not its 1.3e-6, because a
#: gradient summing thousands of terms correctly rounded per step reaches 1e-6 (measured: a bias gradient, 1.2e-6).
ACCURACY_LIMITS = {"bfloat16": 1.6e-2, "float16": 1e-3, "float32": 1e-5, "float64": 1e-12}


def percent(fraction: float | None) -> str:
    """A relative error in percent with two significant digits at any size: ``9%``, ``0.0012%``, ``1.2e-05%``."""
    if fraction is None:
        return "-"
    pct = 100 * fraction
    return f"{pct:.2g}%" if pct < 10 else f"{pct:.0f}%"


def accuracy_limit(precision: str) -> float:
    """The limit of :data:`ACCURACY_LIMITS` for a cell of this precision (its compute dtype's)."""
    return ACCURACY_LIMITS.get(compute_dtype(precision), 1e-5)


@dataclasses.dataclass(frozen=True)
class Target:
    """One finding of a run, as triage takes it."""

    cell_id: str
    mode: TriageMode
    tensor: str | None
    label: str
    figure: str  # "grad_bias 9% off float64 (limit 1.6%)"
    op: str  # the op behind the tensor, where recorded
    broken: bool  # it breaks an expectation of the config
    score: float  # larger is worse, within its kind
    n_settings: int = 0  # settings away from the defaults (+100 for the baseline): of equal findings, the lower

    def line(self) -> str:
        op = f" [{self.op}]" if self.op else ""
        broken = " (fails the run)" if self.broken else ""
        return f"{self.cell_id}  {self.mode.description}: {self.label}: {self.figure}{op}{broken}"


_ORDER = {TriageMode.REPEAT: 0, TriageMode.ACCURACY: 1, TriageMode.ADJOINT: 2, TriageMode.DRIFT: 3}


def _op(row: dict[str, Any]) -> str:
    value = row.get("op")
    return "" if value is None or pd.isna(value) else str(value)


def _candidates(stored: StoredRun) -> list[Target]:
    """Every finding of every cell (several per cell)."""
    table = stored.table
    summary = build_summary(stored)
    broken = {c.cell_id for c in summary.cells if c.failures}
    out = []
    for cell in summary.cells:
        if cell.verdict is Verdict.NONDETERMINISTIC:
            worst = max(((t, u) for t, u in cell.worst_ulp.items() if u), key=lambda item: item[1], default=(None, 0))
            out.append(Target(cell.cell_id, TriageMode.REPEAT, worst[0], cell.label,
                              f"{worst[0]} max {worst[1]:,} ULP run to run", "", cell.cell_id in broken,
                              float(worst[1] or 0)))
    ok = table[(table["status"] == Status.OK.value) & table["tensor"].notna()]
    for row in ok[ok["comparison"] == ComparisonKind.REFERENCE.value].to_dict("records"):
        error, limit = relative_error(row), accuracy_limit(str(row["precision"]))
        if error is not None and error > limit:
            out.append(Target(row["cell_id"], TriageMode.ACCURACY, row["tensor"], cell_label(row),
                              f"{row['tensor']} {percent(error)} off float64 (limit {percent(limit)})", _op(row),
                              row["cell_id"] in broken, error))
    for row in table[table["comparison"] == ComparisonKind.ADJOINT.value].to_dict("records"):
        eps = row.get("adjoint_eps")
        if eps is not None and not pd.isna(eps) and eps > ADJOINT_LIMIT_EPS:
            out.append(Target(row["cell_id"], TriageMode.ADJOINT, None, cell_label(row),
                              f"adjoint test {eps:.3g} eps (limit {ADJOINT_LIMIT_EPS:g})", "",
                              row["cell_id"] in broken, float(eps)))
    drift = ok[(ok["comparison"] == ComparisonKind.BASELINE.value) & (ok["bitwise_equal"] == False)]  # noqa: E712
    for row in drift.to_dict("records"):
        scaled = row.get("max_ulp_scaled")
        scaled = 0.0 if scaled is None or pd.isna(scaled) else float(scaled)
        out.append(Target(row["cell_id"], TriageMode.DRIFT, row["tensor"], cell_label(row),
                          f"{row['tensor']} {scaled:,.3g} scaled ULP from the baseline", _op(row),
                          row["cell_id"] in broken, scaled))
    return out


def _n_settings(row: dict[str, Any]) -> int:
    settings = settings_of(row)
    return sum(getattr(settings, name) != axis.default for name, axis in AXES.items())


def pick_targets(stored: StoredRun) -> list[Target]:
    """One target per cell (its worst finding), worst first: broken expectations, then by kind and size."""
    best: dict[str, Target] = {}
    baseline = stored.config.baseline if stored.config is not None else None
    # Of equal findings the config's own cell before the baseline detaudit adds, then the plainer settings.
    plain = {r["cell_id"]: _n_settings(r) + 100 * (settings_of(r) == baseline)
             for r in stored.table.drop_duplicates("cell_id").to_dict("records")}
    for target in (dataclasses.replace(t, n_settings=plain.get(t.cell_id, 0)) for t in _candidates(stored)):
        key = (_ORDER[target.mode], -target.score)
        current = best.get(target.cell_id)
        if current is None or key < (_ORDER[current.mode], -current.score):
            best[target.cell_id] = target
    return sorted(best.values(), key=lambda t: (not t.broken, _ORDER[t.mode], -t.score if not math.isnan(t.score)
                                                else 0.0, t.n_settings, t.cell_id))


def distinct(targets: list[Target]) -> list[Target]:
    """The first target of each (layer and settings, kind of finding, tensor): other seeds of one finding fold
    into it (their count is added to its figure)."""
    seen: dict[tuple[str, TriageMode, str | None], int] = {}
    out: list[Target] = []
    for target in targets:
        key = (re.sub(r",? ?seed=\d+\]$", "]", target.label), target.mode, target.tensor)
        if key in seen:
            first = out[seen[key]]
            count = int(m.group(1)) + 1 if (m := re.search(r"\(\+(\d+) seeds?\)$", first.figure)) else 1
            figure = re.sub(r" \(\+\d+ seeds?\)$", "", first.figure)
            out[seen[key]] = dataclasses.replace(first, figure=f"{figure} (+{count} seed{'s' if count > 1 else ''})")
            continue
        seen[key] = len(out)
        out.append(target)
    return out


def target_for_cell(stored: StoredRun, cell_id: str) -> Target | None:
    """The worst finding of one cell (None when it has none)."""
    return next((t for t in pick_targets(stored) if t.cell_id == cell_id), None)


def resolve_cell_id(stored: StoredRun, given: str) -> str:
    """The cell id ``given`` names: the id itself or a unique prefix of one.

    Raises:
        UsageError: no cell id starts with it, or several do (they are listed).
    """
    ids = sorted(set(stored.table["cell_id"].dropna()))
    if given in ids:
        return given
    matches = [c for c in ids if c.startswith(given)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise UsageError(f"{stored.path}: no cell {given!r}. `detaudit show {stored.path} --ids` lists the cell ids.")
    raise UsageError(f"{stored.path}: {given!r} is the start of {len(matches)} cell ids ({', '.join(matches[:4])}"
                     f"{', ...' if len(matches) > 4 else ''}); give more of it.")
