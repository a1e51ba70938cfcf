"""Trust: every bad input is exit 2 and one line before any work; every fault loses no finished cell.

The corpus of issue 9, each case asserting its exit code, its message and that
no traceback was printed; a refusal is checked in-process (``detaudit_main``: the
same ``cli.main``, its output captured). The fault cases (a torn last line, a
killed parent, a full disk, a worker lost at start-up, a flaky crash) compare the resumed table
with an uninterrupted run of the same config: the same cells, the same digests.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from detaudit.engine.store import RunStore
from tests.helpers.cli import detaudit, detaudit_main
from tests.helpers.cli import one_clean_line as _bad
from tests.helpers.layers import ONE_GROUP, TINY_1D as TINY
from tests.helpers.runs import cell as _cell
from tests.helpers.runs import digest_table as _digests
from tests.helpers.runs import make_run as _make_run
from tests.helpers.runs import tensors as _tensors
from tests.helpers.workers import alive, children, worker_pids

REPO = Path(__file__).resolve().parent.parent


def _config(path: Path, **changes) -> Path:
    data = {"name": path.stem, "seeds": [0], "repeats": 2, "layers": [TINY], **ONE_GROUP, **changes}
    path.write_text(yaml.safe_dump(data))
    return path


# ---- bad values in a config: exit 2, one line, before any work -----------------------------------------------

@pytest.mark.parametrize("changes, fragments", [
    ({"timeout_s": float("inf")}, ["`timeout_s`", "at most 604,800"]),
    ({"timeout_s": float("nan")}, ["`timeout_s`"]),
    ({"seeds": [10 ** 23]}, ["`seeds[0]`", "at most 4,294,967,295"]),
    ({"matrix": {"threads": [10 ** 20]}}, ["`matrix.threads[0]`", "from 0 to 1024"]),
    ({"repeats": 1_000_000_000}, ["`repeats`", "at most 100,000"]),
    ({"layers": [{**TINY, "kind": "Conv2DTranspose", "input_shape": [100000, 1024, 1024, 64]}]},
     ["`layers[0].input_shape`", "fits this machine's memory", "GiB"]),
    ({"layers": [{"kind": "nonexistent.module:Cls", "input_shape": [1, 2]}]},
     ["`layers[0].kind`", "no module named 'nonexistent.module'"]),
])
def test_bad_config_values_are_refused_up_front(tmp_path, changes, fragments):
    config = _config(tmp_path / "bad.yaml", **changes)
    _bad(detaudit_main("run", str(config), "--out", str(tmp_path / "runs")), *fragments)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing half-made


def test_every_error_of_a_file_is_reported_at_once(tmp_path):
    config = _config(tmp_path / "many.yaml", repeats=1, seeds=[-1], matrix={"precison": "float32", "xla": "maybe"})
    result = detaudit_main("run", str(config))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("detaudit: error: ") for line in lines)
    assert any("`repeats`" in line for line in lines) and any("Did you mean `precision`?" in line for line in lines)


@pytest.mark.parametrize("args, fragments", [
    (["shapes", "--kernel", "99999999999", "--stride", "99999999", "--padding", "same", "--input", "4", "--no-tf"],
     ["--kernel", "from 1 to 256"]),
    (["shapes", "--kernel", "3", "--stride", "40000", "--padding", "same", "--input", "4", "--no-tf"],
     ["--stride", "from 1 to 256"]),
    (["shapes", "--kernel", "3", "--stride", "2", "--padding", "same", "--input", "4", "--output-padding", "2",
      "--no-tf"], ["--output-padding", "smaller than the stride 2"]),
    (["run", "--retry-failed"], ["--retry-failed goes with --resume"]),
    (["run", "--junit", "/proc/x/y.xml"], ["`--junit`", "/proc/x/y.xml"]),
    (["adjoint", "--threshold", "nan"], ["--threshold"]),
    (["audit", "tests.audit_models:decoder", "--input-shape=-1,4,4,3"], ["`--input-shape`", "positive integers"]),
    (["audit", "tests.audit_models:decoder", "--input-shape", "0,4,4,3"], ["`--input-shape`"]),
    (["audit", "tests.audit_models:decoder", "--report", "/proc/x/r.md"], ["`--report`", "/proc/x/r.md"]),
    (["show", "latest", "--runs", "/definitely/not/here"], ["no such runs directory"]),
])
def test_bad_arguments_are_refused_up_front(args, fragments):
    _bad(detaudit_main(*args), *fragments)


@pytest.mark.parametrize("text, fragment", [
    ("name: t\nname: u\nlayers: []\n", "the key 'name' is given twice"),
    ("name: t\nlayers: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
    ("name: t\ndescription: 5\nlayers: [{kind: Conv1DTranspose, filters: 2, kernel_size: 3, input_shape: [1, 4, 2]}]\n",
     "`description`"),
    ("name: t\nlayers: [{kind: conv1d_transpose, filters: 2, kernel_size: 3, strides: 2, padding: same, "
     "output_shape: [1, 99, 2], input_shape: [1, 4, 2]}]\n", "`layers[0].output_shape`"),
    ("name: t\nlayers: [{kind: Conv1DTranspose, filters: 2, kernel_size: 3, input_shape: [1, 4, 2]}]\n"
     "expect: {max_ulp: {baseline: four}}\n", "a finite number >= 0, or a mapping"),
])
def test_hostile_yaml_is_one_line_per_problem(tmp_path, text, fragment):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    _bad(detaudit_main("run", str(path), "--out", str(tmp_path / "runs")), fragment)


@pytest.mark.parametrize("args, fragment", [
    ([], "a command is required"),
    (["run", "/dev/zero"], "not a config file"),
    (["run", "--shard", ""], "--shard"),
    (["run", "--run-id", ""], "--run-id"),
    (["run", "--resume", "x", "--out", "y"], "give no CONFIG, --shard, --run-id or --out"),
    (["shapes", "configs/quick.yaml", "--kernel", "3"], "a CONFIG or the flags, not both"),
])
def test_more_bad_arguments(args, fragment):
    _bad(detaudit_main(*args), fragment)


def test_compare_to_a_run_that_does_not_exist_is_refused_before_running(tmp_path):
    config = _config(tmp_path / "c.yaml")
    _bad(detaudit_main("run", str(config), "--out", str(tmp_path / "runs"), "--compare-to", str(tmp_path / "nope")),
         "nope")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_hostile_meta_and_records_are_refused_or_skipped(tmp_path):
    run_dir = _copy_fixture(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "shard": "x"}))
    _bad(detaudit_main("show", str(run_dir)), "`shard` must be [i, n]")
    (run_dir / "meta.json").write_text(json.dumps({**meta, "tensorflow": "str"}))
    _bad(detaudit_main("show", str(run_dir)), "`tensorflow` must be a JSON object")
    history = detaudit_main("history", str(run_dir.parent))
    assert history.returncode == 0 and "skipped" in history.stderr and "Traceback" not in history.stderr
    (run_dir / "meta.json").write_text(json.dumps(meta))
    lines = (run_dir / "cells.jsonl").read_text().splitlines()
    record = json.loads(lines[0])
    (run_dir / "cells.jsonl").write_text("\n".join([json.dumps({**record, "reference": "oops"}), *lines[1:]]) + "\n")
    (run_dir / "results.parquet").unlink()
    shown = detaudit_main("show", str(run_dir))
    assert shown.returncode == 1 and "unreadable line" in shown.stdout and "Traceback" not in shown.stderr


def test_merging_a_run_with_itself_is_refused(tmp_path):
    run_dir = _copy_fixture(tmp_path)
    _bad(detaudit_main("merge", str(run_dir), str(run_dir), "--out", str(tmp_path / "m")), "given twice")


def test_output_paths_that_are_directories_are_refused(tmp_path):
    _bad(detaudit_main("run", "--junit", str(tmp_path)), "`--junit`", "a directory")


def test_a_file_that_is_not_a_keras_archive_is_named(tmp_path):
    fake = tmp_path / "notmodel.keras"
    fake.write_text("not a zip")
    _bad(detaudit_main("audit", str(fake)), "not a .keras model archive")


def test_show_of_an_empty_runs_directory_says_so(tmp_path):
    _bad(detaudit_main("show", "latest", "--runs", str(tmp_path)), "no run to take as latest")


# ---- stored runs: format 1, unreadable lines, locks, hostile shards ----------------------------------------

FIXTURES = Path(__file__).parent / "fixtures" / "format1"


def test_runs_written_by_format_1_are_read_and_upgraded_on_the_fly():
    shown = detaudit_main("show", str(FIXTURES / "format1-matrix"))
    assert shown.returncode == 0, shown.stderr
    assert "written by run format 1" in shown.stdout and "PASS: every expectation held" in shown.stdout
    audit = detaudit_main("show", str(FIXTURES / "format1-audit"))
    assert audit.returncode == 0, audit.stderr
    assert "REPRODUCIBLE" in audit.stdout and "up1" not in audit.stdout  # only differing layers are listed
    assert "2 of 2 recorded tensors identical" in audit.stdout


def _copy_fixture(tmp_path: Path) -> Path:
    import shutil

    target = tmp_path / "runs" / "r"
    shutil.copytree(FIXTURES / "format1-matrix", target)
    return target


def test_unreadable_lines_are_reported_and_the_run_is_incomplete(tmp_path):
    run_dir = _copy_fixture(tmp_path)
    cells = run_dir / "cells.jsonl"
    lines = cells.read_text().splitlines()
    record = json.loads(lines[0])
    del record["status"]
    cells.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")
    (run_dir / "results.parquet").unlink()
    shown = detaudit_main("show", str(run_dir))
    assert shown.returncode == 1 and "Traceback" not in shown.stderr
    assert "1 unreadable line(s) in cells.jsonl (line 1)" in shown.stdout
    assert "INCOMPLETE: 1 of 5 cells have no record" in shown.stdout
    assert f"Resume with: detaudit run --resume {run_dir}" in shown.stdout


def test_a_locked_run_cannot_be_resumed_twice(tmp_path):
    run_dir = _copy_fixture(tmp_path)
    with RunStore.open(run_dir).lock():
        _bad(detaudit_main("run", "--resume", str(run_dir)), "in use by another detaudit process", f"pid {os.getpid()}")


def test_compare_of_runs_with_no_cell_in_common_is_bad_input(tmp_path):
    a = _make_run(tmp_path, "a", "1", [(_cell(determinism="on"), _tensors(0), None, "ok")])
    b = _make_run(tmp_path, "b", "2", [(_cell(xla="on"), _tensors(0), None, "ok")])
    _bad(detaudit_main("compare", str(a.path), str(b.path)), "share no cell")


def test_merge_never_writes_outside_its_output_nor_follows_links(tmp_path):
    a = _make_run(tmp_path / "s", "a", "1", [(_cell(determinism="on"), _tensors(0), None, "ok")])
    b = _make_run(tmp_path / "s", "b", "1", [(_cell(xla="on"), _tensors(0), None, "ok")])
    (tmp_path / "secret").write_text("secret")
    evil = dict(json.loads(a.cells_path.read_text().splitlines()[0]), cell_id="../../../escaped/PWN")
    with a.cells_path.open("a") as f:
        f.write(json.dumps(evil) + "\n")
    (a.tensors_dir / "escape").symlink_to(tmp_path / "secret")
    (a.logs_dir / "g00.log").symlink_to(tmp_path / "secret")
    result = detaudit_main("merge", str(a.path), str(b.path), "--out", str(tmp_path / "merged"), "--json")
    assert result.returncode == 1 and "Traceback" not in result.stderr  # INCOMPLETE: the halves lack cells
    merged = Path(json.loads(result.stdout)["run_dir"])
    assert not (tmp_path / "escaped").exists() and not list(merged.rglob("*PWN*"))
    assert not any("secret" in p.read_text(errors="ignore") for p in merged.rglob("*") if p.is_file())


# ---- faults: nothing finished is lost, resume gives the uninterrupted table -----------------------------------

@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """An uninterrupted run of the fault config: what every resumed run must equal."""
    root = tmp_path_factory.mktemp("trust")
    config = _config(root / "faults.yaml", seeds=[0, 1, 2], matrix={"xla": ["off", "on"]})
    result = detaudit("run", str(config), "--out", str(root / "runs"), "--run-id", "whole", "--workers", "1")
    assert result.returncode == 0, result.stderr
    return root, config, _digests(root / "runs" / "whole")


@pytest.mark.tf
def test_a_torn_last_line_is_repaired_and_resume_completes_the_run(whole, tmp_path):
    import shutil

    root, _, expected = whole
    run_dir = tmp_path / "torn"
    shutil.copytree(root / "runs" / "whole", run_dir)
    (run_dir / "results.parquet").unlink()
    text = (run_dir / "cells.jsonl").read_text()
    (run_dir / "cells.jsonl").write_text(text[: len(text) - 200])  # the last record cut mid-line
    shown = detaudit_main("show", str(run_dir))
    assert shown.returncode == 1 and "INCOMPLETE" in shown.stdout and "unreadable line" in shown.stdout
    resumed = detaudit_main("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "PASS" in resumed.stdout
    pd.testing.assert_frame_equal(_digests(run_dir), expected)


@pytest.mark.tf
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to look for leftover workers")
def test_a_killed_parent_takes_its_workers_with_it_and_resume_completes_the_run(whole, tmp_path):
    root, config, expected = whole
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "detaudit", "run", str(config), "--out", str(out), "--run-id",
                             "killed", "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=REPO)
    cells = out / "killed" / "cells.jsonl"
    deadline, workers = time.monotonic() + 300, set()
    while time.monotonic() < deadline and not (workers and cells.exists() and cells.read_text().count("\n") >= 2):
        workers = workers or worker_pids(proc.pid)  # this run's worker, found before its parent dies
        time.sleep(0.05)
    assert workers, "found no worker of this run: the lifeline would go untested"
    assert cells.exists(), "no cell finished in time"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and alive(workers):
        time.sleep(0.1)
    assert not alive(workers), "a worker outlived its parent"
    shown = detaudit_main("show", str(out / "killed"))
    assert shown.returncode == 1 and "INCOMPLETE" in shown.stdout and "PASS" not in shown.stdout
    resumed = detaudit_main("run", "--resume", str(out / "killed"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(_digests(out / "killed"), expected)


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child: a write past `limit` bytes fails with EFBIG instead of killing it
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.tf
def test_a_full_disk_stops_the_run_cleanly_and_resume_completes_it(whole, tmp_path):
    root, config, expected = whole
    out = tmp_path / "runs"
    full = subprocess.run([sys.executable, "-m", "detaudit", "run", str(config), "--out", str(out), "--run-id",
                           "full", "--workers", "1"], capture_output=True, text=True, timeout=300, cwd=REPO,
                          preexec_fn=_limit_file_size(12_000))
    assert full.returncode == 1, full.stdout + full.stderr
    assert "Traceback" not in full.stderr + full.stdout
    assert "cannot write, the file size limit was reached" in full.stderr
    assert (full.stdout + full.stderr).count("Resume with:") == 1  # said once, on a line of its own
    assert "INCOMPLETE" in full.stdout
    kept = [json.loads(line) for line in (out / "full" / "cells.jsonl").read_text().splitlines()
            if line.strip().endswith("}")]
    assert kept  # the cells that finished before the disk filled are there
    resumed = detaudit_main("run", "--resume", str(out / "full"))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    pd.testing.assert_frame_equal(_digests(out / "full"), expected)


@pytest.mark.tf
def test_a_config_may_name_only_layer_subclasses_and_nothing_is_called(tmp_path):
    for kind in ("os:system", "tests.support_layers:not_a_layer"):
        config = _config(tmp_path / "evil.yaml", layers=[{"kind": kind, "input_shape": [1, 2], "command": "id"}])
        line = _bad(detaudit_main("run", str(config), "--out", str(tmp_path / "runs"), cwd=tmp_path if kind == "os:system"
                             else None), "not a Keras Layer subclass", kind)
        assert "evil.yaml: invalid value for `layers[0].kind`" in line
    assert not (REPO / "CALLED").exists() and not (tmp_path / "CALLED").exists()
    assert not (tmp_path / "runs").exists()  # neither a run directory nor the --out it would have made


@pytest.mark.tf
def test_a_stored_run_naming_code_is_refused_on_resume(tmp_path):
    run_dir = _copy_fixture(tmp_path)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["layers"] = [{"kind": "os:system", "input_shape": [1, 2], "command": "touch PWNED"}]
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    _bad(detaudit_main("run", "--resume", str(run_dir), cwd=tmp_path), "not a Keras Layer subclass")
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.tf
def test_a_flaky_crash_costs_one_cell_and_retry_failed_runs_it_again(tmp_path):
    marker = tmp_path / "crashed-once"
    config = _config(tmp_path / "flaky.yaml", layers=[
        {"kind": "tests.support_layers:CrashesOnce", "marker": str(marker), "input_shape": [1, 3]}, TINY])
    first = detaudit("run", str(config), "--out", str(tmp_path / "runs"), "--run-id", "flaky", "--json")
    assert first.returncode == 1, first.stderr
    verdicts = {c["kind"]: c["verdict"] for c in json.loads(first.stdout)["cells"]}
    assert verdicts == {"tests.support_layers:CrashesOnce": "CRASH", "Conv1DTranspose": "DETERMINISTIC"}
    plain = detaudit_main("run", "--resume", str(tmp_path / "runs" / "flaky"))
    assert plain.returncode == 1  # a crash is a result: resume alone does not run it again
    retried = detaudit_main("run", "--resume", str(tmp_path / "runs" / "flaky"), "--retry-failed", "--json")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert {c["verdict"] for c in json.loads(retried.stdout)["cells"]} == {"DETERMINISTIC"}


def test_a_worker_lost_before_its_first_cell_costs_no_cell(monkeypatch, tmp_path):
    import detaudit.engine.runner as runner
    import detaudit.engine.supervision as supervision
    from detaudit.core.config import parse_config

    config = parse_config({"name": "lost", "repeats": 2, "layers": [TINY], "seeds": [0, 1]})
    calls: list[int] = []

    def flaky(job, env, log, timeout_s, on_message, processes):
        calls.append(len(job["cells"]))
        if len(calls) == 1:  # the first worker dies while TensorFlow starts: no hello, no cell
            return supervision.WorkerOutcome(set(), None, -9, False, "", None)
        for cell in job["cells"]:
            on_message({"event": "start", "cell_id": cell["cell_id"]})
            on_message({"event": "cell", "cell_id": cell["cell_id"], "status": "skipped", "message": "fake",
                        "tensors": [], "seconds": 0.0})
        return supervision.WorkerOutcome({c["cell_id"] for c in job["cells"]}, None, 0, False, "", {"event": "hello"})

    monkeypatch.setattr(supervision, "spawn_worker", flaky)
    monkeypatch.setattr(runner, "require_backends", lambda backends: None)
    table = runner.run(config, out=tmp_path, workers=1)
    # Two groups of two cells (the cell and its baseline differ in a process-wide setting): the lost worker's
    # cells went to a fresh worker, then the other group ran; nothing ran twice.
    assert calls == [2, 2, 2]
    assert set(table["status"]) == {"skipped"} and table["cell_id"].nunique() == 4  # 2 seeds x (cell, baseline)


@pytest.mark.tf
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to find the worker")
def test_a_worker_stopped_from_outside_costs_no_crash_record(tmp_path):
    """scancel or a cancelled CI job send SIGTERM to the whole tree: the cell in flight stays missing, resumable."""
    config = _config(tmp_path / "c.yaml", timeout_s=300, replay_process=False,  # one worker to stop
                     layers=[TINY, {"kind": "tests.support_layers:Hangs", "input_shape": [1, 2]}])
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "-m", "detaudit", "run", str(config), "--out", str(out), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    deadline, cells = time.monotonic() + 300, None
    while time.monotonic() < deadline and cells is None:
        found = [p for p in out.glob("*/cells.jsonl") if p.read_text().strip()]
        cells = found[0] if found else None
        time.sleep(0.2)
    assert cells is not None, "no cell finished in time"
    time.sleep(1.0)  # the hanging cell is in flight
    assert children(proc.pid)
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:  # every worker of this run, as scancel would
        for pid in children(proc.pid):  # this run's only: other runs may be going on beside the test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stdout + stderr  # INCOMPLETE, not a crash
    records = [json.loads(line) for line in cells.read_text().splitlines()]
    assert all(r["status"] != "crash" for r in records), records
    assert "INCOMPLETE" in stdout and "Resume with: detaudit run --resume" in stdout


@pytest.mark.tf
def test_compare_to_latest_runs_on_the_first_night_and_a_refused_comparison_keeps_the_run(tmp_path):
    """The README's nightly line on a fresh machine: night one must run (and be the base of night two). When the
    config changed under its name, the run is shown and kept, and says it was not compared."""
    out = tmp_path / "runs"
    first = detaudit("run", str(_config(tmp_path / "c.yaml", seeds=[1])), "--out", str(out), "--compare-to", "latest")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Not compared: nothing to compare with yet" in first.stderr and "config 'c'" in first.stderr
    assert len(list(out.iterdir())) == 1
    second = detaudit_main("run", str(_config(tmp_path / "c.yaml", seeds=[2])), "--out", str(out), "--compare-to",
                           "latest", "--json")
    assert second.returncode == 0, second.stderr
    assert "Not compared:" in second.stderr and "share no cell" in second.stderr
    data = json.loads(second.stdout)
    assert data["comparison"] is None and "share no cell" in data["not_compared"]
    assert len(list(out.iterdir())) == 2
