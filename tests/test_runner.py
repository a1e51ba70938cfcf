"""runner + worker + cases: real TensorFlow workers on tiny shapes (CPU)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from detaudit.analysis.runs import load_run
from detaudit.analysis.summary import build_summary
from detaudit.analysis.verdicts import cell_verdicts
from detaudit.core.config import Settings, parse_config
from detaudit.core.knowledge import explain
from detaudit.engine.runner import Event, run, worker_environ
from detaudit.engine.store import RunStore
from detaudit.errors import UsageError
from tests.helpers.layers import ALL_KINDS, TINY

@pytest.fixture(scope="module")
def kinds_run(tmp_path_factory):
    config = parse_config({"name": "kinds", "seeds": [0], "repeats": 3, "layers": ALL_KINDS,
                           "matrix": {"device": ["cpu", "gpu"], "determinism": ["off", "on"]},
                           "replay_process": True}, source="kinds.yaml")
    events: list[Event] = []
    table = run(config, out=tmp_path_factory.mktemp("runs"), workers=2, on_event=events.append)
    return config, table, events


def _verdicts(table: pd.DataFrame) -> pd.DataFrame:
    return cell_verdicts(table)


@pytest.mark.tf
def test_every_layer_kind_runs_forward_and_backward(kinds_run):
    config, table, _ = kinds_run
    verdicts = _verdicts(table)
    cpu = verdicts[verdicts["device"] == "cpu"]
    expected_errors = cpu["params"].str.contains('"kernel_size": \\[4, 4\\]') | cpu["params"].str.contains(
        '"dilation_rate": \\[2, 2\\]')
    plain = cpu[~cpu["layer"].str.contains("support_layers") & ~expected_errors]
    assert set(plain["verdict"]) == {"DETERMINISTIC"}, plain[["layer", "verdict", "message"]]
    tensors = set(table[(table["layer"] == "Conv2DTranspose") & table["tensor"].notna()]["tensor"])
    assert tensors == {"output", "grad_input", "grad_kernel", "grad_bias"}
    raw = table[(table["layer"] == "conv2d_transpose") & (table["tensor"] == "output")]
    assert raw["n_elements"].iloc[0] == 2 * 8 * 8 * 2


@pytest.mark.tf
def test_a_random_order_backward_pass_is_caught_and_determinism_fixes_it(kinds_run):
    _, table, _ = kinds_run
    rows = table[table["layer"].str.endswith("RandomOrderSumConv2DTranspose") & (table["device"] == "cpu")]
    off = rows[(rows["determinism"] == "off") & (rows["comparison"] == "repeat")].set_index("tensor")
    assert not off.loc["grad_bias", "bitwise_equal"] and off.loc["grad_bias", "max_ulp"] > 0
    assert off.loc["grad_bias", "n_repeats_differ"] == 2
    assert off.loc["output", "bitwise_equal"] and off.loc["grad_kernel", "bitwise_equal"]  # forward stays clean
    on = rows[(rows["determinism"] == "on") & (rows["comparison"] == "repeat")]
    assert on["bitwise_equal"].all()


@pytest.mark.tf
def test_refusals_errors_and_missing_devices_are_rows_not_crashes(kinds_run):
    config, table, _ = kinds_run
    verdicts = _verdicts(table)
    refuses = verdicts[verdicts["layer"].str.endswith("RefusesDeterminism") & (verdicts["device"] == "cpu")]
    assert dict(zip(refuses["determinism"], refuses["verdict"])) == {"off": "DETERMINISTIC", "on": "UNSUPPORTED"}
    assert "Determinism is not yet supported" in refuses[refuses["determinism"] == "on"]["message"].iloc[0]
    even = verdicts[verdicts["params"].str.contains('"kernel_size": \\[4, 4\\]') & (verdicts["device"] == "cpu")]
    assert set(even["verdict"]) == {"ERROR"}
    gpu = verdicts[verdicts["device"] == "gpu"]
    assert set(gpu["verdict"]) == {"SKIPPED"} and gpu["message"].str.contains("no GPU visible").all()
    failures = build_summary(load_run(table.attrs["run_dir"])).failures
    assert any("RandomOrderSum" in f and "NONDETERMINISTIC" in f for f in failures)


@pytest.mark.onednn
@pytest.mark.tf
def test_the_cpu_path_decides_dilated_transposes_and_the_refusals_words(tmp_path):
    """With the environment's oneDNN state (CI runs this with oneDNN off, then on; tests/test_onednn.py measures
    both paths in one run whatever the environment)."""
    dilated, even = ALL_KINDS[3], ALL_KINDS[-1]
    config = parse_config({"name": "path", "seeds": [0], "repeats": 2, "layers": [dilated, even],
                           "baseline": {"determinism": "off"}})  # one worker: the baseline is the only point
    table = run(config, out=tmp_path, workers=1)
    verdicts = _verdicts(table).set_index("params")
    meta = RunStore.open(table.attrs["run_dir"]).read_meta()
    (group,) = meta["groups"].values()
    path = str(group["onednn"]).split(" ")[0]  # the environment's
    refusal = verdicts.filter(like='"kernel_size": [4, 4]', axis=0).iloc[0]
    assert refusal["verdict"] == "ERROR"
    # The refusal reads differently with oneDNN on and off; the knowledge table knows both texts.
    assert explain([], "cpu", refusal["message"], None)["id"] == "backprop-size-mismatch"
    dilation = verdicts.filter(like='"dilation_rate": [2, 2]', axis=0).iloc[0]
    if path == "on":
        assert "could not create a primitive descriptor" in refusal["message"]
        assert dilation["verdict"] == "DETERMINISTIC"  # oneDNN's kernels run dilated transposes on the CPU
    else:  # TensorFlow's own CPU kernels refuse them
        assert "Size of out_backprop doesn't match computed" in refusal["message"]
        assert dilation["verdict"] == "ERROR"
        assert "do not yet support dilation rates larger than 1" in dilation["message"]


@pytest.mark.tf
def test_process_replay_rows_compare_fresh_workers(kinds_run):
    _, table, _ = kinds_run
    process = table[(table["comparison"] == "process") & table["tensor"].notna()]
    plain = process[process["layer"] == "Conv3DTranspose"]
    assert len(plain) == 2 * 4 and plain["bitwise_equal"].all()  # two determinism settings x four tensors


@pytest.mark.tf
def test_the_run_directory_holds_everything(kinds_run):
    config, table, events = kinds_run
    store = RunStore.open(table.attrs["run_dir"])
    meta = store.read_meta()
    assert meta["tensorflow"]["tensorflow_version"] and meta["finished"] and meta["interrupted"] is False
    assert {g["op_determinism"] for g in meta["groups"].values()} == {False, True}
    records = list(store.iter_records())
    assert len(records) == 2 * len(config.cells())  # every cell, and its replay
    # A replay's bits alone are compared: it measures no float64 reference and no adjoint test again.
    measured = [r for r in records if r["status"] == "ok"]
    assert any("reference" in r for r in measured if not r.get("replay"))
    assert not any("reference" in r or "adjoint" in r or "ops" in r for r in measured if r.get("replay"))
    assert any("ops" in r for r in measured if not r.get("replay"))
    assert pd.read_parquet(store.results_path).shape == table.shape
    assert any(store.logs_dir.iterdir())
    assert sum(e.kind == "cell_finished" for e in events) == len(records)
    assert events[0].kind == "planned" and events[-1].kind == "finished"


@pytest.mark.slow
@pytest.mark.tf
def test_crashes_and_hangs_cost_one_cell_each(tmp_path):
    config = parse_config({
        "name": "failures", "seeds": [0], "repeats": 2, "timeout_s": 8,
        "layers": [
            {"kind": "tests.support_layers:KillsProcess", "input_shape": [1, 2]},
            {"kind": "tests.support_layers:Hangs", "input_shape": [1, 2]},
            {"kind": "Conv1DTranspose", **TINY, "input_shape": [1, 4, 2]},
        ],
        "matrix": {"determinism": "on"},
    })
    table = run(config, out=tmp_path, workers=1)
    verdicts = _verdicts(table).set_index("layer")
    assert verdicts.loc["tests.support_layers:KillsProcess", "verdict"] == "CRASH"
    assert "SIGSEGV" in verdicts.loc["tests.support_layers:KillsProcess", "message"]
    assert verdicts.loc["tests.support_layers:Hangs", "verdict"] == "TIMEOUT"
    assert verdicts.loc["Conv1DTranspose", "verdict"] == "DETERMINISTIC"
    logs = sorted(p.name for p in (tmp_path / table.attrs["run_dir"]).joinpath("logs").iterdir())
    assert len(logs) == 3  # one worker died, one hung, a third finished the group


@pytest.mark.tf
def test_precisions_and_threads_apply_in_their_own_workers(tmp_path):
    config = parse_config({
        "name": "precisions", "seeds": [0], "repeats": 2,
        "layers": [{"kind": "Conv2DTranspose", **TINY, "input_shape": [1, 3, 3, 2]}],
        "matrix": {"precision": ["float64", "bfloat16", "mixed_float16"], "threads": [1]},
        "keep_tensors": True,
    })
    table = run(config, out=tmp_path, workers=2)
    repeat = table[(table["comparison"] == "repeat") & (table["tensor"] == "output")].set_index("precision")
    assert repeat.loc["float64", "dtype"] == "float64"
    assert repeat.loc["bfloat16", "dtype"] == "bfloat16"
    assert repeat.loc["mixed_float16", "dtype"] == "float16"
    gaps = table[(table["comparison"] == "baseline") & (table["tensor"] == "output")].set_index("precision")
    # Compared in the narrower compute dtype: float16 for mixed_float16, bfloat16 for bfloat16.
    assert gaps.loc["mixed_float16", "dtype"] == "float16" and gaps.loc["bfloat16", "dtype"] == "bfloat16"
    assert gaps.loc["float64", "dtype"] == "float32"
    truth = table[(table["comparison"] == "reference")].set_index(["precision", "tensor"])
    # float64 against the float64 reference: a few ULP of summation order at most.
    assert truth.loc[("float64", "output"), "max_ulp"] <= 16
    assert truth.loc[("float64", "grad_kernel"), "max_ulp_scaled"] <= 16
    # Every precision is judged in its own dtype: the reference is rounded to it first.
    assert truth.loc[("bfloat16", "output"), "dtype"] == "bfloat16"
    assert truth.loc[("mixed_float16", "output"), "dtype"] == "float16"
    assert truth.loc[("mixed_float16", "grad_kernel"), "dtype"] == "float32"
    adjoint = table[table["comparison"] == "adjoint"].set_index("precision")
    assert (adjoint["adjoint_eps"] < 8).all()  # conv_transpose is the adjoint of conv to rounding
    assert (adjoint["reconstruction"] > 0.1).all()  # and not its inverse
    assert adjoint.loc["mixed_float16", "dtype"] == "float16"
    meta = json.loads((tmp_path / table.attrs["run_dir"] / "meta.json").read_text())
    groups = list(meta["groups"].values())
    assert {a["intra_op_threads"] for a in groups} == {0, 1}  # threads: a worker each (process-wide)
    assert len(groups) == 2  # precisions are set per cell inside those workers
    store = RunStore.open(table.attrs["run_dir"])
    applied = {r["applied"]["dtype_policy"] for r in store.iter_records()}
    assert applied == {"float64", "bfloat16", "mixed_float16", "float32"}


def test_worker_environment_means_what_the_axis_says():
    base = {"TF_DETERMINISTIC_OPS": "1", "TF_ENABLE_ONEDNN_OPTS": "1", "PATH": "/bin"}
    env = worker_environ(Settings(determinism="off", onednn="default"), base)
    assert "TF_DETERMINISTIC_OPS" not in env  # off means off
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"  # default is this environment's own
    env = worker_environ(Settings(determinism="env", onednn="off"), base)
    assert env["TF_DETERMINISTIC_OPS"] == "1" and env["TF_ENABLE_ONEDNN_OPTS"] == "0"


def test_a_missing_tensorflow_is_bad_input_not_a_crash_per_cell(monkeypatch, tmp_path):
    import importlib.util
    config = parse_config({"name": "t", "layers": [{"kind": "Conv1DTranspose", **TINY, "input_shape": [1, 4, 2]}]})
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UsageError, match="TensorFlow is not installed"):
        run(config, out=tmp_path)
    assert not any(tmp_path.iterdir())  # nothing half-made


@pytest.mark.parametrize("workers", [1, 3])
def test_groups_run_in_parallel_up_to_workers(monkeypatch, tmp_path, workers):
    import threading
    import time

    import detaudit.engine.run_loop as run_loop

    live, peak, lock = [0], [0], threading.Lock()

    def fake_job(cells, settings, *, on_record, **kwargs):  # no TensorFlow: only the scheduling
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
        time.sleep(0.2)
        for cell in cells:
            on_record({"event": "cell", "cell_id": cell.cell_id, "status": "skipped", "message": "fake",
                       "tensors": [], "seconds": 0.0})
        with lock:
            live[0] -= 1

    monkeypatch.setattr(run_loop, "run_worker_job", fake_job)
    config = parse_config({"name": "sched", "layers": [{"kind": "Conv1DTranspose", **TINY, "input_shape": [1, 4, 2]}],
                           "matrix": {"threads": [1, 2, 3, 4]}})  # 4 groups plus the baseline's
    table = run(config, out=tmp_path, workers=workers)
    assert peak[0] == min(workers, 5)
    assert set(table["status"]) == {"skipped"} and len(table) == 5


@pytest.mark.slow
@pytest.mark.tf
def test_the_device_compare_path_agrees_with_the_host_path(tmp_path, monkeypatch):
    """The GPU path (repeats compared inside the pass's graph, one sync per cell), forced on the CPU."""
    config = parse_config({"name": "dev", "seeds": [0], "repeats": 3, "layers": [
        {"kind": "tests.support_layers:RandomOrderSumConv2DTranspose", **TINY, "input_shape": [2, 6, 6, 3]},
        {"kind": "Conv2DTranspose", **TINY, "input_shape": [2, 5, 5, 3]}], "matrix": {"xla": ["off", "on"]},
        "baseline": {"determinism": "off"}})  # one worker per run: the baseline is a point of the matrix
    host = run(config, out=tmp_path / "host", workers=2)
    monkeypatch.setenv("DETAUDIT_COMPARE_ON_DEVICE", "1")
    device = run(config, out=tmp_path / "device", workers=2)
    keep = ["cell_id", "tensor", "bitwise_equal", "n_repeats_differ"]
    rows = [t[t["comparison"] == "repeat"][keep].reset_index(drop=True) for t in (host, device)]
    pd.testing.assert_frame_equal(*rows)
    shaky = rows[1][rows[1]["tensor"] == "grad_bias"]
    assert (~shaky["bitwise_equal"]).sum() == 2  # the random-order layer, xla off and on (determinism off)
    plain = [t[(t["comparison"] == "repeat") & (t["layer"] == "Conv2DTranspose")] for t in (host, device)]
    assert list(plain[0]["digest"]) == list(plain[1]["digest"])  # the same first repeat, bit for bit
    records = list(RunStore.open(device.attrs["run_dir"]).iter_records())
    assert {r.get("compared_on") for r in records if r["status"] == "ok"} == {"device"}
