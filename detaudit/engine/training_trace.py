"""One execution of a user's training, step by step, with what each step computed (imports TensorFlow).

The step is the model's own ``train_step`` (Keras' default, or the user's: a
GAN's with two optimizers runs unchanged), compiled as ``fit`` compiles it. While
it is traced, hooks record every leaf layer's output (layers nested in
Sequential or Functional blocks included, named by their path: ``up1/dropout``)
and the gradients every optimizer receives, so one traced function returns the
step's logs and those tensors. After each step the variables are read.

Each recorded tensor is kept as a 64-bit fingerprint per step (so the first
step where anything differs shows) and, within a memory budget, as the array
itself (for ULP figures).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.core.audit_outcome import Stage
from detaudit.engine import channel
from detaudit.engine.pipeline_scan import STATEFUL_RANDOM_OPS
from detaudit.engine.training_target import Training

__all__ = ["Execution", "Recorded", "find_optimizers", "layer_paths", "random_layers", "run_execution"]

KEEP_BYTES = 256 << 20  # arrays kept per execution for ULP figures; beyond it, fingerprints only

# Keras layers that draw random numbers when training (their SeedGenerator decides the draws).
_RANDOM_CLASSES = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise",
                   "GaussianDropout", "AlphaDropout", "RandomFlip", "RandomRotation", "RandomZoom", "RandomCrop",
                   "RandomTranslation", "RandomContrast", "RandomBrightness")



def layer_paths(model: keras.Layer, prefix: str = "") -> list[tuple[str, keras.Layer]]:
    """Every layer nested in ``model``, depth first, with its path (``up1/dropout``); input layers left out."""
    found = []
    for layer in model._flatten_layers(include_self=False, recursive=False):  # noqa: SLF001 - Keras' own walk
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = f"{prefix}{layer.name}"
        found.append((path, layer))
        found.extend(layer_paths(layer, path + "/"))
    return found


def _is_leaf(layer: keras.Layer) -> bool:
    return not any(not isinstance(sub, keras.layers.InputLayer)
                   for sub in layer._flatten_layers(include_self=False, recursive=False))  # noqa: SLF001


def random_layers(model: keras.Model) -> list[dict[str, Any]]:
    """The layers that draw random numbers: path, class, and whether the user gave them a seed."""
    rows = []
    for path, layer in layer_paths(model):
        generators = getattr(layer, "_seed_generators", None) or []
        if type(layer).__name__ in _RANDOM_CLASSES or generators:
            seed = getattr(layer, "seed", None)
            rows.append({"path": path, "class": type(layer).__name__, "seeded": seed is not None})
    return rows


def find_optimizers(model: keras.Model) -> list[tuple[str, Any]]:
    """The model's optimizers: ``model.optimizer`` and any optimizer held as an attribute (a GAN's two)."""
    found: list[tuple[str, Any]] = []
    seen: set[int] = set()
    candidates = [("optimizer", getattr(model, "optimizer", None)), *sorted(vars(model).items())]
    for name, value in candidates:
        if isinstance(value, keras.optimizers.Optimizer) and id(value) not in seen:
            seen.add(id(value))
            found.append((name.lstrip("_"), value))
    return found


@dataclasses.dataclass
class Recorded:
    """What one step recorded: (stage, name) per tensor, in the order the step computed them."""

    keys: list[tuple[Stage, str]]


@dataclasses.dataclass
class Execution:
    """Everything one execution computed. ``hashes[key]`` holds one fingerprint per step."""

    keys: list[tuple[Stage, str]]
    hashes: dict[tuple[Stage, str], list[int]]
    arrays: dict[tuple[Stage, str], dict[int, np.ndarray]]  # by step index, while within KEEP_BYTES
    losses: list[dict[str, float]]
    final: list[np.ndarray]  # every model variable after the last step
    variable_names: list[str]
    checkpoint: list[np.ndarray] | None  # the state after step ``checkpoint_step`` (model and optimizers)
    random_ops: list[str]  # stateful random ops in the traced step: their state is in no checkpoint


def fingerprint(array: np.ndarray) -> int:
    """A 64-bit fingerprint of an array's bytes and shape."""
    data = np.ascontiguousarray(array)
    h = hashlib.blake2b(data.tobytes(), digest_size=8)
    h.update(repr((data.shape, data.dtype.str)).encode())
    return int.from_bytes(h.digest(), "little")


def _tensors_of(value: Any) -> list[Any]:
    return [t for t in tf.nest.flatten(value) if isinstance(t, (tf.Tensor, tf.Variable)) or hasattr(t, "value")]


def _install_hooks(training: Training, sink: list[tuple[Stage, str, Any]]) -> None:
    """Record each leaf layer's output and each optimizer's incoming gradients into ``sink`` while tracing."""
    for path, layer in layer_paths(training.model):
        if not _is_leaf(layer):
            continue
        original = layer.call

        def call(*args: Any, _original: Callable[..., Any] = original, _path: str = path, **kwargs: Any) -> Any:
            out = _original(*args, **kwargs)
            for i, tensor in enumerate(_tensors_of(out)):
                sink.append((Stage.FORWARD, _path if i == 0 else f"{_path}[{i}]", tensor))
            return out

        layer.call = call  # an instance attribute: Layer.__call__ looks `call` up on the instance first
    names = {id(v): v.path for v in training.model.variables}
    for opt_name, optimizer in find_optimizers(training.model):
        original_apply = optimizer.apply

        def apply(grads: Any, variables: Any = None, _original: Callable[..., Any] = original_apply,
                  _name: str = opt_name) -> Any:
            pairs = list(zip(grads, variables if variables is not None else []))
            for grad, var in pairs:
                if grad is not None:
                    label = names.get(id(var), getattr(var, "path", getattr(var, "name", "?")))
                    sink.append((Stage.GRADIENTS, label, grad))
            return _original(grads, variables) if variables is not None else _original(grads)

        optimizer.apply = apply


def _step_function(training: Training, xla: bool) -> tuple[Callable[[Any], Any], list[tuple[Stage, str, Any]]]:
    sink: list[tuple[Stage, str, Any]] = []
    _install_hooks(training, sink)
    model = training.model

    def step(batch: Any) -> Any:
        sink.clear()
        logs = model.train_step(batch)
        tensors = {k: v for k, v in (logs or {}).items() if isinstance(v, (tf.Tensor, tf.Variable))}
        return tensors, [entry[2] for entry in sink]

    return tf.function(step, jit_compile=xla, reduce_retracing=True), sink


def _batch_arrays(batch: Any) -> list[np.ndarray]:
    return [np.asarray(t) for t in tf.nest.flatten(batch)]


def _state(training: Training) -> list[Any]:
    """The variables a checkpoint holds: the model's (weights and SeedGenerator states) and each optimizer's."""
    variables = list(training.model.variables)
    for _, optimizer in find_optimizers(training.model):
        variables.extend(optimizer.variables)
    return variables


def run_execution(training: Training, *, steps: int, xla: bool, label: str, checkpoint_step: int | None = None,
                  restore: tuple[list[np.ndarray], int] | None = None) -> Execution:
    """Train ``steps`` steps of a fresh ``training`` and record each; see the module docstring.

    ``checkpoint_step``: keep the state after that step (to resume from). ``restore``: a state and the step it
    was taken at: start from it (optimizers built to match) and skip that many batches, as a resumed job does.
    """
    step_fn, sink = _step_function(training, xla)
    start = 0
    batches: Iterator[Any] = training.batches()
    if restore is not None:
        state, start = restore
        for _ in range(start):
            next(batches)
    run = Execution([], {}, {}, [], [], [v.path for v in training.model.variables], None, [])
    kept = 0
    for step in range(start, steps):
        channel.progress(label, step + 1, steps)
        batch = next(batches)
        if step == start and restore is not None:
            # Tracing the step creates the optimizers' variables (they are built in their first step) without
            # running it: the checkpoint then overwrites every variable it holds, and the kernels start fresh,
            # as in a resumed process.
            step_fn.get_concrete_function(batch)
            _restore(training, restore[0])
        logs, recorded = step_fn(batch)
        entries = [((Stage.DATA, f"batch[{i}]"), a) for i, a in enumerate(_batch_arrays(batch))]
        entries += [((stage, name), np.asarray(t)) for (stage, name, _), t in zip(sink, recorded)]
        entries += [((Stage.LOSS, name), np.asarray(v)) for name, v in sorted(logs.items())]
        entries += [((Stage.UPDATE, v.path), v.numpy()) for v in training.model.trainable_variables]
        seen: dict[tuple[Stage, str], int] = {}
        for key, array in entries:
            # A layer called twice in one step (a GAN's discriminator) records twice: the second is `name#2`.
            seen[key] = seen.get(key, 0) + 1
            if seen[key] > 1:
                key = (key[0], f"{key[1]}#{seen[key]}")
            if key not in run.hashes:
                run.keys.append(key)
                run.hashes[key] = [0] * (step - start)
                run.arrays[key] = {}
            run.hashes[key].append(fingerprint(array))
            if kept + array.nbytes <= KEEP_BYTES:
                run.arrays[key][step - start] = np.array(array)
                kept += array.nbytes
        if step == start:
            graph = step_fn.get_concrete_function(batch).graph
            run.random_ops = sorted({op.type for op in graph.get_operations() if op.type in STATEFUL_RANDOM_OPS})
        run.losses.append({name: float(np.asarray(v).reshape(-1)[0]) for name, v in sorted(logs.items())
                           if np.asarray(v).size})
        if checkpoint_step is not None and step + 1 == checkpoint_step:
            run.checkpoint = [v.numpy() for v in _state(training)]
    run.final = [v.numpy() for v in training.model.variables]
    return run


def _restore(training: Training, state: list[np.ndarray]) -> None:
    """Assign a checkpoint's values to this instance's model and optimizer variables, position by position."""
    variables = _state(training)
    if len(variables) != len(state):
        raise RuntimeError(f"the resumed training has {len(variables)} variables, the checkpoint {len(state)}")
    for variable, value in zip(variables, state):
        variable.assign(value)
