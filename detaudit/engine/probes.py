"""Small TensorFlow measurements run in a worker: actual output lengths, measured tap counts, the adjoint test.

Imported only inside worker processes (it imports TensorFlow). Each probe takes
and returns plain JSON data, so the runner can carry it over the worker pipe.
"""

from __future__ import annotations

from typing import Any

import keras
import ml_dtypes
import numpy as np
import tensorflow as tf

from detaudit.core.kinds import KINDS
from detaudit.core.reference import output_length
from detaudit.engine import channel, standalone
from detaudit.errors import one_line

__all__ = ["PROBES", "adjoint_gap"]


def _keras_transpose(rank: int, item: dict[str, Any]) -> Any:
    """The Keras kind of this rank, built the way cells build it."""
    kind = KINDS[f"Conv{rank}DTranspose"]
    params = {**kind.defaults(), "filters": 1, "kernel_size": [item["kernel"]] * rank,
              "strides": [item["stride"]] * rank, "padding": item["padding"],
              "dilation_rate": [item["dilation"]] * rank,
              "output_padding": None if item["output_padding"] is None else [item["output_padding"]] * rank}
    return standalone.BUILDERS[kind.builder](kind.name, params)


def measured_lengths(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The output length TensorFlow returns for each (rank, n, kernel, stride, padding, dilation, output_padding)."""
    out = []
    for i, item in enumerate(items):
        channel.progress("output lengths", i + 1, len(items))
        rank = item["rank"]
        try:
            layer = _keras_transpose(rank, item)
            y = layer(tf.zeros((1, *(item["n"],) * rank, 1)))
            out.append({"length": int(y.shape[1]), "error": None})
        except Exception as exc:  # noqa: BLE001 - a refusal is the measurement
            out.append({"length": None, "error": one_line(exc, 300)})
    return out


def measured_checkerboard(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tap counts through TensorFlow: ones input and ones kernel, interior of the 2-D output.

    Also measured for the resize-convolution alternative (nearest UpSampling2D by
    the stride, then a stride-1 Conv2D with the same kernel).
    """
    out = []
    for item in items:
        k, s = item["kernel"], item["stride"]
        # Room for the border margin on both sides and at least two whole periods in between.
        n = -(-(2 * (k + s) + 4 * s) // s) + 2
        ones = tf.ones((1, n, n, 1))
        transpose = tf.nn.conv2d_transpose(ones, tf.ones((k, k, 1, 1)), output_shape=[1, n * s, n * s, 1],
                                           strides=s, padding="SAME")[0, :, :, 0].numpy()
        resized = tf.nn.conv2d(keras.layers.UpSampling2D(s)(ones), tf.ones((k, k, 1, 1)), strides=1,
                               padding="SAME")[0, :, :, 0].numpy()
        margin = k + s  # away from the borders, where padding thins every pattern
        periods = (n * s - 2 * margin) // s  # whole periods only, or the mean is off
        results = {}
        for name, grid in (("transpose", transpose), ("resize_conv", resized)):
            interior = grid[margin:margin + periods * s, margin:margin + periods * s]
            results[name] = {"score": float((interior.max() - interior.min()) / interior.mean()),
                             "window": interior[: 2 * s, : 2 * s].astype(int).tolist()}
        out.append(results)
    return out


def adjoint_gap(x: tf.Tensor, kernel: tf.Tensor, z: tf.Tensor, output_shape: list[int], *, strides: Any,
                padding: str, dilations: Any = 1) -> dict[str, float]:
    """The dot-product test <conv(z, W), x> = <z, conv_transpose(x, W)> in x's dtype.

    Dot products are taken in float64 from TensorFlow's outputs, and the gap is
    divided by |conv(z)|·|x| + |z|·|conv_transpose(x)| and the dtype's epsilon,
    so cancellation in the sums cannot inflate it. ``reconstruction`` is
    |conv_transpose(conv(z)) - z| / |z|: the adjoint is not the inverse.
    """
    options = {"strides": strides, "padding": padding.upper(), "dilations": dilations}
    tx = tf.nn.conv_transpose(x, kernel, output_shape=output_shape, **options)
    cz = tf.nn.convolution(z, kernel, **options)
    back = tf.nn.conv_transpose(cz, kernel, output_shape=output_shape, **options)
    cz64, x64, z64, tx64, back64 = (np.asarray(t.numpy(), np.float64) for t in (cz, x, z, tx, back))
    gap = abs(np.vdot(cz64, x64) - np.vdot(z64, tx64))
    scale = np.linalg.norm(cz64) * np.linalg.norm(x64) + np.linalg.norm(z64) * np.linalg.norm(tx64)
    eps = float(ml_dtypes.finfo(ml_dtypes.bfloat16 if x.dtype == tf.bfloat16 else np.dtype(x.dtype.name)).eps)
    return {"adjoint_eps": float(gap / scale / eps) if scale else 0.0,
            "reconstruction": float(np.linalg.norm(back64 - z64) / max(np.linalg.norm(z64), 1e-300))}


def adjoint(items: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`adjoint_gap` per spec, in float32 and float64, from seeded random data, and the oneDNN path."""
    from detaudit.engine.fingerprint import onednn_state

    out = []
    for i, item in enumerate(items):
        channel.progress("adjoint tests", i + 1, len(items))
        rank, k, s, padding = item["rank"], item["kernel"], item["stride"], item["padding"]
        n, channels, filters = item["n"], item["channels"], item["filters"]
        row = {**item, "results": {}}
        for dtype in ("float32", "float64"):
            rng = np.random.default_rng(item.get("seed", 0))
            x = tf.constant(rng.standard_normal((2, *(n,) * rank, channels)), dtype=dtype)
            kernel = tf.constant(rng.standard_normal((*(k,) * rank, filters, channels)) / k ** rank, dtype=dtype)
            shape = [2, *(output_length(n, k, s, padding),) * rank, filters]
            z = tf.constant(rng.standard_normal(shape), dtype=dtype)
            try:
                row["results"][dtype] = {"error": None, **adjoint_gap(x, kernel, z, shape, strides=s, padding=padding)}
            except Exception as exc:  # noqa: BLE001 - a refusal is the result
                row["results"][dtype] = {"error": one_line(exc, 300)}
        out.append(row)
    return {"specs": out, "onednn": onednn_state(), "tensorflow": tf.__version__}


def shapes(payload: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Lengths and checkerboards in one worker: one TensorFlow start for ``detaudit shapes``."""
    from detaudit.engine.fingerprint import onednn_state

    return {"lengths": measured_lengths(payload["lengths"]),
            "checkerboard": measured_checkerboard(payload["checkerboard"]), "onednn": onednn_state()}


def audit(payload: dict[str, Any]) -> dict[str, Any]:
    """``detaudit audit``: see :func:`detaudit.model_audit.audit_probe`."""
    from detaudit.engine.model_audit import audit_probe  # noqa: I001 - TensorFlow-heavy, loaded on demand

    return audit_probe(payload)


PROBES = {"shapes": shapes, "adjoint": adjoint, "audit": audit}
