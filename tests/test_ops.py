"""The op behind each tensor, read from the traced pass, and the short reproducers run for real (TensorFlow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detaudit.core.config import Cell, Settings, parse_config
from detaudit.workflows.repro_short import MAX_LINES, render_short_repro
from detaudit.workflows.targets import TriageMode


def _layer(kind: str, kernel: int, stride: int, shape: list[int], filters: int = 2):
    return parse_config({"name": "o", "layers": [{"kind": kind, "filters": filters, "kernel_size": kernel,
                                                  "strides": stride, "padding": "same",
                                                  "input_shape": shape}]}).layers[0]


@pytest.fixture()
def policy():
    keras = pytest.importorskip("keras")
    before = keras.config.dtype_policy().name
    yield keras.config.set_dtype_policy
    keras.config.set_dtype_policy(before)


@pytest.mark.tf
@pytest.mark.parametrize("xla", [False, True])
def test_the_op_behind_each_tensor_is_named_from_the_traced_pass(policy, xla):
    from detaudit.engine.cases import build_case
    from detaudit.engine.ops import op_label, producers

    policy("mixed_bfloat16")
    spec = _layer("Conv2DTranspose", 3, 2, [1, 3, 3, 2])
    case = build_case(spec, 0, xla=xla)
    ops = producers(case, list(case.names), "/CPU:0", xla)
    assert {n: e["op"] for n, e in ops.items()} == {"output": "BiasAdd", "grad_input": "Conv2D",
                                                   "grad_kernel": "Conv2DBackpropFilter", "grad_bias": "BiasAddGrad"}
    assert ops["grad_bias"]["dtype"] == "bfloat16" and ops["grad_bias"]["device"] == "CPU:0"
    assert "Cast" in ops["grad_bias"]["via"]  # the float32 variable's gradient is the bfloat16 sum, cast
    if xla:  # under XLA the graph's op is not what runs: the HLO instruction is named, and said to be XLA's
        assert all(e["xla"].get("instruction") for e in ops.values())
        assert op_label(ops["grad_bias"]).startswith("XLA ") and "traced as BiasAddGrad" in op_label(ops["grad_bias"])
    else:
        assert op_label(ops["grad_bias"]) == "BiasAddGrad (CPU:0, bfloat16)"


@pytest.mark.tf
def test_under_op_determinism_the_xla_instruction_is_still_read():
    """TensorFlow finds the device for the HLO with an unseeded random op unless told: determinism refuses it."""
    pytest.importorskip("tensorflow")
    code = ("import tensorflow as tf\n"
            "tf.config.experimental.enable_op_determinism()\n"
            "from detaudit.core.config import parse_config\n"
            "from detaudit.engine.cases import build_case\n"
            "from detaudit.engine.ops import producers\n"
            "spec = parse_config({'name': 'o', 'layers': [{'kind': 'Conv1DTranspose', 'filters': 1, 'kernel_size': 3,"
            " 'strides': 2, 'input_shape': [1, 3, 1]}]}).layers[0]\n"
            "case = build_case(spec, 0, xla=True)\n"
            "print(producers(case, list(case.names), '/CPU:0', True)['grad_bias']['xla'])\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.returncode == 0, result.stderr
    assert "'instruction'" in result.stdout and "error" not in result.stdout, result.stdout


def _run(text: str, tmp_path, onednn: str) -> subprocess.CompletedProcess:
    script = tmp_path / "repro.py"
    script.write_text(text)
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env,
                          cwd=tmp_path)


@pytest.mark.tf
def test_the_short_reproducer_of_the_conv3d_stride3_bug_exits_1_and_a_right_case_exits_0(tmp_path):
    """tf.nn.conv3d, 1x1x1 kernel, stride 3, SAME, oneDNN off: the input gradient samples offset 1 (TF-FACTS).
    The reproducer pins oneDNN off itself, so it fails whatever the caller's TF_ENABLE_ONEDNN_OPTS."""
    wrong = Cell(_layer("Conv3DTranspose", 1, 3, [1, 1, 1, 1, 1], filters=1), Settings(onednn="off"), 0, 2)
    text = render_short_repro(wrong, TriageMode.ACCURACY, "grad_input", 1e-5, "Conv3D (CPU:0, float32)")
    assert len(text.splitlines()) <= MAX_LINES
    result = _run(text, tmp_path, os.environ.get("TF_ENABLE_ONEDNN_OPTS", "0"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "BUG" in result.stdout and "relative error" not in result.stderr
    assert result.stderr.strip() == "", result.stderr  # TensorFlow's log silenced
    right = Cell(_layer("Conv2DTranspose", 3, 2, [2, 3, 3, 2]), Settings(), 0, 2)
    # The NumPy expectations themselves, one reproducer per tensor, run in one process (one TensorFlow start).
    scripts = []
    for tensor in ("output", "grad_input", "grad_kernel", "grad_bias"):
        scripts.append(tmp_path / f"right_{tensor}.py")
        scripts[-1].write_text(render_short_repro(right, TriageMode.ACCURACY, tensor, 1e-5))
    result = subprocess.run([sys.executable, "-c", _RUN_EACH, *map(str, scripts)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"}, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    exits = [line.split() for line in result.stdout.splitlines() if line.startswith("EXIT ")]
    assert exits == [["EXIT", f"right_{t}.py", "0"] for t in ("output", "grad_input", "grad_kernel", "grad_bias")], \
        result.stdout


# Runs each script as __main__ in this one process and prints the status it exits with.
_RUN_EACH = """
import pathlib, runpy, sys
for path in sys.argv[1:]:
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code
    print("EXIT", pathlib.Path(path).name, code, flush=True)
"""
