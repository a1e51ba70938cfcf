"""From "these bits differ" to a minimal standalone reproducer and the most likely fix.

For one cell: confirm the difference, toggle one setting at a time (each
axis' declared toggle), shrink the layer while the difference persists
(bounded by a time budget), match the result against the knowledge table and
write repro.py and report.md. Every measurement goes through the runner
(:func:`run_cells`), so each toggle runs in its own worker process like any
other cell. A triage is a run of its own (kind ``triage``) linked to the run it
came from; it never writes inside that run.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from detaudit.analysis.runs import StoredRun
from detaudit.analysis.verdicts import cell_verdicts
from detaudit.core.axes import AXES
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.config import Cell, Config, LayerSpec
from detaudit.core.kinds import canonical_params
from detaudit.core.knowledge import explain
from detaudit.engine.fingerprint import host_fingerprint
from detaudit.engine.runner import run_cells
from detaudit.engine.store import RunKind, RunStore
from detaudit.errors import UsageError
from detaudit.errors import a_or_an as _a
from detaudit.workflows.repro import render_repro

__all__ = ["TriageResult", "TriageStep", "environment_of", "select_cells", "triage_cell", "triage_run"]


@dataclasses.dataclass(frozen=True)
class TriageStep:
    """One line of the live view: what was tried and what came out."""

    stage: str  # confirm, toggle, shrink, explain, emit
    what: str
    outcome: str


@dataclasses.dataclass
class Measurement:
    differs: bool
    max_ulp: int
    detail: str
    tensors: list[str]
    measurable: bool = True


@dataclasses.dataclass
class TriageResult:
    """Everything triage learned about one cell."""

    cell: Cell
    mode: str  # "repeat" (run-to-run) or "drift" (against the baseline)
    confirmed: Measurement
    toggles: list[tuple[str, Any, str, int]]  # axis, value, removed/reduced/persists/failed, max ULP
    minimal: Cell
    explanation: dict[str, Any]
    steps: list[TriageStep]
    repro: Path | None = None
    report: Path | None = None

    @property
    def removed_by(self) -> list[str]:
        return [axis for axis, _, outcome, _ in self.toggles if outcome == "removed"]

    def to_dict(self) -> dict[str, Any]:
        return {"cell_id": self.cell.cell_id, "cell": self.cell.to_dict(), "mode": self.mode,
                "confirmed": dataclasses.asdict(self.confirmed),
                "toggles": [{"axis": a, "value": v, "outcome": o, "max_ulp": u} for a, v, o, u in self.toggles],
                "minimal": self.minimal.to_dict(), "minimal_description": self.minimal.layer.describe(),
                "explanation": self.explanation, "removed_by": self.removed_by,
                "steps": [dataclasses.asdict(s) for s in self.steps],
                "repro": str(self.repro) if self.repro else None, "report": str(self.report) if self.report else None}


def select_cells(table: pd.DataFrame, cell_id: str | None) -> list[tuple[str, str]]:
    """(cell id, mode) to triage: the given cell, or every nondeterministic cell of the run."""
    verdicts = cell_verdicts(table)
    if cell_id is not None:
        row = verdicts[verdicts["cell_id"] == cell_id]
        if row.empty:
            return []
        if row["verdict"].iloc[0] == "NONDETERMINISTIC":
            return [(cell_id, "repeat")]
        drift = table[(table["cell_id"] == cell_id) & (table["comparison"] == ComparisonKind.BASELINE.value)]
        return [(cell_id, "drift")] if (drift["bitwise_equal"] == False).any() else [(cell_id, "none")]  # noqa: E712
    return [(c, "repeat") for c in verdicts[verdicts["verdict"] == "NONDETERMINISTIC"]["cell_id"]]


def _baseline_for(cell: Cell, config: Config) -> Cell:
    return Cell(cell.layer, config.baseline, cell.seed, cell.repeats)


def _measure(cells: list[Cell], mode: str, config: Config, work: Path, label: str,
             on_event: Callable[[Any], None] | None = None) -> dict[str, Measurement]:
    """Run cells (with their baselines for drift) in workers; say per cell whether the difference is there."""
    todo = list(cells) + ([_baseline_for(c, config) for c in cells] if mode == "drift" else [])
    table = run_cells(todo, config, out=work, run_id=label, on_event=on_event)
    comparisons = ComparisonKind.deciding_determinism() if mode == "repeat" else (ComparisonKind.BASELINE.value,)
    out = {}
    for cell in cells:
        if mode == "drift" and cell.settings == config.baseline:
            out[cell.cell_id] = Measurement(False, 0, "identical: these are the baseline settings", [])
            continue
        rows = table[(table["cell_id"] == cell.cell_id) & table["comparison"].isin(comparisons)]
        failed = rows[rows["status"] != "ok"]
        differing = rows[rows["bitwise_equal"] == False]  # noqa: E712
        if not failed.empty or rows.empty:
            message = failed["message"].iloc[0] if not failed.empty else "no comparison"
            out[cell.cell_id] = Measurement(False, 0, f"not measurable: {message}"[:200], [], measurable=False)
            continue
        max_ulp = int(differing["max_ulp"].max()) if not differing.empty else 0
        repeats = differing["n_repeats_differ"].dropna()
        detail = ", ".join(f"{r['tensor']} {int(r['n_mismatch'])}/{int(r['n_elements'])} max {int(r['max_ulp'])} ULP"
                           for r in differing.to_dict("records"))
        if mode == "repeat" and len(repeats):
            detail = f"{int(repeats.max())} of {cell.repeats - 1} repeats differ: {detail}"
        out[cell.cell_id] = Measurement(not differing.empty, max_ulp, detail or "identical", list(differing["tensor"]))
    return out


def _with(cell: Cell, **changes: Any) -> Cell:
    return Cell(cell.layer, dataclasses.replace(cell.settings, **changes), cell.seed, cell.repeats)


def _toggle_variants(cell: Cell, mode: str, config: Config) -> list[tuple[str, Any, Cell]]:
    """One change at a time: for drift, each differing axis moved to the baseline's value; else each
    axis' declared toggle (a step toward settings known to reproduce)."""
    if mode == "drift":
        return [(axis, getattr(config.baseline, axis), _with(cell, **{axis: getattr(config.baseline, axis)}))
                for axis in AXES if getattr(cell.settings, axis) != getattr(config.baseline, axis)]
    return [(name, axis.toggle, _with(cell, **{name: axis.toggle})) for name, axis in AXES.items()
            if getattr(cell.settings, name) != axis.toggle]


def _layer(spec: LayerSpec, params: dict[str, Any], shape: list[int]) -> LayerSpec:
    return LayerSpec(spec.kind, canonical_params(params), tuple(shape))


def _shrink_candidates(spec: LayerSpec) -> list[tuple[str, LayerSpec]]:
    """One smaller layer per knob: batch, each spatial size, channels, and the declared filters and kernel."""
    params, shape = spec.params, list(spec.input_shape)
    declared = set(spec.declaration.keys) or set(params)  # a user layer: whatever it was given
    channels_first = params.get("data_format") == "channels_first"
    spatial = list(range(2, len(shape))) if channels_first else list(range(1, len(shape) - 1))
    channel_axis = 1 if channels_first else len(shape) - 1
    out = []

    def add(name: str, new_params: dict[str, Any], new_shape: list[int]) -> None:
        if new_params != params or new_shape != shape:
            if new_params.get("output_shape") is not None:
                new_params = {**new_params, "output_shape": None}  # let the formula follow the smaller input
            out.append((name, _layer(spec, new_params, new_shape)))

    add("batch", params, [max(1, shape[0] // 2), *shape[1:]])
    for axis in spatial:
        add(f"size[{axis}]", params, [max(1, n // 2) if i == axis else n for i, n in enumerate(shape)])
    add("channels", params, [max(1, n // 2) if i == channel_axis else n for i, n in enumerate(shape)])
    if "filters" in declared and isinstance(params.get("filters"), int):
        add("filters", {**params, "filters": max(1, params["filters"] // 2)}, shape)
    kernel = params.get("kernel_size")
    if "kernel_size" in declared and isinstance(kernel, list):
        add("kernel", {**params, "kernel_size": [max(1, k - 1) for k in kernel]}, shape)
    elif isinstance(kernel, int) and not isinstance(kernel, bool):  # a user layer's plain int
        add("kernel", {**params, "kernel_size": max(1, kernel - 1)}, shape)
    return out


def _size(spec: LayerSpec) -> int:
    params = spec.params
    kernel = 1
    sizes = params.get("kernel_size") or [1]
    for k in sizes if isinstance(sizes, list) else [sizes] * (len(spec.input_shape) - 2):
        kernel *= int(k)
    total = kernel * int(params.get("filters", 1))
    for n in spec.input_shape:
        total *= n
    return total


def triage_cell(cell: Cell, mode: str, config: Config, work: Path, budget_s: float = 300,
                on_step: Callable[[TriageStep], None] | None = None, tf_version: str | None = None,
                message: str = "", on_event: Callable[[Any], None] | None = None) -> TriageResult | None:
    """Confirm, toggle, shrink, explain for one cell (measurements under ``work``). None when it does not reproduce."""
    steps: list[TriageStep] = []

    def step(stage: str, what: str, outcome: str) -> None:
        steps.append(TriageStep(stage, what, outcome))
        if on_step:
            on_step(steps[-1])

    started = time.monotonic()
    cell = Cell(cell.layer, cell.settings, cell.seed, max(cell.repeats, 5))
    step("confirm", f"{mode} difference, {cell.repeats} repeats", "running")
    confirmed = _measure([cell], mode, config, work, "confirm", on_event)[cell.cell_id]
    step("confirm", f"{mode} difference with {cell.repeats} repeats", confirmed.detail)
    if not confirmed.differs:
        return None

    variants = _toggle_variants(cell, mode, config)
    toggles = []
    if variants:
        step("toggle", f"{len(variants)} settings, one at a time", "running")
        measured = _measure([v for _, _, v in variants], mode, config, work, "toggles", on_event)
        for axis, value, variant in variants:
            result = measured[variant.cell_id]
            outcome = ("failed" if not result.measurable else "removed" if not result.differs
                       else "reduced" if result.max_ulp < confirmed.max_ulp else "persists")
            toggles.append((axis, value, outcome, result.max_ulp))
            step("toggle", f"{axis}={value}", f"{outcome}: {result.detail}")

    minimal, round_ = cell, 0
    while time.monotonic() - started < budget_s:
        round_ += 1
        candidates = [(name, Cell(spec, minimal.settings, minimal.seed, minimal.repeats))
                      for name, spec in _shrink_candidates(minimal.layer)]
        if not candidates:
            break
        step("shrink", f"round {round_}: {len(candidates)} smaller layers", "running")
        measured = _measure([c for _, c in candidates], mode, config, work, f"shrink-{round_}", on_event)
        keep = [(name, c) for name, c in candidates if measured[c.cell_id].differs]
        if not keep:
            step("shrink", f"round {round_}", "no smaller layer keeps the difference")
            break
        name, minimal = min(keep, key=lambda item: _size(item[1].layer))
        step("shrink", f"round {round_}: {name}", f"{minimal.layer.describe()} still differs")
    else:
        step("shrink", "budget", f"stopped after {budget_s:g} s")

    removed = [axis for axis, _, outcome, _ in toggles if outcome == "removed"]
    explanation = explain(removed, cell.settings.device, message, tf_version)
    step("explain", explanation["id"], explanation["fix"])
    return TriageResult(cell, mode, confirmed, toggles, minimal, explanation, steps)


def _write_outputs(result: TriageResult, store: RunStore, environment: dict[str, Any], config: Config) -> None:
    """Write repro.py (standalone) and report.md for a triaged cell, inside the triage run."""
    cell = result.minimal
    reference = None
    if result.mode == "drift":  # compare against the setting that removed the drift, else the baseline
        removing = next((variant for axis, _, variant in _toggle_variants(cell, "drift", config)
                         if axis in result.removed_by), None)
        reference = (removing or _baseline_for(cell, config)).settings
    folder = result.cell.cell_id
    result.repro = store.write_text(f"{folder}/repro.py", render_repro(cell, result.mode, reference))
    result.report = store.write_text(f"{folder}/report.md", report_markdown(result, environment))


def report_markdown(result: TriageResult, environment: dict[str, Any]) -> str:
    """The triage of one cell as Markdown, ready for an upstream issue."""
    cell, minimal = result.cell, result.minimal
    lines = [
        f"# detaudit triage: {cell.layer.describe()}", "",
        f"Settings: `{cell.settings.label()}`, seed {cell.seed}. Kind of difference: "
        f"{'run to run' if result.mode == 'repeat' else 'against the baseline settings'}.", "",
        "## Environment", "", *[f"- {key}: {value}" for key, value in environment.items()], "",
        "## 1. Confirmed", "", result.confirmed.detail, "",
        "## 2. One setting at a time", "", "| setting | outcome | max ULP |", "|---|---|---|",
        *[f"| {axis}={value} | {outcome} | {ulp} |" for axis, value, outcome, ulp in result.toggles], "",
        "## 3. Minimal case", "", f"{minimal.layer.describe()} (from {cell.layer.describe()})", "",
        "## 4. Most likely cause", "", f"{result.explanation['cause']}", "", f"**Fix:** {result.explanation['fix']}",
        "", f"Source: {result.explanation.get('source', '')}", "",
        "## 5. Reproducer", "",
        "`python repro.py` rebuilds the minimal case with fixed seeds, runs it and exits 1 when the bits differ.", "",
        "## Steps", "", *[f"- {s.stage}: {s.what}: {s.outcome}" for s in result.steps if s.outcome != "running"], "",
    ]
    return "\n".join(lines)


def environment_of(stored: StoredRun) -> dict[str, Any]:
    """The fingerprint an upstream issue needs: TensorFlow, CUDA, cuDNN, driver, GPU, CPU, oneDNN."""
    tf = stored.meta.get("tensorflow") or {}
    host = stored.meta.get("host") or {}
    return {**{k: tf.get(k) for k in ("tensorflow_version", "keras_version", "cuda_version", "cudnn_version")},
            "gpus": ", ".join(g.get("name") or g.get("device") for g in tf.get("gpus", [])) or "none",
            **{k: host.get(k) for k in ("nvidia_driver", "cpu_model", "onednn_state", "platform", "python")}}


def triage_run(stored: StoredRun, cell_id: str | None, budget_s: float, out: str | Path,
               on_cell: Callable[[Cell, str], None] | None = None,
               on_step: Callable[[TriageStep], None] | None = None,
               on_event: Callable[[Any], None] | None = None,
               ) -> tuple[Path | None, list[tuple[Cell, TriageResult | None]]]:
    """Triage the selected cells of a stored matrix run into a new triage run under ``out``.

    Returns:
        (the triage run directory, or None when nothing was selected; (cell, result) per selected cell,
        the result None where the difference did not reproduce).

    Raises:
        UsageError: ``cell_id`` is not a cell of the run, or the run is not a matrix run.
    """
    if stored.config is None:
        raise UsageError(f"{stored.path}: {_a(stored.kind.value)} run; triage takes runs of `detaudit run`.")
    if cell_id and cell_id not in set(stored.table["cell_id"]):
        raise UsageError(f"{stored.path}: no cell {cell_id!r}. Cell ids are in results.parquet "
                         "(detaudit show RUN_DIR --json lists them).")
    selected = [(c, m) for c, m in select_cells(stored.table, cell_id) if m != "none"]
    if not selected:
        return None, []
    records = {r["cell_id"]: r for r in stored.store.iter_records() if not r.get("replay")}
    environment = environment_of(stored)
    store = RunStore.create(out, stored.config.to_dict(), f"triage-{stored.config.name}", kind=RunKind.TRIAGE)
    meta = {"run_id": store.run_id, "kind": RunKind.TRIAGE.value, "config_name": stored.config.name,
            "source_run": str(stored.path), "source_run_id": stored.run_id, "cells": [c for c, _ in selected],
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(), "finished": None, "host": host_fingerprint(),
            "tensorflow": stored.meta.get("tensorflow"), "budget_s": budget_s}
    outcomes: list[tuple[Cell, TriageResult | None]] = []
    with store.lock():
        store.write_meta(meta)
        for selected_id, mode in selected:
            cell = Cell.from_dict(records[selected_id]["cell"])
            if on_cell:
                on_cell(cell, mode)
            result = triage_cell(cell, mode, stored.config, store.inside(f"{selected_id}/measurements"), budget_s,
                                 on_step=on_step, tf_version=environment["tensorflow_version"],
                                 message=records[selected_id].get("message", ""), on_event=on_event)
            if result is not None:
                _write_outputs(result, store, environment, stored.config)
            outcomes.append((cell, result))
            store.write_json("triage.json", {"source_run": str(stored.path), "environment": environment,
                                             "cells": [{"cell_id": c.cell_id, "reproduced": r is not None,
                                                        **(r.to_dict() if r else {"cell": c.to_dict()})}
                                                       for c, r in outcomes]})
        meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat()
        store.write_meta(meta)
    return store.path, outcomes
