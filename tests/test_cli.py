"""cli: the real command in a subprocess, as a user runs it; refusals through cli.main in-process.

A refusal needs no subprocess: `detaudit_main` calls the same `main` with the output captured. The tests
that start `python -m detaudit` are those about the process itself: its exit status through `-m`, signals,
its workers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers.cli import detaudit, detaudit_main, one_clean_line
from tests.helpers.layers import TINY_1D as TINY_LAYER
from tests.helpers.workers import alive, worker_pids



def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_typo_in_a_config_is_one_line_and_exit_2_from_the_real_command(tmp_path):
    config = _write(tmp_path / "typo.yaml", {"name": "typo", "layers": [TINY_LAYER], "matrix": {"precison": ["float32"]}})
    line = one_clean_line(detaudit("run", str(config), "--out", str(tmp_path)))
    assert "typo.yaml" in line and "unknown key `precison`" in line and "Did you mean `precision`?" in line
    assert not any(tmp_path.glob("*/meta.json"))  # refused before any work


def test_in_process_main_reads_as_the_command_does(tmp_path):
    """detaudit_main is what the refusal tests use: the same line, the same status, as `python -m detaudit`."""
    for args in (("frobnicate",), ("run", str(tmp_path / "nope.yaml"))):
        real, in_process = detaudit(*args), detaudit_main(*args)
        assert (in_process.returncode, in_process.stderr) == (real.returncode, real.stderr) and real.returncode == 2


def test_a_missing_config_is_one_line_and_exit_2(tmp_path):
    line = one_clean_line(detaudit_main("run", str(tmp_path / "nope.yaml")))
    assert "nope.yaml: config file not found (bundled configs, by name alone:" in line


@pytest.mark.parametrize("args, fragment", [
    (("run", "--workers", "0"), "--workers"),
    (("frobnicate",), "invalid choice"),
    (("show", "/definitely/not/here"), "no such run directory"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, fragment):
    one_clean_line(detaudit_main(*args), fragment)


def test_show_refuses_a_foreign_directory(tmp_path):
    one_clean_line(detaudit_main("show", str(tmp_path)), "not a detaudit run directory")


def test_version():
    result = detaudit("--version")
    assert result.returncode == 0 and result.stdout.startswith("detaudit ")


@pytest.mark.tf
def test_run_then_show_then_json(tmp_path):
    config = _write(tmp_path / "tiny.yaml", {"name": "tiny", "seeds": [0], "repeats": 2, "layers": [TINY_LAYER],
                                             "matrix": {"device": ["cpu", "gpu"]}, "baseline": {"determinism": "off"}})
    result = detaudit("run", str(config), "--out", str(tmp_path / "runs"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["counts"] == {"DETERMINISTIC": 1, "SKIPPED": 1}  # one worker
    run_dir = summary["run_dir"]
    shown = detaudit("show", run_dir)
    assert shown.returncode == 0 and "DETERMINISTIC" in shown.stdout and "PASS" in shown.stdout
    assert "1 cell(s) SKIPPED: no GPU visible" in shown.stdout


@pytest.mark.tf
def test_nondeterminism_exits_1(tmp_path):
    layer = {"kind": "tests.support_layers:RandomOrderSumConv2DTranspose", "filters": 2, "kernel_size": 3,
             "strides": 2, "padding": "same", "input_shape": [2, 6, 6, 3]}
    config = _write(tmp_path / "nd.yaml", {"name": "nd", "repeats": 3, "layers": [layer],
                                           "baseline": {"determinism": "off"}})  # one worker
    result = detaudit("run", str(config), "--out", str(tmp_path / "runs"))
    assert result.returncode == 1, result.stderr
    # The finding names the op behind the tensor: "grad_bias [StridedSlice (CPU:0, float32)] in 2/2 repeats".
    assert "NONDETERMINISTIC" in result.stdout and re.search(r"grad_bias \[[^\]]+\] in 2/2 repeats", result.stdout)
    assert "FAIL" in result.stdout


@pytest.mark.tf
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover workers")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_keeps_what_finished_and_stops_the_workers(tmp_path, signum, code):
    """SIGTERM is what a cancelled CI job or a stopped Slurm/Kubernetes task sends: handled as Ctrl-C is."""
    layers = [TINY_LAYER, {"kind": "tests.support_layers:Hangs", "input_shape": [1, 2]}]
    config = _write(tmp_path / "long.yaml", {"name": "long", "seeds": [0], "repeats": 2, "timeout_s": 300,
                                             "layers": layers, "matrix": {"determinism": "on"},
                                             "baseline": {"determinism": "on"}})  # one worker
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "detaudit", "run", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300  # TensorFlow starts slowly on a loaded machine
    cells = None
    while time.monotonic() < deadline:
        found = list(out.glob("*/cells.jsonl"))
        if found and found[0].read_text().strip():
            cells = found[0]
            break
        time.sleep(0.2)
    assert cells is not None, "no cell finished in time"
    time.sleep(0.5)  # the hanging cell is now in flight
    workers = worker_pids(proc.pid)
    assert workers, "found no worker of this run to watch: the lifeline would go untested"
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    assert (stdout + stderr).count("Resume with: detaudit run --resume") == 1
    run_dir = cells.parent
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["interrupted"] is True and (run_dir / "results.parquet").is_file()
    assert "DETERMINISTIC" in stdout  # the partial summary is printed
    deadline = time.monotonic() + 30  # a worker exits when its lifeline closes; a loaded machine is slow to reap it
    while alive(workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(workers), "a worker outlived the interrupted run"


@pytest.mark.onednn
@pytest.mark.tf
def test_env_prints_the_fingerprint():
    result = detaudit("env", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tensorflow"]["tensorflow_version"]
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS")  # CI sets it: 0, then 1 for the tests marked onednn
    expected = {"0": "off (TF_ENABLE_ONEDNN_OPTS=0)", "1": "on (TF_ENABLE_ONEDNN_OPTS=1)"}.get(value)
    assert info["host"]["onednn_state"] == expected or (expected is None and info["host"]["onednn_state"])
