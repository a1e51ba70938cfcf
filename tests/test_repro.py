"""repro: reproducers generated from the declarations and the worker's own code, held to the run's digests."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from detaudit.core.config import Cell, Settings, parse_config
from detaudit.workflows.repro import render_repro

REPO = Path(__file__).resolve().parent.parent
LAYERS = [
    {"kind": "Conv2DTranspose", "filters": 3, "kernel_size": 3, "strides": 2, "padding": "same",
     "input_shape": [2, 5, 5, 2]},
    {"kind": "conv1d_transpose", "filters": 2, "kernel_size": 4, "strides": 2, "padding": "valid", "use_bias": True,
     "input_shape": [2, 6, 3]},
]


def _cell(layer: dict, **settings) -> Cell:
    config = parse_config({"name": "r", "layers": [layer], "repeats": 2})
    return Cell(config.layers[0], Settings(**settings), 0, 2)


def test_a_reproducer_needs_only_tensorflow_and_numpy():
    text = render_repro(_cell(LAYERS[0], precision="mixed_bfloat16", threads=1, determinism="env"))
    compile(text, "repro.py", "exec")
    assert not re.search(r"^\s*(import|from)\s+detaudit", text, re.M)  # no detaudit needed to run it
    assert "keras.config.set_dtype_policy('mixed_bfloat16')" in text  # the axis declarations' own statements
    assert "tf.config.threading.set_intra_op_parallelism_threads(1)" in text
    assert '"TF_DETERMINISTIC_OPS": "1"' in text


def test_a_drift_reproducer_names_both_settings():
    text = render_repro(_cell(LAYERS[0], xla="on"), mode="drift", reference=Settings(determinism="on"))
    compile(text, "repro.py", "exec")
    assert '"reference"' in text and "enable_op_determinism()" in text
    with pytest.raises(ValueError, match="reference settings"):
        render_repro(_cell(LAYERS[0]), mode="drift")


@pytest.mark.slow
@pytest.mark.tf
def test_a_reproducer_built_from_a_run_reproduces_its_digests(tmp_path):
    from detaudit.engine.runner import run

    config = parse_config({"name": "parity", "seeds": [0], "repeats": 2, "layers": LAYERS,
                           "matrix": {"precision": ["mixed_bfloat16"], "xla": ["on"], "determinism": ["on"]}})
    table = run(config, out=tmp_path, workers=2)
    rows = table[(table["comparison"] == "repeat") & (table["precision"] == "mixed_bfloat16")]
    cells = [c for c in config.cells() if c.settings.precision == "mixed_bfloat16"]
    assert len(cells) == len(LAYERS)
    for cell in cells:
        script = tmp_path / f"{cell.cell_id}.py"
        script.write_text(render_repro(cell))
        result = subprocess.run([sys.executable, str(script), "--digests"], capture_output=True, text=True,
                                timeout=300, cwd=REPO)
        assert result.returncode == 0, result.stderr
        digests = json.loads(result.stdout)
        expected = dict(rows[rows["cell_id"] == cell.cell_id][["tensor", "digest"]].itertuples(index=False))
        assert expected and digests == expected, cell.layer.kind


@pytest.mark.tf
@pytest.mark.parametrize("xla", [False, True])
def test_a_pass_gives_read_only_views_that_later_passes_leave_alone(xla):
    """step() reads TensorFlow's CPU buffers in place: the first repeat's arrays must outlive later passes
    unchanged, and the traced graph called directly must give what calling the tf.function gives."""
    pytest.importorskip("tensorflow")
    from detaudit.engine.standalone import Case

    case = Case("keras_transpose", "Conv2DTranspose", _cell(LAYERS[0]).layer.params, LAYERS[0]["input_shape"], 0, xla)
    first = case.step()
    kept = [a.copy() for a in first]
    assert all(not a.flags.writeable for a in first)
    with pytest.raises(ValueError, match="read-only"):
        first[0][...] = 0
    for _ in range(5):
        later = case.step()
    via_function = [t.numpy() for t in case.compiled(case.x, case.upstream)]
    assert len(first) == len(later) == len(via_function) == 4
    for a, b, c, d in zip(first, kept, later, via_function):
        assert a.tobytes() == b.tobytes() == c.tobytes() == d.tobytes()


@pytest.mark.tf
def test_a_view_of_an_output_that_aliases_a_variable_keeps_its_value_when_the_variable_changes():
    """A user layer may return a variable's value as is; TensorFlow copies on write, so a held view stays."""
    tf = pytest.importorskip("tensorflow")
    import numpy as np

    variable = tf.Variable(np.arange(6, dtype=np.float32))
    graph = tf.function(lambda: tf.identity(variable)).get_concrete_function()
    held = np.asarray(graph())
    variable.assign_add(tf.ones(6))
    variable.assign(tf.zeros(6))
    assert held.tolist() == [0, 1, 2, 3, 4, 5]
