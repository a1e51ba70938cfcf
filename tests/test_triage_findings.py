"""Triage of every kind of finding, without TensorFlow: which finding is worst, cell ids, the shrink's steps,
the op names, the short reproducer's text and the upstream report."""

from __future__ import annotations

import re

import numpy as np
import pytest

from detaudit.analysis.runs import load_run
from detaudit.core.config import Cell, Settings, parse_config
from detaudit.engine.ops import hlo_outputs, op_label
from detaudit.engine.store import RunStore, save_tensors
from detaudit.errors import UsageError
from detaudit.workflows import shrink
from detaudit.workflows.repro_short import MAX_LINES, render_short_repro
from detaudit.workflows.targets import TriageMode, pick_targets, resolve_cell_id
from tests.helpers import runs as fab
from tests.helpers.runs import record as _record, tensors as _tensors

CONFIG = parse_config({
    "name": "fab", "seeds": [0],
    "layers": [{"kind": "Conv2DTranspose", "filters": 2, "kernel_size": 3, "strides": 2, "padding": "same",
                "input_shape": [1, 2, 2, 2]}],
    "matrix": {"precision": ["float32", "mixed_bfloat16"], "xla": ["off", "on"]},
})
BIAS_OP = {"op": "BiasAddGrad", "name": "gradient_tape/BiasAdd/BiasAddGrad", "device": "CPU:0", "dtype": "bfloat16",
           "via": ["Cast", "Identity"]}


def _cell(**settings) -> Cell:
    return fab.cell(CONFIG, **settings)


def _reference(error: float) -> list[dict]:
    """A reference comparison of grad_bias ``error`` (a fraction of the truth's largest magnitude) off."""
    return [{"tensor": "grad_bias", "n_elements": 2, "n_mismatch": 2, "bitwise_equal": False, "max_ulp": 30,
             "max_abs": error, "ref_scale": 1.0, "max_ulp_scaled": 3.0}]


@pytest.fixture()
def run(tmp_path):
    """float32 baseline exact; bfloat16 9% off float64 (the bias gradient), bfloat16 + XLA 0.2% off."""
    store = RunStore.create(tmp_path, CONFIG.to_dict(), CONFIG.name, run_id="fab")
    store.write_meta({"run_id": "fab", "tensorflow": {"tensorflow_version": "2.21.0", "keras_version": "3.x",
                                                      "gpus": []}, "host": {"onednn_state": "off (test)"},
                      "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
                      "interrupted": False})
    for cell in CONFIG.cells():
        tensors = _tensors(0)
        if cell.settings.precision != "float32" or cell.settings.xla == "on":
            tensors = {**tensors, "grad_bias": tensors["grad_bias"] * np.float32(1.01)}  # drifts from the baseline
        record = _record(cell, tensors)
        error = 0.09 if cell.settings.precision == "mixed_bfloat16" and cell.settings.xla == "off" else \
            0.002 if cell.settings.precision == "mixed_bfloat16" else 1e-7
        record["reference"] = _reference(error)
        record["ops"] = {"grad_bias": BIAS_OP}
        store.append_record(record)
        save_tensors(store.tensor_path(cell.cell_id), tensors)
    return load_run(store.path)


def test_the_worst_finding_is_the_largest_error_against_float64_and_the_others_are_listed(run):
    targets = pick_targets(run)
    worst = targets[0]
    assert worst.cell_id == _cell(precision="mixed_bfloat16").cell_id
    assert worst.mode is TriageMode.ACCURACY and worst.tensor == "grad_bias"
    assert "9% off float64 (limit 1.6%)" in worst.figure and worst.op == "BiasAddGrad (CPU:0, bfloat16)"
    modes = {t.cell_id: t.mode for t in targets[1:]}
    # bfloat16 + XLA is within its limit: only a drift; float32 + XLA drifts too; the baseline has no finding
    assert modes == {_cell(precision="mixed_bfloat16", xla="on").cell_id: TriageMode.DRIFT,
                     _cell(xla="on").cell_id: TriageMode.DRIFT}
    assert all(t.cell_id in t.line() for t in targets)


def test_the_question_depends_on_the_kind_of_finding_and_is_never_circular():
    assert "keeping the precision and the device" in TriageMode.ACCURACY.question
    assert "removes" in TriageMode.REPEAT.question and "closer to float64" in TriageMode.DRIFT.question


def test_a_cell_is_named_by_a_unique_prefix(run):
    cell_id = _cell(precision="mixed_bfloat16").cell_id
    assert resolve_cell_id(run, cell_id) == cell_id
    assert resolve_cell_id(run, cell_id[:-3]) == cell_id
    with pytest.raises(UsageError, match="is the start of 5 cell ids"):
        resolve_cell_id(run, "conv2dtranspose-")
    with pytest.raises(UsageError, match="no cell 'nope'.*--ids"):
        resolve_cell_id(run, "nope")


def test_the_shrink_offers_the_smallest_and_half_of_every_knob_and_combines_those_that_kept_it():
    spec = parse_config({"name": "s", "layers": [{"kind": "Conv2DTranspose", "filters": 8, "kernel_size": 3,
                                                  "strides": 2, "padding": "same",
                                                  "input_shape": [4, 16, 16, 8]}]}).layers[0]
    names = [name for name, _ in shrink.candidates(spec)]
    assert names == ["batch 4->1", "batch 4->2", "spatial 16->1", "spatial 16->8", "channels 8->1", "channels 8->4",
                     "filters 8->1", "filters 8->4", "kernel 3->1", "stride 2->1"]
    kept = [c for c in shrink.candidates(spec) if c[0] in ("batch 4->1", "spatial 16->8", "spatial 16->1",
                                                           "channels 8->4")]
    combined = shrink.combine(spec, kept)
    assert list(combined.input_shape) == [1, 1, 1, 4] and combined.params["kernel_size"] == [3, 3]
    assert shrink.combine(spec, kept[:1]) is None  # one knob: the candidate itself
    assert shrink.candidates(parse_config({"name": "m", "layers": [{"kind": "Conv2DTranspose", "filters": 1,
                                                                     "kernel_size": 1, "strides": 1,
                                                                     "input_shape": [1, 1, 1, 1]}]}).layers[0]) == []
    assert shrink.size(combined) < shrink.size(spec)


HLO = """HloModule a_inference_forward_backward

%fused_computation (param_0: f32[1,6,6,2]) -> f32[2] {
  ROOT %x = f32[2]{0} reduce(%param_0)
}

ENTRY %main.1 (arg0.1: f32[1,3,3,2], arg1.1: f32[1,6,6,2]) -> (bf16[1,6,6,2], f32[2]) {
  %arg1.1 = f32[1,6,6,2]{3,2,1,0} parameter(1)
  %convert_convert_fusion = f32[2]{0} fusion(%arg1.1), kind=kLoop, calls=%fused_computation, metadata={op_type="Reshape" op_name="gradient_tape/Reshape_1"}
  %convolution.3 = bf16[1,6,6,2]{3,2,1,0} convolution(%arg0.1, %arg1.1), window={size=3x3}, metadata={op_type="Conv2DBackpropInput"}
  ROOT %tuple = (bf16[1,6,6,2]{3,2,1,0}, f32[2]{0}) tuple(%convolution.3, %convert_convert_fusion), metadata={op_name="XLA_Retvals"}
}
"""


def test_under_xla_the_instruction_that_yields_each_output_is_read_from_the_optimized_hlo():
    outputs = hlo_outputs(HLO)
    assert outputs == [{"instruction": "convolution.3", "opcode": "convolution", "kind": "",
                        "from": "Conv2DBackpropInput"},
                       {"instruction": "convert_convert_fusion", "opcode": "fusion", "kind": "kLoop",
                        "from": "Reshape"}]
    assert op_label(BIAS_OP) == "BiasAddGrad (CPU:0, bfloat16)"
    label = op_label({**BIAS_OP, "xla": outputs[1]})
    assert label == "XLA fusion convert_convert_fusion, kLoop [traced as BiasAddGrad (CPU:0, bfloat16)]"
    assert op_label({**BIAS_OP, "xla": {"error": "no HLO"}}).startswith("XLA cluster [traced as BiasAddGrad")
    assert op_label(None) == ""


@pytest.mark.parametrize("tensor", ["output", "grad_input", "grad_kernel", "grad_bias"])
def test_the_short_reproducer_is_standalone_and_short(tensor):
    cell = Cell(CONFIG.layers[0], Settings(precision="mixed_bfloat16", onednn="off", threads=1), 0, 2)
    text = render_short_repro(cell, TriageMode.ACCURACY, tensor, 0.016, "BiasAddGrad (CPU:0, bfloat16)",
                              "https://github.com/tensorflow/tensorflow/issues/86378")
    compile(text, "repro.py", "exec")
    assert len(text.splitlines()) <= MAX_LINES
    imports = set(re.findall(r"^(?:import|from)\s+(\w+)", text, re.M))
    assert imports == {"os", "sys", "numpy", "tensorflow", "keras"}
    assert '"TF_ENABLE_ONEDNN_OPTS": "0"' in text and '"TF_CPP_MIN_LOG_LEVEL": "3"' in text
    assert "keras.config.set_dtype_policy('mixed_bfloat16')" in text  # the axis declarations' own statements
    assert "set_intra_op_parallelism_threads(1)" in text and "LIMIT = 0.016" in text
    assert "issues/86378" in text and "sys.exit(1 if rel > LIMIT else 0)" in text


def test_the_short_reproducer_of_nondeterminism_compares_passes_and_unsupported_layers_get_none():
    cell = Cell(CONFIG.layers[0], Settings(xla="on"), 0, 3)
    text = render_short_repro(cell, TriageMode.REPEAT, "grad_kernel", 1e-5)
    compile(text, "repro.py", "exec")
    assert "jit_compile=True" in text and "BITS DIFFER" in text and len(text.splitlines()) <= MAX_LINES
    user = parse_config({"name": "u", "layers": [{"kind": "resize_conv2d", "filters": 2, "kernel_size": 3,
                                                  "input_shape": [1, 4, 4, 2]}]}).layers[0]
    assert render_short_repro(Cell(user, Settings(), 0, 2), TriageMode.ACCURACY, "grad_bias", 1e-5) is None


def test_the_short_reproducer_of_a_real_run_has_no_detaudit_import():
    text = render_short_repro(Cell(CONFIG.layers[0], Settings(), 0, 2), TriageMode.ACCURACY, "grad_input", 1e-5)
    assert "detaudit" not in text.split('"""', 2)[2]


def test_other_findings_fold_over_seeds():
    from detaudit.workflows.targets import Target, distinct

    def target(cell_id: str, seed: int, mode=TriageMode.ACCURACY, settings="precision=mixed_bfloat16"):
        return Target(cell_id, mode, "grad_bias", f"Conv2DTranspose k3 s2 same [1, 2, 2, 2] [{settings}, seed={seed}]",
                      "grad_bias 9% off float64", "", False, 0.09)

    folded = distinct([target("a", 0), target("b", 1), target("c", 2), target("d", 0, TriageMode.DRIFT),
                       target("e", 0, settings="precision=mixed_bfloat16, xla=on")])
    assert [t.cell_id for t in folded] == ["a", "d", "e"]
    assert folded[0].figure == "grad_bias 9% off float64 (+2 seeds)" and folded[1].figure == "grad_bias 9% off float64"


@pytest.mark.parametrize("link", ["https://github.com/tensorflow/tensorflow/issues/86378", "not yet reported"])
def test_the_report_follows_tensorflows_template_and_says_whether_the_bug_is_reported(tmp_path, link):
    from detaudit.workflows.bug_report import report_markdown
    from detaudit.workflows.triage import Measurement, TriageResult, TriageStep

    cell = Cell(CONFIG.layers[0], Settings(precision="mixed_bfloat16"), 0, 2)
    small = Cell(parse_config({"name": "m", "layers": [{"kind": "Conv2DTranspose", "filters": 1, "kernel_size": 1,
                                                        "input_shape": [1, 2, 2, 1]}]}).layers[0], cell.settings, 0, 2)
    confirmed = Measurement(True, 30, "grad_bias 9% off float64 (limit 1.6%)", ["grad_bias"],
                            ops={"grad_bias": "BiasAddGrad (CPU:0, bfloat16)"})
    repro = tmp_path / "repro.py"
    repro.write_text("import tensorflow as tf\nprint('short')\n")
    explanation = {"id": "bug", "cause": "sums in bfloat16", "fix": "XLA", "source": link, "known": link,
                   "reported": link.startswith("http")}
    result = TriageResult(cell, TriageMode.ACCURACY, "grad_bias", confirmed,
                          [("xla", "on", "fixes", 2, "grad_bias 0.15% off float64 (limit 1.6%)")], small,
                          Measurement(True, 3, "grad_bias 2.1% off float64 (limit 1.6%)", ["grad_bias"]),
                          explanation, [TriageStep("confirm", "error", "grad_bias 9% off")], "[1, 2, 2, 2] -> "
                          "[1, 2, 2, 1]", repro=repro, repro_is_short=True)
    report = report_markdown(result, {"tensorflow_version": "2.21.0", "keras_version": "3.15.1", "python": "3.11.7",
                                      "platform": "Linux", "cpu_model": "AMD EPYC", "cpu_flags": "avx2",
                                      "onednn_state": "off (test)", "gpus": "none"})
    for heading in ("**Issue type:** Bug", "**TensorFlow version:** 2.21.0", "**Keras version:** 3.15.1",
                    "**Python version:** 3.11.7", "**CPU:** AMD EPYC; flags: avx2", "**oneDNN:** off (test)",
                    "**Current behavior?**", "**Expected behavior?**", "**Standalone code to reproduce the issue**"):
        assert heading in report
    assert "```python\nimport tensorflow as tf\nprint('short')\n```" in report
    assert "grad_bias 2.1% off float64" in report and "`xla=on`: grad_bias 0.15% off float64" in report
    assert "`BiasAddGrad (CPU:0, bfloat16)`" in report
    if link.startswith("http"):
        assert f"Known upstream: {link}" in report and "not yet reported" not in report
    else:
        assert "**not yet reported**" in report


def test_a_shrink_round_repeats_the_steps_that_kept_the_finding_last_round():
    spec = parse_config({"name": "s", "layers": [{"kind": "Conv2DTranspose", "filters": 8, "kernel_size": 3,
                                                  "strides": 2, "padding": "same",
                                                  "input_shape": [4, 16, 16, 8]}]}).layers[0]
    singles = shrink.candidates(spec)
    assert shrink.hinted(singles, None) == singles  # the first round knows nothing: every step
    chosen = shrink.hinted(singles, {"batch": "min", "spatial": "half", "filters": "half"})
    assert [name for name, _ in chosen] == ["batch 4->1", "spatial 16->8", "filters 8->4"]
    together = shrink.combine(spec, chosen)
    assert list(together.input_shape) == [4 // 4, 8, 8, 8] and together.params["filters"] == 4


def test_a_failed_adjoint_test_is_a_finding_when_no_tensor_is_beyond_its_limit(tmp_path):
    store = RunStore.create(tmp_path, CONFIG.to_dict(), CONFIG.name, run_id="adj")
    store.write_meta({"run_id": "adj", "tensorflow": {"tensorflow_version": "2.21.0", "gpus": []},
                      "started": "2026-01-01T00:00:00+00:00", "finished": "2026-01-01T00:01:00+00:00",
                      "interrupted": False})
    for cell in CONFIG.cells():
        record = _record(cell, _tensors(0))
        record["reference"] = _reference(1e-7)
        if cell.settings.xla == "on" and cell.settings.precision == "float32":
            record["adjoint"] = {"dtype": "float32", "adjoint_eps": 1000.0, "reconstruction": None}
        store.append_record(record)
        save_tensors(store.tensor_path(cell.cell_id), _tensors(0))
    targets = pick_targets(load_run(store.path))
    assert [(t.cell_id, t.mode) for t in targets] == [(_cell(xla="on").cell_id, TriageMode.ADJOINT)]
    assert "adjoint test 1e+03 eps (limit 64)" in targets[0].figure
