"""One pass per Keras backend, behind one small interface; this module itself imports no framework.

Each backend module (:mod:`.tensorflow`, :mod:`.jax`, :mod:`.torch`) is imported
only inside a worker whose ``KERAS_BACKEND`` names it, and provides:

- ``build(spec, seed, applied)``: the cell's layer with its seeded weights, input
  and upstream gradient, as a :class:`Pass`;
- ``status_of(exc)``: ``"unsupported"`` for a refusal to be deterministic, else ``"error"``;
- ``adjoint_gap(case, z, params)``: the dot-product test in the cell's compute dtype;
- ``producers(case, device, xla)``: the ops behind each tensor, or None where the backend cannot say;
- ``reported_settings()`` / ``applied_per_cell()``: what the framework reports as applied;
- ``fingerprint()``: versions, CUDA and cuDNN, devices (:func:`detaudit.engine.fingerprint.backend_fingerprint`).

The repeat-and-compare routine, the float64 reference, the table and the
renderers never see which backend ran. The parent uses :func:`require_backends`
to refuse a backend that is not installed, without importing it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from detaudit.core.repeat import DevicePass

__all__ = ["EXTRAS", "Pass", "load", "missing_backends", "require_backends"]

#: The pip extra that installs each backend's framework (the README's install lines).
EXTRAS = {"tensorflow": "cpu", "jax": "jax", "torch": "torch"}
#: The framework each backend imports, and Keras, which every backend needs.
_MODULES = {"tensorflow": ("tensorflow", "keras"), "jax": ("jax", "keras"), "torch": ("torch", "keras")}


class Pass(Protocol):
    """A built cell: its layer with seeded values, and one forward plus backward pass.

    ``names`` are the tensors a pass returns (``output``, ``grad_input``, one
    gradient per trainable variable); ``x`` and ``upstream`` are what it used
    (framework tensors), ``output_shape`` the layer's output shape.
    """

    names: list[str]
    layer: Any
    x: Any
    upstream: Any
    output_shape: tuple[int, ...]

    def step(self) -> list[np.ndarray]:
        """One pass, its tensors on the host as read-only NumPy arrays."""

    def device_pass(self) -> DevicePass:
        """The pass with its repeats compared where they are computed (see core.repeat.repeat_on_device)."""


def load(backend: str) -> ModuleType:
    """The backend's module (imports its framework: call in a worker only)."""
    return importlib.import_module(f"detaudit.engine.backends.{backend}")


def missing_backends(backends: Iterable[str]) -> list[str]:
    """The backends whose framework (or Keras) cannot be imported here, found without importing anything."""
    return [b for b in dict.fromkeys(backends) if any(importlib.util.find_spec(m) is None for m in _MODULES[b])]


def require_backends(backends: Sequence[str]) -> None:
    """Refuse, with the extra to install, every backend that workers could not import (checked without importing).

    Raises:
        UsageError: one line naming each missing backend and how to install it.
    """
    from detaudit.errors import UsageError

    missing = missing_backends(backends)
    if missing:
        raise UsageError(" ".join(_missing_sentence(backend, first=i == 0) for i, backend in enumerate(missing)))


def _missing_sentence(backend: str, first: bool) -> str:
    """What a missing backend needs and the command that installs it (the first one names this Python)."""
    from detaudit.errors import install_hint

    where = f" for {sys.executable}" if first else " either"
    if backend == "tensorflow":
        return (f"TensorFlow is not installed{where}. Install it with: {install_hint('cpu')} (or gpu, or your own "
                "TensorFlow >= 2.16).")
    framework = "JAX" if backend == "jax" else "PyTorch"
    then = " after installing PyTorch itself (its CPU or CUDA build, from pytorch.org)" if backend == "torch" else ""
    return (f"Cells on the {backend} backend need {framework} and Keras, not installed{where}. "
            f"Install them with: {install_hint(EXTRAS[backend])}{then}.")
