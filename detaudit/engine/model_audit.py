"""Pre-training determinism audit of a user's Keras model (imports TensorFlow: workers and the Python API).

:func:`audit_model` runs ``repeats`` executions of ``steps`` training steps
from the same initial weights and data through the one repeat-and-compare
routine (:func:`detaudit.core.repeat.repeat_and_compare`: one "step" of it is
a whole training execution), compares every layer's forward output, every
upstream gradient and every variable's gradient bitwise and in ULPs, finds the
first training step where each layer differs, and localizes the first layer
that diverges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
import zipfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.core.axes import AXES
from detaudit.core.numerics import digest
from detaudit.core.repeat import TensorOutcome, repeat_and_compare
from detaudit.engine import channel
from detaudit.errors import UsageError, one_line

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
    """A .keras file or a ``module:function`` factory returning a Keras model.

    Raises:
        UsageError: missing file, not a .keras archive, unloadable model, or code in the file without ``unsafe``.
    """
    path = Path(spec)
    if ":" in spec and not path.exists():
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
            raise UsageError(f"cannot import the model factory {spec!r}: {one_line(exc)}") from None
        if not callable(factory):
            raise UsageError(f"{spec} is not callable ({type(factory).__name__}); expected a function returning a "
                             "Keras model.")
        try:
            model = factory()
        except Exception as exc:  # noqa: BLE001 - the user's factory failed: their code, their message
            raise UsageError(f"{spec}() raised {one_line(exc)}") from None
        if not isinstance(model, keras.Model):
            raise UsageError(f"{spec}() returned {type(model).__name__}, not a Keras model.")
        return model
    if not path.exists():
        raise UsageError(f"{spec}: no such model file or directory.")
    if path.is_dir():
        raise UsageError(f"{spec}: a SavedModel directory cannot be trained as a Keras 3 model; save it as .keras "
                         "(model.save('model.keras')) or pass a module:function factory.")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{spec}: not a .keras model archive (a .keras file is a zip archive; this file is not). "
                         "Save the model with model.save('model.keras').")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except Exception as exc:  # noqa: BLE001 - every loading failure is the user's file
        text = one_line(exc)
        if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
            raise UsageError(f"{spec}: the model holds code (a Lambda layer) that safe mode will not load; "
                             "pass --unsafe if you trust this file.") from None
        raise UsageError(f"{spec}: cannot load the model: {text}") from None


def _axis_state(name: str, settings: dict[str, Any]) -> str:
    """The axis' state in this process, by the expression its declaration gives."""
    from tensorflow.python.framework import (
        config as tf_config,  # is_op_determinism_enabled is internal
    )

    from detaudit.engine.fingerprint import onednn_state

    scope = {"tf": tf, "keras": keras, "os": os, "value": settings.get(name, AXES[name].default),
             "onednn_state": onednn_state, "op_determinism": tf_config.is_op_determinism_enabled}
    return str(eval(AXES[name].check.state, scope))  # noqa: S307 - detaudit's own declarations, not user text


def environment_checks(model: keras.Model, settings: dict[str, Any]) -> list[dict[str, str]]:
    """The settings that decide reproducibility (one per axis), each with its state, risk, fix and where it applies.

    ``applies`` is cpu, gpu or any; renderers show a row only where it applies
    to the devices present. Unseeded random layers of the model are added.
    """
    checks = [{"check": axis.check.title, "state": _axis_state(name, settings), "risk": axis.check.risk,
               "fix": axis.check.fix, "applies": axis.check.applies} for name, axis in AXES.items()]
    for layer in model.layers:
        if type(layer).__name__ in _RANDOM_LAYERS and getattr(layer, "seed", None) is None:
            checks.append({"check": f"unseeded random layer {layer.name}", "state": type(layer).__name__,
                           "risk": "a different random mask or noise on every call",
                           "fix": f"pass seed=... to {type(layer).__name__}", "applies": "any"})
    return checks


def _loss(name: str) -> Any:
    try:
        return keras.losses.get(name)
    except ValueError:
        raise UsageError(f"Invalid value for argument `--loss`. Expected a Keras loss name such as mse or "
                         f"categorical_crossentropy. Received loss={name!r}.") from None


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
            raise UsageError(f"Invalid value for argument `--input-shape`. The input shape {list(received)} does "
                             f"not fit the model: expected {[d if d is not None else 'any' for d in expected]}.")
    return inputs


def _tap(model: keras.Model, layers: list[Any], x: np.ndarray) -> keras.Model:
    """A model with every layer's output as an output (to compare each layer's forward pass)."""
    inputs = getattr(model, "inputs", None)
    if not inputs:  # a subclassed model has no symbolic graph until called
        model(x)
        inputs = model.inputs
    # One input is passed as a tensor, not a list of one: Keras warns when the structures differ.
    return keras.Model(inputs[0] if len(inputs) == 1 else inputs, [layer.output for layer in layers])


def _as_list(outputs: Any) -> list[Any]:
    """A tap's outputs as a list: a model with one layer returns its one output bare."""
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def _hash64(array: np.ndarray) -> np.uint64:
    """A 64-bit fingerprint of an array's bytes: one per training step, so the first differing step shows."""
    return np.frombuffer(hashlib.blake2b(np.ascontiguousarray(array).tobytes(), digest_size=8).digest(), np.uint64)[0]


def audit_model(model: keras.Model, inputs: np.ndarray | None = None, targets: np.ndarray | None = None, *,
                input_shape: list[int] | None = None, loss: str = "mse", steps: int = 3, repeats: int = 3,
                seed: int = 0, xla: bool = False, settings: dict[str, Any] | None = None) -> AuditResult:
    """Audit ``model`` in this process (TensorFlow already imported). See the module docstring.

    Raises:
        UsageError: inputs that do not fit the model, an unknown loss, bad counts.
    """
    for name, value, minimum in (("steps", steps, 1), ("repeats", repeats, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise UsageError(f"Invalid value for argument `{name}`. Expected an integer >= {minimum}. "
                             f"Received {name}={value!r}.")
    keras.utils.set_random_seed(seed)
    x = _inputs(model, input_shape, inputs, seed)
    if x.shape[0] == 0:
        raise UsageError("Invalid value for argument `--input-shape`. Expected a batch of at least 1. "
                         f"Received {list(x.shape)}.")
    loss_fn = _loss(loss)
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    tap = _tap(model, layers, x)
    if targets is None:
        y = _as_list(tap(x))[-1]
        targets = np.random.default_rng([seed, 1]).standard_normal(tuple(y.shape)).astype(y.dtype.name)
    initial = [v.numpy() for v in model.weights]
    variables = model.trainable_variables

    @tf.function(jit_compile=xla)
    def train_step(x: tf.Tensor, t: tf.Tensor) -> Any:
        with tf.GradientTape(persistent=True) as tape:
            outputs = _as_list(tap(x, training=True))
            value = tf.reduce_mean(loss_fn(t, outputs[-1]))
        upstream = tape.gradient(value, outputs, unconnected_gradients="zero")
        grads = tape.gradient(value, variables, unconnected_gradients="zero")
        del tape
        return value, outputs, upstream, grads

    xt, tt = tf.constant(x), tf.constant(targets)
    names = ([f"loss[{s + 1}]" for s in range(steps)] + [f"out:{layer.name}" for layer in layers]
             + [f"up:{layer.name}" for layer in layers] + [f"grad:{v.path}" for v in variables]
             + [f"final:{v.path}" for v in variables] + [f"steps:{layer.name}" for layer in layers])
    executions = [0]

    def execute() -> list[np.ndarray]:
        """One whole training execution from the initial weights: the repeat routine's "step"."""
        executions[0] += 1
        for v, value in zip(model.weights, initial):
            v.assign(value)
        optimizer = keras.optimizers.SGD(learning_rate=0.01)  # fresh state each execution
        losses, first, per_step = [], None, [[] for _ in layers]
        for s in range(steps):
            channel.progress(f"execution {executions[0]}/{repeats}", s + 1, steps)
            value, outputs, upstream, grads = train_step(xt, tt)
            optimizer.apply_gradients(zip(grads, variables))
            losses.append(np.asarray(value.numpy()))
            host_outputs = [o.numpy() for o in outputs]
            for i, out in enumerate(host_outputs):
                per_step[i].append(_hash64(out))
            if s == 0:
                first = (host_outputs, [u.numpy() for u in upstream], [g.numpy() for g in grads])
        assert first is not None
        return [*losses, *first[0], *first[1], *first[2], *(v.numpy() for v in variables),
                *(np.array(h, dtype=np.uint64) for h in per_step)]

    outcome = repeat_and_compare(execute, repeats, names=names, keep_first_difference=True)
    return _summarize(model, layers, variables, outcome.tensors, steps, initial, {**(settings or {}), "xla": "on" if xla else "off"})


def _first_step(hashes: TensorOutcome) -> int | None:
    if hashes.first_difference is None:
        return None
    _, later = hashes.first_difference
    return int(np.flatnonzero(later != hashes.first)[0]) + 1


def _summarize(model: keras.Model, layers: list[Any], variables: list[Any], tensors: list[TensorOutcome],
               steps: int, initial: list[np.ndarray], settings: dict[str, Any]) -> AuditResult:
    n_layers, n_vars = len(layers), len(variables)
    losses = tensors[:steps]
    forward = tensors[steps:steps + n_layers]
    upstream = tensors[steps + n_layers:steps + 2 * n_layers]
    grads = tensors[steps + 2 * n_layers:steps + 2 * n_layers + n_vars]
    final = tensors[steps + 2 * n_layers + n_vars:steps + 2 * n_layers + 2 * n_vars]
    per_step = tensors[steps + 2 * n_layers + 2 * n_vars:]
    owner = {id(v): layer for layer in layers for v in layer.trainable_variables}
    rows, culprit = [], None
    for index, layer in enumerate(layers):
        mine = [(v, grads[i]) for i, v in enumerate(variables) if owner.get(id(v)) is layer]
        # Localization uses the first step's tensors: later steps inherit every earlier difference.
        forward_ok = forward[index].bitwise_equal
        backward_ok = all(g.bitwise_equal for _, g in mine)
        input_ok = index == 0 or forward[index - 1].bitwise_equal
        upstream_ok = upstream[index].bitwise_equal
        ulps = [t.comparison.max_ulp for t in (forward[index], *(g for _, g in mine)) if t.comparison]
        first_step = _first_step(per_step[index])
        if first_step is None and not backward_ok:
            first_step = 1  # the first step's gradients differ
        # forward/backward: at the first step; first_step: the first step where the layer differs at all.
        rows.append({"layer": layer.name, "class": type(layer).__name__,
                     "forward": "ok" if forward_ok else "DIFFERS", "backward": "ok" if backward_ok else "DIFFERS",
                     "max_ulp": max(ulps, default=0), "first_step": first_step})
        if culprit is None and not forward_ok and input_ok:
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": "forward output"}
        if culprit is None and forward_ok and input_ok and upstream_ok and not backward_ok:
            tensor = next(v.name for v, g in mine if not g.bitwise_equal)
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": f"{tensor} gradient"}
        if culprit is None and upstream_ok and index > 0 and not upstream[index - 1].bitwise_equal and forward_ok:
            culprit = {"layer": layer.name, "class": type(layer).__name__, "tensor": "input gradient"}
    if culprit is None:  # the first step agrees everywhere: the earliest layer to differ at a later step
        later = [r for r in rows if r["first_step"]]
        if later:
            row = min(later, key=lambda r: r["first_step"])
            culprit = {"layer": row["layer"], "class": row["class"], "tensor": f"forward output at step {row['first_step']}"}
    reproducible = all(t.bitwise_equal for t in tensors)
    first_outputs = [t.first for t in forward]
    flat = lambda arrays: np.concatenate([a.reshape(-1).astype(np.float64) for a in arrays]) if arrays \
        else np.zeros(0)  # noqa: E731
    return AuditResult(
        verdict="REPRODUCIBLE" if reproducible else "NONDETERMINISTIC",
        layers=rows,
        losses=[{"step": i + 1, "equal": t.bitwise_equal, "max_ulp": t.comparison.max_ulp if t.comparison else 0,
                 "value": float(t.first)} for i, t in enumerate(losses)],
        culprit=None if reproducible else culprit,
        checks=environment_checks(model, settings),
        digests={"initial_weights": digest(flat(initial)), "first_step_outputs": digest(flat(first_outputs)),
                 "final_weights": digest(flat([t.first for t in final]))},
    )


def audit_probe(payload: dict[str, Any]) -> dict[str, Any]:
    """The worker side of ``detaudit audit``: load, audit, and return plain data (or the bad-input message)."""
    from detaudit.engine.fingerprint import tensorflow_fingerprint
    from detaudit.engine.standalone import device_name

    device = payload.get("device", "cpu")
    if device.startswith("gpu"):
        index = int(device.partition(":")[2] or 0)
        if index >= len(tf.config.list_logical_devices("GPU")):
            return {"bad_input": f"Invalid value for argument `--device`. Received {device!r}: no such GPU visible "
                                 "to TensorFlow on this machine."}
    try:
        with tf.device(device_name(device)):
            channel.progress("loading the model")
            keras.utils.set_random_seed(payload.get("seed", 0))  # a factory's initial weights come from the seed
            model = load_model(payload["model"], payload.get("unsafe", False))
            inputs = np.load(payload["inputs"]) if payload.get("inputs") else None
            targets = np.load(payload["targets"]) if payload.get("targets") else None
            result = audit_model(model, inputs, targets, input_shape=payload.get("input_shape"),
                                 loss=payload.get("loss", "mse"), steps=payload.get("steps", 3),
                                 repeats=payload.get("repeats", 3), seed=payload.get("seed", 0),
                                 xla=payload.get("xla") == "on", settings=payload.get("settings"))
    except UsageError as exc:
        return {"bad_input": str(exc)}
    except (OSError, ValueError) as exc:
        return {"bad_input": one_line(exc)}
    return {**result.to_dict(), "tensorflow": tensorflow_fingerprint(),
            "gpus_visible": len(tf.config.list_logical_devices("GPU"))}
