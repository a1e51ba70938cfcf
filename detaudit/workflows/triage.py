"""From a finding to the op behind it, a minimal case, the most likely fix and a bug report.

For one target (a cell and the kind of finding, see :mod:`detaudit.workflows.targets`):
confirm it, change one setting at a time, shrink the layer while the finding
persists (bounded by a time budget), match the result against the knowledge
table and write ``repro.py`` (short, standalone), ``repro_full.py`` (the
digest-parity reproducer) and ``report.md``. The question depends on the kind:
for run-to-run nondeterminism, which setting removes it; for an error against
float64 (or a failed adjoint test), which setting, keeping the precision and the
device under test, brings the tensor back within its limit; for a drift, which
side is closer to float64. Every measurement goes through the runner
(:func:`run_cells`), each in its own worker process like any other cell. A
triage is a run of its own (kind ``triage``) linked to the run it came from.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detaudit.analysis.runs import StoredRun
from detaudit.core.axes import AXES
from detaudit.core.config import Cell, Config
from detaudit.core.knowledge import explain
from detaudit.core.vocabulary import OneDnnState, ToggleOutcome
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import UsageError
from detaudit.errors import a_or_an as _a
from detaudit.workflows import shrink
from detaudit.workflows.bug_report import environment_of, report_markdown
from detaudit.workflows.measure import Measurement, baseline_for, measure_cells
from detaudit.workflows.repro import render_repro
from detaudit.workflows.repro_short import render_short_repro
from detaudit.workflows.targets import (
    Target,
    TriageMode,
    accuracy_limit,
    distinct,
    percent,
    pick_targets,
    resolve_cell_id,
)

__all__ = ["Measurement", "TriageResult", "TriageStep", "environment_of", "triage_cell", "triage_run"]


@dataclasses.dataclass(frozen=True)
class TriageStep:
    """One line of the live view: what was tried and what came out."""

    stage: str  # confirm, toggle, shrink, explain, emit
    what: str
    outcome: str


@dataclasses.dataclass
class TriageResult:
    """Everything triage learned about one cell."""

    cell: Cell
    mode: TriageMode
    tensor: str | None
    confirmed: Measurement
    toggles: list[tuple[str, Any, ToggleOutcome, int, str]]  # axis, value, outcome, max ULP, detail
    minimal: Cell
    minimal_measured: Measurement
    explanation: dict[str, Any]
    steps: list[TriageStep]
    shrunk: str = ""
    closer: str = ""
    repro: Path | None = None
    repro_is_short: bool = False
    repro_full: Path | None = None
    report: Path | None = None

    @property
    def removed_by(self) -> list[str]:
        """Settings whose change removed the finding (run to run) or fixed it (precision and device kept)."""
        return [f"{axis}={value}" for axis, value, outcome, _, _ in self.toggles if ToggleOutcome(outcome).fixed]

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell.cell_id, "cell": self.cell.to_dict(), "mode": self.mode.value,
                "question": self.mode.question, "tensor": self.tensor, "op": self.confirmed.ops.get(self.tensor or ""),
                "ops": self.confirmed.ops, "confirmed": dataclasses.asdict(self.confirmed),
                "toggles": [{"axis": a, "value": v, "outcome": str(o), "max_ulp": u, "detail": d}
                            for a, v, o, u, d in self.toggles],
                "minimal": self.minimal.to_dict(), "minimal_description": self.minimal.layer.describe(),
                "minimal_measured": dataclasses.asdict(self.minimal_measured), "shrunk": self.shrunk,
                "closer": self.closer, "explanation": self.explanation, "removed_by": self.removed_by,
                "steps": [dataclasses.asdict(s) for s in self.steps],
                "repro": str(self.repro) if self.repro else None, "repro_is_short": self.repro_is_short,
                "repro_full": str(self.repro_full) if self.repro_full else None,
                "report": str(self.report) if self.report else None}


def _with(cell: Cell, **changes: Any) -> Cell:
    return Cell(cell.layer, dataclasses.replace(cell.settings, **changes), cell.seed, cell.repeats)


def _toggle_variants(cell: Cell, mode: TriageMode, onednn: str = "") -> list[tuple[str, Any, Cell]]:
    """One change at a time. Run to run: each axis' declared toggle. Accuracy: every other value of every axis
    but the precision and the device under test (and GPU-only axes on a CPU). A drift has none: moving an axis
    back to the baseline's value removes a drift by definition, which would say nothing."""
    if mode is TriageMode.DRIFT:
        return []
    if mode is TriageMode.REPEAT:
        return [(name, axis.toggle, _with(cell, **{name: axis.toggle})) for name, axis in AXES.items()
                if getattr(cell.settings, name) != axis.toggle]
    out = []
    on_cpu = cell.settings.device == "cpu"
    for name, axis in AXES.items():
        if name in ("precision", "device") or (on_cpu and getattr(axis.check, "applies", None) == "gpu"):
            continue
        current = getattr(cell.settings, name)
        if name == "onednn" and current == "default":
            current = onednn  # the path the default is on this machine: trying it again would measure nothing new
        values = [v for v in (axis.choices or (axis.toggle,)) if v != current and v not in ("default", "env")]
        out.extend((name, value, _with(cell, **{name: value})) for value in values)
    return out


def _outcome(mode: TriageMode, confirmed: Measurement, result: Measurement) -> ToggleOutcome:
    if not result.measurable:
        return ToggleOutcome.FAILED
    if not result.differs:
        return ToggleOutcome.FIXES if mode.judged_by_accuracy else ToggleOutcome.REMOVED
    if mode is TriageMode.ACCURACY and confirmed.tensors:
        tensor = confirmed.tensors[0]
        better = result.errors.get(tensor, 1.0) < confirmed.errors.get(tensor, 0.0)
    else:
        better = result.max_ulp < confirmed.max_ulp
    return ToggleOutcome.REDUCES if better else ToggleOutcome.PERSISTS


def _shrink(cell: Cell, measure: Callable[[list[Cell], str], dict[str, Measurement]], deadline: float,
            step: Callable[[str, str, str], None]) -> tuple[Cell, Measurement | None]:
    """Shrink while the finding persists, one worker per round.

    A round measures each knob's smaller values and, in the same worker, the knobs that kept the finding in
    the round before (every knob in the first) moved together, boldly and gently; the smallest layer that
    keeps the finding is next. It ends when no smaller layer keeps it (the case is minimal) or at the deadline.
    """
    minimal, kept_measure, round_ = cell, None, 0
    hinted: dict[str, str] | None = None  # the knobs (and steps) that kept the finding last round
    while time.monotonic() < deadline:
        round_ += 1
        singles = shrink.candidates(minimal.layer)
        if not singles:
            step("shrink", f"round {round_}", "nothing left to shrink: minimal")
            return minimal, kept_measure
        hints = shrink.hinted(singles, hinted)
        knobs = {shrink.step_of(c[0])[0] for c in hints}
        # All hinted knobs at once (boldly, gently) and all but one (a finding that needs one knob large, the
        # length of a sum, still lets every other knob go): cheap extra cells in the round's one worker.
        subsets = [(hints, True), (hints, False),
                   *(([c for c in hints if not c[0].startswith(k + " ")], True) for k in sorted(knobs))]
        combos = [("together", layer) for layer in dict.fromkeys(
            shrink.combine(minimal.layer, subset, boldest) for subset, boldest in subsets) if layer is not None]
        options = [(name, Cell(spec, minimal.settings, minimal.seed, minimal.repeats)) for name, spec in
                   singles + combos]
        step("shrink", f"round {round_}: {len(options)} smaller layers", "running")
        measured = measure([c for _, c in options], f"shrink-{round_}")
        keep = [(name, c) for name, c in options if measured[c.cell_id].differs]
        if not keep:
            step("shrink", f"round {round_}", "no smaller layer keeps the finding: minimal")
            return minimal, kept_measure
        name, minimal = min(keep, key=lambda item: shrink.size(item[1].layer))
        kept_measure = measured[minimal.cell_id]
        hinted = {}
        for n, _ in sorted(keep, key=lambda item: shrink.step_of(item[0])[1] != "min"):  # "min" first wins
            if n != "together":
                hinted.setdefault(*shrink.step_of(n))
        if name == "together":
            name = "together: " + ", ".join(n for n, _ in keep if n != "together")
        step("shrink", f"round {round_}: {name}", f"{list(minimal.layer.input_shape)} still shows it")
    step("shrink", "budget", "stopped at the budget before the shrink finished")
    return minimal, kept_measure


def _closer(cell: Measurement, baseline: Measurement, tensors: list[str], sides: tuple[str, str]) -> str:
    """Which side of a drift is closer to float64, per tensor, and whether either is beyond its limit."""
    parts = []
    for tensor in tensors:
        mine, theirs = cell.errors.get(tensor), baseline.errors.get(tensor)
        if mine is None or theirs is None:
            continue
        closer = sides[0] if theirs < mine else sides[1] if mine < theirs else "neither"
        parts.append(f"{tensor}: {sides[0]} {percent(theirs)}, {sides[1]} {percent(mine)} off float64 "
                     f"({closer} is closer)")
    return "; ".join(parts) or "no float64 reference for this layer: which side is right is not known"


def _explanation(mode: TriageMode, cell: Cell, measured: Measurement, fixed: list[str], message: str,
                 tf_version: str | None) -> dict[str, Any]:
    """A known upstream bug the finding shows, else the knowledge table's first matching cause."""
    if measured.known:
        bug = measured.known[0]
        return {"id": bug["id"], "cause": f"{bug['title']}. {bug['effect']}".strip(), "fix": bug["workaround"],
                "source": bug["link"], "known": bug["reference"], "reported": bug["link"].startswith("http")}
    axes = [f.partition("=")[0] for f in fixed]
    if mode is TriageMode.REPEAT:
        entry = explain(axes, cell.settings.device, message, tf_version)
    elif mode is TriageMode.DRIFT:
        entry = explain([], cell.settings.device, message, tf_version)
    else:
        entry = explain([], cell.settings.device, message, tf_version, fixed_by=axes)
    return {**entry, "known": None, "reported": False}


def triage_cell(cell: Cell, mode: TriageMode | str, config: Config, work: Path, budget_s: float = 120,
                on_step: Callable[[TriageStep], None] | None = None, tf_version: str | None = None,
                message: str = "", on_event: Callable[[Any], None] | None = None, tensor: str | None = None,
                onednn: str = "") -> TriageResult | None:
    """Confirm, toggle, shrink, explain for one cell (measurements under ``work``). None when it does not reproduce.

    ``budget_s`` bounds the shrink, the one step whose length depends on the layer.
    """
    mode = TriageMode(mode)
    steps: list[TriageStep] = []

    def step(stage: str, what: str, outcome: str) -> None:
        steps.append(TriageStep(stage, what, outcome))
        if on_step:
            on_step(steps[-1])

    def measure(cells: list[Cell], label: str) -> dict[str, Measurement]:
        return measure_cells(cells, mode, config, work, label, on_event, tensor, onednn, tf_version)

    cell = Cell(cell.layer, cell.settings, cell.seed, max(cell.repeats, 5 if mode is TriageMode.REPEAT else 2))
    variants = _toggle_variants(cell, mode, onednn)
    # The cell and its toggles in one measurement: those that differ only in per-cell settings share its worker.
    step("confirm", f"{mode.description}, and {len(variants)} settings one at a time", "running")
    measured = measure([cell, *(v for _, _, v in variants)], "confirm")
    confirmed = measured[cell.cell_id]
    op = confirmed.ops.get(tensor or (confirmed.tensors[0] if confirmed.tensors else ""), "")
    step("confirm", f"{mode.description}{f' in {tensor}' if tensor else ''}",
         confirmed.detail + (f"; produced by {op}" if op else ""))
    if not confirmed.differs:
        return None
    step("question", mode.question, "")  # printed without an outcome
    toggles, closer = [], ""
    for axis, value, variant in variants:
        result = measured[variant.cell_id]
        outcome = _outcome(mode, confirmed, result)
        toggles.append((axis, value, outcome, result.max_ulp, result.detail))
        step("toggle", f"{axis}={value}", f"{outcome}: {result.detail}")
    if mode is TriageMode.DRIFT:
        baseline = measured[baseline_for(cell, config).cell_id]
        differing = [a for a in AXES if getattr(cell.settings, a) != getattr(config.baseline, a)]
        sides = (", ".join(f"{a}={getattr(config.baseline, a)}" for a in differing),
                 ", ".join(f"{a}={getattr(cell.settings, a)}" for a in differing))
        closer = _closer(confirmed, baseline, confirmed.tensors, sides)
        step("truth", "which side is closer to float64", closer)
    minimal, kept = _shrink(cell, measure, time.monotonic() + budget_s, step)
    shrunk = f"{list(cell.layer.input_shape)} -> {list(minimal.layer.input_shape)}"
    if minimal.layer.params != cell.layer.params:
        changed = [f"{k} {cell.layer.params[k]}->{v}" for k, v in minimal.layer.params.items()
                   if cell.layer.params.get(k) != v]
        shrunk += f" ({', '.join(changed)})"
    step("shrink", "minimal case", f"{minimal.layer.describe()}: {shrunk}")
    fixed = [f"{a}={v}" for a, v, o, _, _ in toggles if o.fixed]
    minimal_measured = kept or confirmed
    explanation = _explanation(mode, cell, minimal_measured if minimal_measured.known else confirmed, fixed,
                               message, tf_version)
    step("explain", explanation["id"], explanation["fix"])
    return TriageResult(cell, mode, tensor or (confirmed.tensors[0] if confirmed.tensors else None), confirmed,
                        toggles, minimal, minimal_measured, explanation, steps, shrunk, closer)


def _write_outputs(result: TriageResult, store: RunStore, environment: dict[str, Any], config: Config) -> None:
    """Write repro.py (short), repro_full.py (digest parity) and report.md for a triaged cell."""
    cell, folder = result.minimal, result.cell.cell_id
    reference = baseline_for(cell, config).settings if result.mode is TriageMode.DRIFT else None
    full_mode = (TriageMode.DRIFT if result.mode is TriageMode.DRIFT else TriageMode.REPEAT).value
    full = render_repro(cell, full_mode, reference)
    result.repro_full = store.write_text(f"{folder}/repro_full.py", full)
    limit = accuracy_limit(cell.settings.precision)
    upstream = result.explanation.get("known") if result.explanation.get("reported") else "not yet reported"
    short = render_short_repro(cell, result.mode, result.tensor, limit, result.confirmed.ops.get(result.tensor or ""),
                               upstream, onednn=OneDnnState.parse(environment.get("onednn_state")).word)
    # A layer the short form cannot express (a user layer, say) gets the full reproducer as repro.py too.
    result.repro = store.write_text(f"{folder}/repro.py", short if short is not None else full)
    result.repro_is_short = short is not None
    result.report = store.write_text(f"{folder}/report.md", report_markdown(result, environment))


def triage_run(stored: StoredRun, cell_id: str | None, budget_s: float, out: str | Path,
               on_cell: Callable[[Cell, str], None] | None = None,
               on_step: Callable[[TriageStep], None] | None = None,
               on_event: Callable[[Any], None] | None = None,
               ) -> tuple[Path | None, list[tuple[Cell, TriageResult | None]], list[Target]]:
    """Triage one finding of a stored matrix run (the given cell's, else the worst) into a new triage run.

    Returns:
        (the triage run directory, or None when the run has no finding; (cell, result) for the cell triaged,
        the result None where the finding did not reproduce; the run's other findings, worst first).

    Raises:
        UsageError: ``cell_id`` names no cell (or several) of the run, or the run is not a matrix run.
    """
    if stored.config is None:
        raise UsageError(f"{stored.path}: {_a(stored.kind.value)} run; triage takes runs of `detaudit run`.")
    targets = pick_targets(stored)
    if cell_id:
        cell_id = resolve_cell_id(stored, cell_id)
        chosen = [t for t in targets if t.cell_id == cell_id]
    else:
        chosen = targets[:1]
    others = distinct([t for t in targets if not chosen or t.cell_id != chosen[0].cell_id])
    if not chosen:
        return None, [], others
    target = chosen[0]
    records = {r["cell_id"]: r for r in stored.store.iter_records() if not r.get("replay")}
    environment = environment_of(stored)
    onednn = OneDnnState.parse(environment.get("onednn_state")).word
    store = RunStore.create(out, stored.config.to_dict(), f"triage-{stored.config.name}", kind=RunKind.TRIAGE)
    meta = {"run_id": store.run_id, "kind": RunKind.TRIAGE.value, "config_name": stored.config.name,
            "source_run": str(stored.path), "source_run_id": stored.run_id, "cells": [target.cell_id],
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(), "finished": None, "host": host_fingerprint(),
            "tensorflow": stored.meta.get("tensorflow"), "budget_s": budget_s}
    cell = Cell.from_dict(records[target.cell_id]["cell"])
    with store.lock():
        store.write_meta(meta)
        if on_cell:
            on_cell(cell, target.mode.value)
        result = triage_cell(cell, target.mode, stored.config, store.inside(f"{target.cell_id}/measurements"),
                             budget_s, on_step=on_step, tf_version=environment["tensorflow_version"],
                             message=records[target.cell_id].get("message", ""), on_event=on_event,
                             tensor=target.tensor, onednn=onednn)
        if result is not None:
            _write_outputs(result, store, environment, stored.config)
        store.write_json("triage.json", {
            "source_run": str(stored.path), "environment": environment,
            "cells": [{"cell_id": cell.cell_id, "reproduced": result is not None,
                       **(result.to_dict() if result else {"cell": cell.to_dict(), "mode": target.mode.value})}],
            "other_findings": [{"cell_id": t.cell_id, "mode": t.mode.value, "line": t.line()} for t in others]})
        meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        store.write_meta(meta)
    return store.path, [(cell, result)], others
