"""store: run directories, append-only records, tensors. No TensorFlow."""

from __future__ import annotations

import datetime as dt
import json

import ml_dtypes
import numpy as np
import pytest

from detaudit.engine.store import (
    FORMAT_VERSION,
    RunStore,
    load_tensors,
    new_run_id,
    save_tensors,
)
from detaudit.errors import RunDirError


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
