"""A cell's float64 reference and adjoint test, on whichever Keras backend built it.

Imported only inside worker processes (it imports Keras, whose backend is set
by then); the pass itself comes from :mod:`detaudit.engine.backends`. The
reference and the adjoint test depend on the layer spec, the seed and the
dtypes, not on most settings, so each is computed once and shared: the
reference across every cell and worker of a run (cached in the run directory;
every backend draws the same values, so they share it too), the adjoint test
across the cells of one worker (it runs the backend's ops, whose results depend
on the worker's backend, oneDNN path and device).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from detaudit.core import reference
from detaudit.core.config import LayerSpec
from detaudit.core.numerics import max_finite_abs
from detaudit.engine import standalone
from detaudit.engine.store import load_tensors, save_tensors

__all__ = ["adjoint_of", "build_case", "reference_of", "rounded_reference"]

_ADJOINT_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}
_REFERENCE_CACHE: dict[str, dict[str, np.ndarray]] = {}
_ROUNDED_CACHE: dict[tuple[int, str, str], tuple[np.ndarray, float]] = {}


def rounded_reference(truth: dict[str, np.ndarray], name: str, dtype: np.dtype) -> tuple[np.ndarray, float]:
    """A reference tensor rounded to ``dtype`` and its largest finite magnitude, once per run and dtype."""
    key = (id(truth), name, dtype.name)
    if key not in _ROUNDED_CACHE:
        _ROUNDED_CACHE[key] = (truth[name].astype(dtype), max_finite_abs(truth[name]))
    return _ROUNDED_CACHE[key]


def build_case(spec: LayerSpec, seed: int, xla: bool) -> standalone.Case:
    """Build the layer of ``spec`` on TensorFlow under the current dtype policy and device scope (standalone.Case)."""
    return standalone.Case(spec.declaration.builder, spec.kind, spec.params, list(spec.input_shape), seed, xla)


def _key(spec: LayerSpec, seed: int, *dtypes: str) -> str:
    text = json.dumps([spec.kind, spec.params_json, list(spec.input_shape), seed, *dtypes])
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _host(tensor: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor))


def reference_of(spec: LayerSpec, case: Any, seed: int, cache_dir: Path | None) -> dict[str, np.ndarray] | None:
    """The float64 reference of a built-in transposed convolution, from the very values the backend got.

    Those values depend on the seed and on the dtypes the policy casts them to,
    so that is the cache key: every cell of a run with the same layer, seed
    and policy dtypes shares one computation.
    """
    if not spec.declaration.reference:
        return None  # resize_conv2d and user layers have no reference (yet)
    policy = keras.config.dtype_policy()
    key = _key(spec, seed, policy.variable_dtype, policy.compute_dtype)
    if key in _REFERENCE_CACHE:
        return _REFERENCE_CACHE[key]
    path = cache_dir / f"reference-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            _REFERENCE_CACHE[key] = load_tensors(path)
            return _REFERENCE_CACHE[key]
        except Exception:  # noqa: BLE001 - a torn or foreign cache file: compute it again
            pass
    params = spec.params
    channels_first = params["data_format"] == "channels_first"
    lengths = case.output_shape[2:] if channels_first else case.output_shape[1:-1]
    geometry = reference.TransposeSpec(tuple(params["strides"]), params["padding"], tuple(params["dilation_rate"]),
                                       tuple(lengths), channels_first)
    layer = case.layer
    kernel = np.asarray(_host(layer.kernel), np.float64)
    bias = None if layer.bias is None else np.asarray(_host(layer.bias), np.float64)
    x, upstream = _host(case.x), _host(case.upstream)
    out = {"output": reference.conv_transpose(x, kernel, bias, geometry)}
    out.update(reference.conv_transpose_grads(x, kernel, upstream, geometry, with_bias=bias is not None))
    _REFERENCE_CACHE[key] = out
    if path is not None:
        save_tensors(path, out)  # DiskFullError reaches the worker's handler: the cell is not recorded
    return out


def adjoint_of(spec: LayerSpec, case: Any, seed: int, device: str, backend: Any) -> dict[str, Any] | None:
    """The dot-product test with the cell's own kernel in the policy's compute dtype (cached per worker).

    ``backend`` is the worker's backend module (:mod:`detaudit.engine.backends`), which runs the ops.
    """
    if not spec.declaration.adjoint or spec.params["data_format"] != "channels_last":
        return None
    dtype = keras.config.dtype_policy().compute_dtype
    key = (_key(spec, seed, str(dtype), keras.config.dtype_policy().variable_dtype), device)
    if key not in _ADJOINT_CACHE:
        z = np.random.default_rng([seed, 3]).standard_normal(case.output_shape, dtype=np.float32)
        _ADJOINT_CACHE[key] = {"dtype": str(dtype), **backend.adjoint(case, z, spec.params, str(dtype))}
    return _ADJOINT_CACHE[key]
