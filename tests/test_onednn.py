"""oneDNN: what the oneDNN path changes, measured on both paths, and the tests CI runs again with oneDNN on.

CI runs the whole suite with oneDNN off, then only the tests marked ``onednn`` with oneDNN on (the README's
test command). This module keeps that subset honest:

* ``test_onednn_changes_only_the_known_behaviours`` runs every layer kind the suite uses with the ``onednn``
  axis off and on (each path in a worker of its own, whatever this machine's default) and fails when oneDNN
  changes a verdict or an error that :data:`KNOWN` does not list, or no longer changes one it lists;
* the other tests check, without TensorFlow, that the tests named here carry the marker, that no other test
  does, and that the README and ``.ci/run`` select them.

Measured with TensorFlow 2.21 (tensorflow-cpu, x86) on every kind of ``tests/helpers/layers.py`` x determinism
off/on x XLA off/on, and on two kinds x float32/float64/bfloat16/mixed_float16: oneDNN changes the two behaviours
of :data:`KNOWN`, the bits of float32 tensors (another summation order), the shapes it accepts (an empty output
where TensorFlow's kernels raise) and the float32 conv3d bug of the knowledge table; float64, bfloat16 and float16
bits are the same on both paths, XLA drifts from the graph executor on both, and `detaudit audit` gives the same
verdicts. So the precision, reproducer (mixed_bfloat16), reference (float64) and audit tests are not marked.
"""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# Behaviours oneDNN changes, measured below on both paths: id -> (what, the tests that assert it).
KNOWN = {
    "dilated-transpose-on-cpu": (
        "TensorFlow's own CPU kernels refuse a dilated transposed convolution; oneDNN's run it",
        ["tests/test_runner.py::test_the_cpu_path_decides_dilated_transposes_and_the_refusals_words"]),
    "backprop-size-mismatch-text": (
        "the refusal of same padding + even kernel + output_padding 0 reads 'Size of out_backprop doesn't match "
        "computed' without oneDNN and 'could not create a primitive descriptor' with it",
        ["tests/test_runner.py::test_the_cpu_path_decides_dilated_transposes_and_the_refusals_words"]),
}

# Tests whose assertions hold on the path the environment selects (TF_ENABLE_ONEDNN_OPTS, else the CPU's
# default): the numbers, shapes and facts of that path. Each runs again with oneDNN on in CI.
ON_THE_PATH = {
    "tests/test_nightly.py::test_shapes_formulas_and_rejections_match_tensorflow":
        "predicted rejections follow the path (oneDNN returns an empty tensor where TensorFlow's kernels raise)",
    "tests/test_nightly.py::test_adjoint_passes_on_a_config_and_reports_the_reconstruction":
        "float32 adjoint gaps of the path's kernels, and the known conv3d bug: in float32 only without oneDNN",
    "tests/test_cli.py::test_env_prints_the_fingerprint":
        "the fingerprint reports the environment's oneDNN state",
}


def _marked_tests() -> dict[str, set[str]]:
    """Every test function in tests/ -> the names of the marks it carries (its own and its module's)."""
    found = {}
    for path in sorted(TESTS.glob("test_*.py")):
        tree = ast.parse(path.read_text())
        module_marks = set()
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "pytestmark" for t in node.targets):
                module_marks |= set(re.findall(r"pytest\.mark\.(\w+)", ast.unparse(node.value)))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = {m for d in node.decorator_list for m in re.findall(r"^pytest\.mark\.(\w+)", ast.unparse(d))}
                found[f"tests/{path.name}::{node.name}"] = marks | module_marks
    return found


def test_the_tests_named_here_and_only_they_carry_the_onednn_marker():
    marked = {name for name, marks in _marked_tests().items() if "onednn" in marks}
    named = set(ON_THE_PATH) | {test for _, tests in KNOWN.values() for test in tests}
    assert named - set(_marked_tests()) == set(), "a test named here no longer exists"
    assert named - marked == set(), "mark these @pytest.mark.onednn: CI would not run them with oneDNN on"
    assert marked - named == set(), "say in tests/test_onednn.py what oneDNN changes for these"


def _readme_test_command() -> str:
    text = (REPO / "README.md").read_text()
    return next(line for line in re.findall(r"```bash\n(.*?)\n```", text, re.S) if "pytest" in line)


def test_ci_runs_the_readme_command_and_it_selects_the_onednn_tests():
    command = _readme_test_command()
    assert command in (REPO / ".ci" / "run").read_text()
    words = shlex.split(command)
    passes = [words[i + 1] for i, word in enumerate(words) if word == "-m"]
    assert passes == ["onednn"] and "TF_ENABLE_ONEDNN_OPTS=1" in command and "TF_ENABLE_ONEDNN_OPTS=0" in command
    registered = "\n".join((REPO / "pyproject.toml").read_text().split("[tool.pytest.ini_options]")[1:])
    assert '"onednn:' in registered and "--strict-markers" in registered
    assert sum("onednn" in marks for marks in _marked_tests().values()) >= 3  # never pytest's exit 5


# --------------------------------------------------------------------------- measured: both paths, one run


def _classify(cell: str, off: tuple[str, str], on: tuple[str, str]) -> str | None:
    """Which known behaviour explains this cell's difference between the paths (None: none of them)."""
    from detaudit.core.knowledge import explain

    dilated = any(int(d) > 1 for group in re.findall(r'"dilation_rate": \[([\d, ]+)\]', cell) for d in group.split(","))
    if dilated and off[0] == "ERROR" and "dilation rates larger than 1" in off[1] and on[0] == "DETERMINISTIC":
        return "dilated-transpose-on-cpu"
    if (off[0] == on[0] == "ERROR" and "Size of out_backprop doesn't match computed" in off[1]
            and "could not create a primitive descriptor" in on[1]
            and {explain([], "cpu", text, None)["id"] for text in (off[1], on[1])} == {"backprop-size-mismatch"}):
        return "backprop-size-mismatch-text"
    return None


@pytest.mark.tf
@pytest.mark.slow
def test_onednn_changes_only_the_known_behaviours(tmp_path):
    from detaudit.analysis.verdicts import cell_verdicts
    from detaudit.core.config import parse_config
    from detaudit.engine.runner import run
    from detaudit.engine.store import RunStore
    from tests.helpers.layers import ALL_KINDS

    # Op determinism off, as a user's defaults: oneDNN must not add run-to-run differences either. The baseline is
    # one of the two points, so two workers (one per path) run everything.
    config = parse_config({"name": "onednn-paths", "seeds": [0], "repeats": 3, "layers": ALL_KINDS,
                           "matrix": {"onednn": ["off", "on"]}, "baseline": {"onednn": "off", "determinism": "off"}})
    table = run(config, out=tmp_path, workers=2)
    verdicts = cell_verdicts(table)
    assert set(verdicts["onednn"]) == {"off", "on"}
    assert len(RunStore.open(table.attrs["run_dir"]).read_meta()["groups"]) == 2
    by_path = {path: dict(zip(rows["layer"] + " " + rows["params"].astype(str) + " " + rows["input_shape"].astype(str),
                              zip(rows["verdict"], rows["message"].fillna("").astype(str))))
               for path, rows in verdicts.groupby("onednn")}
    assert by_path["off"].keys() == by_path["on"].keys() and len(by_path["off"]) == len(ALL_KINDS)
    seen, unexplained = set(), []
    for key, off in by_path["off"].items():
        on = by_path["on"][key]
        if off == on:
            continue
        behaviour = _classify(key, off, on)
        if behaviour is None:
            unexplained.append(f"{key}: off {off[0]} {off[1][:120]!r} / on {on[0]} {on[1][:120]!r}")
        seen.add(behaviour)
    assert not unexplained, ("oneDNN changes a behaviour no test covers with oneDNN on: add it to KNOWN with the "
                             "tests that assert it, marked @pytest.mark.onednn:\n" + "\n".join(unexplained))
    assert seen == set(KNOWN), f"oneDNN no longer changes {set(KNOWN) - seen}: update KNOWN and the markers"
