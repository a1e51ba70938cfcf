"""The results table, verdicts, findings, the run summary and its terminal rendering, from fabricated runs.

No TensorFlow: records are made the way the worker makes them, from NumPy tensors.
"""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from detaudit.analysis.findings import findings
from detaudit.analysis.runs import load_run
from detaudit.analysis.summary import RunStatus, build_summary
from detaudit.analysis.verdicts import Verdict, cell_verdicts
from detaudit.core.config import Cell, parse_config
from detaudit.engine.store import RunStore, save_tensors
from detaudit.engine.table import COLUMNS, build_table
from detaudit.render.terminal import render_run
from tests.helpers import runs as fab
from tests.helpers.runs import CONFIG

@pytest.fixture()
def store(tmp_path) -> RunStore:
    """A run: baseline; determinism off with a nondeterministic grad_bias; xla on with an output
    gap to the baseline; xla on + determinism on crashed."""
    store = RunStore.create(tmp_path, CONFIG.to_dict(), CONFIG.name, run_id="fab")
    store.write_meta({"run_id": "fab", "tensorflow": {"tensorflow_version": "2.x", "keras_version": "3.x", "gpus": []},
                      "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
                      "interrupted": False})
    base = fab.tensors(0)
    off = fab.cell(determinism="off")
    shaky = {**base, "grad_bias": fab.nudge(base["grad_bias"], 3, 2)}
    xla = {**base, "output": fab.nudge(base["output"], 5, 4)}
    runs = [(fab.cell(determinism="on"), base, None), (off, base, shaky), (fab.cell(xla="on"), xla, None)]
    for cell, first, later in runs:
        for replay in (False, True):
            store.append_record({**fab.record(cell, first, later), "replay": replay})
            save_tensors(store.tensor_path(cell.cell_id, replay), first)
    crashed = fab.cell(xla="on", determinism="on")
    for replay in (False, True):
        store.append_record({"event": "cell", "cell_id": crashed.cell_id, "status": "crash", "tensors": [],
                             "message": "worker killed by SIGSEGV", "seconds": None, "cell": crashed.to_dict(),
                             "replay": replay})
    return store


def test_table_has_the_contract_columns_and_integer_ulps(store):
    table = build_table(store, CONFIG)
    assert list(table.columns[:29]) == COLUMNS[:29]
    assert str(table["max_ulp"].dtype) == "UInt64" and str(table["n_mismatch"].dtype) == "UInt64"
    assert set(table["comparison"]) == {"repeat", "process", "baseline"}
    repeat = table[(table["comparison"] == "repeat") & (table["determinism"] == "off") & (table["xla"] == "off")]
    bias = repeat[repeat["tensor"] == "grad_bias"].iloc[0]
    assert not bias["bitwise_equal"] and bias["max_ulp"] == 3 and bias["n_mismatch"] == 2


def test_baseline_rows_measure_the_gap_to_the_baseline_cell(store):
    table = build_table(store, CONFIG)
    gap = table[(table["comparison"] == "baseline") & (table["xla"] == "on") & (table["tensor"] == "output")].iloc[0]
    assert gap["max_ulp"] == 5 and gap["n_mismatch"] == 4
    assert gap["reference_cell"] == fab.cell(determinism="on").cell_id


def test_rebuilding_gives_the_same_table(store):
    assert build_table(store, CONFIG).equals(build_table(store, CONFIG))


def test_verdicts(store):
    verdicts = cell_verdicts(build_table(store, CONFIG)).set_index("cell_id")["verdict"]
    assert verdicts[fab.cell(determinism="on").cell_id] == Verdict.DETERMINISTIC.value
    assert verdicts[fab.cell(determinism="off").cell_id] == Verdict.NONDETERMINISTIC.value
    assert verdicts[fab.cell(xla="on", determinism="on").cell_id] == Verdict.CRASH.value


def test_default_expectation_is_run_to_run_determinism_and_no_crash(store):
    summary = build_summary(load_run(store.path))
    assert len(summary.failures) == 2 and summary.status is RunStatus.FAIL
    assert any("expected deterministic, got NONDETERMINISTIC" in f for f in summary.failures)
    assert any("CRASH" in f and "SIGSEGV" in f for f in summary.failures)


def test_thresholds_on_baseline_gaps(store):
    strict = parse_config({**CONFIG.to_dict(), "expect": {"deterministic": {"determinism": ["on"]},
                                                          "max_ulp": {"baseline": {"float32": 4}}}})
    (store.path / "config.yaml").write_text(__import__("yaml").safe_dump(strict.to_dict()))
    failures = build_summary(load_run(store.path)).failures
    assert any("baseline max_ulp 5 > 4" in f for f in failures)
    assert not any("NONDETERMINISTIC" in f for f in failures)  # determinism=off is not required


def test_findings_name_the_tensor_the_setting_and_the_ulps(store):
    found = findings(build_table(store, CONFIG), CONFIG.baseline)
    sentences = [f.sentence() for f in found]
    # The cell id is where `detaudit triage --cell` needs it: in the finding.
    assert sentences[0].startswith(f"Conv2DTranspose k3 s2 same [1, 2, 2, 2] (cell {fab.cell().cell_id}): "
                                   "nondeterministic run to run under defaults")
    assert found[0].cell_id == fab.cell().cell_id
    assert "grad_bias in 2/2 repeats: 2/2 elements differ, max 3 float32 ULP raw" in sentences[0]
    # The xla=on cell also has determinism=off, and its determinism=on twin crashed: both axes are named.
    assert any("determinism=on, xla=off -> determinism=off, xla=on: output: 4/32 elements differ, "
               "max 5 float32 ULP raw" in s for s in sentences)


def _render(store, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None, force_terminal=False)
    console.print(render_run(build_summary(load_run(store.path))))
    text = console.file.getvalue().replace(str(store.path), "RUN_DIR")
    return "\n".join(line.rstrip() for line in text.splitlines()) + "\n"


@pytest.mark.parametrize("width", [80, 120])
def test_rendering_matches_the_golden_files(store, width, golden):
    text = _render(store, width)
    golden(f"run-{width}.txt", text)
    assert all(len(line) <= width for line in text.splitlines())


def test_summary_json_is_plain_data(store):
    import json
    data = build_summary(load_run(store.path)).to_dict()
    json.dumps(data)
    assert data["passed"] is False and data["status"] == "FAIL" and data["counts"]["CRASH"] == 1 and data["findings"]


def test_a_run_with_missing_cells_is_incomplete_never_pass(store):
    lines = store.cells_path.read_text().splitlines(keepends=True)
    store.cells_path.write_text("".join(lines[:2]))  # the baseline and its replay only
    summary = build_summary(load_run(store.path))
    assert summary.status is RunStatus.INCOMPLETE and len(summary.completeness.missing) == 6
    assert summary.status_line.startswith("INCOMPLETE: 6 of 8 cells have no record")
    assert summary.status_headline == "INCOMPLETE: 6 of 8 cells have no record"
    assert "Resume with: detaudit run --resume" in summary.status_line


def test_a_torn_line_is_reported_and_its_cell_is_missing(store):
    text = store.cells_path.read_text()
    store.cells_path.write_text(text[:-40])  # the last record cut short
    summary = build_summary(load_run(store.path))
    assert summary.status is RunStatus.INCOMPLETE and summary.completeness.bad_lines == (8,)


def _skipped_run(tmp_path, run_id: str, ran: list[Cell], config=CONFIG, **meta) -> RunStore:
    """A complete run whose cells were all skipped (no GPU), except those in ``ran``."""
    store = RunStore.create(tmp_path, config.to_dict(), config.name, run_id=run_id)
    store.write_meta({"run_id": run_id, "tensorflow": {"tensorflow_version": "2.x", "keras_version": "3.x",
                                                       "gpus": []}, "interrupted": False, **meta})
    for cell in config.cells():
        for replay in (False, True):
            if cell in ran:
                store.append_record({**fab.record(cell, fab.tensors(0)), "replay": replay})
                save_tensors(store.tensor_path(cell.cell_id, replay), fab.tensors(0))
            else:
                store.append_record({"event": "cell", "cell_id": cell.cell_id, "status": "skipped", "tensors": [],
                                     "message": "no GPU visible to TensorFlow on this machine", "seconds": 0.0,
                                     "cell": cell.to_dict(), "replay": replay})
    return store


def test_a_run_that_measured_nothing_fails_and_junit_says_so(tmp_path):
    from detaudit.render.junit import summary_cases

    summary = build_summary(load_run(_skipped_run(tmp_path, "gpu-gone", []).path))
    assert summary.completeness.complete and summary.nothing_measured
    assert summary.status is RunStatus.FAIL
    assert summary.status_line == "FAIL: nothing was measured: every cell of the matrix was skipped"
    assert not summary.failures and summary.to_dict()["nothing_measured"] is True  # no cell failed an expectation
    cases = summary_cases(summary)
    assert sum(c.skipped is not None for c in cases) == 4
    assert [c.failure for c in cases if c.failure] == [summary.status_headline]
    assert not [c for c in summary_cases(summary, failures={}) if c.failure]  # `compare --junit` judges by itself


def test_an_interrupted_run_of_skips_is_incomplete_and_a_shard_of_skips_waits_for_its_merge(tmp_path):
    store = _skipped_run(tmp_path, "cut", [])
    store.cells_path.write_text("".join(store.cells_path.read_text().splitlines(keepends=True)[:2]))
    cut = build_summary(load_run(store.path))
    assert cut.status is RunStatus.INCOMPLETE and not cut.nothing_measured
    assert cut.status_headline == "INCOMPLETE: 6 of 8 cells have no record"  # records count replays
    shard = build_summary(load_run(_skipped_run(tmp_path, "shard", [], shard=[2, 2]).path))
    assert shard.status is RunStatus.PASS and not shard.nothing_measured


def test_a_gpu_matrix_fails_without_a_gpu_though_the_cpu_baseline_added_to_it_ran(tmp_path):
    gpu_only = parse_config({**CONFIG.to_dict(), "matrix": {"device": ["gpu"]}})
    baseline = next(c for c in gpu_only.cells() if c.settings.device == "cpu")  # added for the baseline comparison
    summary = build_summary(load_run(_skipped_run(tmp_path, "gpu", [baseline], config=gpu_only).path))
    assert summary.nothing_measured and summary.status is RunStatus.FAIL
    assert summary.status_line == "FAIL: nothing was measured: every cell of the matrix was skipped"


def test_one_cell_that_ran_is_enough_to_pass(tmp_path):
    summary = build_summary(load_run(_skipped_run(tmp_path, "one-ran", [fab.cell(determinism="on")]).path))
    assert not summary.nothing_measured and summary.status is RunStatus.PASS, summary.failures


def test_a_known_bug_that_shows_in_some_cells_is_not_called_fixed_for_the_others(store):
    """The bfloat16 BiasAddGrad error depends on the shape: cells under its symptom do not mean it was fixed."""
    import dataclasses

    import pandas as pd

    stored = load_run(store.path)
    stored.meta["tensorflow"]["tensorflow_version"] = "2.21.0"  # the bug's range starts at 2.0
    table = stored.table
    bias = table[(table["comparison"] == "repeat") & (table["tensor"] == "grad_bias")].drop_duplicates("cell_id")
    rows = bias.head(2).copy()
    rows["comparison"], rows["status"], rows["xla"] = "reference", "ok", "off"
    rows["precision"] = "mixed_bfloat16"
    bug = "tf-cpu-biasaddgrad-bfloat16-accumulates-in-bfloat16"

    def known(max_abs: list[float]) -> list[tuple[str, bool]]:
        rows["ref_scale"], rows["max_abs"] = [1.0, 1.0], max_abs
        summary = build_summary(dataclasses.replace(stored, table=pd.concat([table, rows], ignore_index=True)))
        return [(m.bug.id, m.fixed) for m in summary.known]

    assert known([0.09, 0.001]) == [(bug, False)]  # 9% off in one cell, 0.1% in the other
    assert known([0.001, 0.001]) == [(bug, True)]  # no cell shows it any more: that is worth a question
