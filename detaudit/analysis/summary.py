"""The run summary: everything a renderer shows about a stored matrix run, computed once.

:func:`build_summary` turns a :class:`~detaudit.analysis.runs.StoredRun` into
a :class:`RunSummary`; the terminal, JSON, Markdown, HTML and JUnit renderers
only format it (none of them recomputes a verdict, a gap or a status line).
Pure pandas; no TensorFlow, no rich.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from collections import Counter
from typing import Any

import pandas as pd

from detaudit.analysis.findings import (
    Finding,
    findings,
    layer_label,
    relative_error,
    ulp_unit,
)
from detaudit.analysis.runs import Completeness, StoredRun
from detaudit.analysis.sections import Section
from detaudit.analysis.timing import ms_per_cell, time_ratios, time_section
from detaudit.analysis.verdicts import (
    ADJOINT_LIMIT_EPS,
    Verdict,
    cell_label,
    cell_verdicts,
    known_bool,
    largest,
    rows_by_cell,
    settings_of,
    threshold_breaches,
)
from detaudit.core.axes import compute_dtype
from detaudit.core.comparisons import ComparisonKind
from detaudit.core.vocabulary import OneDnnState, RunStatus
from detaudit.core.kinds import kind_of, not_applicable
from detaudit.core.knowledge import KnownBug, judge_known_bugs

__all__ = ["CellView", "Gap", "KnownMatch", "RunStatus", "RunSummary", "build_summary", "cell_facts"]


@dataclasses.dataclass(frozen=True)
class Gap:
    """A cell's worst gap over its tensors for one comparison."""

    identical: bool
    max_ulp_scaled: float | None
    max_ulp: int | None
    rel_error: float | None  # largest difference over the truth's largest magnitude (reference only)


@dataclasses.dataclass(frozen=True)
class KnownMatch:
    """A result that shows a known upstream bug (``fixed`` when the spec matches but the symptom is gone)."""

    bug: KnownBug
    cell: str  # a label of the cell or spec
    detail: str
    fixed: bool = False
    excused: bool = False  # it explains a result that would otherwise fail (an adjoint test above its limit)


@dataclasses.dataclass(frozen=True)
class CellView:
    """One cell as every renderer shows it."""

    cell_id: str
    layer: str  # "Conv2DTranspose [4, 16, 16, 8]"
    kind: str
    settings: Any  # Settings
    settings_label: str
    seed: int
    verdict: Verdict
    message: str
    worst_ulp: dict[str, int | None]  # run to run, per tensor
    baseline: Gap | None
    reference: Gap | None
    adjoint_eps: float | None
    is_baseline: bool
    seconds: float | None
    failures: tuple[str, ...]
    label: str  # "Conv2DTranspose [4, 16, 16, 8] [xla=on, seed=0]"
    ms_per_pass: float | None = None  # median warm forward+backward pass
    time_ratio: float | None = None  # ms_per_pass over the baseline cell's (same layer and seed)
    cannot_exist: bool = False  # UNSUPPORTED because a setting does not apply on its backend (not a finding)

    @property
    def folded(self) -> bool:
        """Left out of the cell tables and counted under them: skipped, or a setting that cannot apply."""
        return self.verdict is Verdict.SKIPPED or self.cannot_exist


@dataclasses.dataclass(frozen=True)
class RunSummary:
    """A stored matrix run, summarized once for every renderer."""

    run_id: str
    run_dir: str
    config_name: str
    facts: dict[str, str]  # header: TensorFlow, Keras, devices, CPU, oneDNN...
    tensors: tuple[str, ...]  # tensor columns in order
    cells: tuple[CellView, ...]
    skipped: tuple[tuple[str, int], ...]  # (reason, number of cells), folded
    counts: dict[str, int]
    findings: tuple[Finding, ...]
    failures: tuple[str, ...]
    known: tuple[KnownMatch, ...]
    completeness: Completeness
    ulp_units: dict[str, str]  # dtype -> what one ULP is at 1.0
    status: RunStatus
    strict: bool
    upgraded_from: int | None
    #: Every cell of a complete, unsharded run was skipped: it proved nothing and fails (a shard is judged once
    #: merged: on a CPU node one may hold only GPU cells).
    nothing_measured: bool = False
    #: What comparisons and measurements say beyond the cell table (batch invariance, time per pass), in order.
    sections: tuple[Section, ...] = ()
    #: Cells whose settings do not apply on their backend (``xla: off`` on JAX): (reason, number of cells), folded.
    not_applicable: tuple[tuple[str, int], ...] = ()

    @property
    def status_line(self) -> str:
        """The one-line verdict every renderer prints last (with the resume command of an incomplete run)."""
        c = self.completeness
        if self.status is RunStatus.INCOMPLETE and c.resume_command:
            return f"{self.status_headline}. Resume with: {c.resume_command}"
        return self.status_headline

    @property
    def status_headline(self) -> str:
        """:attr:`status_line` without the resume command (a terminal prints the command on a line of its own)."""
        c = self.completeness
        if self.status is RunStatus.INCOMPLETE:
            line = f"INCOMPLETE: {len(c.missing)} of {c.expected} cells have no record"
            if self.failures:
                line += f"; {len(self.failures)} expectation(s) failed among the rest"
            return line
        excused = [k for k in self.known if k.excused]
        tail = f" ({len(excused)} known upstream bug(s) not counted; --strict counts them)" if excused and not self.strict \
            else ""
        if self.nothing_measured:
            return "FAIL: nothing was measured: every cell of the matrix was skipped"
        if self.status is RunStatus.FAIL:
            return f"FAIL: {len(self.failures)} expectation(s) failed{tail}"
        return f"PASS: every expectation held{tail}"

    def cell(self, cell_id: str) -> CellView:
        return next(c for c in self.cells if c.cell_id == cell_id)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data, for ``--json``."""
        return {
            "run_id": self.run_id, "run_dir": self.run_dir, "config": self.config_name, "status": self.status.value,
            "passed": self.status is RunStatus.PASS, "status_line": self.status_line, "failures": list(self.failures),
            "complete": self.completeness.complete, "missing": list(self.completeness.missing),
            "unreadable_lines": list(self.completeness.bad_lines), "resume": self.completeness.resume_command,
            "counts": self.counts, "facts": self.facts, "ulp_units": self.ulp_units,
            "cells": [{"cell_id": c.cell_id, "layer": c.layer, "kind": c.kind, "settings": c.settings.as_dict(),
                       "seed": c.seed, "verdict": c.verdict.value, "message": c.message,
                       "worst_ulp": c.worst_ulp, "baseline": _plain(c.baseline), "reference": _plain(c.reference),
                       "adjoint_eps": _num(c.adjoint_eps), "failures": list(c.failures),
                       "ms_per_pass": _num(c.ms_per_pass), "time_ratio": _num(c.time_ratio)} for c in self.cells],
            "skipped": [{"reason": r, "cells": n} for r, n in self.skipped],
            "not_applicable": [{"reason": r, "cells": n} for r, n in self.not_applicable],
            "findings": [{"layer": f.layer, "comparison": f.comparison, "between": f.between, "sentence": f.sentence(),
                          "tensors": [{k: _num(v) for k, v in dataclasses.asdict(g).items()} for g in f.gaps]}
                         for f in self.findings],
            "known_bugs": [{"id": k.bug.id, "title": k.bug.title, "link": k.bug.link, "cell": k.cell,
                            "detail": k.detail, "fixed_upstream": k.fixed} for k in self.known],
            "upgraded_from_format": self.upgraded_from, "nothing_measured": self.nothing_measured,
            "sections": [section.to_dict() for section in self.sections],
        }


def _num(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    if isinstance(value, (list, tuple)):
        return [_num(v) for v in value]
    return value


def _plain(gap: Gap | None) -> dict[str, Any] | None:
    return None if gap is None else {k: _num(v) for k, v in dataclasses.asdict(gap).items()}


def _gaps(table: pd.DataFrame, comparison: str) -> dict[str, Gap]:
    out = {}
    rows = table[(table["comparison"] == comparison) & table["tensor"].notna()]
    columns = ["cell_id", "max_ulp_scaled", "max_ulp", "bitwise_equal", "ref_scale", "max_abs"]
    for cell_id, group in rows_by_cell(rows, columns).items():
        scaled, raw = largest([r["max_ulp_scaled"] for r in group]), largest([r["max_ulp"] for r in group])
        errors = [e for e in (relative_error(r) for r in group) if e is not None]
        identical = all(known_bool(r["bitwise_equal"]) is True for r in group)
        out[str(cell_id)] = Gap(identical, None if scaled is None else float(scaled),
                                None if raw is None else int(raw), max(errors) if errors else None)
    return out


def cell_facts(row: dict[str, Any], onednn: str | None, tensorflow: str | None) -> dict[str, Any]:
    """The facts knowledge.yaml's matchers read, for one table row."""
    params = row.get("params")
    params = json.loads(params) if isinstance(params, str) else (params or {})
    kernel, stride = params.get("kernel_size"), params.get("strides")
    return {"comparison": row.get("comparison"), "kind": row.get("layer"), "rank": kind_of(str(row.get("layer"))).rank,
            "kernel": kernel[0] if isinstance(kernel, list) and len(set(kernel)) == 1 else kernel,
            "stride": stride[0] if isinstance(stride, list) and len(set(stride)) == 1 else stride,
            "padding": params.get("padding"), "dtype": compute_dtype(str(row.get("precision"))),
            "precision": row.get("precision"), "xla": row.get("xla"), "device": str(row.get("device", "")).split(":")[0],
            "onednn": onednn, "tensor": row.get("tensor"), "tensorflow": tensorflow,
            "adjoint_eps": None if pd.isna(row.get("adjoint_eps")) else row.get("adjoint_eps"),
            "rel_error": relative_error(row) if row.get("comparison") == ComparisonKind.REFERENCE.value else None}


def _onednn_paths(stored: StoredRun) -> dict[str, str]:
    """oneDNN on/off per cell, as its worker reported it (format 1: per group; "*": the host's state)."""
    host = OneDnnState.parse((stored.meta.get("host") or {}).get("onednn_state")).word
    groups = {g: OneDnnState.parse((a or {}).get("onednn")).word for g, a in (stored.meta.get("groups") or {}).items()}
    out = {"*": host}
    for record in stored.records:
        applied = OneDnnState.parse((record.get("applied") or {}).get("onednn")).word
        out[record["cell_id"]] = applied or groups.get(str(record.get("group", "")), "") or host
    return out


def _known(stored: StoredRun, table: pd.DataFrame) -> tuple[list[KnownMatch], dict[tuple[str, str], str], set[str]]:
    """Known upstream bugs among the adjoint and reference rows: matches, (cell, tensor) marks, cells excused."""
    tf_version = (stored.meta.get("tensorflow") or {}).get("tensorflow_version")
    onednn = _onednn_paths(stored)
    matches, marks, excused = [], {}, set()
    rows = table[table["comparison"].isin([ComparisonKind.ADJOINT.value, ComparisonKind.REFERENCE.value]) & (table["status"] == "ok")]
    for row in rows.to_dict("records"):
        facts = cell_facts(row, onednn.get(row["cell_id"], onednn.get("*")), tf_version)
        for bug, shows in judge_known_bugs(facts):
            label = cell_label(row)
            if not shows:
                matches.append(KnownMatch(bug, label, "no longer reproduces", fixed=True))
                continue
            adjoint = row["comparison"] == ComparisonKind.ADJOINT.value
            detail = (f"adjoint test {facts['adjoint_eps']:.3g} eps" if adjoint
                      else f"{row['tensor']} {100 * (facts['rel_error'] or 0):.2g}% off float64")
            # Only a failure the bug explains is excused: an adjoint test above its limit.
            excuses = adjoint and facts["adjoint_eps"] > ADJOINT_LIMIT_EPS
            matches.append(KnownMatch(bug, label, detail, excused=excuses))
            marks[(row["cell_id"], row["tensor"])] = bug.reference()
            if excuses:
                excused.add(row["cell_id"])
    # A bug that shows in some cells of this run is not fixed because other cells (other shapes, smaller sums)
    # stay under its symptom: "fixed upstream?" is said only when no cell of the run shows it.
    showing = {m.bug.id for m in matches if not m.fixed}
    matches = [m for m in matches if not (m.fixed and m.bug.id in showing)]
    return _dedupe(matches), marks, excused


def _dedupe(matches: list[KnownMatch]) -> list[KnownMatch]:
    """One entry per bug and outcome, the first cell named, with a count."""
    seen: dict[tuple[str, bool], list[KnownMatch]] = {}
    for m in matches:
        seen.setdefault((m.bug.id, m.fixed), []).append(m)
    out = []
    for group in seen.values():
        first = group[0]
        more = f" (and {len(group) - 1} more cell(s))" if len(group) > 1 else ""
        out.append(dataclasses.replace(first, detail=first.detail + more))
    return out


def _cannot_exist(verdicts: pd.DataFrame) -> set[str]:
    """The UNSUPPORTED cells whose settings do not apply on their backend (``xla: off`` on JAX): decided once, by
    :func:`~detaudit.core.kinds.not_applicable` as the worker decided it; folded under the table, failing nothing."""
    rows = verdicts[verdicts["verdict"] == Verdict.UNSUPPORTED.value].to_dict("records")
    return {row["cell_id"] for row in rows if not_applicable(settings_of(row).as_dict(), str(row["layer"]))}


def _failures(stored: StoredRun, verdicts: pd.DataFrame, excused: set[str], strict: bool,
              cannot_exist: set[str]) -> dict[str, list[str]]:
    """The failed expectations of each cell (cells with none are absent).

    Without ``expect`` every cell must be run-to-run deterministic. Crashes,
    time-outs and errors always fail; skipped cells never do, nor do cells whose
    settings do not apply on their backend (``unsupported`` with that reason). The adjoint test
    fails above its limit unless a known upstream bug explains it (and not --strict).
    """
    config, table = stored.config, stored.table
    assert config is not None
    failures: dict[str, list[str]] = {}
    for row in verdicts.to_dict("records"):
        verdict = Verdict(row["verdict"])
        if verdict.failed_to_run:
            failures.setdefault(row["cell_id"], []).append(f"{verdict.value}: {row['message']}")
        elif verdict in (Verdict.NONDETERMINISTIC, Verdict.UNSUPPORTED) and row["cell_id"] not in cannot_exist and \
                config.expect.must_be_deterministic(settings_of(row)):
            # A setting that does not apply on its backend (xla: off on JAX) is a cell that cannot exist, shown
            # with its reason; only a framework refusing to be deterministic fails the expectation.
            failures.setdefault(row["cell_id"], []).append(f"expected deterministic, got {verdict.value}")
    for row in threshold_breaches(table, config).to_dict("records"):
        failures.setdefault(row["cell_id"], []).append(row["breach"])
    for view in _views():
        for cell_id, found in view.failures(table, config).items():
            failures.setdefault(cell_id, []).extend(found)
    adjoint = table[(table["comparison"] == ComparisonKind.ADJOINT.value) & (table["adjoint_eps"] > ADJOINT_LIMIT_EPS)]
    for row in adjoint.to_dict("records"):
        if row["cell_id"] in excused and not strict:
            continue
        failures.setdefault(row["cell_id"], []).append(
            f"adjoint test {row['adjoint_eps']:.3g} eps > {ADJOINT_LIMIT_EPS:g}: TensorFlow's conv_transpose is not "
            "the adjoint of its convolution here (a TensorFlow bug)")
    return failures


def _facts(stored: StoredRun) -> dict[str, str]:
    tf = stored.meta.get("tensorflow") or {}
    host = stored.meta.get("host") or {}
    gpus = [g.get("name") or g.get("device") for g in tf.get("gpus", [])]
    facts = {"run": stored.run_id}
    if tf:
        if tf.get("tensorflow_version") or not stored.meta.get("backends"):
            facts["TensorFlow"] = f"{tf.get('tensorflow_version')} / Keras {tf.get('keras_version')}"
        else:  # a run on JAX or PyTorch alone: no TensorFlow to name
            facts["Keras"] = str(tf.get("keras_version"))
        facts["devices"] = ", ".join(gpus) if gpus else "CPU only"
    backends = stored.meta.get("backends") or {}
    if set(backends) - {"tensorflow"}:  # a run on other Keras backends names each, with its CUDA where it has one
        facts["backends"] = ", ".join(f"{name} {b.get('version')}" + (f" (CUDA {b['cuda_version']}, cuDNN "
                                      f"{b.get('cudnn_version')})" if b.get("cuda_version") else "")
                                      for name, b in sorted(backends.items()))
    if host:
        facts["CPU"] = str(host.get("cpu_model", "?"))
        facts["oneDNN"] = str(host.get("onednn_state", "?"))
    return facts


def build_summary(stored: StoredRun, strict: bool = False) -> RunSummary:
    """Summarize a stored matrix run once; ``strict`` makes known upstream bugs fail it."""
    config, table = stored.config, stored.table
    if config is None or stored.completeness is None:
        raise TypeError(f"{stored.path}: a run of kind {stored.kind.value} has no cell summary")
    verdicts = cell_verdicts(table)
    matches, marks, excused = _known(stored, table)
    folded = _cannot_exist(verdicts)
    per_cell = _failures(stored, verdicts, excused, strict, folded)
    baseline_gaps, reference_gaps = _gaps(table, ComparisonKind.BASELINE.value), _gaps(table, ComparisonKind.REFERENCE.value)
    adjoint = {r["cell_id"]: r["adjoint_eps"] for r in table[table["comparison"] == ComparisonKind.ADJOINT.value].to_dict("records")}
    seconds = table.groupby("cell_id")["seconds"].max().to_dict() if len(table) else {}
    timed = ms_per_cell(table)
    cells, skipped, not_applicable_reasons = [], Counter(), Counter()
    for row in verdicts.to_dict("records"):
        verdict = Verdict(row["verdict"])
        settings = settings_of(row)
        if verdict is Verdict.SKIPPED:
            skipped[row["message"]] += 1
        if row["cell_id"] in folded:
            not_applicable_reasons[row["message"]] += 1
        eps = adjoint.get(row["cell_id"])
        cells.append(CellView(
            row["cell_id"], layer_label(row), str(row["layer"]), settings, settings.label(), int(row["seed"]), verdict,
            row["message"], row["worst_ulp"], baseline_gaps.get(row["cell_id"]), reference_gaps.get(row["cell_id"]),
            None if eps is None or pd.isna(eps) else float(eps), settings == config.baseline,
            None if pd.isna(seconds.get(row["cell_id"], math.nan)) else float(seconds[row["cell_id"]]),
            tuple(per_cell.get(row["cell_id"], ())), cell_label(row), timed.get(row["cell_id"]),
            cannot_exist=row["cell_id"] in folded))
    ratios = time_ratios(cells)
    cells = [dataclasses.replace(c, time_ratio=ratios.get(c.cell_id)) for c in cells]
    failures = tuple(f"{c.label}: {f}" for c in cells for f in c.failures)
    names = list(dict.fromkeys(t for c in cells for t in c.worst_ulp))
    known_order = ("output", "grad_input", "grad_kernel", "grad_bias")
    tensors = tuple(sorted(names, key=lambda t: (known_order.index(t) if t in known_order else len(known_order), t)))
    dtypes = sorted({str(d) for d in table["dtype"].dropna().unique()} & {"float64", "float32", "float16", "bfloat16"})
    completeness = stored.completeness
    # A run that measured nothing proved nothing: a GPU config whose GPU vanished must not gate green, even
    # though the CPU baseline detaudit adds to a matrix without one (for the baseline comparison) did run.
    asked = [c for c in cells if all(v in config.axes[a] for a, v in c.settings.as_dict().items())]
    nothing_measured = (completeness.complete and not stored.meta.get("shard") and bool(asked)
                        and all(c.verdict is Verdict.SKIPPED for c in asked))
    if not completeness.complete:
        status = RunStatus.INCOMPLETE
    else:
        status = RunStatus.FAIL if failures or nothing_measured else RunStatus.PASS
    return RunSummary(
        stored.run_id, str(stored.path), config.name, _facts(stored), tensors, tuple(cells),
        tuple(skipped.items()), {v.value: n for v in Verdict if (n := sum(c.verdict is v for c in cells))},
        tuple(findings(table, config.baseline, marks)), failures, tuple(matches), completeness,
        {d: ulp_unit(d) for d in dtypes}, status, strict, stored.upgraded_from, nothing_measured,
        tuple(s for s in (*(view.section(table) for view in _views()), time_section(cells)) if s is not None),
        tuple(not_applicable_reasons.items()))


def _views() -> list[Any]:
    """The view module of each comparison that declares one (``ComparisonSpec.view``), in comparison order."""
    return [importlib.import_module(kind.spec.view) for kind in ComparisonKind if kind.spec.view]
