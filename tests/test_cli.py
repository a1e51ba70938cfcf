"""cli: the real command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

TINY_LAYER = {"kind": "Conv1DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
              "input_shape": [1, 4, 2]}


def detaudit(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detaudit", *args], capture_output=True, text=True,
                          timeout=300, **kwargs)


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _one_clean_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_typo_in_a_config_is_one_line_and_exit_2(tmp_path):
    config = _write(tmp_path / "typo.yaml", {"name": "typo", "layers": [TINY_LAYER], "matrix": {"precison": ["float32"]}})
    line = _one_clean_line(detaudit("run", str(config), "--out", str(tmp_path)))
    assert "typo.yaml" in line and "unknown key `precison`" in line and "Did you mean `precision`?" in line


def test_a_missing_config_is_one_line_and_exit_2(tmp_path):
    line = _one_clean_line(detaudit("run", str(tmp_path / "nope.yaml")))
    assert "nope.yaml: config file not found (bundled configs, by name alone:" in line


@pytest.mark.parametrize("args, fragment", [
    (("run", "--workers", "0"), "--workers"),
    (("frobnicate",), "invalid choice"),
    (("show", "/definitely/not/here"), "no such run directory"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, fragment):
    assert fragment in _one_clean_line(detaudit(*args))


def test_show_refuses_a_foreign_directory(tmp_path):
    assert "not a detaudit run directory" in _one_clean_line(detaudit("show", str(tmp_path)))


def test_version():
    result = detaudit("--version")
    assert result.returncode == 0 and result.stdout.startswith("detaudit ")


@pytest.mark.tf
def test_run_then_show_then_json(tmp_path):
    config = _write(tmp_path / "tiny.yaml", {"name": "tiny", "seeds": [0], "repeats": 2, "layers": [TINY_LAYER],
                                             "matrix": {"device": ["cpu", "gpu"]}})
    result = detaudit("run", str(config), "--out", str(tmp_path / "runs"), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["passed"] and summary["counts"] == {"DETERMINISTIC": 2, "SKIPPED": 1}
    run_dir = summary["run_dir"]
    shown = detaudit("show", run_dir)
    assert shown.returncode == 0 and "DETERMINISTIC" in shown.stdout and "PASS" in shown.stdout
    assert "1 cell(s) SKIPPED: no GPU visible" in shown.stdout


@pytest.mark.tf
def test_nondeterminism_exits_1(tmp_path):
    layer = {"kind": "tests.support_layers:RandomOrderSumConv2DTranspose", "filters": 2, "kernel_size": 3,
             "strides": 2, "padding": "same", "input_shape": [2, 6, 6, 3]}
    config = _write(tmp_path / "nd.yaml", {"name": "nd", "repeats": 3, "layers": [layer]})
    result = detaudit("run", str(config), "--out", str(tmp_path / "runs"))
    assert result.returncode == 1, result.stderr
    assert "NONDETERMINISTIC" in result.stdout and "grad_bias in 2/2 repeats" in result.stdout
    assert "FAIL" in result.stdout


def _worker_pids() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"detaudit.worker" in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
            except OSError:
                pass
    return pids


@pytest.mark.tf
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover workers")
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_keeps_what_finished_and_stops_the_workers(tmp_path, signum, code):
    """SIGTERM is what a cancelled CI job or a stopped Slurm/Kubernetes task sends: handled as Ctrl-C is."""
    layers = [TINY_LAYER, {"kind": "tests.support_layers:Hangs", "input_shape": [1, 2]}]
    config = _write(tmp_path / "long.yaml", {"name": "long", "seeds": [0], "repeats": 2, "timeout_s": 300,
                                             "layers": layers, "matrix": {"determinism": "on"}})
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "detaudit", "run", str(config), "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    cells = None
    while time.monotonic() < deadline:
        found = list(out.glob("*/cells.jsonl"))
        if found and found[0].read_text().strip():
            cells = found[0]
            break
        time.sleep(0.2)
    assert cells is not None, "no cell finished in time"
    time.sleep(0.5)  # the hanging cell is now in flight
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == code, stderr
    assert "Interrupted" in stderr and "Traceback" not in stderr
    assert (stdout + stderr).count("Resume with: detaudit run --resume") == 1
    run_dir = cells.parent
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["interrupted"] is True and (run_dir / "results.parquet").is_file()
    assert "DETERMINISTIC" in stdout  # the partial summary is printed
    time.sleep(0.5)
    assert not _worker_pids()


@pytest.mark.tf
def test_env_prints_the_fingerprint():
    result = detaudit("env", "--json")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["tensorflow"]["tensorflow_version"] and info["host"]["onednn_state"]
