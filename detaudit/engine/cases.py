"""Layer specs -> a built layer, its input and an upstream gradient, all from a seed.

Imported only inside worker processes (it imports TensorFlow). Weights, inputs
and upstream gradients are drawn with NumPy from the seed, not with TensorFlow's
random ops, so they are bit-identical across devices, precisions, processes and
TensorFlow versions; the only thing left to differ is the computation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.core import reference
from detaudit.core.config import KERAS_KINDS, RAW_KINDS, RESIZE_KINDS, LayerSpec

__all__ = ["Case", "build_case", "import_layer"]

_RAW_FORMATS = {
    (1, "channels_last"): "NWC", (1, "channels_first"): "NCW",
    (2, "channels_last"): "NHWC", (2, "channels_first"): "NCHW",
    (3, "channels_last"): "NDHWC", (3, "channels_first"): "NCDHW",
}
_RAW_OPS: dict[int, Callable[..., tf.Tensor]] = {
    1: tf.nn.conv1d_transpose, 2: tf.nn.conv2d_transpose, 3: tf.nn.conv3d_transpose,
}


class RawConvTranspose(keras.layers.Layer):
    """``tf.nn.convNd_transpose`` with an explicit ``output_shape``, plus an optional ``tf.nn.bias_add``.

    A Keras layer only so that it picks up the dtype policy (mixed precision
    autocasts the kernel) like every other layer under test.
    """

    def __init__(self, rank: int, filters: int, kernel_size: list[int], strides: list[int],
                 padding: str, dilation_rate: list[int], data_format: str, use_bias: bool,
                 output_shape: list[int] | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.rank, self.filters, self.kernel_size = rank, filters, list(kernel_size)
        self.strides, self.padding, self.dilation_rate = list(strides), padding, list(dilation_rate)
        self.data_format, self.use_bias = data_format, use_bias
        self.explicit_output_shape = output_shape

    def build(self, input_shape: tuple[int, ...]) -> None:
        channels = input_shape[-1] if self.data_format == "channels_last" else input_shape[1]
        # tf.nn transposed convolutions take filters as [*spatial, out_channels, in_channels].
        self.kernel = self.add_weight(name="kernel", shape=(*self.kernel_size, self.filters, channels))
        self.bias = self.add_weight(name="bias", shape=(self.filters,)) if self.use_bias else None

    def output_shape_for(self, input_shape: tuple[int, ...]) -> list[int]:
        if self.explicit_output_shape is not None:
            return list(self.explicit_output_shape)
        last = self.data_format == "channels_last"
        spatial = input_shape[1:-1] if last else input_shape[2:]
        lengths = [reference.output_length(n, k, s, self.padding, d)
                   for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)]
        return [input_shape[0], *lengths, self.filters] if last else [input_shape[0], self.filters, *lengths]

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        data_format = _RAW_FORMATS[(self.rank, self.data_format)]
        outputs = _RAW_OPS[self.rank](
            inputs, self.kernel, output_shape=self.output_shape_for(tuple(inputs.shape)),
            strides=self.strides, padding=self.padding.upper(), data_format=data_format,
            dilations=self.dilation_rate,
        )
        if self.bias is not None:
            outputs = tf.nn.bias_add(outputs, self.bias, data_format="N..C" if data_format.endswith("C") else "NC..")
        return outputs


class ResizeConv2D(keras.layers.Layer):
    """The resize-convolution alternative to a strided transpose: UpSampling2D then Conv2D."""

    def __init__(self, filters: int, kernel_size: list[int], size: list[int], interpolation: str,
                 padding: str, data_format: str, use_bias: bool, **kwargs: Any):
        super().__init__(**kwargs)
        self.upsample = keras.layers.UpSampling2D(size=tuple(size), interpolation=interpolation,
                                                  data_format=data_format)
        self.conv = keras.layers.Conv2D(filters, tuple(kernel_size), padding=padding,
                                        data_format=data_format, use_bias=use_bias)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return self.conv(self.upsample(inputs))


def import_layer(path: str) -> Any:
    """Import ``package.module:Attr`` (the only code a config can name)."""
    module_name, _, attr = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    return target


def _make_layer(spec: LayerSpec) -> keras.layers.Layer:
    params = spec.params
    if spec.kind in KERAS_KINDS:
        cls = getattr(keras.layers, spec.kind)
        return cls(
            filters=params["filters"], kernel_size=tuple(params["kernel_size"]),
            strides=tuple(params["strides"]), padding=params["padding"],
            output_padding=None if params["output_padding"] is None else tuple(params["output_padding"]),
            dilation_rate=tuple(params["dilation_rate"]), data_format=params["data_format"],
            use_bias=params["use_bias"],
        )
    if spec.kind in RAW_KINDS:
        return RawConvTranspose(RAW_KINDS[spec.kind], **params)
    if spec.kind in RESIZE_KINDS:
        return ResizeConv2D(**params)
    factory = import_layer(spec.kind)
    layer = factory(**params)
    if not callable(layer):
        raise TypeError(f"{spec.kind}(**params) returned {type(layer).__name__}, which is not callable")
    return layer


def _tensor_names(variables: list[Any]) -> list[str]:
    """grad_<variable name> (grad_kernel, grad_bias), falling back to the path where names repeat."""
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        names = [v.path.replace("/", ".") for v in variables]
    return [f"grad_{n}" for n in names]


@dataclasses.dataclass
class Case:
    """A built cell: call :meth:`step` for one forward plus backward pass.

    ``step()`` returns the tensors in the order of ``names`` as NumPy arrays:
    ``output``, ``grad_input``, then one gradient per trainable variable.
    """

    names: list[str]
    step: Callable[[], list[np.ndarray]]
    reference: dict[str, np.ndarray] | None = None  # float64 truth (detaudit.reference), built-in kinds only
    adjoint: Callable[[], dict[str, Any]] | None = None  # the dot-product test, built-in channels_last kinds


def _seeded_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-style scaled normals: fan-in scaling keeps outputs O(1) for any layer size."""
    if len(shape) <= 1:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
    fan_in = int(np.prod(shape[:-1]))
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))


def build_case(spec: LayerSpec, seed: int, xla: bool) -> Case:
    """Build the layer of ``spec`` under the current dtype policy and device scope.

    The input is drawn in float32 from ``seed`` and cast to the policy's
    variable dtype (exact for float64, rounded for 16-bit types, so every
    precision starts from the same values); weights and the upstream gradient
    likewise, each from its own stream of the seed, so adding a weight never
    shifts the input.
    """
    if spec.rank is None:
        # A user layer may hold random ops of its own (Dropout, noise): seed them. Built-in
        # kinds have none, and setting TensorFlow's global seed clears its kernel cache.
        keras.utils.set_random_seed(seed)
    layer = _make_layer(spec)
    policy = keras.config.dtype_policy()
    x_np = np.random.default_rng([seed, 0]).standard_normal(spec.input_shape, dtype=np.float32)
    x = tf.constant(x_np.astype(policy.variable_dtype))
    y = layer(x)  # builds the weights
    rng = np.random.default_rng([seed, 1])
    for variable in layer.trainable_variables:
        variable.assign(_seeded_values(rng, tuple(variable.shape)).astype(variable.dtype))
    dy_np = np.random.default_rng([seed, 2]).standard_normal(tuple(y.shape), dtype=np.float32)
    dy = tf.constant(dy_np.astype(y.dtype.as_numpy_dtype))
    variables = list(layer.trainable_variables)

    def forward_backward(x: tf.Tensor, dy: tf.Tensor) -> tuple[tf.Tensor, list[tf.Tensor]]:
        with tf.GradientTape() as tape:
            tape.watch(x)
            # training=True: audit what training runs; Keras drops it for layers whose call lacks it.
            y = layer(x, training=True) if isinstance(layer, keras.layers.Layer) else layer(x)
        # Gradient injection: a seeded random upstream gradient, as TensorFlow's own
        # determinism tests do; a uniform one would hide reduction-order effects.
        grads = tape.gradient(y, [x, *variables], output_gradients=dy)
        return y, [tf.zeros_like(v) if g is None else g for v, g in zip([x, *variables], grads)]

    compiled = tf.function(forward_backward, jit_compile=xla)

    def step() -> list[np.ndarray]:
        y, grads = compiled(x, dy)
        return [y.numpy(), *(g.numpy() for g in grads)]

    names = ["output", "grad_input", *_tensor_names(variables)]
    adjoint = None
    if (spec.kind in KERAS_KINDS or spec.kind in RAW_KINDS) and spec.params["data_format"] == "channels_last":
        adjoint = functools.partial(_adjoint_test, spec, layer, x, tuple(y.shape), seed)
    return Case(names, step, _reference(spec, layer, x.numpy(), dy.numpy(), tuple(y.shape)), adjoint)


def _adjoint_test(spec: LayerSpec, layer: Any, x: tf.Tensor, output_shape: tuple[int, ...], seed: int) -> dict[str, Any]:
    """The cell's own kernel through :func:`detaudit.probes.adjoint_gap`, in the policy's compute dtype."""
    from detaudit.engine.probes import adjoint_gap

    params = spec.params
    dtype = keras.config.dtype_policy().compute_dtype
    z = tf.constant(np.random.default_rng([seed, 3]).standard_normal(output_shape, dtype=np.float32).astype(dtype))
    gap = adjoint_gap(tf.cast(x, dtype), tf.cast(layer.kernel, dtype), z, list(output_shape),
                      strides=params["strides"], padding=params["padding"], dilations=params["dilation_rate"])
    return {"dtype": str(dtype), **gap}


def _reference(spec: LayerSpec, layer: Any, x: np.ndarray, upstream: np.ndarray,
               output_shape: tuple[int, ...]) -> dict[str, np.ndarray] | None:
    """The float64 reference of a built-in transposed convolution, from the very values TensorFlow got."""
    if spec.kind not in KERAS_KINDS and spec.kind not in RAW_KINDS:
        return None  # resize_conv2d and user layers have no reference (yet)
    params = spec.params
    channels_first = params["data_format"] == "channels_first"
    lengths = output_shape[2:] if channels_first else output_shape[1:-1]
    geometry = reference.TransposeSpec(tuple(params["strides"]), params["padding"], tuple(params["dilation_rate"]),
                                       tuple(lengths), channels_first)
    kernel = np.asarray(layer.kernel.numpy(), np.float64)
    bias = None if layer.bias is None else np.asarray(layer.bias.numpy(), np.float64)
    out = {"output": reference.conv_transpose(x, kernel, bias, geometry)}
    out.update(reference.conv_transpose_grads(x, kernel, upstream, geometry, with_bias=bias is not None))
    return out

