"""Run a step several times and compare every later result with the first: the one repeat-and-compare routine.

Pure NumPy. The matrix worker (one forward+backward pass of a layer), the model
audit (whole training executions) and :func:`detaudit.assert_deterministic`
all call :func:`repeat_and_compare`; only what a "step" is differs.

Memory holds the first result and the current one (plus, on request, the
first result that differed), whatever ``repeats`` is.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from detaudit.core.numerics import FLOAT_DTYPES, Comparison, compare, same_bits, worst

__all__ = ["DevicePass", "RepeatOutcome", "TensorOutcome", "compare_any", "repeat_and_compare", "repeat_on_device"]


@dataclasses.dataclass
class TensorOutcome:
    """One tensor over the repeats: its first value and how the later ones differed from it.

    ``comparison`` folds the later repeats into their worst case (each
    statistic is the maximum over the repeats); it is None when there was only
    one call. ``first_difference`` is ``(call, value)`` of the first later call
    that differed, kept only when asked for (to point at an index in a message).
    """

    name: str
    first: np.ndarray
    comparison: Comparison | None = None
    n_repeats_differ: int = 0
    first_difference: tuple[int, np.ndarray] | None = None

    @property
    def bitwise_equal(self) -> bool:
        return self.n_repeats_differ == 0


@dataclasses.dataclass
class RepeatOutcome:
    """What :func:`repeat_and_compare` found: one :class:`TensorOutcome` per tensor, in the step's order."""

    repeats: int
    tensors: list[TensorOutcome]
    #: Median wall time of one warm call of the step in milliseconds (calls 2 onwards: the first traces and
    #: warms caches), the comparison excluded; None with a single call.
    ms_per_pass: float | None = None

    @property
    def bitwise_equal(self) -> bool:
        return all(t.bitwise_equal for t in self.tensors)

    def by_name(self) -> dict[str, TensorOutcome]:
        return {t.name: t for t in self.tensors}


def compare_any(a: np.ndarray, b: np.ndarray) -> Comparison:
    """:func:`detaudit.core.numerics.compare` for floats; exact equality counts for integer and boolean arrays.

    Integers and booleans have no ULPs: their ``max_ulp`` is the largest
    absolute difference (one integer step is one unit), which is what a
    tolerance on them means.
    """
    if a.dtype.name in FLOAT_DTYPES or a.dtype in FLOAT_DTYPES.values():
        return compare(a, b, digest=False)
    if a.dtype != b.dtype or a.shape != b.shape:
        raise TypeError(f"Cannot compare {a.dtype}{list(a.shape)} with {b.dtype}{list(b.shape)}.")
    differs = a != b
    n_mismatch = int(np.count_nonzero(differs))
    n = int(a.size)
    if not n_mismatch:
        return Comparison(n, 0, True, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, None)
    if a.dtype.kind in "iub":
        gaps = np.abs(a.astype(np.float64) - b.astype(np.float64))
        largest = int(gaps.max())
        rel = float(np.max(gaps / np.maximum(np.abs(b.astype(np.float64)), 1e-300)))
    else:  # strings, objects: only "differs" is meaningful
        largest, rel = 0, 0.0
    return Comparison(n, n_mismatch, False, largest, 0, largest, float(largest) * n_mismatch / n, float(largest), rel,
                      float(largest), 0, None)


def _identical(n: int) -> Comparison:
    return Comparison(n, 0, True, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, None)


def _as_arrays(values: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(v) for v in values]


def repeat_and_compare(step: Callable[[], Sequence[Any]], repeats: int, *, names: Sequence[str] | None = None,
                       keep_first_difference: bool = False,
                       compare_fn: Callable[[np.ndarray, np.ndarray], Comparison] = compare_any) -> RepeatOutcome:
    """Call ``step()`` ``repeats`` times and compare each later result, tensor by tensor, with the first.

    Args:
        step: returns a sequence of arrays (the same count, shapes and dtypes every call).
        repeats: calls in all (>= 1); with 1 nothing is compared.
        names: one name per tensor (default ``"0"``, ``"1"``, ...).
        keep_first_difference: also keep the first later value that differed, per tensor.
        compare_fn: how a later value is compared with the first (default: exact for every dtype).

    Returns:
        A :class:`RepeatOutcome`.

    Raises:
        ValueError: ``repeats`` < 1, or a later call returned a different number,
            shape or dtype of tensors (a step must be the same computation every time).
    """
    if repeats < 1:
        raise ValueError(f"Invalid value for argument `repeats`. Expected an integer >= 1. Received repeats={repeats}.")
    first = _as_arrays(step())
    labels = list(names) if names is not None else [str(i) for i in range(len(first))]
    if len(labels) != len(first):
        raise ValueError(f"the step returned {len(first)} tensors for {len(labels)} names")
    outcomes = [TensorOutcome(name, value) for name, value in zip(labels, first)]
    times: list[float] = []
    for call in range(2, repeats + 1):
        started = time.perf_counter()
        later = _as_arrays(step())
        times.append(time.perf_counter() - started)
        if len(later) != len(first):
            raise ValueError(f"call {call} returned {len(later)} tensors, call 1 returned {len(first)}")
        for outcome, value in zip(outcomes, later):
            if value.shape != outcome.first.shape or value.dtype != outcome.first.dtype:
                raise ValueError(f"{outcome.name}: call {call} returned {value.dtype}{list(value.shape)}, call 1 "
                                 f"returned {outcome.first.dtype}{list(outcome.first.shape)}")
            if compare_fn is compare_any and same_bits(value, outcome.first):  # the usual case, at memory speed
                result = _identical(value.size)
            else:
                result = compare_fn(value, outcome.first)
            if outcome.comparison is None:
                outcome.comparison = result
            elif not result.bitwise_equal:  # an identical repeat changes no statistic
                outcome.comparison = worst(outcome.comparison, result)
            if not result.bitwise_equal:
                outcome.n_repeats_differ += 1
                if keep_first_difference and outcome.first_difference is None:
                    outcome.first_difference = (call, value.copy())
    return RepeatOutcome(repeats, outcomes, median_ms(times))


def median_ms(seconds: Sequence[float]) -> float | None:
    """The median of durations in seconds, in milliseconds (None for none)."""
    return 1000.0 * statistics.median(seconds) if seconds else None


class DevicePass(Protocol):
    """A pass whose later repeats are compared where they are computed (a GPU): see :func:`repeat_on_device`."""

    def first(self) -> Sequence[Any]:
        """Run the first pass and copy its tensors to the host (the reference the later passes are held to)."""

    def later(self) -> None:
        """Run one more pass and compare it with the first on the device; do not wait for it."""

    def results(self) -> list[tuple[int, Any | None]]:
        """Wait once; per tensor, (later passes that differed, the one with the largest ULP gap or None)."""


def repeat_on_device(device_pass: DevicePass, repeats: int, *, names: Sequence[str]) -> RepeatOutcome:
    """:func:`repeat_and_compare` for a pass that compares on its own device, with one host sync per cell.

    On a GPU, copying every repeat's tensors to the host costs more than the
    pass itself (TF-FACTS: 12x to 155x on an H100), so only the first repeat
    is copied; later repeats are compared with it on the device, and a repeat
    is copied back only if it differed. ``n_repeats_differ`` and ``max_ulp``
    are exact; the other statistics are those of the repeat with the largest
    ULP gap (the host path folds the worst of each statistic over all repeats).
    ``ms_per_pass`` is the later passes' total time, the one sync included, over
    their number: a mean, since the passes are not waited for one by one.
    """
    if repeats < 1:
        raise ValueError(f"Invalid value for argument `repeats`. Expected an integer >= 1. Received repeats={repeats}.")
    outcomes = [TensorOutcome(name, value) for name, value in zip(names, _as_arrays(device_pass.first()))]
    if repeats == 1:
        return RepeatOutcome(repeats, outcomes)
    started = time.perf_counter()
    for _ in range(repeats - 1):
        device_pass.later()
    results = device_pass.results()
    ms_per_pass = 1000.0 * (time.perf_counter() - started) / (repeats - 1)
    for outcome, (n_differ, worst_value) in zip(outcomes, results):
        outcome.n_repeats_differ = int(n_differ)
        later = outcome.first if worst_value is None else np.asarray(worst_value)
        outcome.comparison = compare_any(later, outcome.first)
    return RepeatOutcome(repeats, outcomes, ms_per_pass)
