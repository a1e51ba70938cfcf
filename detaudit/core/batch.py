"""The numerics of the ``batch`` comparison: is a sample's result independent of the batch it was computed in?

Pure NumPy, exact. A cell of batch ``B`` is run again at other batch sizes
``b``: :func:`pass_plan` says which of the cell's samples each pass of size
``b`` holds. Per-sample tensors (the output, the input gradient) are held to
the same sample's slice of the cell's own pass, bit for bit and in ULP
(:func:`compare_samples`); a variable's gradient is a sum over the batch, so it
is held to the float64 sum of the per-sample (batch 1) gradients instead
(:func:`compare_summed`), and where the float64 truth is known, the side closer
to it is named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from detaudit.core.numerics import Comparison, compare, max_finite_abs, ulp_distance

__all__ = ["PER_SAMPLE", "SampleComparison", "SummedComparison", "compare_samples", "compare_summed", "pass_plan"]

#: Tensors with one slice per sample; every other tensor of a pass (a variable's gradient) is a sum over the batch.
PER_SAMPLE = ("output", "grad_input")


def pass_plan(batch: int, size: int) -> np.ndarray:
    """The samples of each pass at batch ``size`` for a cell of ``batch`` samples: shape (passes, size).

    Every pass is full: ``ceil(batch / size)`` passes take the samples in order,
    wrapping around to sample 0 where ``size`` does not divide ``batch`` (and a
    size above ``batch`` repeats the samples), so each pass runs at exactly the
    size asked for and every sample is in at least one pass.

    Raises:
        ValueError: ``batch`` or ``size`` below 1.
    """
    if batch < 1 or size < 1:
        raise ValueError(f"Invalid batch sizes. Expected integers >= 1. Received batch={batch}, size={size}.")
    passes = -(-batch // size)
    return (np.arange(passes * size) % batch).reshape(passes, size)


@dataclasses.dataclass(frozen=True)
class SampleComparison:
    """A per-sample tensor at another batch size against the cell's own pass."""

    comparison: Comparison  # over every position of every pass
    n_samples_differ: int  # distinct samples with a bit that differs in some pass
    sample: int | None  # the sample with the largest ULP gap (the first that differs when none is counted)


def _row_bits(x: np.ndarray, rows: int) -> np.ndarray:
    return np.ascontiguousarray(x).reshape(rows, -1).view(f"u{x.dtype.itemsize}")


def compare_samples(other: np.ndarray, samples: np.ndarray, own: np.ndarray) -> SampleComparison:
    """Compare ``other`` (one slice per position of a :func:`pass_plan`, concatenated) with ``own[samples]``.

    Args:
        other: the tensor computed at the other batch size, shape ``(positions, ...)``.
        samples: the sample at each position (``pass_plan(...).ravel()``).
        own: the cell's own tensor, shape ``(batch, ...)``.
    """
    samples = np.asarray(samples, dtype=np.int64).ravel()
    expected = own[samples]
    if other.shape != expected.shape or other.dtype != expected.dtype:
        raise ValueError(f"other batch size gave {other.dtype}{list(other.shape)}, expected "
                         f"{expected.dtype}{list(expected.shape)}")
    rows = samples.size
    result = compare(other, expected, digest=False)
    if result.bitwise_equal:
        return SampleComparison(result, 0, None)
    differs = (_row_bits(other, rows) != _row_bits(expected, rows)).any(axis=1)
    per_row = ulp_distance(other, expected).reshape(rows, -1).max(axis=1, initial=0)
    worst_row = int(np.argmax(per_row)) if per_row.max(initial=0) > 0 else int(np.argmax(differs))
    return SampleComparison(result, int(np.unique(samples[differs]).size), int(samples[worst_row]))


@dataclasses.dataclass(frozen=True)
class SummedComparison:
    """A variable's gradient at batch ``size`` (summed over the passes) against the per-sample float64 sum."""

    comparison: Comparison  # both sides rounded to the tensor's dtype
    ref_scale: float  # the largest magnitude of the per-sample float64 sum: max_abs / ref_scale is the relative gap
    closer_batch: int | None  # of ``size`` and 1, the batch size whose gradient is closer to float64 (None: a tie,
    #                           or no truth)


def compare_summed(batched: Sequence[np.ndarray], per_sample: Sequence[np.ndarray], plan: np.ndarray,
                   truth: np.ndarray | None = None) -> SummedComparison:
    """Compare a summed gradient computed at batch size ``plan.shape[1]`` with the sum of per-sample gradients.

    Args:
        batched: one gradient per pass of ``plan`` (each a sum over that pass's samples).
        per_sample: one gradient per sample of the cell, each computed alone (batch 1).
        plan: the :func:`pass_plan` the batched gradients were computed with.
        truth: the float64 gradient of the whole cell batch (one of each sample), if known.

    Returns:
        Both sums are taken in float64 (the batched one over its passes, the
        per-sample one over the same positions, so a sample in two passes counts
        twice on both sides) and compared in the tensor's dtype. The truth is
        compared only where every sample appears equally often.
    """
    dtype = batched[0].dtype
    summed = np.sum([np.asarray(g, np.float64) for g in batched], axis=0)
    counts = np.bincount(plan.ravel(), minlength=len(per_sample))
    reference = np.sum([c * np.asarray(g, np.float64) for c, g in zip(counts, per_sample) if c], axis=0)
    result = compare(summed.astype(dtype), reference.astype(dtype), digest=False)
    closer = None
    if truth is not None and np.all(counts == counts[0]):
        target = counts[0] * np.asarray(truth, np.float64)
        gap_batched, gap_alone = _largest_gap(summed, target), _largest_gap(reference, target)
        if gap_batched != gap_alone:
            closer = int(plan.shape[1]) if gap_batched < gap_alone else 1
    return SummedComparison(result, max_finite_abs(reference), closer)


def _largest_gap(a: np.ndarray, b: np.ndarray) -> float:
    gaps = np.abs(a - b)
    finite = gaps[np.isfinite(gaps)]
    return float(finite.max()) if finite.size else 0.0


def row(tensor: str, size: int, result: SampleComparison | SummedComparison) -> dict[str, Any]:
    """A worker record's entry for one tensor at one batch size (the table's ``batch`` row)."""
    out: dict[str, Any] = {**result.comparison.to_dict(), "tensor": tensor, "batch_size": size}
    if isinstance(result, SampleComparison):
        out.update(n_samples_differ=result.n_samples_differ, sample=result.sample)
    else:
        out.update(ref_scale=result.ref_scale, closer_batch=result.closer_batch)
    return out
