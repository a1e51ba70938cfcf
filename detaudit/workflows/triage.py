"""From "these bits differ" to a minimal standalone reproducer and the most likely fix.

For one cell: confirm the difference, toggle one setting at a time, shrink the
layer while the difference persists (bounded by a time budget), match the
result against the knowledge table (knowledge.yaml) and write repro.py and
report.md. Every measurement goes through the runner (:func:`run_cells`), so
each toggle runs in its own worker process like any other cell.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from detaudit.core.config import AXES, Cell, Config, LayerSpec, Settings
from detaudit.errors import UsageError
from detaudit.analysis.results import cell_verdicts
from detaudit.engine.runner import run_cells
from detaudit.analysis.runs import StoredRun

__all__ = ["TriageResult", "TriageStep", "environment_of", "explain", "select_cells", "triage_cell", "triage_run",
           "write_outputs"]

#: One change at a time, toward the settings that are known to be reproducible.
TOGGLES: tuple[tuple[str, Any], ...] = (
    ("determinism", "on"), ("xla", "off"), ("onednn", "off"), ("threads", 1), ("tf32", "off"),
    ("precision", "float32"), ("device", "cpu"),
)
_KNOWLEDGE = Path(__file__).with_name("knowledge.yaml")
_TEMPLATE = Path(__file__).with_name("repro_template.py")


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


@dataclasses.dataclass
class TriageResult:
    """Everything triage learned about one cell."""

    cell: Cell
    mode: str  # "repeat" (run-to-run) or "drift" (against the baseline)
    confirmed: Measurement
    toggles: list[tuple[str, Any, str, int]]  # axis, value, removed/reduced/persists, max ULP
    minimal: Cell
    explanation: dict[str, Any]
    steps: list[TriageStep]
    repro: Path | None = None
    report: Path | None = None

    @property
    def removed_by(self) -> list[str]:
        return [axis for axis, _, outcome, _ in self.toggles if outcome == "removed"]


def select_cells(table: pd.DataFrame, cell_id: str | None) -> list[tuple[str, str]]:
    """(cell id, mode) to triage: the given cell, or every nondeterministic cell of the run."""
    verdicts = cell_verdicts(table) if len(table) else pd.DataFrame(columns=["cell_id", "verdict"])
    if cell_id is not None:
        row = verdicts[verdicts["cell_id"] == cell_id]
        if row.empty:
            return []
        if row["verdict"].iloc[0] == "NONDETERMINISTIC":
            return [(cell_id, "repeat")]
        drift = table[(table["cell_id"] == cell_id) & (table["comparison"] == "baseline")]
        return [(cell_id, "drift")] if (drift["bitwise_equal"] == False).any() else [(cell_id, "none")]  # noqa: E712
    return [(c, "repeat") for c in verdicts[verdicts["verdict"] == "NONDETERMINISTIC"]["cell_id"]]


def _baseline_for(cell: Cell, config: Config) -> Cell:
    return Cell(cell.layer, config.baseline, cell.seed, cell.repeats)


def _measure(cells: list[Cell], mode: str, config: Config, work: Path, label: str) -> dict[str, Measurement]:
    """Run cells (with their baselines for drift) in workers; say per cell whether the difference is there."""
    todo = list(cells) + ([_baseline_for(c, config) for c in cells] if mode == "drift" else [])
    table = run_cells(list({c.cell_id: c for c in todo}.values()), config, out=work / "runs", run_id=label)
    comparison = "repeat" if mode == "repeat" else "baseline"
    out = {}
    for cell in cells:
        if mode == "drift" and cell.settings == config.baseline:
            out[cell.cell_id] = Measurement(False, 0, "identical: these are the baseline settings", [])
            continue
        rows = table[(table["cell_id"] == cell.cell_id) & (table["comparison"] == comparison)]
        failed = rows[rows["status"] != "ok"]
        differing = rows[rows["bitwise_equal"] == False]  # noqa: E712
        if not failed.empty or rows.empty:
            message = failed["message"].iloc[0] if not failed.empty else "no comparison"
            out[cell.cell_id] = Measurement(False, 0, f"not measurable: {message}"[:200], [])
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
    if mode == "drift":  # move one axis at a time to the baseline's value
        return [(axis, getattr(config.baseline, axis), _with(cell, **{axis: getattr(config.baseline, axis)}))
                for axis in AXES if getattr(cell.settings, axis) != getattr(config.baseline, axis)]
    return [(axis, value, _with(cell, **{axis: value})) for axis, value in TOGGLES
            if getattr(cell.settings, axis) != value]


def _layer(spec: LayerSpec, params: dict[str, Any], shape: list[int]) -> LayerSpec:
    return LayerSpec(spec.kind, json.dumps(params, sort_keys=True), tuple(shape))


def _shrink_candidates(spec: LayerSpec) -> list[tuple[str, LayerSpec]]:
    """One smaller layer per knob: batch, each spatial size, channels, filters, kernel."""
    params, shape = spec.params, list(spec.input_shape)
    channels_first = params.get("data_format") == "channels_first"
    spatial = list(range(2, len(shape))) if channels_first else list(range(1, len(shape) - 1))
    channel_axis = 1 if channels_first else len(shape) - 1
    out = []

    def add(name: str, new_params: dict[str, Any], new_shape: list[int]) -> None:
        if new_params != params or new_shape != shape:
            if "output_shape" in new_params:
                new_params = {**new_params, "output_shape": None}  # let the formula follow the smaller input
            out.append((name, _layer(spec, new_params, new_shape)))

    add("batch", params, [max(1, shape[0] // 2), *shape[1:]])
    for axis in spatial:
        add(f"size[{axis}]", params, [max(1, n // 2) if i == axis else n for i, n in enumerate(shape)])
    add("channels", params, [max(1, n // 2) if i == channel_axis else n for i, n in enumerate(shape)])
    if "filters" in params:
        add("filters", {**params, "filters": max(1, params["filters"] // 2)}, shape)
    kernel = params.get("kernel_size")
    if isinstance(kernel, list):
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


def explain(removed_by: list[str], settings: Settings, message: str, tf_version: str | None) -> dict[str, Any]:
    """The first knowledge-table entry whose conditions hold."""
    entries = yaml.safe_load(_KNOWLEDGE.read_text(encoding="utf-8"))
    for entry in entries:
        when = entry.get("when") or {}
        if "removed_by" in when and when["removed_by"] not in removed_by:
            continue
        if "device" in when and not settings.device.startswith(when["device"]):
            continue
        if "message" in when and not re.search(when["message"], message or ""):
            continue
        if "tensorflow" in when and not _in_range(tf_version, when["tensorflow"]):
            continue
        return entry
    return entries[-1]


def _in_range(version: str | None, bounds: str) -> bool:
    if not version:
        return False
    def parse(text: str) -> tuple[int, ...]:
        return tuple(int(p) for p in re.findall(r"\d+", text)[:2])
    low, high = (parse(b) for b in bounds.split(","))
    return low <= parse(version) < high


def triage_cell(cell: Cell, mode: str, config: Config, work: Path, budget_s: float = 300,
                on_step: Callable[[TriageStep], None] | None = None, tf_version: str | None = None,
                message: str = "") -> TriageResult | None:
    """Confirm, toggle, shrink, explain and emit for one cell. None when the difference does not reproduce."""
    steps: list[TriageStep] = []

    def step(stage: str, what: str, outcome: str) -> None:
        steps.append(TriageStep(stage, what, outcome))
        if on_step:
            on_step(steps[-1])

    started = time.monotonic()
    cell = Cell(cell.layer, cell.settings, cell.seed, max(cell.repeats, 5))
    confirmed = _measure([cell], mode, config, work, "confirm")[cell.cell_id]
    step("confirm", f"{mode} difference with {cell.repeats} repeats", confirmed.detail)
    if not confirmed.differs:
        return None

    variants = _toggle_variants(cell, mode, config)
    toggles = []
    if variants:
        measured = _measure([v for _, _, v in variants], mode, config, work, "toggles")
        for axis, value, variant in variants:
            result = measured[variant.cell_id]
            outcome = ("removed" if not result.differs and not result.detail.startswith("not measurable")
                       else "reduced" if result.differs and result.max_ulp < confirmed.max_ulp
                       else "failed" if result.detail.startswith("not measurable") else "persists")
            toggles.append((axis, value, outcome, result.max_ulp))
            step("toggle", f"{axis}={value}", f"{outcome}: {result.detail}")

    minimal, round_ = cell, 0
    while time.monotonic() - started < budget_s:
        round_ += 1
        candidates = [(name, Cell(spec, minimal.settings, minimal.seed, minimal.repeats))
                      for name, spec in _shrink_candidates(minimal.layer)]
        if not candidates:
            break
        measured = _measure([c for _, c in candidates], mode, config, work, f"shrink-{round_}")
        keep = [(name, c) for name, c in candidates if measured[c.cell_id].differs]
        if not keep:
            step("shrink", f"round {round_}", "no smaller layer keeps the difference")
            break
        name, minimal = min(keep, key=lambda item: _size(item[1].layer))
        step("shrink", f"round {round_}: {name}", f"{minimal.layer.describe()} still differs")
    else:
        step("shrink", "budget", f"stopped after {budget_s:g} s")

    removed = [axis for axis, _, outcome, _ in toggles if outcome == "removed"]
    explanation = explain(removed, cell.settings, message, tf_version)
    step("explain", explanation["id"], explanation["fix"])
    return TriageResult(cell, mode, confirmed, toggles, minimal, explanation, steps)


def write_outputs(result: TriageResult, out_dir: Path, environment: dict[str, Any], config: Config) -> None:
    """Write repro.py (standalone) and report.md for a triaged cell."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cell = result.minimal
    reference = None
    if result.mode == "drift":  # compare against the setting that removed the drift, else the baseline
        removing = next((variant for axis, _, variant in _toggle_variants(cell, "drift", config)
                         if axis in result.removed_by), None)
        reference = (removing or _baseline_for(cell, config)).settings
    case = {"kind": cell.layer.kind, "params": cell.layer.params, "input_shape": list(cell.layer.input_shape),
            "seed": cell.seed, "repeats": 2 if result.mode == "repeat" else 1, "settings": cell.settings.as_dict(),
            "reference_settings": reference.as_dict() if reference else None, "mode": result.mode,
            "names": ["output", "grad_input", "grad_kernel", "grad_bias"]}
    script = _TEMPLATE.read_text(encoding="utf-8").replace("__CASE__", json.dumps(case, indent=1))
    result.repro = out_dir / "repro.py"
    result.repro.write_text(script, encoding="utf-8")
    result.report = out_dir / "report.md"
    result.report.write_text(_report_markdown(result, environment), encoding="utf-8")


def _report_markdown(result: TriageResult, environment: dict[str, Any]) -> str:
    cell, minimal = result.cell, result.minimal
    lines = [
        f"# detaudit triage: {cell.layer.describe()}",
        "",
        f"Settings: `{cell.settings.label()}`, seed {cell.seed}. Kind of difference: "
        f"{'run to run' if result.mode == 'repeat' else 'against the baseline settings'}.",
        "",
        "## Environment",
        "",
        *[f"- {key}: {value}" for key, value in environment.items()],
        "",
        "## 1. Confirmed",
        "",
        result.confirmed.detail,
        "",
        "## 2. One setting at a time",
        "",
        "| setting | outcome | max ULP |",
        "|---|---|---|",
        *[f"| {axis}={value} | {outcome} | {ulp} |" for axis, value, outcome, ulp in result.toggles],
        "",
        "## 3. Minimal case",
        "",
        f"{minimal.layer.describe()} (from {cell.layer.describe()})",
        "",
        "## 4. Most likely cause",
        "",
        f"{result.explanation['cause']}",
        "",
        f"**Fix:** {result.explanation['fix']}",
        "",
        f"Source: {result.explanation.get('source', '')}",
        "",
        "## 5. Reproducer",
        "",
        "`python repro.py` rebuilds the minimal case with fixed seeds, runs it and exits 1 when the bits differ.",
        "",
        "## Steps",
        "",
        *[f"- {s.stage}: {s.what}: {s.outcome}" for s in result.steps],
        "",
    ]
    return "\n".join(lines)


def environment_of(stored: StoredRun) -> dict[str, Any]:
    """The fingerprint an upstream issue needs: TensorFlow, CUDA, cuDNN, driver, GPU, CPU, oneDNN."""
    tf = stored.meta.get("tensorflow") or {}
    host = stored.meta.get("host") or {}
    return {**{k: tf.get(k) for k in ("tensorflow_version", "keras_version", "cuda_version", "cudnn_version")},
            "gpus": ", ".join(g.get("name") or g.get("device") for g in tf.get("gpus", [])) or "none",
            **{k: host.get(k) for k in ("nvidia_driver", "cpu_model", "onednn_state", "platform", "python")}}


def triage_run(stored: StoredRun, cell_id: str | None, budget_s: float,
               on_cell: Callable[[Cell, str], None] | None = None,
               on_step: Callable[[TriageStep], None] | None = None) -> list[tuple[Cell, TriageResult | None]]:
    """Triage the selected cells of a stored run, writing repro.py and report.md under triage/<cell-id>/.

    Raises:
        UsageError: ``cell_id`` is not a cell of the run.
    """
    if cell_id and cell_id not in set(stored.table["cell_id"]):
        raise UsageError(f"{stored.store.path}: no cell {cell_id!r}. Cell ids are in results.parquet "
                         "(detaudit show RUN_DIR --json lists them).")
    records = {r["cell_id"]: r for r in stored.store.iter_records() if not r.get("replay")}
    environment = environment_of(stored)
    outcomes = []
    for selected, mode in select_cells(stored.table, cell_id):
        if mode == "none":
            continue
        cell = Cell.from_dict(records[selected]["cell"])
        if on_cell:
            on_cell(cell, mode)
        work = stored.store.path / "triage" / selected
        result = triage_cell(cell, mode, stored.config, work, budget_s, on_step=on_step,
                             tf_version=environment["tensorflow_version"],
                             message=records[selected].get("message", ""))
        if result is not None:
            write_outputs(result, work, environment, stored.config)
        outcomes.append((cell, result))
    return outcomes
