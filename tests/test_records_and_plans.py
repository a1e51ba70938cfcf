"""The cell record (engine/cell_record.py), the plan of a run and its resume (core/planning.py), and the run loop's
handling of what workers send, without TensorFlow."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytest

from detaudit.core.config import parse_config
from detaudit.core.planning import parse_shard, plan_jobs, shard_type
from detaudit.engine.cell_record import CellRecord, InvalidRecord
from detaudit.errors import UsageError, one_line

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
    # hand-edited or corrupted measurements: each would have crashed the table (pandas, pyarrow) or a view
    ({"ms_per_pass": "fast"}, "ms_per_pass"),
    ({"ms_per_pass": [1]}, "ms_per_pass"),
    ({"ms_per_pass": float("inf")}, "ms_per_pass"),
    ({"ms_per_pass": -1}, "ms_per_pass"),
    ({"ms_per_pass": 0}, "ms_per_pass"),
    ({"ms_per_pass": True}, "ms_per_pass"),
    ({"seconds": -1}, "seconds"),
    ({"seconds": float("nan")}, "seconds"),
    ({"message": ["x"]}, "message"),
    ({"replay": "yes"}, "replay"),
    ({"tensors": [{"tensor": "output", "dtype": "float32", "digest": "d", "max_ulp": True}]}, "tensors.max_ulp"),
    ({"tensors": [{"tensor": "output", "dtype": "float32", "digest": "d", "n_mismatch": -1}]}, "tensors.n_mismatch"),
    ({"tensors": [{"tensor": "output", "dtype": "float32", "digest": "d", "p99_ulp": 1.5}]}, "tensors.p99_ulp"),
    ({"tensors": [{"tensor": "output", "dtype": "float32", "digest": "d", "bitwise_equal": "no"}]}, "bitwise_equal"),
    ({"reference": [{"tensor": "output", "max_ulp": "lots"}]}, "reference.max_ulp"),
    ({"reference": [{"tensor": "output", "max_abs": 10**400}]}, "reference.max_abs"),
    ({"reference": "oops"}, "`reference` is not a list"),
    ({"adjoint": {"adjoint_eps": "x"}}, "adjoint.adjoint_eps"),
    ({"adjoint": {"error": 3}}, "adjoint.error"),
    ({"batch": [1, 2]}, "`batch` is not an object"),
    ({"batch": {}}, "neither `error` nor `rows`"),
    ({"batch": {"rows": "x"}}, "`batch.rows` is not a list"),
    ({"batch": {"rows": [1]}}, "batch.rows` row without a `tensor`"),
    ({"batch": {"rows": [{"tensor": "output", "batch_size": "one"}]}}, "batch.rows.batch_size"),
    ({"batch": {"rows": [{"tensor": "output", "batch_size": None}]}}, "batch size None"),
    ({"batch": {"rows": [{"tensor": "grad_kernel", "batch_size": 2, "closer_batch": "zz"}]}}, "closer_batch"),
    ({"batch": {"rows": [{"tensor": "output", "batch_size": 2, "bitwise_equal": False, "max_ulp": 3,
                          "n_samples_differ": 1}]}}, "differs without its sample"),
    ({"batch": {"error": 7}}, "batch.error"),
    ({"ops": [1]}, "`ops` is not an object"),
    ({"ops": {"output": {"device": "CPU:0"}}}, "ops.output"),
])
def test_a_malformed_record_is_refused_naming_the_field(change, why):
    data = {**MEASURED, **change}
    with pytest.raises(InvalidRecord, match=why):
        CellRecord.from_json(data)
    assert not CellRecord.is_valid(data)


def test_a_well_formed_record_with_every_measurement_is_accepted():
    data = {**MEASURED, "ms_per_pass": 1.5, "seconds": 0,
            "reference": [{"tensor": "output", "max_ulp": 2**64 - 1, "max_rel": float("inf"), "mean_ulp": None}],
            "adjoint": {"dtype": "float32", "adjoint_eps": 3, "reconstruction": 1.0},
            "batch": {"rows": [{"tensor": "output", "batch_size": 2, "bitwise_equal": False, "max_ulp": 3,
                                "n_samples_differ": 1, "sample": 0},
                               {"tensor": "grad_kernel", "batch_size": 2, "closer_batch": None, "ref_scale": 1.0}]},
            "ops": {"output": {"op": "Conv2DBackpropInput", "xla": None}, "error": "ignored"}}
    assert CellRecord.is_valid(data) and CellRecord.is_valid({**data, "batch": {"error": "too large"}})


def test_a_lone_surrogate_anywhere_in_a_record_becomes_a_visible_escape():
    bad = os.fsdecode(b"caf\xe9.npy")  # what a layer names a file that is not UTF-8 with
    data = {**MEASURED, "message": f"bad file {bad}", "adjoint": {"error": bad},
            "batch": {"error": f"ValueError: {bad}"},
            "tensors": [{**MEASURED["tensors"][0], "tensor": bad}], "reference": [{"tensor": bad}],
            "ops": {bad: {"op": bad}}}
    stored = CellRecord.from_json(json.loads(json.dumps(data))).to_json()  # as a worker's message arrives
    text = json.dumps(stored, ensure_ascii=False)
    text.encode("utf-8")  # was: UnicodeEncodeError, surrogates not allowed
    assert stored["message"] == "bad file caf\\udce9.npy" and stored["tensors"][0]["tensor"] == "caf\\udce9.npy"
    assert stored["adjoint"]["error"] == stored["reference"][0]["tensor"] == "caf\\udce9.npy"
    assert "caf\\udce9.npy" in stored["ops"] and stored["batch"]["error"] == "ValueError: caf\\udce9.npy"
    assert CellRecord.checked({**MEASURED, "message": "café ✓"})["message"] == "café ✓"  # valid text unchanged


def test_one_line_is_encodable_and_keeps_an_oserrors_text():
    bad = os.fsdecode(b"caf\xe9.npy")
    assert one_line(ValueError(f"bad file {bad}")) == "ValueError: bad file caf\\udce9.npy"
    missing = FileNotFoundError(2, "No such file or directory", "/data/x.npy")
    assert one_line(missing) == "FileNotFoundError: [Errno 2] No such file or directory: '/data/x.npy'"
    try:  # Keras re-raises an error of the same class made from its first argument (the errno) alone
        try:
            raise FileNotFoundError(2, "No such file or directory", f"/data/{bad}")
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"Exception encountered when calling L.call().\n\n{exc.args[0]}") from None
    except FileNotFoundError as wrapped:
        assert one_line(wrapped) == r"FileNotFoundError: [Errno 2] No such file or directory: '/data/caf\udce9.npy'"


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


def test_a_worker_message_with_a_lone_surrogate_ends_in_a_written_table(monkeypatch, tmp_path):
    import detaudit.engine.run_loop as run_loop
    from detaudit.engine.runner import run

    def fake_job(cells, settings, *, on_record, **kwargs):  # a layer raised ValueError("bad file " + fsdecode(...))
        for cell in cells:
            on_record({"event": "cell", "cell_id": cell.cell_id, "status": "error", "tensors": [], "log": "g00.log",
                       "message": "ValueError: bad file " + os.fsdecode(b"caf\xe9.npy")})

    monkeypatch.setattr(run_loop, "run_worker_job", fake_job)
    monkeypatch.setattr("detaudit.engine.runner.require_backends", lambda backends: None)
    table = run(parse_config({"name": "sur", "layers": [TINY]}), out=tmp_path, workers=1)  # was: UnicodeEncodeError
    assert set(table["message"]) == {"ValueError: bad file caf\\udce9.npy"}
    assert (Path(table.attrs["run_dir"]) / "results.parquet").is_file()
