"""audit: the user's training as written, each execution a rerun; the three answers; bad inputs; compare."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.helpers.cli import detaudit, detaudit_main, one_clean_line

pytestmark = pytest.mark.tf


def _audit(name, **kwargs):
    import detaudit as api

    return api.audit_model(f"tests.training_models:{name}", steps=kwargs.pop("steps", 2),
                           repeats=kwargs.pop("repeats", 2), **kwargs)


def test_nested_dropout_with_adam_l1_and_a_shuffled_dataset_reproduces():
    # The pix2pix false alarm: Dropout in a Sequential block, repeats used to differ without restoring its state.
    result = _audit("pix2pix")
    assert result["repeat_divergence"] is None and result["resume"]["equal"]
    training = result["training"]
    assert training["optimizers"] == ["optimizer: Adam"] and training["loss"] == "l1"
    assert training["random_layers"] == [{"path": "up1/dropout", "class": "Dropout", "seeded": False}]
    forward = [row["name"] for row in result["layers"] if row["stage"] == "forward"]
    assert "up1/dropout" in forward and "down1" in forward


def test_a_gan_with_its_own_train_step_and_two_optimizers_runs_unchanged():
    result = _audit("dcgan")
    assert result["training"]["train_step"] == "custom"
    assert {"d_optimizer: Adam", "g_optimizer: Adam"} <= set(result["training"]["optimizers"])
    assert result["repeat_divergence"] is None and result["resume"]["equal"]
    grads = [row for row in result["layers"] if row["stage"] == "gradients"]
    assert grads, "the two optimizers' gradients are recorded"


def test_two_inputs_from_dicts():
    result = _audit("two_inputs")
    assert result["repeat_divergence"] is None
    assert any(row["name"] == "up" for row in result["layers"])


def test_an_unordered_parallel_map_is_the_culprit_and_named_in_the_graph():
    result = _audit("unordered_pipeline")
    assert result["repeat_divergence"]["stage"] == "data"
    sources = [s for s in result["pipeline"] if s["source"] == "yes"]
    assert sources and "deterministic=False" in sources[0]["problem"]


def test_a_deterministic_false_map_fused_into_batch_is_not_a_source():
    result = _audit("fused_pipeline")
    assert result["repeat_divergence"] is None
    assert [s["source"].split(":")[0] for s in result["pipeline"]] == ["no"]


def test_an_order_dependent_backward_is_named_and_op_determinism_removes_it(tmp_path):
    result = _audit("racy_backward")
    found = result["repeat_divergence"]
    assert found["stage"] == "gradients" and found["name"].endswith("racy/racy_bias")
    out = detaudit("audit", "tests.training_models:racy_backward", "--steps", "2", "--repeats", "2",
                   "--determinism", "on", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["verdict"] == "REPRODUCIBLE"


def test_a_stateful_random_op_in_train_step_breaks_resume_and_the_advice_fixes_it():
    broken = _audit("noisy_step", steps=3)
    assert broken["repeat_divergence"] is None  # every rerun draws the same: only a resume shows it
    assert not broken["resume"]["equal"] and broken["resume"]["random_ops"] == ["RandomStandardNormal"]
    fixed = _audit("noisy_step_fixed", steps=3)  # the advice: draw from a SeedGenerator on the model
    assert fixed["resume"]["equal"] and fixed["resume"]["random_ops"] == []


@pytest.fixture(scope="module")
def vae_audit(tmp_path_factory):
    """`detaudit audit` of the vae_decoder training in float32, with its Markdown report: read by two tests."""
    out = tmp_path_factory.mktemp("vae")
    result = detaudit("audit", "tests.training_models:vae_decoder", "--steps", "2", "--repeats", "2", "--out",
                      str(out), "--json", "--report", str(out / "audit.md"))
    assert result.returncode == 0, result.stderr
    return out, json.loads(result.stdout)


def test_the_command_gives_three_answers_and_compares_audits(vae_audit):
    out, data = vae_audit
    assert data["verdict"] == "REPRODUCIBLE"
    assert [(a["question"], a["holds"]) for a in data["answers"]] == [("rerun", True), ("repeats", True),
                                                                      ("resume", True)]
    assert "**Verdict: REPRODUCIBLE**" in (out / "audit.md").read_text()
    shown = detaudit_main("show", data["run_dir"])
    assert shown.returncode == 0 and re.search(r"rerun reproduces +yes", shown.stdout)
    again = detaudit("audit", "tests.training_models:vae_decoder", "--steps", "2", "--repeats", "2", "--out",
                     str(out), "--compare-to", data["run_dir"])
    assert again.returncode == 0, again.stderr
    assert "REPRODUCED" in again.stdout and "Final weights: bit-identical" in again.stdout


def test_mixed_bfloat16_computes_in_bfloat16_and_ends_elsewhere(vae_audit, tmp_path):
    runs = {"float32": vae_audit[1]}
    out = detaudit("audit", "tests.training_models:vae_decoder", "--steps", "2", "--repeats", "2",
                   "--precision", "mixed_bfloat16", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    runs["mixed_bfloat16"] = json.loads(out.stdout)
    assert runs["mixed_bfloat16"]["training"]["dtype_policies"] == ["mixed_bfloat16"]
    assert runs["mixed_bfloat16"]["applied"]["dtype_policy"] == "mixed_bfloat16"
    assert runs["float32"]["final_digests"] != runs["mixed_bfloat16"]["final_digests"]
    compared = detaudit_main("compare", runs["float32"]["run_dir"], runs["mixed_bfloat16"]["run_dir"])
    assert compared.returncode == 1 and "DIFFERENT WEIGHTS" in compared.stdout and "max ULP" in compared.stdout


def test_npz_inputs_name_the_model_inputs(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4, 4, 2)), keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")])
    model.save(tmp_path / "m.keras")
    np.savez(tmp_path / "x.npz", x=np.ones((2, 4, 4, 2), "float32"))
    out = detaudit("audit", str(tmp_path / "m.keras"), "--inputs", str(tmp_path / "x.npz"), "--steps", "2",
                   "--repeats", "2", "--out", str(tmp_path), "--json")
    assert out.returncode == 0, out.stderr
    assert "not compiled" in json.loads(out.stdout)["training"]["synthetic"]


@pytest.mark.parametrize("name, fragment", [
    ("not_a_training", "returned str; expected a Keras model or a (model, data) pair"),
    ("empty_data", "the dataset is empty"),
    ("wrong_data", "the data does not fit the model"),
    ("exits", "called sys.exit(3)"),
    ("no_weights", "no trainable weights"),
])
def test_a_factory_that_returns_no_training_is_bad_input(name, fragment):
    from detaudit.errors import UsageError

    with pytest.raises(UsageError, match=re.escape(fragment)):
        _audit(name)


@pytest.mark.parametrize("args, fragment", [
    (["missing.keras"], "no such model file or directory"),
    (["tests.audit_models:decoder", "--input-shape", "2,5,5,3"], "expected ['any', 4, 4, 3]"),
    (["tests.audit_models:decoder", "--input-shape", "300000000,4,4,3"], "GiB"),
    (["tests.audit_models:decoder", "--determinism", "maybe"], "argument --determinism: expected one of off, on, env"),
    (["tests.audit_models:decoder", "--device", "gpu:7"], "GPU"),
    (["tests.audit_models:broken"], "tests.audit_models:broken() raised RuntimeError: a broken factory"),
    (["tests.training_models:exits"], "called sys.exit(3)"),
])
def test_bad_inputs_are_one_line_and_exit_2(tmp_path, args, fragment):
    one_clean_line(detaudit_main("audit", *args, "--steps", "2", "--repeats", "2", "--out", str(tmp_path)), fragment)


def test_a_lambda_layer_needs_unsafe(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Lambda(lambda t: t * 2),
                              keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")])
    path = tmp_path / "lambda.keras"
    model.save(path)
    result = detaudit("audit", str(path), "--out", str(tmp_path))
    assert result.returncode == 2 and "pass --unsafe" in result.stderr


def test_assert_deterministic_explains_what_differed():
    import tensorflow as tf

    import detaudit

    x = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4))
    detaudit.assert_deterministic(lambda t: tf.matmul(t, t, transpose_b=True), x)
    noisy = tf.random.Generator.from_seed(1)
    with pytest.raises(AssertionError, match=r"Mismatched elements: \d+ / 12 \([\d.]+%\)") as info:
        detaudit.assert_deterministic(lambda t: t + noisy.normal(t.shape) * 1e-3, x)
    assert "Greatest ULP difference:" in str(info.value) and "at index (" in str(info.value)


def test_an_npz_member_with_pickled_objects_names_the_option(tmp_path):
    from detaudit.engine.training_target import Target
    from detaudit.errors import UsageError

    np.savez(tmp_path / "objects.npz", x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UsageError, match=r"--inputs .*objects.npz: an array of the .npz cannot be read"):
        Target("tests.training_models:vae_decoder", inputs=str(tmp_path / "objects.npz"))
