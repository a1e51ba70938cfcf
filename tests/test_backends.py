"""The backend axis: one config on TensorFlow, JAX and PyTorch, each against the others and against float64.

The JAX tests need JAX (``pip install ".[jax]"``) and the PyTorch test needs PyTorch; each is skipped with
the reason where its framework is missing. No test needs a GPU.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from detaudit.core.axes import AXES, BACKENDS, settings_spec
from detaudit.core.config import Cell, Settings, parse_config

REPO = Path(__file__).resolve().parent.parent
CONV = {"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
        "input_shape": [2, 3, 3, 2]}
RAW = {"kind": "conv1d_transpose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
       "input_shape": [1, 4, 2]}
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason='JAX is not installed: pip install ".[jax]"')
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="PyTorch is not installed (the user brings it; see the torch extra)")


def _spec(**values) -> dict:
    return settings_spec({name: values.get(name, axis.default) for name, axis in AXES.items()})


# --- declarations (no framework) -----------------------------------------------------------------------------


def test_every_axis_says_how_it_applies_on_every_backend():
    assert BACKENDS == ("tensorflow", "jax", "torch") and AXES["backend"].default == "tensorflow"
    for axis in AXES.values():
        assert set(axis.how) == set(BACKENDS), axis.name
    assert AXES["backend"].scope.process_wide  # KERAS_BACKEND is read when Keras is imported: own workers


@pytest.mark.parametrize("backend, values, fragment", [
    ("jax", {"xla": "off"}, "JAX compiles every pass with XLA"),
    ("torch", {"xla": "on"}, "PyTorch runs the pass eagerly"),
    ("jax", {"onednn": "on", "xla": "on"}, "TensorFlow's switch (TF_ENABLE_ONEDNN_OPTS)"),
    ("torch", {"onednn": "on"}, "TensorFlow's switch (TF_ENABLE_ONEDNN_OPTS)"),
    ("jax", {"threads": 2, "xla": "on"}, "JAX has no intra-op thread setting"),
    ("torch", {"determinism": "env"}, "TF_DETERMINISTIC_OPS, TensorFlow's pre-2.8 switch"),
])
def test_a_setting_that_does_not_apply_on_a_backend_says_why(backend, values, fragment):
    assert fragment in _spec(backend=backend, **values)["unsupported"]


@pytest.mark.parametrize("backend, values", [("tensorflow", {}), ("tensorflow", {"xla": "on", "onednn": "off"}),
                                             ("jax", {"xla": "on"}), ("torch", {"threads": 2}),
                                             ("jax", {"xla": "on", "onednn": "off"})])
def test_settings_that_apply_are_not_refused(backend, values):
    assert _spec(backend=backend, **values)["unsupported"] is None


def test_each_backend_gets_its_own_determinism_switch_and_keras_backend():
    tf_on = _spec(determinism="on")
    assert tf_on["environment"]["KERAS_BACKEND"] == "tensorflow"
    assert tf_on["startup"] == ["tf.config.experimental.enable_op_determinism()"]
    jax_on = _spec(backend="jax", determinism="on", xla="on")
    assert jax_on["environment"]["XLA_FLAGS"] == "--xla_gpu_deterministic_ops=true" and not jax_on["startup"]
    assert jax_on["environment"]["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false"  # workers share a GPU
    torch_on = _spec(backend="torch", determinism="on")
    assert torch_on["environment"]["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch_on["startup"] == ["torch.use_deterministic_algorithms(True)", "torch.backends.cudnn.benchmark = False"]
    assert "torch.backends.cudnn.allow_tf32 = False" in _spec(backend="torch", tf32="off")["cell"]
    assert not any("tf." in s for s in [*jax_on["startup"], *jax_on["cell"], *torch_on["cell"]])


def test_cells_on_tensorflow_keep_the_ids_they_had_before_the_backend_axis():
    config = parse_config({"name": "ids", "layers": [CONV]})
    cell = Cell(config.layers[0], Settings(), 0, 3)
    assert cell.cell_id == "conv2dtranspose-69b5f3215403"  # the id this cell had before the axis existed
    assert Cell(config.layers[0], Settings(backend="jax"), 0, 3).cell_id != cell.cell_id


def test_a_backend_that_is_not_installed_is_refused_naming_the_extra(tmp_path, monkeypatch):
    from tests.helpers.cli import detaudit_main, one_clean_line

    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({"name": "c", "layers": [CONV], "matrix": {"backend": ["tensorflow", "jax"]}}))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jax" else real(name, *a))
    line = one_clean_line(detaudit_main("run", str(config), "--out", str(tmp_path / "runs")), "jax backend",
                          "[jax]")
    assert "JAX" in line and not (tmp_path / "runs").exists()


# --- a real run on TensorFlow and JAX (CPU, tiny shapes, one run shared) ----------------------------------------


@pytest.fixture(scope="module")
def two_backends(tmp_path_factory):
    from detaudit.engine.runner import run

    config = parse_config({"name": "two", "seeds": [0], "repeats": 2, "layers": [CONV, RAW],
                           "matrix": {"backend": ["tensorflow", "jax"], "precision": ["float32", "mixed_bfloat16"],
                                      "xla": ["off", "on"], "onednn": ["off"]},
                           "baseline": {"onednn": "off", "determinism": "on"}}, source="two.yaml")
    out = tmp_path_factory.mktemp("runs")
    return config, run(config, out=out, workers=2), out


def _rows(table, **where):
    for key, value in where.items():
        table = table[table[key] == value]
    return table


@pytest.mark.tf
@pytest.mark.slow
@needs_jax
def test_jax_cells_run_and_compare_with_tensorflow_and_float64(two_backends):
    _, table, _ = two_backends
    jax_ok = _rows(table, backend="jax", xla="on", layer="Conv2DTranspose")
    assert set(jax_ok["status"]) == {"ok"} and set(jax_ok["precision"]) == {"float32", "mixed_bfloat16"}
    for comparison in ("repeat", "baseline", "reference", "adjoint"):
        assert len(_rows(jax_ok, comparison=comparison)), comparison
    # Against float64, relative to the tensor's largest value: float32 far below 1e-5, mixed_bfloat16 a few %.
    reference = _rows(jax_ok, comparison="reference")
    gap = reference["max_abs"] / reference["ref_scale"]
    assert (gap[reference["precision"] == "float32"] < 1e-5).all()
    assert (gap[reference["precision"] == "mixed_bfloat16"] < 0.05).all()
    bf16 = _rows(jax_ok, comparison="repeat", precision="mixed_bfloat16", tensor="output")
    assert set(bf16["dtype"]) == {"bfloat16"}  # the policy's compute dtype, as on TensorFlow


@pytest.mark.tf
@pytest.mark.slow
@needs_jax
def test_settings_and_kinds_that_do_not_apply_on_jax_are_unsupported_cells(two_backends):
    _, table, _ = two_backends
    off = _rows(table, backend="jax", xla="off", comparison="repeat")
    assert set(off["status"]) == {"unsupported"} and off["message"].str.contains("JAX compiles every pass").all()
    raw = _rows(table, backend="jax", xla="on", layer="conv1d_transpose", comparison="repeat")
    assert set(raw["status"]) == {"unsupported"} and raw["message"].str.contains("tensorflow backend only").all()
    assert set(_rows(table, backend="tensorflow", comparison="repeat")["status"]) == {"ok"}
    # Cells that cannot exist on their backend are shown with their reason and fail no expectation.
    from detaudit.analysis.runs import load_run
    from detaudit.analysis.summary import build_summary

    summary = build_summary(load_run(table.attrs["run_dir"]))
    folded = dict(summary.not_applicable)
    assert sum(folded.values()) == len({*off["cell_id"], *raw["cell_id"]}) > 0
    assert any("JAX compiles every pass" in reason for reason in folded)
    assert not any("UNSUPPORTED" in failure for failure in summary.failures), summary.failures
    # Folded: counted under the table, never a row of it (a torch run would list dozens).
    import io

    from rich.console import Console

    from detaudit.render.terminal import render_run

    assert {c.cell_id for c in summary.cells if c.folded} == {*off["cell_id"], *raw["cell_id"]}
    console = Console(file=io.StringIO(), width=300, color_system=None, force_terminal=False)
    console.print(render_run(summary))
    shown = console.file.getvalue()
    assert shown.count("UNSUPPORTED") == len(folded) + 1  # a legend line per reason, and the counts line


@pytest.mark.tf
@pytest.mark.slow
@needs_jax
def test_the_run_records_each_backend_and_every_view_shows_them(two_backends):
    from detaudit.analysis.runs import load_run
    from detaudit.analysis.summary import build_summary
    from detaudit.analysis.tidy import load_runs
    from detaudit.render.html import render_html

    _, table, out = two_backends
    stored = load_run(table.attrs["run_dir"])
    backends = stored.meta["backends"]
    assert set(backends) == {"tensorflow", "jax"} and all(b["version"] for b in backends.values())
    summary = build_summary(stored)
    assert "jax" in summary.facts["backends"] and "tensorflow" in summary.facts["backends"]
    html = render_html(stored, summary)
    assert "backend=jax" in html and "jax " + backends["jax"]["version"] in html
    tidy = load_runs(out)
    assert set(tidy["backend"].dropna()) == {"tensorflow", "jax"}
    assert len(tidy[(tidy["backend"] == "jax") & (tidy["comparison"] == "baseline")])


# --- the passes themselves, in a fresh process (no TensorFlow may be imported) -----------------------------------

_PASS = textwrap.dedent("""
    import json, os, sys
    from detaudit.core.axes import settings_spec
    from detaudit.core.config import Cell, Settings, parse_config
    from detaudit.engine import standalone
    backend, xla, layer = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    standalone.start_process(settings_spec(Settings(backend=backend, xla=xla).as_dict()))
    from detaudit.engine.worker import run_cell
    config = parse_config({"name": "p", "layers": [layer]})
    facts = {}
    for precision in ("float32", "mixed_bfloat16"):  # a per-cell axis: one worker runs both
        settings = Settings(backend=backend, xla=xla, precision=precision)
        digests = {}
        for on_device in ("0", "1"):
            os.environ["DETAUDIT_COMPARE_ON_DEVICE"] = on_device
            record = run_cell(Cell(config.layers[0], settings, 0, 3), None)
            assert record["status"] == "ok", record
            digests[record["compared_on"]] = {t["tensor"]: t["digest"] for t in record["tensors"]}
        facts[precision] = {"digests": digests, "adjoint": record.get("adjoint"),
                            "dtypes": {t["tensor"]: t["dtype"] for t in record["tensors"]}}
    print(json.dumps({"tensorflow": "tensorflow" in sys.modules, **facts}))
""")


def _pass(backend: str, xla: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    result = subprocess.run([sys.executable, "-P", "-c", _PASS, backend, xla, json.dumps(CONV)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.splitlines()[-1])


def _check_pass(facts: dict) -> None:
    assert facts["tensorflow"] is False  # the GPU machine has no TensorFlow: a worker must not need it
    for precision in ("float32", "mixed_bfloat16"):
        run = facts[precision]
        assert run["digests"]["device"] == run["digests"]["host"], precision  # one pass, two ways to compare
        assert run["adjoint"]["adjoint_eps"] < 10, precision
    assert facts["float32"]["dtypes"] == {"output": "float32", "grad_input": "float32", "grad_kernel": "float32",
                                          "grad_bias": "float32"}
    # mixed_bfloat16 computes in bfloat16 and keeps float32 weights, as on TensorFlow
    assert facts["mixed_bfloat16"]["dtypes"]["output"] == "bfloat16"
    assert facts["mixed_bfloat16"]["dtypes"]["grad_kernel"] == "float32"


@pytest.mark.slow
@needs_jax
def test_the_jax_pass_imports_no_tensorflow_and_compares_on_the_device_as_on_the_host():
    _check_pass(_pass("jax", "on"))


@pytest.mark.slow
@needs_torch
def test_the_torch_pass_imports_no_tensorflow_and_compares_on_the_device_as_on_the_host():
    _check_pass(_pass("torch", "off"))


@pytest.mark.parametrize("name", ["backends", "gpu-backends"])
def test_the_bundled_backend_configs_validate_and_name_the_schema(name):
    import jsonschema
    import yaml

    from detaudit.core.config import bundled_config_path, load_config
    from detaudit.core.schema import config_schema

    path = bundled_config_path(name)
    assert path.read_text().startswith("# yaml-language-server: $schema=detaudit.schema.json")
    jsonschema.validate(yaml.safe_load(path.read_text()), config_schema())
    config = load_config(path)
    assert {c.settings.backend for c in config.cells()} >= {"jax"}
    if name == "gpu-backends":  # runs where TensorFlow is not installed: no cell may need it, the baseline neither
        assert "tensorflow" not in {c.settings.backend for c in config.cells()}


def test_the_model_audit_says_it_runs_on_tensorflow_only(tmp_path):
    from tests.helpers.cli import detaudit_main, one_clean_line

    line = one_clean_line(detaudit_main("audit", "tests.audit_models:one_layer", "--backend", "jax", "--out",
                                        str(tmp_path)), "--backend", "TensorFlow only")
    assert "backend='jax'" in line


def test_a_table_stored_before_the_backend_axis_reads_as_tensorflow():
    import pandas as pd

    from detaudit.engine.table import COLUMNS, typed

    row = {c: AXES[c].default if c in AXES else None for c in COLUMNS if c != "backend"}
    old = typed(pd.DataFrame([row | {"seed": 0, "repeats": 3}]))
    assert list(old["backend"]) == ["tensorflow"]


def test_the_parent_imports_no_framework_to_check_the_backends():
    code = ("import sys; from detaudit.engine import runner; from detaudit.engine.backends import require_backends; "
            "require_backends(['tensorflow']); print([m for m in ('jax', 'torch', 'tensorflow', 'keras') "
            "if m in sys.modules])")
    result = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr[-1000:]
