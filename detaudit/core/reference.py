"""An independent NumPy float64 transposed convolution and its gradients: the truth TensorFlow is judged by.

Not TensorFlow: written from the definition. A transposed convolution is the
adjoint of the strided, dilated cross-correlation that maps its output back to
its input, so each input element scatters ``x[i] * W[tap]`` to output position
``i * stride + tap * dilation - pad_before``. Padding follows TensorFlow's
SAME/VALID rule for an explicit output length L (what Keras passes down):
VALID pads nothing, SAME pads ``max((n - 1) * s + k_eff - L, 0)`` in total,
the smaller half before. Layouts: kernel ``(*spatial, out_channels,
in_channels)`` as in Keras and tf.nn; data channels_last or channels_first.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import numpy as np

__all__ = ["TransposeSpec", "conv_transpose", "conv_transpose_grads", "output_length"]


def output_length(n: int, kernel: int, stride: int, padding: str, dilation: int = 1,
                  output_padding: int | None = None) -> int:
    """Output length of a transposed convolution, with the formula Keras 3 uses.

    keras/src/backend/common/backend_utils.py: k_eff = (k - 1) * d + 1; valid
    gives (n - 1) * s + k_eff + p, or n * s + max(k_eff - s, 0) when p is None;
    same gives n * s when p is None, else (n - 1) * s + k_eff % 2 + p.
    """
    k_eff = (kernel - 1) * dilation + 1
    if padding == "valid":
        if output_padding is None:
            return n * stride + max(k_eff - stride, 0)
        return (n - 1) * stride + k_eff + output_padding
    if output_padding is None:
        return n * stride
    return (n - 1) * stride + k_eff % 2 + output_padding


@dataclasses.dataclass(frozen=True)
class TransposeSpec:
    """Geometry of one transposed convolution, per spatial dimension."""

    strides: tuple[int, ...]
    padding: str  # "same" or "valid"
    dilation: tuple[int, ...]
    output_lengths: tuple[int, ...]  # explicit spatial output lengths
    channels_first: bool = False


def _pad_before(n: int, k: int, s: int, d: int, length: int, padding: str) -> int:
    if padding == "valid":
        return 0
    k_eff = (k - 1) * d + 1
    return max((n - 1) * s + k_eff - length, 0) // 2


def _geometry(x_shape: Sequence[int], kernel_shape: Sequence[int], spec: TransposeSpec):
    spatial_in = tuple(x_shape[1:-1])
    taps = tuple(kernel_shape[:-2])
    pads = tuple(_pad_before(n, k, s, d, length, spec.padding)
                 for n, k, s, d, length in zip(spatial_in, taps, spec.strides, spec.dilation, spec.output_lengths))
    # A canvas wide enough for every position a tap can reach, shifted by the padding.
    full = tuple(max((n - 1) * s + (k - 1) * d + 1, length + p)
                 for n, k, s, d, length, p in zip(spatial_in, taps, spec.strides, spec.dilation,
                                                 spec.output_lengths, pads))
    return spatial_in, taps, pads, full


def _tap_slices(tap: tuple[int, ...], spatial_in: tuple[int, ...], spec: TransposeSpec) -> tuple[slice, ...]:
    """Where input positions 0..n-1 land on the canvas for one kernel tap."""
    return tuple(slice(t * d, t * d + (n - 1) * s + 1, s)
                 for t, n, s, d in zip(tap, spatial_in, spec.strides, spec.dilation))


def _to_last(x: np.ndarray, spec: TransposeSpec) -> np.ndarray:
    return np.moveaxis(x, 1, -1) if spec.channels_first else x


def _from_last(x: np.ndarray, spec: TransposeSpec) -> np.ndarray:
    return np.moveaxis(x, -1, 1) if spec.channels_first else x


def conv_transpose(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None, spec: TransposeSpec) -> np.ndarray:
    """The transposed convolution of ``x`` in float64 (any rank 1-3)."""
    x = _to_last(np.asarray(x, np.float64), spec)
    kernel = np.asarray(kernel, np.float64)
    spatial_in, taps, pads, full = _geometry(x.shape, kernel.shape, spec)
    canvas = np.zeros((x.shape[0], *full, kernel.shape[-2]))
    for tap in itertools.product(*(range(k) for k in taps)):
        canvas[(slice(None), *_tap_slices(tap, spatial_in, spec))] += x @ kernel[tap].T
    window = tuple(slice(p, p + length) for p, length in zip(pads, spec.output_lengths))
    y = canvas[(slice(None), *window)]
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return _from_last(y, spec)


def conv_transpose_grads(x: np.ndarray, kernel: np.ndarray, upstream: np.ndarray, spec: TransposeSpec,
                         with_bias: bool) -> dict[str, np.ndarray]:
    """Gradients of ``sum(conv_transpose(x) * upstream)`` w.r.t. input, kernel and bias, in float64."""
    x = _to_last(np.asarray(x, np.float64), spec)
    kernel = np.asarray(kernel, np.float64)
    g = _to_last(np.asarray(upstream, np.float64), spec)
    spatial_in, taps, pads, full = _geometry(x.shape, kernel.shape, spec)
    canvas = np.zeros((g.shape[0], *full, g.shape[-1]))
    canvas[(slice(None), *(slice(p, p + length) for p, length in zip(pads, spec.output_lengths)))] = g
    grad_x = np.zeros_like(x)
    grad_kernel = np.zeros_like(kernel)
    batch_axes = tuple(range(x.ndim - 1))
    for tap in itertools.product(*(range(k) for k in taps)):
        picked = canvas[(slice(None), *_tap_slices(tap, spatial_in, spec))]  # (batch, *spatial_in, out)
        grad_x += picked @ kernel[tap]
        grad_kernel[tap] = np.tensordot(picked, x, axes=(batch_axes, batch_axes))
    grads = {"grad_input": _from_last(grad_x, spec), "grad_kernel": grad_kernel}
    if with_bias:
        grads["grad_bias"] = g.sum(axis=batch_axes)
    return grads
