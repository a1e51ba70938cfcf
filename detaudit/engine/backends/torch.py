"""The PyTorch backend's pass: the layer's forward pass and ``torch.autograd.grad`` with the seeded upstream gradient.

Imported only in a worker started with ``KERAS_BACKEND=torch``. PyTorch runs
the pass eagerly, so the ``xla`` axis is always off here (``on`` is unsupported).
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import torch

from detaudit.engine.backends import keras_case

__all__ = ["TorchCase", "adjoint", "applied_per_cell", "build", "fingerprint", "producers", "reported_settings",
           "status_of", "step_on"]

_BITS = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
         torch.float64: torch.int64}


class TorchCase(keras_case.SeededLayer):
    """A built cell whose pass is a forward call and ``torch.autograd.grad`` of its output."""

    def __init__(self, builder: str, kind: str, params: dict[str, Any], input_shape: list[int], seed: int):
        super().__init__(builder, kind, params, input_shape, seed)
        layer, weights = self.layer, [v.value for v in self.variables]

        def forward_backward(x: Any, dy: Any) -> list[Any]:
            x = x.detach().requires_grad_(True)
            # training=True: audit what training runs; Keras drops it for layers whose call lacks it.
            y = layer(x, training=True)
            # Gradient injection: the seeded upstream gradient, as in TensorFlow's determinism tests.
            grads = torch.autograd.grad(y, [x, *weights], grad_outputs=dy, allow_unused=True)
            return [y.detach(), *(torch.zeros_like(w) if g is None else g for w, g in zip([x, *weights], grads))]

        self.forward_backward = forward_backward

    def step_tensors(self) -> list[Any]:
        """One pass, its tensors left on the device."""
        return self.forward_backward(self.x, self.upstream)

    def step(self) -> list[np.ndarray]:
        """One pass, its tensors on the host as read-only NumPy arrays."""
        return [keras_case.host_copy(t) for t in self.step_tensors()]

    def device_pass(self) -> DeviceCheckedPass:
        return DeviceCheckedPass(self)


def _ordered_key(tensor: Any) -> Any:
    bits = tensor.view(_BITS[tensor.dtype]).to(torch.int64)
    magnitude = bits & ((1 << (8 * tensor.element_size() - 1)) - 1)
    return torch.where(bits < 0, -magnitude, magnitude).to(torch.float64)


class DeviceCheckedPass:
    """Repeats compared with the first on the device, with one host sync per cell (see core.repeat).

    PyTorch runs eagerly, so the comparison is a few more kernel launches per
    pass rather than part of one compiled graph; the flags and the worst repeat
    stay in device memory until :meth:`results`.
    """

    def __init__(self, case: TorchCase):
        self.case = case
        self.state: list[list[Any]] = []

    def first(self) -> list[np.ndarray]:
        outputs = self.case.step_tensors()
        zero = torch.zeros((), dtype=torch.float64, device=outputs[0].device)
        self.state = [[t.view(_BITS[t.dtype]).clone(), _ordered_key(t), t.clone(), zero.clone(),
                       torch.zeros((), dtype=torch.int32, device=t.device)] for t in outputs]
        return [keras_case.host_copy(t) for t in outputs]

    def later(self) -> None:
        for tensor, state in zip(self.case.step_tensors(), self.state):
            first_bits, first_key, worst, worst_gap, n_differ = state
            differs = torch.any(tensor.view(_BITS[tensor.dtype]) != first_bits)
            gap = torch.max(torch.abs(_ordered_key(tensor) - first_key)) if tensor.numel() else worst_gap * 0
            gap = torch.where(torch.isnan(gap), torch.full_like(gap, float("inf")), gap)
            worse = differs & (gap >= worst_gap)
            state[2] = torch.where(worse, tensor, worst)
            state[3] = torch.where(worse, gap, worst_gap)
            state[4] = n_differ + differs.to(torch.int32)

    def results(self) -> list[tuple[int, Any]]:
        return keras_case.device_results(self.state)


def build(spec: Any, seed: int, applied: Any) -> TorchCase:
    """The cell of ``spec`` (a LayerSpec) under the current dtype policy and device scope."""
    return TorchCase(spec.declaration.builder, spec.kind, spec.params, list(spec.input_shape), seed)


def status_of(exc: BaseException) -> str:
    """``unsupported`` for PyTorch refusing an op under deterministic algorithms, else ``error``."""
    return "unsupported" if "does not have a deterministic implementation" in str(exc) else "error"


def adjoint(case: TorchCase, z: np.ndarray, params: dict[str, Any], dtype: str) -> dict[str, float]:
    """The dot-product test with the cell's own kernel in ``dtype`` (keras.ops on this backend)."""
    with torch.no_grad():
        x, kernel = keras.ops.cast(case.x, dtype), keras.ops.cast(case.layer.kernel, dtype)
        return keras_case.adjoint_gap(x, kernel, z, params)


def producers(case: TorchCase, device: str, xla: bool) -> dict[str, Any] | None:
    """Op names come from TensorFlow graphs; PyTorch's are not read (None: the record has no ``ops``)."""
    return None


def reported_settings() -> dict[str, Any]:
    """What PyTorch reports as applied in this process."""
    return {"backend": "torch", "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark), "intra_op_threads": torch.get_num_threads(),
            **applied_per_cell()}


def applied_per_cell() -> dict[str, Any]:
    """What PyTorch reports for this cell: its per-cell settings."""
    return {"dtype_policy": keras.config.dtype_policy().name, "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
            "matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32)}


def fingerprint() -> dict[str, Any]:
    """PyTorch's version, its CUDA and cuDNN builds, devices and GPU names."""
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    gpus = [{"device": f"cuda:{i}", "name": torch.cuda.get_device_name(i),
             "compute_capability": ".".join(map(str, torch.cuda.get_device_capability(i)))}
            for i in range(torch.cuda.device_count())]
    return {"version": torch.__version__, "cuda_version": torch.version.cuda,
            "cudnn_version": None if cudnn is None else str(cudnn),
            "devices": ["cpu", *(g["device"] for g in gpus)], "gpus": gpus}


def step_on(case: TorchCase, x: np.ndarray, upstream: np.ndarray) -> list[np.ndarray]:
    """One pass of ``case`` on other inputs (host arrays of its dtypes), as host arrays."""
    tensors = [keras_case.to_tensor(a, str(a.dtype)) for a in (x, upstream)]
    return [keras_case.host_copy(t) for t in case.forward_backward(*tensors)]
