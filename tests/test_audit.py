"""audit: a user's own model, localized to the layer; the Python API; bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.helpers.cli import detaudit, detaudit_main, one_clean_line

pytestmark = pytest.mark.tf


@pytest.fixture(scope="module")
def keras_modules():
    keras = pytest.importorskip("keras")
    from tests import audit_models

    return keras, audit_models


def test_a_deterministic_decoder_is_reproducible(keras_modules):
    import detaudit

    _, models = keras_modules
    result = detaudit.audit_model(models.decoder(), input_shape=[2, 4, 4, 3], steps=2)
    assert result.verdict == "REPRODUCIBLE" and result.culprit is None
    assert [row["layer"] for row in result.layers] == ["up1", "up2"]


def test_an_unseeded_dropout_is_named_as_the_culprit(keras_modules):
    import detaudit

    _, models = keras_modules
    result = detaudit.audit_model(models.with_dropout(), input_shape=[2, 4, 4, 3], steps=2)
    assert result.verdict == "NONDETERMINISTIC"
    assert result.culprit == {"layer": "drop", "class": "Dropout", "tensor": "forward output"}
    assert any(c["check"] == "unseeded random layer drop" for c in result.checks)


def test_a_random_order_backward_pass_is_named_while_the_forward_is_clean(keras_modules):
    import detaudit

    _, models = keras_modules
    result = detaudit.audit_model(models.random_order(), input_shape=[2, 4, 4, 3], steps=2)
    rows = {row["layer"]: row for row in result.layers}
    assert all(row["forward"] == "ok" for row in rows.values())
    assert rows["shaky"]["backward"] == "DIFFERS" and rows["up1"]["backward"] == "ok"
    assert result.culprit == {"layer": "shaky", "class": "RandomOrderSumConv2DTranspose", "tensor": "bias gradient"}


def test_assert_deterministic_explains_what_differed():
    import tensorflow as tf

    import detaudit

    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    detaudit.assert_deterministic(lambda t: tf.matmul(t, t, transpose_b=True), x)
    noisy = tf.random.Generator.from_seed(1)
    with pytest.raises(AssertionError, match=r"Mismatched elements: \d+ / 12 \([\d.]+%\)") as info:
        detaudit.assert_deterministic(lambda t: t + noisy.normal(t.shape) * 1e-3, x)
    assert "Greatest ULP difference:" in str(info.value) and "at index (" in str(info.value)


def test_the_command_audits_a_factory_across_a_restart(tmp_path):
    result = detaudit("audit", "tests.audit_models:decoder", "--steps", "2", "--out", str(tmp_path), "--json",
                      "--report", str(tmp_path / "audit.md"))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "REPRODUCIBLE" and all(data["restart"].values())
    assert "**Verdict: REPRODUCIBLE**" in (tmp_path / "audit.md").read_text()
    assert list(tmp_path.glob("*-audit-decoder/results.parquet"))


@pytest.mark.parametrize("args, fragment", [
    (["missing.keras"], "no such model file or directory"),
    (["tests.audit_models:decoder", "--input-shape", "2,5,5,3"], "expected ['any', 4, 4, 3]"),
    (["tests.audit_models:decoder", "--determinism", "maybe"], "argument --determinism: expected one of off, on, env"),
    (["tests.audit_models:decoder", "--device", "gpu:7"], "no such GPU visible"),
    (["tests.audit_models:broken"], "tests.audit_models:broken() raised RuntimeError: a broken factory"),
    (["tests.audit_models:not_a_function"], "is not callable (int)"),
])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, args, fragment):
    one_clean_line(detaudit_main("audit", *args, "--out", str(tmp_path)), fragment)


def test_a_one_layer_model_is_audited(keras_modules):
    import detaudit

    _, models = keras_modules
    result = detaudit.audit_model(models.one_layer(), steps=2, repeats=2)
    assert result.verdict == "REPRODUCIBLE" and [row["layer"] for row in result.layers] == ["only"]


def test_a_lambda_layer_needs_unsafe(tmp_path, keras_modules):
    keras, _ = keras_modules
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")])
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = detaudit("audit", str(path), "--out", str(tmp_path))
    assert result.returncode == 2 and "pass --unsafe" in result.stderr
