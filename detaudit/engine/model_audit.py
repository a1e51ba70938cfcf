"""Pre-training determinism audit of a user's Keras model (imports TensorFlow: workers and the Python API).

``audit_model`` runs ``repeats`` executions of ``steps`` training steps from
the same initial weights and data, compares every layer's forward output,
every upstream gradient and every variable's gradient bitwise and in ULPs
against the first execution, and localizes the first layer that diverges.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.errors import UsageError, one_line
from detaudit.core.numerics import compare, digest

__all__ = ["AuditResult", "audit_model", "environment_checks", "load_model"]

_RANDOM_LAYERS = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                  "GaussianDropout", "AlphaDropout", "RandomFlip", "RandomRotation", "RandomZoom", "RandomCrop",
                  "RandomTranslation", "RandomContrast", "RandomBrightness")


@dataclasses.dataclass
class AuditResult:
    """What :func:`audit_model` found. ``verdict`` is REPRODUCIBLE or NONDETERMINISTIC (restart is judged by the caller)."""

    verdict: str
    layers: list[dict[str, Any]]  # per layer: name, class, forward, backward, max_ulp, first_step
    losses: list[dict[str, Any]]
    culprit: dict[str, Any] | None
    checks: list[dict[str, str]]
    digests: dict[str, str]  # initial weights, first-step outputs, final weights: for the restart check

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_model(spec: str, unsafe: bool = False) -> keras.Model:
    """A .keras file, a SavedModel directory, or a ``module:function`` factory returning a Keras model.

    Raises:
        UsageError: missing file, unloadable model, or unsafe deserialization without ``unsafe``.
    """
    path = Path(spec)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise UsageError(f"cannot import the model factory {spec!r}: {one_line(exc)}") from None
        model = factory()
        if not isinstance(model, keras.Model):
            raise UsageError(f"{spec}() returned {type(model).__name__}, not a Keras model.")
        return model
    if not path.exists():
        raise UsageError(f"{spec}: no such model file or directory.")
    if path.is_dir():
        raise UsageError(f"{spec}: a SavedModel directory cannot be trained as a Keras 3 model; save it as .keras "
                         "(model.save('model.keras')) or pass a module:function factory.")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except Exception as exc:  # noqa: BLE001 - every loading failure is the user's file
        text = one_line(exc)
        if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
            raise UsageError(f"{spec}: the model holds code (a Lambda layer) that safe mode will not load; "
                             "pass --unsafe if you trust this file.") from None
        raise UsageError(f"{spec}: cannot load the model: {text}") from None


def environment_checks(model: keras.Model, settings: dict[str, Any]) -> list[dict[str, str]]:
    """The settings that decide reproducibility, each with its state, risk and fix."""
    from tensorflow.python.framework import (
        config as tf_config,  # is_op_determinism_enabled is internal
    )

    from detaudit.engine.fingerprint import onednn_state

    checks = [
        {"check": "op determinism", "state": "on" if tf_config.is_op_determinism_enabled() else "off",
         "risk": "GPU kernels (cuDNN backprop, atomics) may sum in a different order each run",
         "fix": "tf.config.experimental.enable_op_determinism()"},
        {"check": "TF_DETERMINISTIC_OPS", "state": os.environ.get("TF_DETERMINISTIC_OPS", "unset"),
         "risk": "legacy switch; enable_op_determinism() replaces it", "fix": "use enable_op_determinism()"},
        {"check": "oneDNN", "state": onednn_state(),
         "risk": "CPU results differ from machines with the other oneDNN state",
         "fix": "set TF_ENABLE_ONEDNN_OPTS to one value on every machine"},
        {"check": "intra-op threads", "state": str(tf.config.threading.get_intra_op_parallelism_threads() or "default"),
         "risk": "the thread count changes CPU reduction order", "fix": "pin set_intra_op_parallelism_threads(N)"},
        {"check": "XLA / jit_compile", "state": settings["xla"],
         "risk": "XLA bits differ from the graph executor's", "fix": "use one jit_compile setting everywhere"},
        {"check": "TF32", "state": "on" if tf.config.experimental.tensor_float_32_execution_enabled() else "off",
         "risk": "on Ampere+ GPUs float32 convolutions round inputs to 10 bits",
         "fix": "tf.config.experimental.enable_tensor_float_32_execution(False)"},
        {"check": "dtype policy", "state": keras.config.dtype_policy().name,
         "risk": "mixed precision rounding dominates other effects", "fix": "compare at the policy's precision"},
    ]
    for layer in model.layers:
        if type(layer).__name__ in _RANDOM_LAYERS and getattr(layer, "seed", None) is None:
            checks.append({"check": f"unseeded random layer {layer.name}", "state": type(layer).__name__,
                           "risk": "a different random mask or noise on every call",
                           "fix": f"pass seed=... to {type(layer).__name__}"})
    return checks


def _loss(name: str) -> Any:
    try:
        return keras.losses.get(name)
    except ValueError:
        raise UsageError(f"Invalid value for argument `--loss`. Received {name!r}; expected a Keras loss name "
                         "such as mse or categorical_crossentropy.") from None


def _inputs(model: keras.Model, input_shape: list[int] | None, inputs: np.ndarray | None, seed: int) -> np.ndarray:
    expected = tuple(model.inputs[0].shape) if getattr(model, "inputs", None) else None
    if inputs is None:
        if input_shape is None:
            if expected is None or any(d is None for d in expected[1:]):
                raise UsageError("the model's input shape is not fully known: pass --input-shape B,H,W,C.")
            input_shape = [2, *expected[1:]]
        dtype = model.inputs[0].dtype if getattr(model, "inputs", None) else "float32"
        inputs = np.random.default_rng([seed, 0]).standard_normal(input_shape).astype(dtype)
    if expected is not None:
        received = tuple(inputs.shape)
        if len(received) != len(expected) or any(e is not None and e != r for e, r in zip(expected[1:], received[1:])):
            raise UsageError(f"input shape {list(received)} does not fit the model: expected "
                             f"{[d if d is not None else 'any' for d in expected]}.")
    return inputs


def audit_model(model: keras.Model, inputs: np.ndarray | None = None, targets: np.ndarray | None = None, *,
                input_shape: list[int] | None = None, loss: str = "mse", steps: int = 3, repeats: int = 3,
                seed: int = 0, xla: bool = False) -> AuditResult:
    """Audit ``model`` in this process (TensorFlow already imported). See the module docstring.

    Raises:
        UsageError: inputs that do not fit the model, an unknown loss.
    """
    keras.utils.set_random_seed(seed)
    x = _inputs(model, input_shape, inputs, seed)
    loss_fn = _loss(loss)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    try:
        tap = keras.Model(model.inputs, [layer.output for layer in layers])
    except Exception:  # noqa: BLE001 - subclassed models have no symbolic graph: build one by calling
        model(x)
        tap = keras.Model(model.inputs, [layer.output for layer in layers])
    if targets is None:
        y = tap(x)[-1]
        targets = np.random.default_rng([seed, 1]).standard_normal(tuple(y.shape)).astype(y.dtype.name)
    initial = [v.numpy() for v in model.weights]
    variables = model.trainable_variables

    @tf.function(jit_compile=xla)
    def train_step(x: tf.Tensor, t: tf.Tensor):
        with tf.GradientTape(persistent=True) as tape:
            outputs = tap(x, training=True)
            value = tf.reduce_mean(loss_fn(t, outputs[-1]))
        upstream = tape.gradient(value, outputs, unconnected_gradients="zero")
        grads = tape.gradient(value, variables, unconnected_gradients="zero")
        del tape
        return value, outputs, upstream, grads

    xt, tt = tf.constant(x), tf.constant(targets)
    records: list[dict[str, Any]] = []
    for _ in range(repeats):
        for v, value in zip(model.weights, initial):
            v.assign(value)
        optimizer = keras.optimizers.SGD(learning_rate=0.01)  # fresh state each repeat
        run: dict[str, Any] = {"loss": [], "outputs": None, "upstream": None, "grads": None}
        for s in range(steps):
            value, outputs, upstream, grads = train_step(xt, tt)
            optimizer.apply_gradients(zip(grads, variables))
            run["loss"].append(value.numpy())
            if s == 0:
                run["outputs"] = [o.numpy() for o in outputs]
                run["upstream"] = [u.numpy() for u in upstream]
                run["grads"] = [g.numpy() for g in grads]
        run["final"] = [v.numpy() for v in variables]
        records.append(run)
    return _summarize(model, layers, records, variables, initial, xla)


def _worst(first: list[np.ndarray], others: list[list[np.ndarray]]) -> list[dict[str, Any]]:
    out = []
    for i, reference in enumerate(first):
        results = [compare(other[i], reference, digest=False) for other in others]
        out.append({"equal": all(r.bitwise_equal for r in results), "max_ulp": max((r.max_ulp for r in results), default=0),
                    "n_mismatch": max((r.n_mismatch for r in results), default=0), "n_elements": int(reference.size)})
    return out


def _summarize(model: keras.Model, layers: list[Any], records: list[dict[str, Any]], variables: list[Any],
               initial: list[np.ndarray], xla: bool) -> AuditResult:
    first, rest = records[0], records[1:]
    forward = _worst(first["outputs"], [r["outputs"] for r in rest])
    upstream = _worst(first["upstream"], [r["upstream"] for r in rest])
    grads = _worst(first["grads"], [r["grads"] for r in rest])
    losses = _worst([np.asarray(v) for v in first["loss"]], [[np.asarray(v) for v in r["loss"]] for r in rest])
    owner = {id(v): layer for layer in layers for v in layer.trainable_variables}
    rows, culprit = [], None
    for index, layer in enumerate(layers):
        mine = [(v, grads[i]) for i, v in enumerate(variables) if owner.get(id(v)) is layer]
        forward_ok = forward[index]["equal"]
        backward_ok = all(g["equal"] for _, g in mine)
        input_ok = index == 0 or forward[index - 1]["equal"]
        upstream_ok = upstream[index]["equal"]
        max_ulp = max([forward[index]["max_ulp"], *(g["max_ulp"] for _, g in mine)])
        row = {"layer": layer.name, "class": type(layer).__name__, "forward": "ok" if forward_ok else "DIFFERS",
               "backward": "ok" if backward_ok else "DIFFERS", "max_ulp": max_ulp,
               "first_step": None if forward_ok and backward_ok else 1}
        rows.append(row)
        if culprit is None and not forward_ok and input_ok:
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": "forward output"}
        if culprit is None and forward_ok and input_ok and upstream_ok and not backward_ok:
            tensor = next(v.name for v, g in mine if not g["equal"])
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": f"{tensor} gradient"}
        if culprit is None and upstream_ok and index > 0 and not upstream[index - 1]["equal"] and forward_ok:
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": "input gradient"}
    reproducible = all(item["equal"] for group in (forward, upstream, grads, losses) for item in group) and \
        all(_worst(first["final"], [r["final"] for r in rest])[i]["equal"] for i in range(len(first["final"])))
    return AuditResult(
        verdict="REPRODUCIBLE" if reproducible else "NONDETERMINISTIC",
        layers=rows,
        losses=[{"step": i + 1, **item} for i, item in enumerate(losses)],
        culprit=None if reproducible else culprit,
        checks=environment_checks(model, {"xla": "on" if xla else "off"}),
        digests={"initial_weights": digest(np.concatenate([w.reshape(-1).astype(np.float64) for w in initial])
                                           if initial else np.zeros(0)),
                 "first_step_outputs": digest(np.concatenate([o.reshape(-1).astype(np.float64)
                                                              for o in first["outputs"]])),
                 "final_weights": digest(np.concatenate([w.reshape(-1).astype(np.float64) for w in first["final"]])
                                         if first["final"] else np.zeros(0))},
    )


def assert_deterministic(fn: Any, *args: Any, repeats: int = 3, **kwargs: Any) -> None:
    """Call ``fn(*args, **kwargs)`` ``repeats`` times and assert every output is bit-identical.

    Raises:
        AssertionError: naming the output that differs, how many elements, and the
            greatest ULP and absolute differences with their index, in the manner of
            torch.testing.assert_close ("Mismatched elements: X / Y (Z%)").
    """
    from detaudit.core.numerics import ulp_distance

    def flat(value: Any) -> list[np.ndarray]:
        return [np.asarray(v.numpy() if hasattr(v, "numpy") else v) for v in tf.nest.flatten(value)]

    first = flat(fn(*args, **kwargs))
    for call in range(2, repeats + 1):
        again = flat(fn(*args, **kwargs))
        for index, (a, b) in enumerate(zip(first, again)):
            result = compare(b, a, digest=False)
            if result.bitwise_equal:
                continue
            ulps = ulp_distance(b, a)
            where = np.unravel_index(int(np.argmax(ulps)), a.shape) if a.ndim else ()
            gaps = np.abs(b.astype(np.float64) - a.astype(np.float64))
            where_abs = np.unravel_index(int(np.nanargmax(gaps)), a.shape) if a.ndim else ()
            raise AssertionError(
                f"Output {index} of {len(first)} (shape {tuple(a.shape)}, {a.dtype}) differs between call 1 "
                f"and call {call}.\n"
                f"Mismatched elements: {result.n_mismatch} / {result.n_elements} "
                f"({100 * result.n_mismatch / max(result.n_elements, 1):.1f}%)\n"
                f"Greatest ULP difference: {result.max_ulp} at index {tuple(int(i) for i in where)}\n"
                f"Greatest absolute difference: {result.max_abs:.6g} at index {tuple(int(i) for i in where_abs)}")


def audit_probe(payload: dict[str, Any]) -> dict[str, Any]:
    """The worker side of ``detaudit audit``: load, audit, and return plain data (or the bad-input message)."""
    from detaudit.engine.fingerprint import tensorflow_fingerprint

    device = payload.get("device", "cpu")
    if device.startswith("gpu"):
        index = int(device.partition(":")[2] or 0)
        if index >= len(tf.config.list_logical_devices("GPU")):
            return {"bad_input": f"--device {device}: no such GPU visible to TensorFlow on this machine."}
    try:
        with tf.device("/CPU:0" if device == "cpu" else f"/GPU:{device.partition(':')[2] or 0}"):
            keras.utils.set_random_seed(payload.get("seed", 0))  # a factory's initial weights come from the seed
            model = load_model(payload["model"], payload.get("unsafe", False))
            inputs = np.load(payload["inputs"]) if payload.get("inputs") else None
            targets = np.load(payload["targets"]) if payload.get("targets") else None
            result = audit_model(model, inputs, targets, input_shape=payload.get("input_shape"),
                                 loss=payload.get("loss", "mse"), steps=payload.get("steps", 3),
                                 repeats=payload.get("repeats", 3), seed=payload.get("seed", 0),
                                 xla=payload.get("xla") == "on")
    except UsageError as exc:
        return {"bad_input": str(exc)}
    except (OSError, ValueError) as exc:
        return {"bad_input": one_line(exc)}
    return {**result.to_dict(), "tensorflow": tensorflow_fingerprint()}
