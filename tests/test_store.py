"""store: run directories, append-only records, tensors; what a stored run may hold and still be read (hostile text,
fields of the wrong type, a results.parquet that lost a column). No TensorFlow."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import pandas as pd
import pytest

import detaudit
from detaudit.analysis.runs import load_run
from detaudit.core import batch
from detaudit.core.config import parse_config
from detaudit.engine.store import (
    FORMAT_VERSION,
    RunStore,
    load_tensors,
    new_run_id,
    save_tensors,
)
from detaudit.engine.table import build_table
from detaudit.errors import RunDirError
from tests.helpers import runs as fab
from tests.helpers.cli import detaudit_main


def _store(tmp_path, **kwargs) -> RunStore:
    store = RunStore.create(tmp_path / "runs", {"name": "t"}, "t", **kwargs)
    store.write_meta({"run_id": store.run_id})
    return store


def test_run_ids_are_timestamp_plus_safe_name():
    when = dt.datetime(2026, 11, 24, 23, 24, 0, tzinfo=dt.timezone.utc)
    assert new_run_id("quick", when) == "20261124T232400Z-quick"
    assert new_run_id("../../etc passwd", when) == "20261124T232400Z-etc-passwd"


def test_create_never_reuses_a_directory(tmp_path):
    first = _store(tmp_path, run_id="same")
    second = _store(tmp_path, run_id="same")
    assert first.path != second.path and second.path.name == "same-2"
    assert (first.path / "config.yaml").is_file() and first.logs_dir.is_dir() and first.tensors_dir.is_dir()


def test_unsafe_run_ids_are_refused(tmp_path):
    with pytest.raises(RunDirError, match="Invalid run id"):
        RunStore.create(tmp_path, {}, "t", run_id="../escape")


def test_out_must_be_a_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunDirError, match="must be a directory"):
        RunStore.create(tmp_path / "file", {}, "t")


def test_records_append_and_a_torn_line_is_skipped_and_reported(tmp_path):
    store = _store(tmp_path)
    store.append_record({"cell_id": "a-000000000001", "status": "ok"})
    store.append_record({"cell_id": "b-000000000002", "status": "crash"})
    with store.cells_path.open("a") as f:
        f.write('{"cell_id": "c-000000000003", "stat')  # a write cut short by a kill
    bad = []
    records = list(store.iter_records(on_bad_line=lambda n, text: bad.append(n)))
    assert [r["cell_id"] for r in records] == ["a-000000000001", "b-000000000002"] and bad == [3]
    RunStore.open(store.path).append_record({"cell_id": "d-000000000004", "status": "ok"})  # repairs the tail first
    assert [r["cell_id"] for r in RunStore.open(store.path).iter_records()] == [
        "a-000000000001", "b-000000000002", "d-000000000004"]


def test_open_checks_the_directory(tmp_path):
    with pytest.raises(RunDirError, match="no such run directory"):
        RunStore.open(tmp_path / "nope")
    with pytest.raises(RunDirError, match="not a detaudit run directory"):
        RunStore.open(tmp_path)
    store = _store(tmp_path)
    assert RunStore.open(store.path).read_meta()["format_version"] == FORMAT_VERSION


def test_newer_and_corrupted_formats_are_refused(tmp_path):
    store = _store(tmp_path)
    (store.path / "meta.json").write_text(json.dumps({"format_version": FORMAT_VERSION + 1}))
    with pytest.raises(RunDirError, match="newer than this detaudit reads"):
        RunStore.open(store.path)
    (store.path / "meta.json").write_text(json.dumps({"format_version": 0}))
    with pytest.raises(RunDirError, match="older than this detaudit reads"):
        RunStore.open(store.path)
    (store.path / "meta.json").write_text("{not json")
    with pytest.raises(RunDirError, match="unreadable"):
        RunStore.open(store.path)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16, ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn])
def test_tensors_round_trip_bit_for_bit(tmp_path, dtype):
    values = np.array([[1.5, -0.0], [np.nan, 3.25]]).astype(dtype)
    save_tensors(tmp_path / "t.npz", {"output": values, "grad_bias": values[0]})
    loaded = load_tensors(tmp_path / "t.npz")
    assert loaded["output"].dtype == values.dtype and loaded["output"].shape == (2, 2)
    assert loaded["output"].tobytes() == values.tobytes()
    assert loaded["grad_bias"].tobytes() == values[0].tobytes()


# ---- what a run directory's records and table may hold: hostile text, wrong types, an old or cut table ------------

_ONCE = parse_config({**fab.CONFIG.to_dict(), "batch_sizes": [1], "replay_process": False})
_BAD_NAME = os.fsdecode(b"caf\xe9.npy")  # a file name that is not UTF-8, as a layer's error message carries it


def _with_batch(record: dict, first: dict) -> dict:
    """The record with a batch comparison whose sample differs (the fields the batch view formats)."""
    own = first["output"]
    rows = [batch.row("output", 2, batch.compare_samples(fab.nudge(own, 5), np.arange(1), own))]
    return {**record, "ms_per_pass": 2.0, "batch": {"rows": rows}}


def _finished_run(root: Path, first: tuple = ()) -> RunStore:
    """A finished run of every cell of _ONCE, without results.parquet; ``first`` replaces the first cell's outcome."""
    cells = [(c, fab.tensors(0), None, "ok") for c in _ONCE.cells()]
    if first:
        cells[0] = (cells[0][0], None, None, *first)
    return fab.make_run(root, "r", "2026-01-01T00:00:00", cells, config=_ONCE, extend=_with_batch)


def test_a_lone_surrogate_in_a_stored_message_is_shown_as_an_escape(tmp_path):
    store = _finished_run(tmp_path / "runs", ("error", f"ValueError: bad file {_BAD_NAME}"))
    assert "\\udce9" in store.cells_path.read_text()  # JSON carries the lone surrogate as an escape
    shown = detaudit_main("show", str(store.path))  # was: UnicodeEncodeError from pyarrow
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "ERROR: ValueError: bad file caf\\udce9.npy" in " ".join(shown.stdout.split())
    tidy = detaudit.load_runs([store.path])
    assert "ValueError: bad file caf\\udce9.npy" in set(tidy["message"].dropna())
    build_table(store, _ONCE).to_parquet(store.results_path, index=False)  # what the end of `detaudit run` writes
    assert load_run(store.path).table_source == store.results_path
    assert detaudit_main("history", str(tmp_path / "runs")).returncode == 0


@pytest.mark.parametrize("change", [
    {"ms_per_pass": "fast"},
    {"ms_per_pass": [1]},
    {"batch": [1, 2]},
    {"batch": {"rows": "x"}},
    {"batch": {"rows": [{"tensor": "output", "batch_size": "one"}]}},
    {"batch": {"rows": [{"tensor": "output", "batch_size": None, "sample": 0}]}},
    {"batch": {"rows": [{"tensor": "grad_kernel", "batch_size": 2, "closer_batch": "zz"}]}},
    {"reference": [{"tensor": "output", "max_ulp": "lots"}]},
], ids=lambda change: json.dumps(change)[:40])
def test_a_record_with_a_field_of_the_wrong_type_is_an_unreadable_line(tmp_path, change):
    store = _finished_run(tmp_path / "runs")
    lines = store.cells_path.read_text().splitlines()
    store.cells_path.write_text("\n".join([json.dumps({**json.loads(lines[0]), **change}), *lines[1:]]) + "\n")
    shown = detaudit_main("show", str(store.path))  # was: ValueError, TypeError or AttributeError
    assert shown.returncode == 1 and "Traceback" not in shown.stderr, shown.stderr
    assert "1 unreadable line(s) in cells.jsonl (line 1)" in shown.stdout
    assert f"INCOMPLETE: 1 of {len(_ONCE.cells())} cells have no record" in shown.stdout
    assert len(detaudit.load_runs([store.path])["cell_id"].unique()) == len(_ONCE.cells()) - 1


@pytest.mark.parametrize("column", ["batch_size", "n_samples_differ", "sample", "max_ulp"])
def test_a_results_parquet_without_a_column_is_rebuilt_from_the_records(tmp_path, column):
    store = _finished_run(tmp_path / "runs")
    build_table(store, _ONCE).to_parquet(store.results_path, index=False)
    assert load_run(store.path).table_source == store.results_path  # the table as written is used as is
    pd.read_parquet(store.results_path).drop(columns=[column]).to_parquet(store.results_path, index=False)
    stored = load_run(store.path)
    assert stored.table_source == store.cells_path
    assert stored.table_note == f"results.parquet lacks the column(s) {column}: the table was rebuilt from " \
                                "cells.jsonl."
    assert stored.table[column].notna().any()
    shown = detaudit_main("show", str(store.path))  # was: TypeError, int() of None in the batch section
    assert shown.returncode == 0
    assert "output 1/1 samples differ, max 5 ULP (sample 0)" in " ".join(shown.stdout.split())


def test_a_results_parquet_with_a_column_of_another_type_is_rebuilt(tmp_path):
    store = _finished_run(tmp_path / "runs")
    table = build_table(store, _ONCE)
    table["sample"] = table["sample"].astype("string")
    table.to_parquet(store.results_path, index=False)
    stored = load_run(store.path)
    assert stored.table_source == store.cells_path and "holds the column sample as string" in stored.table_note
    assert str(stored.table["sample"].dtype) == "Int64"
