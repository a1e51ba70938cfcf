"""The JAX backend's pass: a jitted ``jax.vjp`` of the layer called statelessly (its weights as arguments).

Imported only in a worker started with ``KERAS_BACKEND=jax`` (and
``JAX_ENABLE_X64``, so float64 cells compute in float64). JAX compiles every
pass with XLA, so the ``xla`` axis is always on here (``off`` is unsupported).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from detaudit.core.knowledge import is_determinism_refusal
from detaudit.engine.backends import keras_case

__all__ = ["JaxCase", "adjoint", "applied_per_cell", "build", "fingerprint", "producers", "reported_settings",
           "status_of", "step_on"]

_BITS = {"float16": jnp.int16, "bfloat16": jnp.int16, "float32": jnp.int32, "float64": jnp.int64}


class JaxCase(keras_case.SeededLayer):
    """A built cell whose pass is ``jax.jit`` of the forward pass's VJP with the seeded upstream gradient."""

    def __init__(self, builder: str, kind: str, params: dict[str, Any], input_shape: list[int], seed: int):
        super().__init__(builder, kind, params, input_shape, seed)
        layer = self.layer
        self.weights = [v.value for v in self.variables]
        frozen = [(v, v.value) for v in layer.non_trainable_variables]
        variables = self.variables

        def forward_backward(x: Any, weights: list[Any], dy: Any) -> list[Any]:
            def forward(x: Any, weights: list[Any]) -> Any:
                # What Layer.stateless_call does, through Layer.__call__: stateless_call runs call() alone,
                # which skips the dtype policy's input cast and autocast, so a mixed_bfloat16 layer would
                # compute in float32. In a Keras model (JAX trainer) every layer runs through __call__.
                with keras.StatelessScope(state_mapping=[*zip(variables, weights), *frozen]):
                    # training=True: audit what training runs; Keras drops it for layers whose call lacks it.
                    return layer(x, training=True)

            y, vjp = jax.vjp(forward, x, weights)
            grad_x, grad_weights = vjp(dy)  # gradient injection: the seeded upstream gradient
            return [y, grad_x, *grad_weights]

        self.forward_backward = forward_backward
        self.compiled = jax.jit(forward_backward)

    def step_tensors(self) -> list[Any]:
        """One pass, its tensors left on the device."""
        return self.compiled(self.x, self.weights, self.upstream)

    def step(self) -> list[np.ndarray]:
        """One pass, its tensors on the host as read-only NumPy arrays."""
        return [keras_case.host_copy(t) for t in self.step_tensors()]

    def device_pass(self) -> DeviceCheckedPass:
        return DeviceCheckedPass(self)


def _ordered_key(tensor: Any) -> Any:
    """The float's bits as an order-preserving number (float64: exact below 2**53, enough to rank gaps)."""
    bits = jax.lax.bitcast_convert_type(tensor, _BITS[tensor.dtype.name]).astype(jnp.int64)
    magnitude = bits & ((1 << (8 * tensor.dtype.itemsize - 1)) - 1)
    return jnp.where(bits < 0, -magnitude, magnitude).astype(jnp.float64)


def _fold(tensor: Any, state: tuple[Any, ...]) -> tuple[Any, ...]:
    """One later repeat folded into a tensor's state (first bits, first key, worst repeat, its gap, count)."""
    first_bits, first_key, worst, worst_gap, n_differ = state
    differs = jnp.any(jax.lax.bitcast_convert_type(tensor, _BITS[tensor.dtype.name]) != first_bits)
    gap = jnp.max(jnp.abs(_ordered_key(tensor) - first_key)) if tensor.size else jnp.float64(0)
    gap = jnp.where(jnp.isnan(gap), jnp.inf, gap)
    worse = differs & (gap >= worst_gap)
    return (first_bits, first_key, jnp.where(worse, tensor, worst), jnp.where(worse, gap, worst_gap),
            n_differ + differs.astype(jnp.int32))


def _start(tensor: Any) -> tuple[Any, ...]:
    bits = jax.lax.bitcast_convert_type(tensor, _BITS[tensor.dtype.name])
    return bits, _ordered_key(tensor), tensor, jnp.float64(0), jnp.int32(0)


class DeviceCheckedPass:
    """Repeats compared with the first where they are computed, inside the pass's own jitted function.

    Like the TensorFlow backend's: every repeat, the first included, runs the
    same compiled function (so XLA fuses each the same way); the state stays
    in device memory and nothing waits for the device until :meth:`results`.
    """

    def __init__(self, case: JaxCase):
        self.case = case
        forward_backward = case.forward_backward

        def checked(x: Any, weights: list[Any], dy: Any, state: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
            outputs = forward_backward(x, weights, dy)
            return outputs, [_fold(t, s) for t, s in zip(outputs, state)]

        self.checked = jax.jit(checked, donate_argnums=3)
        self.state: list[tuple[Any, ...]] = []

    def first(self) -> list[np.ndarray]:
        shapes = jax.eval_shape(self.case.forward_backward, self.case.x, self.case.weights, self.case.upstream)
        blank = [_start(jnp.zeros(s.shape, s.dtype)) for s in shapes]
        outputs, _ = self.checked(self.case.x, self.case.weights, self.case.upstream, blank)
        self.state = [_start(t) for t in outputs]  # the reference, kept on the device
        return [keras_case.host_copy(t) for t in outputs]

    def later(self) -> None:
        _, self.state = self.checked(self.case.x, self.case.weights, self.case.upstream, self.state)

    def results(self) -> list[tuple[int, Any]]:
        return keras_case.device_results(self.state)


def build(spec: Any, seed: int, applied: Any) -> JaxCase:
    """The cell of ``spec`` (a LayerSpec) under the current dtype policy and device scope."""
    return JaxCase(spec.declaration.builder, spec.kind, spec.params, list(spec.input_shape), seed)


def status_of(exc: BaseException) -> str:
    """``unsupported`` for XLA refusing an op for want of a deterministic kernel, else ``error``."""
    text = str(exc)
    return "unsupported" if is_determinism_refusal(text) or "no deterministic implementation" in text else "error"


def adjoint(case: JaxCase, z: np.ndarray, params: dict[str, Any], dtype: str) -> dict[str, float]:
    """The dot-product test with the cell's own kernel in ``dtype`` (keras.ops on this backend)."""
    return keras_case.adjoint_gap(keras.ops.cast(case.x, dtype), keras.ops.cast(case.layer.kernel, dtype), z, params)


def producers(case: JaxCase, device: str, xla: bool) -> dict[str, Any] | None:
    """Op names come from TensorFlow graphs; JAX's are not read (None: the record has no ``ops``)."""
    return None


def reported_settings() -> dict[str, Any]:
    """What JAX reports as applied in this process."""
    return {"backend": "jax", "xla_flags": os.environ.get("XLA_FLAGS"), "x64": bool(jax.config.jax_enable_x64),
            "dtype_policy": keras.config.dtype_policy().name,
            "matmul_precision": str(jax.config.jax_default_matmul_precision)}


def applied_per_cell() -> dict[str, Any]:
    """What JAX reports for this cell: its per-cell settings."""
    return {"dtype_policy": keras.config.dtype_policy().name,
            "matmul_precision": str(jax.config.jax_default_matmul_precision)}


def _cuda_versions() -> tuple[str | None, str | None]:
    try:
        from jax._src.lib import cuda_versions  # internal: None without the CUDA plugin

        if cuda_versions is None:
            return None, None
        return str(cuda_versions.cuda_runtime_get_version()), str(cuda_versions.cudnn_get_version())
    except Exception:  # noqa: BLE001 - best effort across JAX versions
        return None, None


def fingerprint() -> dict[str, Any]:
    """JAX's version, its CUDA and cuDNN (when it has the CUDA plugin), devices and GPU names."""
    cuda, cudnn = _cuda_versions()
    devices = jax.devices()
    gpus = [{"device": str(d), "name": d.device_kind, "compute_capability": getattr(d, "compute_capability", None)}
            for d in devices if d.platform == "gpu"]
    return {"version": jax.__version__, "cuda_version": cuda, "cudnn_version": cudnn,
            "devices": [str(d) for d in devices], "gpus": gpus}


def step_on(case: JaxCase, x: np.ndarray, upstream: np.ndarray) -> list[np.ndarray]:
    """One pass of ``case``'s jitted VJP on other inputs (host arrays of its dtypes), as host arrays."""
    return [keras_case.host_copy(t) for t in case.compiled(jnp.asarray(x), case.weights, jnp.asarray(upstream))]
