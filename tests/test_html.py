"""The HTML pages (run, audit, triage, overview) from fabricated runs. No TensorFlow.

Records are made the way the worker makes them (see tests/helpers/runs.py), with float64
reference rows; one optional test opens a page in a real headless browser (Debian's
chromium) and is skipped where it is not installed.
"""

from __future__ import annotations

import dataclasses
import html
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from detaudit.analysis.compare import compare_runs
from detaudit.analysis.runs import load_run
from detaudit.analysis.summary import KnownMatch, build_summary
from detaudit.core.config import Cell, parse_config
from detaudit.core.knowledge import KnownBug
from detaudit.core.numerics import compare
from detaudit.engine.store import RunKind, RunStore
from detaudit.render.html import render_html, render_overview, render_result_page
from tests.helpers import runs as fab

CONFIG = parse_config({
    "name": "fab-html",
    "seeds": [0, 1],
    "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
                "input_shape": [1, 2, 2, 2]}],
    "matrix": {"device": ["cpu", "gpu"], "determinism": ["off", "on"], "xla": ["off", "on"]},
})
META = {"tensorflow": {"tensorflow_version": "2.20.0", "keras_version": "3.10.0", "gpus": []},
        "host": {"cpu_model": "X", "onednn_state": "off"}}
SCRIPT = "<script>alert(1)</script>"


def _cell(seed: int = 0, **settings) -> Cell:
    return fab.cell(CONFIG, seed, **settings)


def _with_reference(record: dict, first: dict[str, np.ndarray]) -> dict:
    """Add the float64 reference rows a worker adds: the truth is the cell's tensors, nudged by one ULP here."""
    reference = []
    for name, a in first.items():
        truth = fab.nudge(a, 1, 1)
        stats = compare(a, truth, digest=False).to_dict()
        reference.append({**stats, "tensor": name, "ref_scale": float(np.abs(truth.astype(np.float64)).max())})
    xla = record["cell"]["settings"]["xla"] == "on"
    return {**record, "reference": reference, "ms_per_pass": 1.5 if xla else 3.0}  # XLA at half the baseline's time


def _make_run(root: Path, run_id: str, started: str, meta: dict | None = None, crash_message: str = "worker crashed"):
    """seed 0 and 1: the baseline; determinism=off with a 2-ULP grad_bias gap and a nondeterministic repeat;
    xla=on with a 5-ULP output gap; xla=on + determinism=off crashed (seed 0) or has xla's bits (seed 1);
    every GPU cell skipped."""
    cells = []
    for seed in (0, 1):
        base = fab.tensors(seed)
        off = {**base, "grad_bias": fab.nudge(base["grad_bias"], 2, 2)}
        xla = {**base, "output": fab.nudge(base["output"], 5, 4)}
        cells += [(_cell(seed, determinism="on"), base, None, "ok"),
                  (_cell(seed, determinism="off"), off, {**off, "grad_bias": fab.nudge(off["grad_bias"], 3, 1)}, "ok"),
                  (_cell(seed, determinism="on", xla="on"), xla, None, "ok")]
        if seed == 1:
            cells.append((_cell(seed, determinism="off", xla="on"), xla, None, "ok"))
        else:
            cells.append((_cell(seed, determinism="off", xla="on"), None, None, "crash", crash_message))
        cells += [(cell, None, None, "skipped", "no GPU visible to TensorFlow") for cell in CONFIG.cells()
                  if cell.seed == seed and cell.settings.device == "gpu"]
    return fab.make_run(root, run_id, started, cells, {"config_name": CONFIG.name, **(meta or META)}, CONFIG,
                        extend=_with_reference)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("html") / "runs"
    return load_run(_make_run(root, "r1", "2026-01-01T00:00:00+00:00", crash_message=SCRIPT).path)


@pytest.fixture(scope="module")
def page(run):
    """The run's page, rendered once (matplotlib takes most of a second)."""
    return render_html(run, build_summary(run))


def _rows(page: str, cls: str) -> int:
    return len(re.findall(rf"<tr class='{cls}'", page))


def test_the_status_line_is_the_summarys_and_the_counts_are_shown(run, page):
    summary = build_summary(run)
    assert page.startswith("<!doctype html>")
    match = re.search(r'<p class="status" id="status" style="background:(#\w+)">(.*?)</p>', page)
    assert match and html.unescape(match.group(2)) == summary.status_line
    assert summary.status.value == "FAIL" and match.group(1) == "#c62828"
    assert "8 cells: " not in page and "16 cells: " in page and "Failed expectations (" in page


def test_the_drift_matrix_has_one_row_per_setting_change(run, page):
    summary = build_summary(run)
    changes = [f for f in summary.findings if f.comparison == "baseline"]
    assert len(changes) == 2
    assert "<table class='drift'>" in page and _rows(page, "change") == len(changes)
    for finding in changes:
        before, after = finding.between
        assert f"{html.escape(before)} → {html.escape(after)}" in page
    assert "vs f64:" in page  # both sides' error against float64
    assert "≥1024" in page  # the legend of the log scale


def test_skipped_cells_are_folded_into_one_line_per_reason(page):
    assert page.count("no GPU visible to TensorFlow") == 1
    assert "<b>8 cell(s)</b>: no GPU visible to TensorFlow" in page
    cell_table = page.split("id='cells'")[1].split("</table>")[0]
    assert "device=gpu" not in cell_table and "SKIPPED" not in cell_table


def test_the_heat_map_keeps_matrix_order_and_hides_columns_with_only_skipped_cells(page):
    heat = page.split("<table class='heat'>")[1].split("</table>")[0]
    assert heat.index(">determinism</th>") < heat.index(">xla</th>")  # outer axis first, as the matrix nests them
    assert re.findall(r"<th colspan='\d+' title='xla=(\w+)'>", heat) == ["off", "on", "off", "on"]
    assert ">device</th>" not in heat and "4 setting(s) not shown: every cell skipped or not applicable" in page


def test_tables_are_sortable_and_numbers_are_numbers(page):
    assert 'class="sortable"' in page and "data-type=num" in page and "addEventListener('click'" in page
    cells = page.split("id='cells'")[1]
    assert "run to run grad_bias (ULP)" in cells and 'data-v="3.0"' in cells  # the nondeterministic repeat
    assert "{" not in cells.split("</table>")[0]  # no raw JSON left


def test_the_cell_table_shows_each_cells_time_and_its_ratio_to_the_baseline(page):
    cells = page[page.index("<h2 id='cells'>"):]
    assert ">ms per pass<" in cells and ">time vs baseline<" in cells
    assert 'data-v="1.5"' in cells and ">0.50x</td>" in cells and ">1.00x</td>" in cells


def test_no_comparison_header_when_nothing_changed(run):
    page = render_html(run, build_summary(run), compare_runs(run, run))
    assert "Drift against" not in page and "Against run r1: OK" in page


def test_the_comparison_shows_its_verdict_environment_and_changes(tmp_path, run):
    newer = {**META, "tensorflow": {**META["tensorflow"], "tensorflow_version": "2.21.0"}}
    new = load_run(_make_run(tmp_path / "runs", "r2", "2026-01-02T00:00:00+00:00", newer).path)
    comparison = compare_runs(run, new)
    page = render_html(new, build_summary(new), comparison)
    assert "Drift against r1" in page and "tensorflow.tensorflow_version" in page and "2.21.0" in page
    assert html.escape(comparison.verdict()) in page


def test_known_bugs_link_upstream_or_say_not_yet_reported(run):
    summary = build_summary(run)
    reported = KnownBug("a", "Bias grad in bfloat16", {}, {}, "", "https://github.com/x/y/issues/1", "", "use XLA")
    unreported = KnownBug("b", "conv3d offset", {}, {}, "", "not yet reported", "", "")
    summary = dataclasses.replace(summary, known=(KnownMatch(reported, "cell A", "grad_bias 9% off float64"),
                                                  KnownMatch(unreported, "cell B", "adjoint test 2e13 eps")))
    page = render_html(run, summary)
    assert '<a href="https://github.com/x/y/issues/1" rel="noreferrer">' in page
    assert "not yet reported" in page and "Workaround: use XLA" in page
    assert not re.search(r"""(src|href)=["']?https?:""", page.replace('<a href="https://github.com/x/y/issues/1"', ""))


def test_everything_from_the_run_is_escaped(run):
    summary = build_summary(run)
    cells = tuple(dataclasses.replace(c, layer=SCRIPT) if i == 0 else c for i, c in enumerate(summary.cells))
    page = render_html(run, dataclasses.replace(summary, cells=cells))
    assert SCRIPT not in page and html.escape(SCRIPT) in page
    assert page.count("<script>") == 1  # the page's own sort script only


def test_the_page_is_self_contained(page):
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)
    assert "<link" not in page and "@import" not in page and "<script src" not in page
    assert page.count("data:image/png;base64,") == 1  # the histograms; the heat map is a table


def _audit_run(root: Path) -> RunStore:
    store = RunStore.create(root, None, "audit-model", run_id="audit-1", kind=RunKind.AUDIT)
    result = {"model": "m.keras", "verdict": "NONDETERMINISTIC",
              "culprit": {"layer": SCRIPT, "class": "Conv2DTranspose", "tensor": "forward output"},
              "layers": [{"layer": "dense", "class": "Dense", "forward": "ok", "backward": "ok", "max_ulp": 0,
                          "first_step": None},
                         {"layer": SCRIPT, "class": "Conv2DTranspose", "forward": "DIFFERS", "backward": "DIFFERS",
                          "max_ulp": 12345, "first_step": 1}],
              "losses": [{"step": 1, "equal": True, "max_ulp": 0, "value": 0.5},
                         {"step": 2, "equal": False, "max_ulp": 7, "value": 0.25}],
              "restart": {"initial_weights": True, "final_weights": False},
              "checks": [{"check": "op determinism", "state": "off", "risk": "atomics", "fix": "enable it"},
                         {"check": "TF32", "state": "on", "risk": "lower precision", "fix": "disable",
                          "applies": "gpu"}],
              "gpus_visible": 0, "tensorflow": {"tensorflow_version": "2.21.0", "keras_version": "3.1"},
              "settings": {"device": "cpu"}, "steps": 2, "repeats": 3, "seed": 0}
    store.write_meta({"run_id": "audit-1", "kind": "audit", "config_name": "audit-model",
                      "started": "2026-01-03T00:00:00+00:00", "verdict": result["verdict"]})
    store.write_json("audit.json", result)
    return store


def _triage_run(root: Path) -> RunStore:
    store = RunStore.create(root, CONFIG.to_dict(), "triage-fab", run_id="triage-1", kind=RunKind.TRIAGE)
    cell = _cell(0, determinism="off")
    result = {"source_run": "runs/r1", "environment": {"tensorflow_version": "2.21.0"}, "cells": [
        {"cell_id": cell.cell_id, "reproduced": True, "cell": cell.to_dict(), "mode": "repeat",
         "confirmed": {"differs": True, "max_ulp": 3, "detail": "grad_bias differs in 2/2 repeats"},
         "toggles": [{"axis": "determinism", "value": "on", "outcome": "removed", "max_ulp": 0},
                     {"axis": "xla", "value": "on", "outcome": "persists", "max_ulp": 3}],
         "minimal_description": "Conv2DTranspose(filters=1) on [1, 2, 2, 1]", "removed_by": ["determinism"],
         "explanation": {"id": "atomics", "cause": f"atomic adds {SCRIPT}", "fix": "enable op determinism",
                         "source": "https://www.tensorflow.org/api_docs"},
         "steps": [{"stage": "confirm", "what": "3 repeats", "outcome": "differs"}],
         "repro": "runs/triage-1/x/repro.py", "report": "runs/triage-1/x/report.md",
         "op": f"BiasAddGrad (CPU:0, {SCRIPT})"},
        {"cell_id": _cell(1, determinism="off").cell_id, "reproduced": False,
         "cell": _cell(1, determinism="off").to_dict()}],
        "other_findings": [{"cell_id": "c-1", "mode": "accuracy", "line": f"c-1  error against float64: {SCRIPT}"}]}
    store.write_meta({"run_id": "triage-1", "kind": "triage", "config_name": "fab-html", "source_run_id": "r1",
                      "started": "2026-01-04T00:00:00+00:00", "finished": "2026-01-04T00:00:00+00:00"})
    store.write_json("triage.json", result)
    return store


def test_the_audit_page(tmp_path):
    page = render_result_page(load_run(_audit_run(tmp_path).path))
    assert "detaudit audit of m.keras" in page and ">NONDETERMINISTIC</p>" in page
    assert f"forward output of {html.escape(SCRIPT)} (Conv2DTranspose) differs between repeats" in page
    assert SCRIPT not in page and "12,345" in page and "final weights DIFFERS" in page
    assert "op determinism" in page and "Not shown (no GPU visible, they do not apply): TF32" in page


def test_the_triage_page(tmp_path):
    page = render_result_page(load_run(_triage_run(tmp_path).path))
    assert "detaudit triage of r1" in page and "1 of 2 cell(s) reproduced" in page
    assert "Most likely cause" in page and html.escape(f"atomic adds {SCRIPT}") in page and SCRIPT not in page
    assert "determinism=on" in page and ">removed</td>" in page and "python runs/triage-1/x/repro.py" in page
    assert "Not reproduced" in page and "Conv2DTranspose(filters=1) on [1, 2, 2, 1]" in page
    assert html.escape(f"BiasAddGrad (CPU:0, {SCRIPT})") in page  # the op behind the tensor, escaped
    assert "Other findings (1)" in page and html.escape(f"c-1  error against float64: {SCRIPT}") in page


def test_the_overview_lists_runs_plots_them_and_marks_environment_changes(tmp_path):
    root = tmp_path / "runs"
    _make_run(root, "r1", "2026-01-01T00:00:00+00:00")
    _make_run(root, "r2", "2026-01-02T00:00:00+00:00")
    newer = {**META, "tensorflow": {**META["tensorflow"], "tensorflow_version": "2.21.0", "keras_version": SCRIPT}}
    _make_run(root, "r3", "2026-01-03T00:00:00+00:00", newer)
    _audit_run(root)
    _triage_run(root)
    page = render_overview(root)
    assert all(run_id in page for run_id in ("r1", "r2", "r3", "audit-1", "triage-1"))
    assert SCRIPT not in page and f"keras_version: 3.10.0 → {html.escape(SCRIPT)}" in page
    assert "tensorflow_version: 2.20.0 → 2.21.0" in page and "<b style='color:#8e24aa'>A</b>" in page
    assert page.count("data:image/png;base64,") == 1  # one layer: one plot of its tensors
    assert "Audit and triage runs" in page and 'class="sortable"' in page


@pytest.mark.parametrize("n_runs", [0, 1])
def test_the_overview_of_no_run_or_one_run(tmp_path, n_runs):
    root = tmp_path / "runs"
    root.mkdir()
    if n_runs:
        _make_run(root, "only", "2026-01-01T00:00:00+00:00")
    page = render_overview(root)
    assert ("No readable run" in page) == (n_runs == 0)
    assert page.count("data:image/png;base64,") == n_runs


CHROMIUM = Path("/usr/bin/chromium")
_PROBE = """<script>
window.onerror=function(m){document.documentElement.setAttribute('data-error',String(m));};
</script>"""
_CLICK = """<script>
var t=document.querySelector("table.sortable thead th[data-type=num]");
var heads=Array.prototype.slice.call(t.parentNode.cells), i=heads.indexOf(t);
var table=t.closest('table');
t.click();
var first=table.tBodies[0].rows[0].cells[i].getAttribute('data-v');
t.click();
var last=table.tBodies[0].rows[0].cells[i].getAttribute('data-v');
document.documentElement.setAttribute('data-probe', t.textContent+'|'+t.getAttribute('aria-sort')+'|'+first+'|'+last);
</script>"""


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
def test_the_sort_script_runs_in_a_real_browser(tmp_path, page):
    page = page.replace("<head>", "<head>" + _PROBE, 1).replace("</body>", _CLICK + "</body>", 1)
    path = tmp_path / "page.html"
    path.write_text(page, encoding="utf-8")
    profile = tmp_path / "profile"
    done = subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
         "--dump-dom", path.as_uri()], capture_output=True, text=True, timeout=120)
    dom = done.stdout
    match = re.search(r"<html[^>]*>", dom)
    assert match, (dom[:300], done.stderr[-2000:])
    head = match.group(0)
    assert "data-error" not in head, head
    assert re.search(r'data-sortable="[1-9]', head), head
    probe = re.search(r'data-probe="([^"]*)"', head)
    assert probe, head
    label, order, first, last = html.unescape(probe.group(1)).split("|")
    assert order == "ascending"  # a numeric column sorts largest first, then smallest first
    assert float(first) >= float(last)
    shutil.rmtree(profile, ignore_errors=True)
