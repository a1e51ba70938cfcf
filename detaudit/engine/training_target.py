"""The user's training as written: a fresh model and data for every execution (imports TensorFlow: workers only).

A :class:`Target` knows where the training comes from (a ``module:function``
factory returning a model or a ``(model, data)`` pair, or a ``.keras`` file with
``--inputs``/``--targets`` arrays or a synthetic batch) and builds a fresh
:class:`Training` from it on each call of :meth:`Target.build`, after resetting
every seed. So each execution starts where a rerun of the script would: new
weights drawn from the same seed, new optimizers, every Keras ``SeedGenerator``
and tf.data seed drawn again, and traced functions (with their stateful random
kernels) made anew.
"""

from __future__ import annotations

import dataclasses
import importlib
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.errors import UsageError, one_line

__all__ = ["MAX_INPUT_BYTES", "Target", "Training", "reset_seeds"]

MAX_INPUT_BYTES = 4 << 30  # a synthetic batch beyond 4 GiB is a typo in --input-shape, not an audit
SYNTHETIC_LR = 0.01


def reset_seeds(seed: int) -> None:
    """Every seed a rerun of the script resets: Python, NumPy, TensorFlow (and its op-seed counter), Keras' global
    SeedGenerator (``keras.utils.set_random_seed`` drops it, so it is drawn again from the seed)."""
    keras.utils.set_random_seed(seed)


@dataclasses.dataclass
class Training:
    """One fresh instance of the training: the model (compiled), its data, and how it was set up."""

    model: keras.Model
    dataset: tf.data.Dataset
    compiled_by_user: bool
    synthetic: str | None  # the one line that says what detaudit made up, for an uncompiled model

    def batches(self) -> Iterator[Any]:
        """The batches in order, epoch after epoch (a new iterator per epoch, as ``fit`` does)."""
        empty = True
        while True:
            for batch in self.dataset:
                empty = False
                yield batch
            if empty:
                raise UsageError("the training data yields no batch: the dataset is empty.")


class Target:
    """Where the training comes from; :meth:`build` makes a fresh instance of it."""

    def __init__(self, spec: str, *, unsafe: bool = False, inputs: str | None = None, targets: str | None = None,
                 input_shape: list[int] | None = None, loss: str = "mse", batch_size: int = 32, seed: int = 0):
        self.spec, self.unsafe, self.seed = spec, unsafe, seed
        self.input_shape, self.loss, self.batch_size = input_shape, loss, batch_size
        self.inputs = _load_arrays(inputs, "--inputs") if inputs else None
        self.targets = _load_arrays(targets, "--targets") if targets else None

    def build(self) -> Training:
        """A fresh model and dataset, seeds reset first. Raises UsageError for what the user passed."""
        reset_seeds(self.seed)
        model, data = self._model_and_data()
        compiled = getattr(model, "optimizer", None) is not None and getattr(model, "compiled", False)
        synthetic = None
        if data is None:
            if isinstance(self.inputs, np.ndarray) and _input_specs(model):
                _check_shape(list(self.inputs.shape), _input_specs(model)[0][1], "--inputs")
            x = self.inputs if self.inputs is not None else _synthetic_inputs(model, self.input_shape, self.seed)
            data = (x, self.targets) if self.targets is not None else (x, self._random_targets(model, x))
        if not compiled:
            synthetic = self._synthetic_step(model, data)
        return Training(model, _as_dataset(data, self.batch_size), compiled, synthetic)

    def _random_targets(self, model: keras.Model, x: Any) -> np.ndarray:
        """Seeded standard-normal targets shaped as the model's output."""
        prediction = _call_model(model, _first_batch(x, self.batch_size))
        if isinstance(prediction, (list, tuple, dict)):
            raise UsageError("the model has several outputs: pass --targets (an .npz named as its outputs), or a "
                             "factory returning (model, data).")
        y = np.random.default_rng([self.seed, 1]).standard_normal((_rows(x), *prediction.shape[1:]))
        return y.astype(getattr(prediction.dtype, "name", None) or "float32")

    def _model_and_data(self) -> tuple[keras.Model, Any]:
        if callable(self.spec) or (":" in self.spec and not Path(self.spec).exists()):
            returned = _call_factory(self.spec)
            if isinstance(returned, keras.Model):
                return returned, None
            if isinstance(returned, tuple) and len(returned) == 2 and isinstance(returned[0], keras.Model):
                return returned
            raise UsageError(f"{self.spec}() returned {_describe(returned)}; expected a Keras model or a "
                             "(model, data) pair, where data is what model.fit takes (a tf.data.Dataset, an (x, y) "
                             "tuple of arrays, or dicts for named inputs).")
        return load_model_file(self.spec, self.unsafe), None

    def _synthetic_step(self, model: keras.Model, data: Any) -> str:
        """Compile an uncompiled model with SGD and ``loss``; say so in one line."""
        try:
            loss = keras.losses.get(self.loss)
        except ValueError:
            raise UsageError(f"Invalid value for argument `--loss`. Expected a Keras loss name such as mse or "
                             f"categorical_crossentropy. Received loss={self.loss[:80]!r}.") from None
        model.compile(optimizer=keras.optimizers.SGD(learning_rate=SYNTHETIC_LR), loss=loss)
        about = "the given targets" if self.targets is not None else "seeded random targets"
        return (f"the model is not compiled: detaudit trains it with SGD(learning_rate={SYNTHETIC_LR}) on {self.loss} "
                f"against {about}; compile it in your factory to audit your own optimizer and loss")


def _call_factory(spec: Any) -> Any:
    if callable(spec):
        factory, spec = spec, getattr(spec, "__qualname__", "the factory")
    else:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except Exception as exc:  # noqa: BLE001 - ImportError, AttributeError, or the module's own error
            raise UsageError(f"cannot import the model factory {spec!r}: {one_line(exc)}") from None
    if not callable(factory):
        raise UsageError(f"{spec} is not callable ({type(factory).__name__}); expected a function returning a "
                         "Keras model or a (model, data) pair.")
    try:
        return factory()
    except SystemExit as exc:
        raise UsageError(f"{spec}() called sys.exit({exc.code!r}): a factory must return the model, not exit.") \
            from None
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: their code, their message
        raise UsageError(f"{spec}() raised {one_line(exc)}") from None


def _describe(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a tuple of {len(value)} ({', '.join(type(v).__name__ for v in value[:4])})"
    return type(value).__name__


def load_model_file(spec: str, unsafe: bool) -> keras.Model:
    """A .keras archive, in safe mode unless ``unsafe``, compiled as saved. Raises UsageError."""
    path = Path(spec)
    if not path.exists():
        raise UsageError(f"{spec}: no such model file or directory.")
    if path.is_dir():
        raise UsageError(f"{spec}: a SavedModel directory cannot be trained as a Keras 3 model; save it as .keras "
                         "(model.save('model.keras')) or pass a module:function factory.")
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{spec}: not a .keras model archive (a .keras file is a zip archive; this file is not). "
                         "Save the model with model.save('model.keras').")
    try:
        return keras.saving.load_model(path, safe_mode=not unsafe)
    except Exception as exc:  # noqa: BLE001 - every loading failure is the user's file
        text = one_line(exc)
        if "safe_mode" in text or "unsafe" in text.lower() or "lambda" in text.lower():
            raise UsageError(f"{spec}: the model holds code (a Lambda layer) that safe mode will not load; "
                             "pass --unsafe if you trust this file.") from None
        raise UsageError(f"{spec}: cannot load the model: {text}") from None


def _load_arrays(path: str, option: str) -> Any:
    """An .npy array, or the named arrays of an .npz (a dict: named model inputs; one array: itself)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{option} {path}: not a NumPy .npy or .npz file without pickled objects "
                         f"({one_line(exc)}).") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            try:
                arrays = {name: loaded[name] for name in loaded.files}  # each member is read (and checked) here
            except (OSError, ValueError, EOFError) as exc:
                raise UsageError(f"{option} {path}: an array of the .npz cannot be read without pickled objects "
                                 f"({one_line(exc)}).") from None
        if not arrays:
            raise UsageError(f"{option} {path}: the .npz archive holds no array.")
        return next(iter(arrays.values())) if len(arrays) == 1 else arrays
    return loaded


def _input_specs(model: keras.Model) -> list[tuple[str, tuple[Any, ...], str]]:
    inputs = getattr(model, "inputs", None) or []
    return [(getattr(t, "name", f"input_{i}"), tuple(t.shape), str(getattr(t.dtype, "name", t.dtype)))
            for i, t in enumerate(inputs)]


def _synthetic_inputs(model: keras.Model, input_shape: list[int] | None, seed: int) -> Any:
    """A seeded standard-normal batch for each model input (``--input-shape`` gives the first input's shape)."""
    specs = _input_specs(model)
    if not specs and input_shape is None:
        raise UsageError("the model's input shape is not known: pass --input-shape B,H,W,C or build the model "
                         "with keras.Input.")
    arrays = []
    for index, (name, shape, dtype) in enumerate(specs or [("input", (None, *input_shape[1:]), "float32")]):
        wanted = list(input_shape) if (input_shape and index == 0) else [2, *shape[1:]]
        if input_shape and index == 0 and specs:
            _check_shape(wanted, shape, "--input-shape")
        if any(d is None for d in wanted):
            raise UsageError(f"the shape of model input {name!r} is not fully known ({list(shape)}): pass "
                             "--input-shape B,H,W,C, or data from the factory.")
        size = int(np.prod(wanted, dtype=np.float64)) * np.dtype(dtype if dtype != "string" else "float32").itemsize
        if size > MAX_INPUT_BYTES:
            raise UsageError(f"Invalid value for argument `--input-shape`. {wanted} needs {size / 2**30:.1f} GiB; "
                             f"at most {MAX_INPUT_BYTES >> 30} GiB is allowed for a synthetic batch.")
        if wanted[0] < 1:
            raise UsageError(f"Invalid value for argument `--input-shape`. Expected a batch of at least 1. "
                             f"Received {wanted}.")
        arrays.append(np.random.default_rng([seed, 0, index]).standard_normal(wanted).astype(dtype))
    return arrays[0] if len(arrays) == 1 else {name: array for (name, _, _), array in zip(specs, arrays)}


def _check_shape(received: list[int], expected: tuple[Any, ...], option: str) -> None:
    if len(received) != len(expected) or any(e is not None and e != r for e, r in zip(expected[1:], received[1:])):
        raise UsageError(f"Invalid value for argument `{option}`. The shape {list(received)} does not fit the "
                         f"model: expected {[d if d is not None else 'any' for d in expected]}.")


def _rows(x: Any) -> int:
    first = next(iter(x.values())) if isinstance(x, dict) else x
    return int(np.shape(first)[0])


def _first_batch(x: Any, batch_size: int) -> Any:
    if isinstance(x, dict):
        return {k: np.asarray(v)[:batch_size] for k, v in x.items()}
    return np.asarray(x)[:batch_size]


def _call_model(model: keras.Model, x: Any) -> Any:
    try:
        return model(x, training=False)
    except Exception as exc:  # noqa: BLE001 - the data does not fit the model: the user's input
        raise UsageError(f"the data does not fit the model: {one_line(exc)}") from None


def _as_dataset(data: Any, batch_size: int) -> tf.data.Dataset:
    """What ``model.fit`` takes, as a dataset: a Dataset as it is; arrays (tuples, dicts) batched in order."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (np.ndarray, tf.Tensor, dict, tuple, list)):
        try:
            if isinstance(data, list):
                data = tuple(data)
            return tf.data.Dataset.from_tensor_slices(data).batch(batch_size)
        except (ValueError, TypeError, tf.errors.OpError) as exc:
            raise UsageError(f"the training data cannot be batched: {one_line(exc)}") from None
    raise UsageError(f"the training data is a {type(data).__name__}; expected what model.fit takes: a "
                     "tf.data.Dataset, an (x, y) tuple of arrays, or dicts for named inputs.")
