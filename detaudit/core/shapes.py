"""Shape and checkerboard audit of transposed convolutions, analytically. Pure Python + NumPy.

Answers the seed post's shape questions before anything runs: the output
length Keras computes, whether Conv then Conv*Transpose gives the input size
back (and the output_padding that makes it), which configurations TensorFlow
will reject at run time, and how unevenly kernel taps land on output positions
(the checkerboard of Odena, Dumoulin and Olah, Distill 2016).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from detaudit.core.reference import output_length

__all__ = ["ShapeRow", "checkerboard_pattern", "checkerboard_score", "conv_length", "shape_row"]


def conv_length(n: int, kernel: int, stride: int, padding: str, dilation: int = 1) -> int:
    """Output length of the forward convolution (TensorFlow's SAME/VALID rule)."""
    k_eff = (kernel - 1) * dilation + 1
    if padding == "same":
        return math.ceil(n / stride)
    return max(0, (n - k_eff) // stride + 1)


def checkerboard_pattern(kernel: int, stride: int, dilation: int = 1) -> list[int]:
    """Taps landing on each output position over one period (ones input, ones kernel, away from borders).

    Position j receives tap t from input i when i * stride + t * dilation = j, so
    the count depends only on j modulo the stride: floor(k/s) or ceil(k/s) for
    dilation 1, uniform exactly when the stride divides the kernel size.
    """
    return [sum(1 for t in range(kernel) if (j - t * dilation) % stride == 0) for j in range(stride)]


def checkerboard_score(kernel: int, stride: int, dilation: int = 1, rank: int = 2) -> float:
    """(max - min) / mean of the tap counts in the interior; 0 means no checkerboard.

    In rank r the count at a position is the product of the per-axis counts.
    """
    counts = np.array(checkerboard_pattern(kernel, stride, dilation), dtype=float)
    grid = counts
    for _ in range(rank - 1):
        grid = np.multiply.outer(grid, counts)
    return float((grid.max() - grid.min()) / grid.mean()) if grid.mean() else 0.0


@dataclasses.dataclass(frozen=True)
class ShapeRow:
    """One input length through a transposed convolution and through the Conv round trip."""

    n: int
    kernel: int
    stride: int
    padding: str
    dilation: int
    output_padding: int | None
    output: int | None  # what Keras computes; None when the configuration is rejected
    rejected: str | None  # why TensorFlow will refuse it on this row's execution path, in plain words
    onednn: bool  # the execution path this row predicts: oneDNN on (True) or TensorFlow's own kernels
    rejected_other_path: str | None  # the prediction for the other path
    conv: int  # Conv with the same kernel, stride and padding: n -> conv
    round_trip: int  # then the transpose (output_padding None): conv -> round_trip
    fixing_output_padding: int | None  # the output_padding that brings conv back to n, if one exists

    @property
    def round_trip_ok(self) -> bool:
        return self.round_trip == self.n

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "round_trip_ok": self.round_trip_ok}


def _rejection(n: int, k: int, s: int, padding: str, d: int, p: int | None, onednn: bool = False) -> str | None:
    """Why TensorFlow refuses this configuration at run time, on the oneDNN path or not (None: it runs)."""
    if p is not None and p >= s:
        return f"output_padding {p} must be smaller than the stride {s} (Keras raises ValueError)"
    if s > 1 and d > 1:
        return "strides > 1 together with dilation_rate > 1 is not supported"
    length = output_length(n, k, s, padding, d, p)
    if length <= 0:
        if onednn and length == 0:
            return None  # TF-FACTS: oneDNN returns an empty tensor where TensorFlow's own kernels raise
        return f"the output length would be {length}"
    # TensorFlow computes the transpose as the gradient of a Conv from the output back to
    # the input; that Conv must give n again, or it fails at run time with
    # "Conv2DCustomBackpropInput: Size of out_backprop doesn't match computed".
    back = conv_length(length, k, s, padding, d)
    if back != n:
        text = ("oneDNN: \"could not create a primitive descriptor\"" if onednn
                else "\"Size of out_backprop doesn't match computed\"")
        return f"Conv of the {length}-long output gives {back}, not {n}: TensorFlow fails at run time ({text})"
    return None


def _fixing_output_padding(n: int, m: int, k: int, s: int, padding: str, d: int) -> int | None:
    """The output_padding p with transpose(m, p) == n, if 0 <= p < s and TensorFlow accepts it."""
    k_eff = (k - 1) * d + 1
    p = n - (m - 1) * s - (k_eff % 2 if padding == "same" else k_eff)
    if 0 <= p < s and _rejection(m, k, s, padding, d, p) is None:
        return p
    return None


def shape_row(n: int, kernel: int, stride: int, padding: str, dilation: int = 1,
              output_padding: int | None = None, onednn: bool = False) -> ShapeRow:
    """The shape audit of one input length (one spatial axis), predicted for one execution path.

    ``onednn`` says which path: TensorFlow turns oneDNN on by default on CPUs
    with AVX512_VNNI/BF16 or AMX, and the two paths disagree on some shapes.
    """
    rejected = _rejection(n, kernel, stride, padding, dilation, output_padding, onednn)
    other = _rejection(n, kernel, stride, padding, dilation, output_padding, not onednn)
    output = None if rejected else output_length(n, kernel, stride, padding, dilation, output_padding)
    conv = conv_length(n, kernel, stride, padding, dilation)
    round_trip = output_length(conv, kernel, stride, padding, dilation) if conv > 0 else 0
    fix = _fixing_output_padding(n, conv, kernel, stride, padding, dilation) if conv > 0 else None
    return ShapeRow(n, kernel, stride, padding, dilation, output_padding, output, rejected, onednn, other, conv,
                    round_trip, fix)
