"""The TensorFlow backend's pass: :class:`detaudit.engine.standalone.Case`, the traced graph reproducers embed.

Imported only in a worker started with ``KERAS_BACKEND=tensorflow``.
"""

from __future__ import annotations

import os
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from detaudit.core.knowledge import is_determinism_refusal
from detaudit.engine import standalone

__all__ = ["adjoint", "applied_per_cell", "build", "fingerprint", "producers", "reported_settings", "status_of",
           "step_on"]


def build(spec: Any, seed: int, applied: Any) -> standalone.Case:
    """The cell of ``spec`` (a LayerSpec) under the current dtype policy and device scope, jit-compiled with XLA on."""
    return standalone.Case(spec.declaration.builder, spec.kind, spec.params, list(spec.input_shape), seed,
                           applied.xla)


def status_of(exc: BaseException) -> str:
    """``unsupported`` for a refusal to be deterministic; other gaps (NCHW convolutions on the CPU) are errors."""
    refused = isinstance(exc, tf.errors.UnimplementedError) and is_determinism_refusal(str(exc))
    return "unsupported" if refused else "error"


def adjoint(case: standalone.Case, z: np.ndarray, params: dict[str, Any], dtype: str) -> dict[str, float]:
    """The dot-product test with the cell's own kernel in ``dtype``, through tf.nn."""
    from detaudit.engine.probes import adjoint_gap

    return adjoint_gap(tf.cast(case.x, dtype), tf.cast(case.layer.kernel, dtype), tf.constant(z.astype(dtype)),
                       list(case.output_shape), strides=params["strides"], padding=params["padding"],
                       dilations=params["dilation_rate"])


def producers(case: standalone.Case, device: str, xla: bool) -> dict[str, Any]:
    """The ops behind each tensor, read from the pass's graph (a failure to read it is data)."""
    from detaudit.engine import ops

    return ops.producers_or_error(case, device, xla)


def reported_settings() -> dict[str, Any]:
    """What TensorFlow and Keras report as applied in this process: the evidence recorded beside the settings."""
    from tensorflow.python.framework import (
        config as tf_config,  # is_op_determinism_enabled is internal
    )

    from detaudit.engine.fingerprint import onednn_state

    return {
        "op_determinism": bool(tf_config.is_op_determinism_enabled()),
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "onednn": onednn_state(),
        "tf_deterministic_ops_env": os.environ.get("TF_DETERMINISTIC_OPS"),
        "dtype_policy": keras.config.dtype_policy().name,
        "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
    }


def applied_per_cell() -> dict[str, Any]:
    """What TensorFlow reports for this cell: its per-cell settings, and the worker's oneDNN path (so a merged
    run knows every cell's path whatever worker group it came from)."""
    from detaudit.engine.fingerprint import onednn_state

    return {"dtype_policy": keras.config.dtype_policy().name,
            "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()), "onednn": onednn_state()}


def fingerprint() -> dict[str, Any]:
    """TensorFlow's version, its CUDA and cuDNN builds, devices and GPU names."""
    from detaudit.engine.fingerprint import tensorflow_fingerprint

    facts = tensorflow_fingerprint()
    return {"version": facts["tensorflow_version"], **{k: facts[k] for k in ("cuda_version", "cudnn_version",
                                                                               "devices", "gpus")}}


def step_on(case: standalone.Case, x: np.ndarray, upstream: np.ndarray) -> list[np.ndarray]:
    """One pass of ``case``'s traced graph on other inputs (host arrays of its dtypes), as host arrays."""
    return [np.array(t) for t in case.concrete(tf.constant(x), tf.constant(upstream))]
