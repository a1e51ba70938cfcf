"""Issue 18: safe with any input. No code runs from the working directory unless a config names it; text from
outside is shown as text; parsing is bounded; the table agrees with the records; any output encoding works."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import runs as fab
from tests.helpers.cli import detaudit_main, one_clean_line
from tests.helpers.layers import ONE_GROUP, TINY_1D as TINY
from tests.helpers.values import returning as _calls

REPO = Path(__file__).resolve().parent.parent
#: The parent as the console script starts it: the working directory is not on its path (unlike `python -m`).
_CONSOLE_SCRIPT = "import sys; del sys.path[0]; from detaudit.cli import main; sys.exit(main())"


def detaudit_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """``detaudit ARGS`` run in ``cwd`` as the installed command runs (PYTHONPATH reaches this checkout)."""
    environ = dict(os.environ if env is None else env)
    environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=environ)


def _plant(directory: Path) -> None:
    """Modules named like detaudit's dependencies that leave a marker file when imported."""
    for name in ("numpy", "yaml", "keras", "tensorflow", "pandas"):
        (directory / f"{name}.py").write_text(
            f"import pathlib\npathlib.Path(__file__).with_name('IMPORTED-{name}').write_text('x')\n")


def _markers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("IMPORTED-*"))


@pytest.mark.tf
@pytest.mark.parametrize("args", [["env"], ["shapes", "--kernel", "3", "--stride", "2", "--padding", "same",
                                             "--input", "4"], ["run", "c.yaml", "--out", "runs"]])
def test_workers_never_import_from_the_working_directory(tmp_path, args):
    _plant(tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "seeds": [0], "repeats": 2, "layers": [TINY], **ONE_GROUP}))
    result = detaudit_in(tmp_path, *args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _markers(tmp_path) == []


@pytest.mark.tf
def test_a_layer_named_in_the_working_directory_is_imported_after_detaudits_own_dependencies(tmp_path):
    _plant(tmp_path)
    (tmp_path / "mylayers.py").write_text(
        "import keras\n\nclass Doubles(keras.layers.Layer):\n    def call(self, x):\n        return x * 2.0\n")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(
        {"name": "c", "seeds": [0], "repeats": 2, "layers": [{"kind": "mylayers:Doubles", "input_shape": [1, 3]}],
         **ONE_GROUP}))
    result = detaudit_in(tmp_path, "run", "c.yaml", "--out", "runs", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _markers(tmp_path) == []


# ---- text from outside is shown as text -------------------------------------------------------------------------

FIXTURE = REPO / "tests" / "fixtures" / "format1" / "format1-matrix"
HOSTILE = "[bold red]x[/] [link=file:///etc/passwd]y[/link] \x1b[2J \x1b]0;title\x07 \x00 \x0b end"
#: What must never reach a terminal, an HTML page or an XML file from stored text.
_RAW = ("\x1b[2J", "\x1b]", "\x07", "\x00", "\x0b")


def _hostile_run(root: Path, name: str = "R[bold red]x\x1b[2J") -> Path:
    """The fixture run with hostile text in its directory name, meta.json fields and a cell's message."""
    import json
    import shutil

    run_dir = root / name
    shutil.copytree(FIXTURE, run_dir)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["tensorflow"]["tensorflow_version"] = HOSTILE
    meta["host"]["cpu_model"] = HOSTILE
    meta["config_name"] = HOSTILE
    (run_dir / "meta.json").write_text(json.dumps(meta))
    records = [json.loads(line) for line in (run_dir / "cells.jsonl").read_text().splitlines()]
    for record in records:
        if record["status"] == "skipped":
            record["message"] = HOSTILE
    (run_dir / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "results.parquet").unlink()  # the table is rebuilt from the records, with their messages
    return run_dir


def _shown_as_text(output: str) -> None:
    for raw in _RAW:
        assert raw not in output, (raw, output)
    assert "\\x1b[2J" in output  # shown, escaped
    assert "[bold red]x" in output  # markup printed as written, not obeyed


ENV = {**os.environ, "COLUMNS": "400"}


@pytest.mark.parametrize("command", ["show", "history", "compare"])
def test_stored_text_reaches_the_terminal_as_text(tmp_path, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "400")
    run_dir = _hostile_run(tmp_path / "runs")
    args = {"show": [str(run_dir)], "history": [str(run_dir.parent)],
            "compare": [str(_hostile_run(tmp_path / "runs", "base\x1b]0;t\x07")), str(run_dir)]}[command]
    result = detaudit_main(command, *args, cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    _shown_as_text(result.stdout + result.stderr)


def test_history_renders_no_markup_from_a_run_directory():
    from io import StringIO

    from detaudit.render.terminal import console, history_table

    out = StringIO()
    row = {"run_id": "[link=file:///etc/passwd]r[/link]", "started": "2026-01-01T00:00:00", "kind": "matrix",
           "tensorflow": "[bold red]2.99[/]\x1b]0;t\x07", "device": "cpu", "counts": {}, "status": None,
           "verdict": None}
    console(out, width=200).print(history_table([row]))
    text = out.getvalue()
    assert "[link=file:///etc/passwd]r[/link]" in text and "[bold red]2.99[/]\\x1b]0;t\\x07" in text


def test_a_console_forced_to_colour_still_obeys_no_stored_escape():
    from io import StringIO

    from rich.text import Text

    from detaudit.render.text import SafeConsole

    out = StringIO()
    shown = SafeConsole(file=out, width=200, force_terminal=True, color_system="standard")  # detaudit's styles on
    shown.print(Text(HOSTILE, style="bold"), "[bold]x[/bold]\x1b]8;;file:///etc/passwd\x1b\\", highlight=False)
    text = out.getvalue()
    assert "\x1b[1m" in text  # its own style
    assert "\x1b[2J" not in text and "\x1b]" not in text and "\x07" not in text and "[bold]x[/bold]" in text


def test_html_report_and_junit_escape_stored_text(tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    monkeypatch.setenv("COLUMNS", "400")
    run_dir = _hostile_run(tmp_path / "runs")
    page = tmp_path / "r.html"
    assert detaudit_main("report", str(run_dir), "--html", str(page), cwd=tmp_path).returncode == 0
    overview = tmp_path / "o.html"
    assert detaudit_main("report", str(run_dir.parent), "--html", str(overview), cwd=tmp_path).returncode == 0
    for html in (page.read_text(), overview.read_text()):
        assert not any(raw in html for raw in _RAW) and "\\x1b[2J" in html
    base = _hostile_run(tmp_path / "runs", "base")
    junit = tmp_path / "j.xml"
    result = detaudit_main("compare", str(base), str(run_dir), "--junit", str(junit), cwd=tmp_path)
    assert "Traceback" not in result.stderr, result.stderr
    text = junit.read_text()
    ET.fromstring(text.encode())  # well-formed XML 1.0
    assert "\\x1b[2J" in text and "\\x00" in text


def test_junit_holds_only_xml_characters(tmp_path):
    import xml.etree.ElementTree as ET

    from detaudit.render.junit import JUnitCase, write_junit

    path = tmp_path / "j.xml"
    write_junit(path, "s\x1b", [JUnitCase("c\x00", "n\x0b", failure=HOSTILE + "\ud800\uffff"),
                                JUnitCase("c", "m", skipped=HOSTILE)])
    root = ET.parse(path).getroot()
    failure = root.find("testsuite/testcase/failure")
    assert failure is not None and "\\x1b[2J" in failure.text and "\\ud800\\uffff" in failure.text


# ---- bounded YAML ---------------------------------------------------------------------------------------------

_BOMB = "a0: &a0 [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]\n"
    for i in range(1, 10)) + "name: *a9\nlayers: []\n"


@pytest.mark.parametrize("text, fragment", [
    (_BOMB, "an alias (*'a0') is not allowed in a config"),
    ("? [1, 2]\n: x\nname: t\n", "a mapping key must be a plain name or number"),
    ("? {a: 1}\n: x\nname: t\n", "a mapping key must be a plain name or number"),
    ("name: t\nlayers: [{kind: Conv1DTranspose, filters: '" + "x" * 200_000 + "', kernel_size: 3, "
     "input_shape: [1, 4, 2]}]\n", "Received filters='xxxx"),
    ("name: t\n'" + "k" * 1000 + "': 1\nlayers: []\n", "unknown key `'kkkk"),
    ("name: !!set {a, b}\nlayers: [{kind: Conv1DTranspose, filters: !!binary aGVsbG8=, kernel_size: 3, "
     "input_shape: [1, 4, 2]}]\n", "Received filters=b'hello'"),
], ids=["alias-bomb", "list-key", "mapping-key", "huge-value", "long-key", "set-and-binary"])
def test_hostile_yaml_is_refused_at_once_in_a_short_line(tmp_path, text, fragment):
    import time

    from detaudit.core.config import load_config
    from detaudit.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text(text)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert time.perf_counter() - started < 1.0
    message = str(caught.value)
    assert fragment in message and all(len(line) < 500 for line in message.splitlines()), message[:1000]


# ---- output places ----------------------------------------------------------------------------------------------

def test_an_existing_run_id_is_refused_naming_the_directory_and_resume(tmp_path):
    (tmp_path / "runs" / "myci").mkdir(parents=True)
    (tmp_path / "runs" / "myci" / "keep").write_text("previous")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "seeds": [0], "repeats": 2, "layers": [TINY], **ONE_GROUP}))
    one_clean_line(detaudit_main("run", "c.yaml", "--out", "runs", "--run-id", "myci", cwd=tmp_path),
              "`--run-id`", str(Path("runs") / "myci"), "already exists", "--resume")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["myci"]  # no myci-2


@pytest.mark.parametrize("inside", ["cells.jsonl", "logs/new.xml"])
@pytest.mark.parametrize("command", ["report", "compare", "show-junit"])
def test_no_output_path_points_into_a_run_directory(tmp_path, inside, command):
    import shutil

    run_dir = tmp_path / "runs" / "R"
    shutil.copytree(FIXTURE, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    target = str(run_dir / inside)
    args = {"report": ["report", str(run_dir), "--html", target],
            "compare": ["compare", str(run_dir), str(run_dir), "--junit", target],
            "show-junit": ["run", "--junit", target]}[command]
    one_clean_line(detaudit_main(*args, cwd=tmp_path), "inside the run directory", str(run_dir))
    assert {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before


def test_merge_out_inside_a_shard_is_refused(tmp_path):
    import shutil

    shutil.copytree(FIXTURE, tmp_path / "a")
    shutil.copytree(FIXTURE, tmp_path / "b")
    one_clean_line(detaudit_main("merge", "a", "b", "--out", "a/merged", cwd=tmp_path), "`--out`",
                   "inside the run directory")
    assert not (tmp_path / "a" / "merged").exists()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["compare", str(FIXTURE), str(FIXTURE), "--junit", "/dev/full"],
                                  ["report", str(FIXTURE), "--html", "/dev/full"],
                                  ["run", "--junit", "/dev/full"]], ids=["compare", "report", "run"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(tmp_path, args):
    one_clean_line(detaudit_main(*args, cwd=tmp_path), "/dev/full")


# ---- the table agrees with the records ----------------------------------------------------------------------------

def _finished_run(tmp_path: Path, name: str = "r") -> Path:
    """A finished run of the current format with its results.parquet (built from two fake cells)."""
    from detaudit.analysis.runs import load_run

    stored = fab.make_run(tmp_path / "runs", name, "2026-01-01T00:00:00+00:00",
                          [(fab.cell(determinism="on"), fab.tensors(0), None, "ok"),
                           (fab.cell(xla="on"), fab.tensors(0), None, "ok")])
    load_run(stored.path).table.to_parquet(stored.results_path, index=False)  # as a finished run writes it
    run = load_run(stored.path)
    assert run.table_note is None and run.table_source == run.store.results_path, run.table_note
    return stored.path


def test_a_stale_table_is_not_believed(tmp_path):
    import pandas as pd

    from detaudit.analysis.runs import load_run

    run_dir = _finished_run(tmp_path)
    table = pd.read_parquet(run_dir / "results.parquet")
    kept = table["cell_id"].unique()[0]
    table[table["cell_id"] == kept].to_parquet(run_dir / "results.parquet")  # a stale table: one of two cells
    run = load_run(run_dir)
    assert run.table["cell_id"].nunique() == 2 and run.table_source == run.store.cells_path
    assert run.table_note == "results.parquet holds 1 of the 2 recorded cells: the table was rebuilt from cells.jsonl."
    shown = detaudit_main("show", str(run_dir), "--json")
    assert "holds 1 of the 2 recorded cells" in shown.stderr and "Traceback" not in shown.stderr


def test_another_runs_table_is_not_believed_and_a_copied_run_has_its_own_id(tmp_path):
    import shutil

    from detaudit.analysis.runs import load_run
    from detaudit.analysis.tidy import load_runs

    first, second = _finished_run(tmp_path, "first"), _finished_run(tmp_path, "second")
    shutil.copy(first / "results.parquet", second / "results.parquet")
    assert "is the table of run first, not of second" in load_run(second).table_note
    copy = tmp_path / "copies" / "copy"
    shutil.copytree(first, copy)
    assert set(load_runs([first, copy])["run_id"]) == {"first", "copy"}


def test_a_broken_table_is_rebuilt_and_not_pointed_at(tmp_path):
    run_dir = _finished_run(tmp_path)
    (run_dir / "results.parquet").write_bytes(b"PAR1 not really")
    shown = detaudit_main("show", str(run_dir))
    assert shown.returncode == 1 and "Traceback" not in shown.stderr  # 1: the fake run lacks cells of its matrix
    assert "results.parquet is unreadable" in shown.stderr
    assert f"Results: {run_dir / 'cells.jsonl'}" in shown.stdout


def test_load_runs_skips_an_unreadable_run_with_a_note(tmp_path):
    from detaudit.analysis.tidy import load_runs

    good = _finished_run(tmp_path, "good")
    bad = _finished_run(tmp_path, "bad")
    (bad / "config.yaml").write_text("layers: [")
    newer = _finished_run(tmp_path, "newer")
    meta = yaml.safe_load((newer / "meta.json").read_text())
    meta["format_version"] = 99
    (newer / "meta.json").write_text(yaml.safe_dump(meta))
    skipped: list[tuple[Path, str]] = []
    table = load_runs(good.parent, on_skip=lambda path, why: skipped.append((path, why)))
    assert set(table["run_id"]) == {"good"}
    assert sorted(p.name for p, _ in skipped) == ["bad", "newer"]
    with pytest.warns(UserWarning, match="skipped"):
        load_runs(good.parent)


def test_history_of_an_empty_directory_says_no_runs(tmp_path):
    result = detaudit_main("history", str(tmp_path))
    # Joined again: the terminal may wrap a long path onto its own line.
    assert result.returncode == 0 and f"No runs in {tmp_path}." in " ".join(result.stdout.split())


# ---- the recorded environment ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["garbage", "yes", "2", "off", "", " 1", "on"])
def test_onednn_values_tensorflow_ignores_mean_its_default(value):
    from detaudit.engine.fingerprint import onednn_state

    default = onednn_state({}).split(" ")[0]
    state = onednn_state({"TF_ENABLE_ONEDNN_OPTS": value})
    assert state.split(" ")[0] == default and "is not 0, 1, true or false" in state


@pytest.mark.parametrize("value, word", [("0", "off"), ("false", "off"), ("FALSE", "off"), ("1", "on"),
                                         ("True", "on"), ("tRuE", "on")])
def test_onednn_values_tensorflow_reads(value, word):
    from detaudit.engine.fingerprint import onednn_state

    assert onednn_state({"TF_ENABLE_ONEDNN_OPTS": value}) == f"{word} (TF_ENABLE_ONEDNN_OPTS={value})"


def test_what_tensorflow_reports_wins_over_the_prediction(monkeypatch):
    from detaudit.engine import fingerprint

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    monkeypatch.setattr(fingerprint, "_reported_by_tensorflow", lambda: True)
    assert fingerprint.onednn_state().startswith("on (reported by TensorFlow; predicted off from TF_ENABLE")


@pytest.mark.tf
def test_a_worker_records_the_onednn_state_tensorflow_uses():
    code = ("import tensorflow; from tensorflow.python.util import _pywrap_util_port as p; "
            "from detaudit.engine.fingerprint import onednn_state; "
            "print(p.IsMklEnabled(), onednn_state())")
    for value in ("garbage", "1"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": value, "TF_CPP_MIN_LOG_LEVEL": "3"})
        used, _, state = out.stdout.strip().splitlines()[-1].partition(" ")
        assert state.split(" ")[0] == ("on" if used == "True" else "off"), out.stdout + out.stderr


# ---- any output encoding, a closed pipe ---------------------------------------------------------------------------

_ASCII_ENVS = {"ascii": {"PYTHONIOENCODING": "ascii"},
               "C-locale": {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
                            "PYTHONIOENCODING": ""},
               "latin-1": {"PYTHONIOENCODING": "latin-1"}}


@pytest.mark.parametrize("name", list(_ASCII_ENVS))
def test_show_degrades_to_ascii_on_any_output_encoding(tmp_path, name):
    run_dir = _hostile_run(tmp_path / "runs", "R")
    result = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, "show", str(run_dir)], capture_output=True,
                            timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), **_ASCII_ENVS[name]})
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    assert b"Traceback" not in result.stderr and result.stdout.isascii()
    assert b"PASS" in result.stdout


def _closed_stdout(tmp_path: Path, *args: str) -> int:
    """The exit code of ``detaudit ARGS`` whose reader has gone before it prints (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)  # every write to the pipe now fails with EPIPE
    proc = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, *args], stdout=write, stderr=subprocess.PIPE,
                          timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(write)
    assert b"Traceback" not in proc.stderr and b"BrokenPipe" not in proc.stderr, proc.stderr
    return proc.returncode


def test_a_closed_pipe_keeps_the_commands_exit_code(tmp_path):
    import shutil

    assert _closed_stdout(tmp_path, "show", str(FIXTURE)) == 0
    failing = tmp_path / "incomplete"
    shutil.copytree(FIXTURE, failing)
    (failing / "cells.jsonl").write_text("".join((FIXTURE / "cells.jsonl").read_text().splitlines(True)[:2]))
    assert _closed_stdout(tmp_path, "show", str(failing)) == 1


@pytest.mark.tf
def test_a_run_piped_to_a_reader_that_left_or_to_ascii_keeps_its_exit_code(tmp_path):
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"name": "c", "seeds": [0], "repeats": 2, "layers": [TINY], **ONE_GROUP}))
    assert _closed_stdout(tmp_path, "run", "c.yaml", "--out", "runs") == 0
    result = subprocess.run([sys.executable, "-c", _CONSOLE_SCRIPT, "run", "c.yaml", "--out", "runs"],
                            capture_output=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(REPO), "PYTHONIOENCODING": "ascii"})
    assert result.returncode == 0 and b"Traceback" not in result.stderr and result.stdout.isascii(), result.stderr


# ---- assert_deterministic and the plugin: bounded, and one bit-for-bit rule ---------------------------------------

def test_repeats_are_capped_as_in_a_config():
    from detaudit.errors import UsageError
    from detaudit.testing import assert_deterministic

    with pytest.raises(UsageError, match="at most 100,000"):
        assert_deterministic(lambda: 1, repeats=10**9)


def test_structures_that_cannot_be_compared_are_refused_clearly():
    from detaudit.errors import UsageError
    from detaudit.testing import MAX_DEPTH, assert_deterministic

    loop: list = [1]
    loop.append(loop)
    with pytest.raises(UsageError, match=r"at `\[1\]` it holds itself"):
        assert_deterministic(lambda: loop)
    deep: list = [0]
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(UsageError, match=f"nested more than {MAX_DEPTH} levels deep"):
        assert_deterministic(lambda: deep)
    with pytest.raises(UsageError, match=r"is generator \(an iterator, used up once read\)"):
        assert_deterministic(lambda: (i for i in range(3)))
    with pytest.raises(UsageError, match="which equals only itself"):
        assert_deterministic(lambda: {"a": object()})


class _Sparse:  # the attributes of tf.sparse.SparseTensor, without TensorFlow
    def __init__(self, values):
        self.indices, self.values, self.dense_shape = np.array([[0], [2]]), np.array(values, np.float32), np.array([4])


class _Ragged:  # the attributes of tf.RaggedTensor
    def __init__(self, values):
        self.flat_values, self.nested_row_splits = np.array(values, np.float32), (np.array([0, 1, 3]),)


def test_sparse_and_ragged_results_are_compared_by_their_parts():
    from detaudit.testing import assert_deterministic

    assert_deterministic(_calls(_Sparse([1, 2]), _Sparse([1, 2])), repeats=2)
    assert_deterministic(_calls(_Ragged([1, 2, 3]), _Ragged([1, 2, 3])), repeats=2)
    with pytest.raises(AssertionError, match=r"Tensor `\.values` \(shape \(2,\), float32\)"):
        assert_deterministic(_calls(_Sparse([1, 2]), _Sparse([1, 3])), repeats=2)
    with pytest.raises(AssertionError, match=r"Tensor `\[0\]\.flat_values`"):
        assert_deterministic(_calls([_Ragged([1, 2, 3])], [_Ragged([1, 2, 4])]), repeats=2)


def test_bit_for_bit_is_one_rule_nan_payloads_and_signed_zeros_alike():
    from detaudit.core.numerics import compare
    from detaudit.testing import assert_deterministic

    quiet = np.array([np.nan], np.float32)
    payload = np.array([0x7FC00001], np.uint32).view(np.float32)
    zero, negative = np.zeros(1, np.float32), -np.zeros(1, np.float32)
    for a, b, what in ((quiet, payload, "payload of a NaN"), (zero, negative, "sign of zero")):
        assert compare(b, a).n_mismatch == 1 and compare(b, a).max_ulp == 0  # the matrix's rule
        with pytest.raises(AssertionError, match=f"Only the {what} differs.*0 ULP apart, but the default check is "
                                                 "bit for bit"):
            assert_deterministic(_calls(a, b), repeats=2)
        assert_deterministic(_calls(a, b), repeats=2, max_ulp=1)  # by value they are equal
        assert_deterministic(_calls(a, b), repeats=2, atol=1e-30)


@pytest.mark.tf
def test_real_sparse_and_ragged_tensors_are_compared():
    code = textwrap.dedent("""
        import tensorflow as tf
        from detaudit.testing import assert_deterministic
        assert_deterministic(lambda: tf.sparse.SparseTensor([[0, 1]], [1.5], [2, 2]))
        assert_deterministic(lambda: tf.ragged.constant([[1.0], [2.0, 3.0]]))
        it = iter([tf.ragged.constant([[1.0], [2.0]]), tf.ragged.constant([[1.0], [2.5]])])
        try:
            assert_deterministic(lambda: next(it), repeats=2)
        except AssertionError as exc:
            print("DIFFERS", str(exc).splitlines()[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "DIFFERS Tensor `.flat_values` (shape (2,), float32)" in out.stdout


# ---- a .keras archive is bounded by its declared sizes --------------------------------------------------------------

def _zip(path: Path, members: dict[str, bytes]) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_a_keras_archive_that_unpacks_too_large_is_refused_before_loading(tmp_path):
    import time

    from detaudit.engine.limits import MAX_JSON_BYTES, check_keras_archive
    from detaudit.errors import UsageError

    bomb = _zip(tmp_path / "bomb.keras", {"config.json": b" " * (MAX_JSON_BYTES + 1), "metadata.json": b"{}"})
    assert bomb.stat().st_size < 200_000  # small on disk
    started = time.perf_counter()
    with pytest.raises(UsageError, match="its config.json unpacks to 67,108,865 bytes"):
        check_keras_archive(bomb)
    assert time.perf_counter() - started < 1.0  # the declared sizes are read, nothing is inflated
    weights = _zip(tmp_path / "big.keras", {"config.json": b"{}", "model.weights.h5": b"\0" * 3_000_000})
    with pytest.raises(UsageError, match=r"unpacks to 2.9 MiB; a model loaded here is at most half of this machine's memory \(1.9 MiB of 3.8 MiB\)"):
        check_keras_archive(weights, memory_bytes=4_000_000)
    check_keras_archive(weights, memory_bytes=8_000_000)
    # The audit refuses it before any worker starts: exit 2, one line.
    one_clean_line(detaudit_main("audit", str(bomb), "--out", str(tmp_path / "runs")), "config.json unpacks to")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(UsageError, match="not a readable .keras model archive"):
        check_keras_archive(tmp_path / "bomb.keras.missing")


@pytest.mark.tf
def test_a_run_shows_and_writes_hostile_worker_text_as_text(tmp_path):
    import xml.etree.ElementTree as ET

    config = {"name": "c", "seeds": [0], "repeats": 2, "replay_process": False,
              "layers": [{"kind": "tests.support_layers:RaisesHostileText", "input_shape": [1, 2]},
                         {"kind": "tests.support_layers:DiesPrintingHostileText", "input_shape": [1, 2]}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "detaudit", "run", str(tmp_path / "c.yaml"), "--out",
                             str(tmp_path / "runs"), "--junit", str(tmp_path / "j.xml")], capture_output=True,
                            text=True, timeout=300, cwd=REPO, env={**ENV, "PYTHONPATH": str(REPO)})
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stdout + result.stderr
    for raw in _RAW:
        assert raw not in result.stdout + result.stderr, raw
    junit = (tmp_path / "j.xml").read_text()
    failures = [f.text for f in ET.fromstring(junit.encode()).iter("failure")]
    assert failures and all("\\x1b[2J" in (text or "") for text in failures), failures
    assert any("SIGSEGV" in (text or "") for text in failures)  # the crash record, with the worker's stderr


def test_a_new_run_or_audit_is_never_written_inside_a_run_directory(tmp_path):
    base, _ = fab.make_pair(tmp_path)
    before = sorted(p.name for p in base.path.iterdir())
    for command in (["run"], ["audit", "tests.training_models:vae_decoder"]):
        one_clean_line(detaudit_main(*command, "--out", str(base.path)), "`--out`", "inside the run directory")
    assert sorted(p.name for p in base.path.iterdir()) == before
