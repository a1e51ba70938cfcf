"""What the JAX and PyTorch passes share: the seeded layer, built through Keras alone, and the adjoint test.

Imported only in a worker whose ``KERAS_BACKEND`` is already set. The values
are drawn exactly as :class:`detaudit.engine.standalone.Case` draws them for
TensorFlow (the same NumPy streams, the same casts), so every backend starts
from the same bits and only the computation differs.
"""

from __future__ import annotations

from typing import Any

import keras
import ml_dtypes  # noqa: F401 - registers bfloat16 with NumPy for the casts below
import numpy as np

from detaudit.engine.standalone import BUILDERS, seeded_values, tensor_names

__all__ = ["SeededLayer", "adjoint_gap", "device_results", "host_copy", "to_tensor"]


def to_tensor(values: np.ndarray, dtype: str) -> Any:
    """A framework tensor of ``dtype`` holding ``values`` exactly (16-bit values are exact in float32)."""
    return keras.ops.convert_to_tensor(values.astype(np.float32) if dtype == "bfloat16" else values, dtype=dtype)


def host_copy(tensor: Any) -> np.ndarray:
    """A tensor's bits as a NumPy array of its own dtype (bfloat16 included), read-only."""
    array = np.asarray(keras.ops.convert_to_numpy(tensor))
    dtype = keras.backend.standardize_dtype(tensor.dtype)
    if array.dtype.name != dtype:  # a backend that hands bfloat16 back as float32: exact, so cast back
        array = array.astype(dtype)
    array.flags.writeable = False
    return array


def device_results(state: list[Any]) -> list[tuple[int, Any]]:
    """Per tensor, (repeats that differed from the first, the worst of them on the host or None), from a device
    pass's state: per tensor (first bits, first key, worst repeat, its gap, count). Reading the counts is the
    cell's one wait for the device; a tensor is copied to the host only when a repeat differed."""
    counts = [int(s[4]) for s in state]
    return [(n, host_copy(s[2]) if n else None) for n, s in zip(counts, state)]


class SeededLayer:
    """The cell's layer under the current dtype policy, with seeded weights, input and upstream gradient."""

    def __init__(self, builder: str, kind: str, params: dict[str, Any], input_shape: list[int], seed: int):
        if builder == "user_layer":
            keras.utils.set_random_seed(seed)  # a user layer may hold random ops of its own (Dropout, noise)
        self.layer = BUILDERS[builder](kind, params)
        policy = keras.config.dtype_policy()
        x_np = np.random.default_rng([seed, 0]).standard_normal(tuple(input_shape), dtype=np.float32)
        self.x = to_tensor(x_np.astype(policy.variable_dtype), policy.variable_dtype)
        y = self.layer(self.x)  # builds the weights
        rng = np.random.default_rng([seed, 1])  # each stream its own: adding a weight never shifts the input
        for variable in self.layer.trainable_variables:
            variable.assign(to_tensor(seeded_values(rng, tuple(variable.shape)).astype(variable.dtype), variable.dtype))
        self.output_shape = tuple(int(n) for n in y.shape)
        y_dtype = keras.backend.standardize_dtype(y.dtype)
        dy_np = np.random.default_rng([seed, 2]).standard_normal(self.output_shape, dtype=np.float32)
        self.upstream = to_tensor(dy_np.astype(y_dtype), y_dtype)
        self.variables = list(self.layer.trainable_variables)
        self.names = tensor_names(self.variables)


def adjoint_gap(x: Any, kernel: Any, z: np.ndarray, params: dict[str, Any]) -> dict[str, float]:
    """The dot-product test <conv(z, W), x> = <z, conv_transpose(x, W)> through ``keras.ops``, in x's dtype.

    The same measure as :func:`detaudit.engine.probes.adjoint_gap` (TensorFlow's ops there): dot products in
    float64 from the backend's outputs, the gap divided by |conv(z)|·|x| + |z|·|conv_transpose(x)| and the
    dtype's epsilon; ``reconstruction`` is |conv_transpose(conv(z)) - z| / |z|.
    """
    dtype = keras.backend.standardize_dtype(x.dtype)
    options = {"strides": tuple(params["strides"]), "padding": params["padding"],
               "dilation_rate": tuple(params["dilation_rate"])}
    padding = params.get("output_padding")
    transpose = {**options, "output_padding": None if padding is None else tuple(padding)}
    zt = to_tensor(z.astype(dtype), dtype)
    tx = keras.ops.conv_transpose(x, kernel, **transpose)
    cz = keras.ops.conv(zt, kernel, **options)
    back = keras.ops.conv_transpose(cz, kernel, **transpose)
    cz64, x64, z64, tx64, back64 = (host_copy(t).astype(np.float64) for t in (cz, x, zt, tx, back))
    if tx64.shape != z64.shape or back64.shape != z64.shape:
        raise ValueError(f"conv_transpose gives {list(tx64.shape)}, the layer's output is {list(z64.shape)}")
    gap = abs(np.vdot(cz64, x64) - np.vdot(z64, tx64))
    scale = np.linalg.norm(cz64) * np.linalg.norm(x64) + np.linalg.norm(z64) * np.linalg.norm(tx64)
    eps = float(ml_dtypes.finfo(np.dtype(dtype)).eps)
    return {"adjoint_eps": float(gap / scale / eps) if scale else 0.0,
            "reconstruction": float(np.linalg.norm(back64 - z64) / max(np.linalg.norm(z64), 1e-300))}
