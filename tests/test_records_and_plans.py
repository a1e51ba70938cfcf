"""The cell record (engine/cell_record.py), the plan of a run and its resume (core/planning.py), and the run loop's
handling of what workers send, without TensorFlow."""

from __future__ import annotations

import argparse
import json

import pytest

from detaudit.core.config import parse_config
from detaudit.core.planning import parse_shard, plan_jobs, shard_type
from detaudit.engine.cell_record import CellRecord, InvalidRecord
from detaudit.errors import UsageError

TINY = {"kind": "Conv1DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
        "input_shape": [1, 4, 2]}
CELL_ID = "conv1dtranspose-0123456789ab"
MEASURED = {"event": "cell", "cell_id": CELL_ID, "status": "ok", "message": "", "seconds": 0.25,
            "tensors": [{"tensor": "output", "dtype": "float32", "digest": "d", "max_ulp": 0}],
            "applied": {"dtype_policy": "float32"}, "reference": [{"tensor": "output", "rel_error": 0.0}]}


def test_a_worker_record_round_trips_through_its_json_form():
    record = CellRecord.from_json(MEASURED)
    assert record.status == "ok" and record.seconds == 0.25 and record.details["applied"] == {"dtype_policy": "float32"}
    stored = record.stored(log="g00.log", replay=True, group="g00", cell={"cell_id": CELL_ID}).to_json()
    assert "event" not in stored  # the pipe's word, not part of the record
    assert stored["replay"] is True and stored["group"] == "g00" and stored["log"] == "g00.log"
    assert CellRecord.from_json(json.loads(json.dumps(stored))).to_json() == stored


def test_a_failure_record_has_a_status_a_message_and_no_tensors():
    data = CellRecord.failure(CELL_ID, "timeout", "worker exceeded timeout_s=5", "g01.2.log").to_json()
    assert data == {"cell_id": CELL_ID, "status": "timeout", "message": "worker exceeded timeout_s=5",
                    "seconds": None, "tensors": [], "replay": False, "log": "g01.2.log"}
    assert CellRecord.is_valid(data)


@pytest.mark.parametrize("change, why", [
    ({"cell_id": "../../etc/passwd"}, "cell_id"),
    ({"status": "fine"}, "unknown status"),
    ({"seconds": True}, "seconds"),
    ({"cell": []}, "cell"),
    ({"tensors": [{"tensor": "output", "dtype": "float32"}]}, "digest"),
    ({"reference": [{"rel_error": 0.0}]}, "tensor"),
    ({"adjoint": [1]}, "adjoint"),
])
def test_a_malformed_record_is_refused_naming_the_field(change, why):
    data = {**MEASURED, **change}
    with pytest.raises(InvalidRecord, match=why):
        CellRecord.from_json(data)
    assert not CellRecord.is_valid(data)


def test_resume_plans_the_expected_jobs_minus_the_recorded_ones():
    config = parse_config({"name": "p", "layers": [TINY], "seeds": [0, 1], "replay_process": True,
                           "matrix": {"threads": [1, 2]}})
    cells = config.cells()
    full = plan_jobs(config, cells)
    assert [(j.group, j.replay) for j in full] == [("g00", False), ("g00", True), ("g01", False), ("g01", True),
                                                    ("g02", False), ("g02", True)]
    assert sum(len(j.cells) for j in full) == 2 * len(cells)  # every cell, and its replay
    first = full[0]
    recorded = {(c.cell_id, False) for c in first.cells} | {(first.cells[0].cell_id, True)}
    left = plan_jobs(config, cells, recorded)
    assert [(j.group, j.replay) for j in left][:2] == [("g00", True), ("g01", False)]  # names keep their place
    assert [c.cell_id for c in left[0].cells] == [c.cell_id for c in first.cells[1:]]
    assert sum(len(j.cells) for j in left) == 2 * len(cells) - len(recorded)


@pytest.mark.parametrize("text", ["1/0", "0/4", "5/4", "a/b", "1", "1/2/3", "1/10001"])
def test_a_bad_shard_is_refused_by_both_parsers(text):
    with pytest.raises(UsageError, match="Invalid value for argument `--shard`"):
        parse_shard(text)
    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        shard_type(text)


def test_shard_type_is_an_argparse_type():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shard", type=shard_type)
    assert parser.parse_args(["--shard", "2/4"]).shard == (2, 4) == parse_shard("2/4")


def test_a_malformed_record_from_a_worker_becomes_an_error_row(monkeypatch, tmp_path):
    import detaudit.engine.run_loop as run_loop
    from detaudit.engine.runner import run

    def fake_job(cells, settings, *, on_record, **kwargs):  # no TensorFlow: what a broken worker could send
        for cell in cells:
            on_record({"event": "cell", "cell_id": cell.cell_id, "status": "ok", "tensors": [{"tensor": "output"}],
                       "log": "g00.log"})

    monkeypatch.setattr(run_loop, "run_worker_job", fake_job)
    monkeypatch.setattr("detaudit.engine.runner.require_backends", lambda backends: None)
    table = run(parse_config({"name": "bad", "layers": [TINY]}), out=tmp_path, workers=1)
    assert set(table["status"]) == {"error"}
    assert table["message"].str.contains("the worker sent a malformed record: a tensor row without its", regex=False).all()
