"""How a cell is built and run, in code that needs only Keras, its backend's framework and NumPy.

The worker imports this module; ``detaudit triage`` copies its source verbatim
into every emitted ``repro.py``. So the reproducer builds the very layer, the
very seeded weights, input and upstream gradient, and runs the very pass the
worker ran: one copy of the code, two places it runs. Keep it free of
detaudit imports, and import Keras and the frameworks inside functions only (a
reproducer sets the environment, ``KERAS_BACKEND`` among it, before they are
imported). The pass of the TensorFlow backend is here (:class:`Case`); the JAX
and PyTorch passes are in :mod:`detaudit.engine.backends`.

Weights, inputs and upstream gradients are drawn with NumPy from the seed, not
with TensorFlow's random ops, so they are bit-identical across devices,
precisions, processes and TensorFlow versions; only the computation can differ.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from typing import Any

import numpy as np

__all__ = ["BUILDERS", "AppliedCell", "Case", "DeviceCheckedPass", "NotALayer", "apply_cell", "apply_environment",
           "backend_of", "device_name", "resolve_user_layer", "run_statements", "seeded_values", "start_process",
           "tensor_names"]

_RAW_FORMATS = {
    (1, "channels_last"): "NWC", (1, "channels_first"): "NCW",
    (2, "channels_last"): "NHWC", (2, "channels_first"): "NCHW",
    (3, "channels_last"): "NDHWC", (3, "channels_first"): "NCDHW",
}


def apply_environment(changes: dict[str, str | None]) -> None:
    """Set (or, for None, remove) environment variables: call before TensorFlow is imported."""
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def backend_of(spec: dict[str, Any]) -> str:
    """The Keras backend a settings spec runs on (TensorFlow when it does not say)."""
    return spec["values"].get("backend", "tensorflow")


def run_statements(statements: list[str], backend: str = "tensorflow") -> None:
    """Run settings statements with Keras and the backend's framework imported (as ``tf``, ``jax`` or ``torch``)."""
    import keras

    namespace = {"keras": keras, {"tensorflow": "tf"}.get(backend, backend): importlib.import_module(backend)}
    for statement in statements:
        exec(statement, dict(namespace))  # noqa: S102 - detaudit's own axis declarations, not user text


def start_process(spec: dict[str, Any]) -> None:
    """Apply a setting's process-wide part: its environment, then the framework, then its start-up statements.

    ``spec`` is :func:`detaudit.core.axes.settings_spec` of the setting: ``environment`` (``KERAS_BACKEND``
    among it), ``startup``, ``cell``, ``unsupported`` and ``values``. Call once per process, before anything
    else imports Keras or a framework. The worker, the audit's workers and every reproducer call this one function.
    """
    apply_environment(spec["environment"])
    backend = backend_of(spec)
    if backend == "tensorflow":
        import tensorflow as tf

        for gpu in tf.config.list_physical_devices("GPU"):
            # Several workers share a GPU; without growth the first one takes all its memory.
            tf.config.experimental.set_memory_growth(gpu, True)
    # JAX shares a GPU through XLA_PYTHON_CLIENT_PREALLOCATE=false (the backend axis); PyTorch grows on demand.
    run_statements(spec["startup"], backend)


class AppliedCell:
    """What :func:`apply_cell` applied: the device scope to run in, XLA, and where repeats are compared."""

    def __init__(self, device: str | None, unavailable: str | None, xla: bool, compare_on_device: bool,
                 backend: str = "tensorflow", unsupported: bool = False):
        self.device = device  # the backend's device name, or None when the cell cannot run here
        self.unavailable = unavailable  # why: the device is not visible, or (unsupported) a setting does not apply
        self.xla = xla  # compile the pass with XLA (jit_compile on TensorFlow; always on JAX)
        self.compare_on_device = compare_on_device
        self.backend = backend
        self.unsupported = unsupported  # a setting does not apply on this backend: the cell is unsupported

    def scope(self) -> Any:
        """The device scope the cell's work runs in."""
        if self.backend == "tensorflow":
            import tensorflow as tf

            return tf.device(self.device)
        import keras

        return keras.device(self.device)


def _gpus_visible(backend: str) -> tuple[int, str, str]:
    """How many GPUs the backend sees, the call that says so and the framework's name (for the message)."""
    if backend == "tensorflow":
        import tensorflow as tf

        return len(tf.config.list_logical_devices("GPU")), "tf.config.list_logical_devices('GPU') is empty", \
            "TensorFlow"
    if backend == "jax":
        import jax

        try:
            return len(jax.devices("gpu")), "jax.devices('gpu') is empty", "JAX"
        except RuntimeError:  # no GPU platform at all
            return 0, "jax.devices('gpu') finds no GPU platform", "JAX"
    import torch

    return torch.cuda.device_count(), "torch.cuda.device_count() is 0", "PyTorch"


def apply_cell(spec: dict[str, Any]) -> AppliedCell:
    """Apply a setting's per-cell part (dtype policy, TF32, ...) and say how the cell runs: device, XLA, compare.

    The one function that applies a cell's settings in a running process: the runner's worker, the model
    audit and the reproducers call it (after :func:`start_process`). A setting that does not apply on the
    backend (``spec["unsupported"]``) comes back as ``unsupported`` with no device. Repeats are compared on
    the device for a GPU (copying every pass to the host would cost more than the pass), on the host for
    the CPU, where the tensors already are; ``DETAUDIT_COMPARE_ON_DEVICE=1`` forces the device path on a
    CPU so that its correctness is tested where no GPU is.
    """
    values, backend = spec["values"], backend_of(spec)
    xla = values.get("xla") == "on" or backend == "jax"
    if spec.get("unsupported"):
        return AppliedCell(None, spec["unsupported"], xla, False, backend, unsupported=True)
    device = values.get("device", "cpu")
    if device != "cpu":
        index = int(device.partition(":")[2] or 0)
        count, call, framework = _gpus_visible(backend)
        if not count:
            return AppliedCell(None, f"no GPU visible to {framework} on this machine ({call})", xla, True, backend)
        if index >= count:
            return AppliedCell(None, f"GPU {index} is not visible: {framework} sees {count} GPU(s)", xla, True,
                               backend)
    run_statements(spec["cell"], backend)
    on_device = device != "cpu" or os.environ.get("DETAUDIT_COMPARE_ON_DEVICE") == "1"
    name = device_name(device) if backend == "tensorflow" else device if ":" in device else f"{device}:0"
    return AppliedCell(name, None, xla, on_device, backend)


def keras_output_length(n: int, kernel: int, stride: int, padding: str, dilation: int = 1) -> int:
    """Keras 3's output length of a transposed convolution with output_padding None."""
    k_eff = (kernel - 1) * dilation + 1
    return n * stride if padding == "same" else n * stride + max(k_eff - stride, 0)


@functools.lru_cache(maxsize=None)
def _layer_classes() -> dict[str, type]:
    """The layer classes detaudit adds, defined once Keras is imported (TensorFlow only when a raw kind runs)."""
    import keras

    class RawConvTranspose(keras.layers.Layer):
        """``tf.nn.convNd_transpose`` with an explicit ``output_shape``, plus an optional ``tf.nn.bias_add``: a Keras
        layer only so that it follows the dtype policy (mixed precision autocasts the kernel) like every other."""

        def __init__(self, rank: int, filters: int, kernel_size: list[int], strides: list[int], padding: str,
                     dilation_rate: list[int], data_format: str, use_bias: bool, output_shape: list[int] | None,
                     **kwargs: Any):
            super().__init__(**kwargs)
            self.rank, self.filters, self.kernel_size = rank, filters, list(kernel_size)
            self.strides, self.padding, self.dilation_rate = list(strides), padding, list(dilation_rate)
            self.data_format, self.use_bias, self.explicit_output_shape = data_format, use_bias, output_shape

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
            lengths = [keras_output_length(n, k, s, self.padding, d)
                       for n, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate)]
            return [input_shape[0], *lengths, self.filters] if last else [input_shape[0], self.filters, *lengths]

        def call(self, inputs: Any) -> Any:
            import tensorflow as tf

            data_format = _RAW_FORMATS[(self.rank, self.data_format)]
            op = {1: tf.nn.conv1d_transpose, 2: tf.nn.conv2d_transpose, 3: tf.nn.conv3d_transpose}[self.rank]
            outputs = op(inputs, self.kernel, output_shape=self.output_shape_for(tuple(inputs.shape)),
                         strides=self.strides, padding=self.padding.upper(), data_format=data_format,
                         dilations=self.dilation_rate)
            if self.bias is not None:
                bias_format = "N..C" if data_format.endswith("C") else "NC.."
                outputs = tf.nn.bias_add(outputs, self.bias, data_format=bias_format)
            return outputs

    class ResizeConv2D(keras.layers.Layer):
        """The resize-convolution alternative to a strided transpose: UpSampling2D then Conv2D."""

        def __init__(self, filters: int, kernel_size: list[int], size: list[int], interpolation: str, padding: str,
                     data_format: str, use_bias: bool, **kwargs: Any):
            super().__init__(**kwargs)
            self.upsample = keras.layers.UpSampling2D(size=tuple(size), interpolation=interpolation,
                                                      data_format=data_format)
            self.conv = keras.layers.Conv2D(filters, tuple(kernel_size), padding=padding, data_format=data_format,
                                            use_bias=use_bias)

        def call(self, inputs: Any) -> Any:
            return self.conv(self.upsample(inputs))

    return {"RawConvTranspose": RawConvTranspose, "ResizeConv2D": ResizeConv2D}


class NotALayer(TypeError):
    """A ``package.module:Class`` kind that does not name a Keras Layer subclass."""


def resolve_user_layer(path: str) -> type:
    """Import ``package.module:Class`` and check, before anything is called, that it is a Keras Layer subclass.

    Naming a module imports it (its top-level code runs); nothing else of it
    runs unless it is a Layer subclass.

    Raises:
        ImportError, AttributeError: the module or the attribute is missing.
        NotALayer: the attribute is anything but a ``keras.layers.Layer`` subclass.
    """
    import keras

    module_name, _, attr = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # user layers are imported relative to where detaudit runs
    target: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, keras.layers.Layer)):
        what = f"class {target.__name__}" if isinstance(target, type) else type(target).__name__
        raise NotALayer(f"{path} is a {what}, not a Keras Layer subclass; a config may name only Layer subclasses")
    return target


def keras_transpose(kind: str, params: dict[str, Any]) -> Any:
    import keras

    return getattr(keras.layers, kind)(
        filters=params["filters"], kernel_size=tuple(params["kernel_size"]), strides=tuple(params["strides"]),
        padding=params["padding"],
        output_padding=None if params["output_padding"] is None else tuple(params["output_padding"]),
        dilation_rate=tuple(params["dilation_rate"]), data_format=params["data_format"], use_bias=params["use_bias"])


def raw_transpose(kind: str, params: dict[str, Any]) -> Any:
    return _layer_classes()["RawConvTranspose"](int(kind[4]), **params)


def resize_conv2d(kind: str, params: dict[str, Any]) -> Any:
    return _layer_classes()["ResizeConv2D"](**params)


def user_layer(kind: str, params: dict[str, Any]) -> Any:
    return resolve_user_layer(kind)(**params)


#: Layer builders by the names detaudit.core.kinds declares.
BUILDERS = {"keras_transpose": keras_transpose, "raw_transpose": raw_transpose, "resize_conv2d": resize_conv2d,
            "user_layer": user_layer}


def seeded_values(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """He-style scaled normals in float32: fan-in scaling keeps outputs O(1) for any layer size."""
    if len(shape) <= 1:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.1)
    fan_in = int(np.prod(shape[:-1]))
    return rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(fan_in))


def tensor_names(variables: list[Any]) -> list[str]:
    """``output``, ``grad_input``, then grad_<variable name>, falling back to the path where names repeat."""
    names = [v.name for v in variables]
    if len(set(names)) != len(names):
        names = [v.path.replace("/", ".") for v in variables]
    return ["output", "grad_input", *(f"grad_{n}" for n in names)]


class Case:
    """A built cell under the current dtype policy and device scope.

    ``step()`` runs one forward plus backward pass and returns its tensors (in
    the order of ``names``) as NumPy arrays: ``output``, ``grad_input``, then
    one gradient per trainable variable. ``x``, ``upstream`` and ``layer`` are
    what the pass used (for the reference and the adjoint test).
    """

    def __init__(self, builder: str, kind: str, params: dict[str, Any], input_shape: list[int], seed: int,
                 xla: bool):
        import keras
        import tensorflow as tf

        if builder == "user_layer":
            # A user layer may hold random ops of its own (Dropout, noise): seed them. Built-in
            # kinds have none, and setting TensorFlow's global seed clears its kernel cache.
            keras.utils.set_random_seed(seed)
        self.layer = BUILDERS[builder](kind, params)
        policy = keras.config.dtype_policy()
        # Drawn in float32 and cast to the policy's variable dtype: exact for float64, rounded for
        # 16-bit types, so every precision starts from the same values.
        x_np = np.random.default_rng([seed, 0]).standard_normal(tuple(input_shape), dtype=np.float32)
        self.x = tf.constant(x_np.astype(policy.variable_dtype))
        y = self.layer(self.x)  # builds the weights
        rng = np.random.default_rng([seed, 1])  # each stream its own: adding a weight never shifts the input
        for variable in self.layer.trainable_variables:
            variable.assign(seeded_values(rng, tuple(variable.shape)).astype(variable.dtype))
        self.output_shape = tuple(y.shape)
        dy_np = np.random.default_rng([seed, 2]).standard_normal(self.output_shape, dtype=np.float32)
        self.upstream = tf.constant(dy_np.astype(y.dtype.as_numpy_dtype))
        self.variables = list(self.layer.trainable_variables)
        self.names = tensor_names(self.variables)
        layer, variables = self.layer, self.variables

        def forward_backward(x: Any, dy: Any) -> list[Any]:
            with tf.GradientTape() as tape:
                tape.watch(x)
                # training=True: audit what training runs; Keras drops it for layers whose call lacks it.
                y = layer(x, training=True)
            # Gradient injection: a seeded random upstream gradient, as TensorFlow's own
            # determinism tests do; a uniform one would hide reduction-order effects.
            grads = tape.gradient(y, [x, *variables], output_gradients=dy)
            return [y, *(tf.zeros_like(v) if g is None else g for v, g in zip([x, *variables], grads))]

        self.forward_backward, self.xla = forward_backward, xla
        self.compiled = tf.function(forward_backward, jit_compile=xla)
        self._concrete: Any = None

    def device_pass(self) -> DeviceCheckedPass:
        """The pass with its comparison on the device (see DeviceCheckedPass)."""
        return DeviceCheckedPass(self)

    @property
    def concrete(self) -> Any:
        """The pass's traced graph (traced on first use).

        Called directly it is the same computation as calling ``compiled`` (XLA
        included), without tf.function's per-call argument dispatch: 0.3-0.6 ms
        a pass on 2 CPU cores, as much as comparing a repeat.
        """
        if self._concrete is None:
            self._concrete = self.compiled.get_concrete_function(self.x, self.upstream)
        return self._concrete

    def step_tensors(self) -> list[Any]:
        """One pass, its tensors left where they were computed (on a GPU: in device memory)."""
        return self.concrete(self.x, self.upstream)

    def step(self) -> list[np.ndarray]:
        """One pass, its tensors on the host as read-only NumPy arrays.

        On the CPU they are views of TensorFlow's own buffers (``Tensor.numpy()``
        copies every tensor, which costs about as much as comparing them); on a
        GPU ``np.asarray`` copies them to host memory.
        """
        arrays = [np.asarray(t) for t in self.step_tensors()]
        for array in arrays:  # TensorFlow's tensors are immutable: nothing may write through a view
            array.flags.writeable = False
        return arrays


_BITS = {"float16": "int16", "bfloat16": "int16", "float32": "int32", "float64": "int64"}


def _ordered_key(tensor: Any) -> Any:
    """The float's bits as an order-preserving number (float64: exact below 2**53, enough to rank gaps)."""
    import tensorflow as tf

    bits = tf.cast(tf.bitcast(tensor, _BITS[tensor.dtype.name]), tf.int64)
    magnitude = tf.bitwise.bitwise_and(bits, tf.constant((1 << (8 * tensor.dtype.size - 1)) - 1, tf.int64))
    return tf.cast(tf.where(bits < 0, -magnitude, magnitude), tf.float64)


class DeviceCheckedPass:
    """Repeats of a case compared with the first where they are computed, inside the pass's own graph.

    One ``tf.function`` runs the pass and, per tensor, tells whether its bits
    differ from the first repeat's, counts the repeats that differed, and keeps
    the repeat with the largest ULP gap, all in device memory. Every repeat, the
    first included, runs this same function, so XLA fuses every repeat the same
    way. Nothing waits for the device until :meth:`results`, once per cell.
    """

    def __init__(self, case: Case):
        import tensorflow as tf

        self.case = case
        specs = case.concrete.structured_outputs
        self.first_bits = [tf.Variable(tf.zeros(s.shape, _BITS[s.dtype.name]), trainable=False) for s in specs]
        self.first_key = [tf.Variable(tf.zeros(s.shape, tf.float64), trainable=False) for s in specs]
        self.worst = [tf.Variable(tf.zeros(s.shape, s.dtype), trainable=False) for s in specs]
        self.worst_gap = [tf.Variable(tf.constant(0.0, tf.float64), trainable=False) for _ in specs]
        self.n_differ = [tf.Variable(0, trainable=False) for _ in specs]
        forward_backward = case.forward_backward

        def checked(x: Any, dy: Any) -> list[Any]:
            outputs = forward_backward(x, dy)
            for i, tensor in enumerate(outputs):
                bits = tf.bitcast(tensor, _BITS[tensor.dtype.name])
                differs = tf.reduce_any(tf.not_equal(bits, self.first_bits[i]))
                self.n_differ[i].assign_add(tf.cast(differs, tf.int32))
                keys = _ordered_key(tensor)
                gap = tf.reduce_max(tf.abs(keys - self.first_key[i])) if tensor.shape.num_elements() else 0.0
                gap = tf.where(tf.math.is_nan(gap), tf.constant(float("inf"), tf.float64), gap)
                worse = tf.logical_and(differs, gap >= self.worst_gap[i])
                self.worst[i].assign(tf.where(worse, tensor, self.worst[i]))
                self.worst_gap[i].assign(tf.where(worse, gap, self.worst_gap[i]))
            return outputs

        # Called as a traced graph, like Case.concrete.
        self.checked = tf.function(checked, jit_compile=case.xla).get_concrete_function(case.x, case.upstream)

    def first(self) -> list[np.ndarray]:
        import tensorflow as tf

        outputs = self.checked(self.case.x, self.case.upstream)
        for i, tensor in enumerate(outputs):  # the reference, kept on the device
            self.first_bits[i].assign(tf.bitcast(tensor, _BITS[tensor.dtype.name]))
            self.first_key[i].assign(_ordered_key(tensor))
            self.n_differ[i].assign(0)
            self.worst_gap[i].assign(0.0)
        return [t.numpy() for t in outputs]

    def later(self) -> None:
        self.checked(self.case.x, self.case.upstream)

    def results(self) -> list[tuple[int, Any]]:
        counts = [int(v.numpy()) for v in self.n_differ]  # the one wait of the cell
        return [(n, self.worst[i].numpy() if n else None) for i, n in enumerate(counts)]


def device_name(device: str) -> str:
    """TensorFlow's device string for a detaudit device value (cpu, gpu, gpu:N)."""
    return "/CPU:0" if device == "cpu" else "/GPU:" + (device.partition(":")[2] or "0")
