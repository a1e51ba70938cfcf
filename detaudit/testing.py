"""Assertions for users' own tests: is a function deterministic, bit for bit or within a tolerance?

Pure NumPy: TensorFlow is never imported here. A function that returns
TensorFlow or Keras tensors or variables is read through their ``.numpy()``,
so TensorFlow is only ever imported by the user's own code.

The repeating is :func:`detaudit.core.repeat.repeat_and_compare` (the one
repeat-and-compare routine); this module adds the flattening of nested results,
the tolerance and the failure message, in the manner of
``torch.testing.assert_close``::

    Tensor `output` (shape (2, 8, 8, 4), float32) differs between call 1 and call 3.
    Mismatched elements: 5 / 512 (1.0%)
    Greatest ULP difference: 2 at index (0, 3, 1, 2) (up to 0 allowed)
    Greatest absolute difference: 2.384185791015625e-07 at index (0, 3, 1, 2) (up to 0.0 allowed)

The pytest plugin (:mod:`detaudit.pytest_plugin`) exposes the same function as
the ``assert_deterministic`` fixture and behind ``@pytest.mark.deterministic``.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from detaudit.core.config import MAX_REPEATS
from detaudit.core.numerics import FLOAT_DTYPES, Comparison, nan_mismatch, ulp_distance
from detaudit.core.repeat import TensorOutcome, compare_any, repeat_and_compare
from detaudit.errors import UsageError

__all__ = ["assert_deterministic"]

_ROOT = "output"  # the name of a result that is a single tensor, not a structure
#: How deep a returned structure may nest (a deeper one is refused, not a RecursionError).
MAX_DEPTH = 100


def assert_deterministic(fn: Callable[..., Any], *args: Any, repeats: int = 3, max_ulp: int = 0, atol: float = 0.0,
                         **kwargs: Any) -> None:
    """Call ``fn(*args, **kwargs)`` ``repeats`` times and assert every call returns what the first returned.

    What ``fn`` returns may be a NumPy array, a TensorFlow or Keras tensor or
    variable (anything with ``.numpy()``), a Python scalar, or nested lists,
    tuples and dicts of them (dict keys are visited in sorted order). Each leaf
    is named by its path: ``output`` for a lone tensor, else ``[1]``,
    ``['grads'][0]`` and so on.

    An element matches when its distance in ULPs is at most ``max_ulp`` **or**
    its absolute difference is at most ``atol``. With the defaults
    (``max_ulp=0, atol=0.0``) the check is bit for bit, the rule of every
    detaudit comparison: a bitwise mismatch is counted even where the values
    are 0 ULP apart (+0 vs -0, two NaNs with different payloads). With any
    tolerance the comparison is by value: +0 equals -0 and NaN matches NaN
    whatever its payload. NaN never matches a number. Integers and booleans
    have no ULPs: they match exactly unless ``atol`` allows the difference.
    A sparse tensor is compared as its indices, values and shape, a ragged
    one as its values and row splits; a generator, or an object that equals
    only itself, is refused (it cannot be compared).

    The function's own keyword arguments cannot be called ``repeats``,
    ``max_ulp`` or ``atol``; wrap it in a lambda if they are.

    Args:
        fn: the function under test.
        *args: positional arguments for ``fn``, the same objects every call.
        repeats: calls in all (>= 2); each later call is compared with the first.
        max_ulp: ULPs an element of a floating-point tensor may move (>= 0).
        atol: absolute difference an element may move (>= 0).
        **kwargs: keyword arguments for ``fn``.

    Raises:
        AssertionError: a later call returned different values (outside the
            tolerance) or a different structure, shape or dtype. The message
            names the tensor, its shape and dtype, the calls compared, the
            mismatched element count and the greatest ULP and absolute
            differences with their indices; the call named is the first later
            call that fails the tolerance.
        UsageError: an argument is invalid, or ``fn`` returns something that
            cannot be compared (a generator, a structure nested deeper than
            :data:`MAX_DEPTH` or holding itself).
    """
    __tracebackhide__ = True  # pytest: the failure is in the user's function, not here
    _check_arguments(fn, repeats, max_ulp, atol)
    max_ulp, atol = int(max_ulp), float(atol)
    step = _Step(fn, args, kwargs)
    outcome = repeat_and_compare(step, repeats, keep_first_difference=True,
                                 compare_fn=lambda later, first: _within_tolerance(later, first, max_ulp, atol))
    # The names exist only once the first call has returned, so the step's paths name the tensors afterwards.
    for tensor, path in zip(outcome.tensors, step.paths):
        tensor.name = path
    failing = [t for t in outcome.tensors if t.first_difference is not None]
    if failing:
        raise AssertionError(_explain(failing[0], failing[1:], repeats, max_ulp, atol))


def _check_arguments(fn: Any, repeats: Any, max_ulp: Any, atol: Any) -> None:
    __tracebackhide__ = True

    def invalid(name: str, expected: str, value: Any) -> UsageError:
        return UsageError(f"Invalid value for argument `{name}`. Expected {expected}. Received {name}={value!r}.")

    if not callable(fn):
        raise invalid("fn", "a callable", fn)
    if not isinstance(repeats, numbers.Integral) or isinstance(repeats, bool) or repeats < 2:
        raise invalid("repeats", "an integer >= 2", repeats)
    if repeats > MAX_REPEATS:
        raise invalid("repeats", f"at most {MAX_REPEATS:,} (the cap of a config)", repeats)
    if not isinstance(max_ulp, numbers.Integral) or isinstance(max_ulp, bool) or max_ulp < 0:
        raise invalid("max_ulp", "an integer >= 0", max_ulp)
    if not isinstance(atol, numbers.Real) or isinstance(atol, bool) or math.isnan(atol) or atol < 0:
        raise invalid("atol", "a number >= 0", atol)


# ---------------------------------------------------------------------------------------------- flattening


class _Step:
    """Calls the function and flattens its result; checks that the structure stays the same."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.fn, self.args, self.kwargs = fn, args, kwargs
        self.calls = 0
        self.paths: list[str] = []
        self.layout: dict[str, str] | None = None  # path -> what is there, from the first call

    def __call__(self) -> list[np.ndarray]:
        __tracebackhide__ = True
        self.calls += 1
        layout: dict[str, str] = {}
        leaves: list[tuple[str, np.ndarray]] = []
        _flatten(self.fn(*self.args, **self.kwargs), "", layout, leaves, ())
        if self.layout is None:
            self.layout, self.paths = layout, [path for path, _ in leaves]
        elif layout != self.layout:
            raise AssertionError(_structure_changed(self.layout, layout, self.calls))
        return [leaf for _, leaf in leaves]


def _unsupported(path: str, what: str) -> UsageError:
    return UsageError(f"What the function returns cannot be compared: at `{path or _ROOT}` it {what}.")


def _flatten(value: Any, path: str, layout: dict[str, str], leaves: list[tuple[str, np.ndarray]],
             parents: tuple[int, ...]) -> None:
    if len(parents) >= MAX_DEPTH:
        raise _unsupported(path, f"is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, (Mapping, list, tuple)) and id(value) in parents:
        raise _unsupported(path, "holds itself (a structure that refers to itself has no end)")
    parents = (*parents, id(value))
    parts = _parts(value)
    if parts is not None:  # sparse and ragged tensors: compared as their components
        layout[path] = f"a {type(value).__name__}"
        for name, part in parts:
            _flatten(part, f"{path}.{name}", layout, leaves, parents)
    elif isinstance(value, Mapping):
        keys = list(value)
        try:
            keys.sort()
        except TypeError:  # keys of mixed types: still one fixed order
            keys.sort(key=lambda k: (type(k).__name__, repr(k)))
        layout[path] = f"a {type(value).__name__} with keys {keys!r}"
        for key in keys:
            _flatten(value[key], f"{path}[{key!r}]", layout, leaves, parents)
    elif isinstance(value, (list, tuple)):
        layout[path] = f"a {type(value).__name__} of {len(value)}"
        for index, item in enumerate(value):
            _flatten(item, f"{path}[{index}]", layout, leaves, parents)
    else:
        if isinstance(value, Iterator):
            raise _unsupported(path, f"is {type(value).__name__} (an iterator, used up once read): return "
                                     "list(...) of it")
        leaf = _as_array(value)
        if leaf.dtype == object and leaf.ndim == 0 and type(value).__eq__ is object.__eq__:
            raise _unsupported(path, f"is a {type(value).__name__}, which equals only itself: return arrays, "
                                     "tensors, numbers or lists and dicts of them")
        layout[path] = "None" if value is None else f"a {leaf.dtype} array of shape {leaf.shape}"
        leaves.append((path or _ROOT, leaf))


def _parts(value: Any) -> list[tuple[str, Any]] | None:
    """The components of a sparse or ragged tensor (by their attributes: TensorFlow is not imported), else None."""
    if all(hasattr(value, name) for name in ("indices", "values", "dense_shape")):
        return [("indices", value.indices), ("values", value.values), ("dense_shape", value.dense_shape)]
    if hasattr(value, "flat_values") and hasattr(value, "nested_row_splits"):
        return [("flat_values", value.flat_values), ("row_splits", list(value.nested_row_splits))]
    return None


def _as_array(value: Any) -> np.ndarray:
    numpy = getattr(value, "numpy", None)
    if callable(numpy):  # TensorFlow / Keras tensors and variables, without importing TensorFlow
        value = numpy()
    # A copy: the function may return a buffer it overwrites on the next call.
    array = np.array(value, copy=True)
    if array.dtype.kind in "US":  # strings of another length are another value, not another dtype
        array = array.astype(object)
    return array


def _structure_changed(before: dict[str, str], after: dict[str, str], call: int) -> str:
    path = next(p for p in [*before, *after] if before.get(p) != after.get(p))
    return (f"The structure of what the function returns changed between call 1 and call {call}: at "
            f"`{path or _ROOT}` call 1 returned {before.get(path, 'nothing')}, call {call} returned "
            f"{after.get(path, 'nothing')}.")


# ---------------------------------------------------------------------------------------------- tolerance


def _has_ulps(x: np.ndarray) -> bool:
    return x.dtype in FLOAT_DTYPES.values()


def _is_nan(x: np.ndarray) -> np.ndarray:
    return np.isnan(x) if x.dtype.kind in "fc" or _has_ulps(x) else np.zeros(x.shape, bool)


def _abs_difference(later: np.ndarray, first: np.ndarray) -> np.ndarray:
    """|later - first| elementwise: exact (unsigned) for integers and booleans, float64 otherwise."""
    if later.dtype.kind in "iub":
        unsigned = np.dtype(f"u{later.dtype.itemsize}")
        a, b = later.view(unsigned), first.view(unsigned)  # two's complement: the wrapped difference is exact
        return np.where(later >= first, a - b, b - a)
    with np.errstate(invalid="ignore", over="ignore"):
        if later.dtype.kind == "c":
            return np.abs(later.astype(np.complex128) - first.astype(np.complex128))
        return np.abs(later.astype(np.float64) - first.astype(np.float64))


def _mismatches(later: np.ndarray, first: np.ndarray, max_ulp: int, atol: float) -> np.ndarray:
    """Boolean mask of the elements of ``later`` that do not match ``first`` within the tolerance."""
    if later.dtype.kind not in "fciub" and not _has_ulps(later):  # strings, objects: equal or not
        return np.asarray(later != first, dtype=bool).reshape(later.shape)
    nan_later, nan_first = _is_nan(later), _is_nan(first)
    if later.dtype.kind in "fc" or _has_ulps(later):  # every bit of each element, as numerics.compare counts
        size = later.dtype.itemsize
        differ = (np.ascontiguousarray(later).view(np.uint8) != np.ascontiguousarray(first).view(np.uint8)) \
            .reshape(*later.shape, size).any(axis=-1)
    else:
        differ = later != first
    if max_ulp == 0 and atol == 0:
        # Bit for bit, the one rule of detaudit: +0 vs -0 and NaNs with other payloads are 0 ULP apart and
        # still a bitwise mismatch.
        return np.asarray(differ)
    differ &= ~(nan_later & nan_first)  # by value, NaN matches NaN whatever the payload
    # A tolerance compares values: +0 and -0 are 0 ULP apart.
    close = ulp_distance(later, first) <= max_ulp if _has_ulps(later) else np.zeros(later.shape, bool)
    if atol:
        close |= _abs_difference(later, first) <= atol
    close &= ~(nan_later ^ nan_first)  # NaN never matches a number
    return np.asarray(differ & ~close)


def _within_tolerance(later: np.ndarray, first: np.ndarray, max_ulp: int, atol: float) -> Comparison:
    """``compare_any`` with the tolerance applied: what :func:`repeat_and_compare` counts as a differing call.

    ``n_mismatch`` counts the elements outside the tolerance and
    ``bitwise_equal`` reads "no element outside the tolerance"; the other
    statistics are those of the exact comparison.
    """
    result = compare_any(later, first)
    if result.bitwise_equal:
        return result
    n_mismatch = int(np.count_nonzero(_mismatches(later, first, max_ulp, atol)))
    return dataclasses.replace(result, n_mismatch=n_mismatch, bitwise_equal=n_mismatch == 0)


# ---------------------------------------------------------------------------------------------- the message


def _index(flat: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


def _explain(tensor: TensorOutcome, others: list[TensorOutcome], repeats: int, max_ulp: int, atol: float) -> str:
    assert tensor.first_difference is not None
    call, later = tensor.first_difference
    first = tensor.first
    mask = _mismatches(later, first, max_ulp, atol)
    n_mismatch, n = int(np.count_nonzero(mask)), int(first.size)
    exact = max_ulp == 0 and atol == 0
    lines = [f"Tensor `{tensor.name}` (shape {first.shape}, {first.dtype}) differs between call 1 and call {call}.",
             f"Mismatched elements: {n_mismatch} / {n} ({n_mismatch / max(n, 1):.1%})"]
    if _has_ulps(first):
        ulps = ulp_distance(later, first)
        worst = int(np.argmax(ulps))
        lines.append(f"Greatest ULP difference: {int(ulps.reshape(-1)[worst])} at index "
                     f"{_index(worst, first.shape)} (up to {max_ulp} allowed)")
    if first.dtype.kind in "fciub" or _has_ulps(first):
        gaps = _abs_difference(later, first).reshape(-1)
        if gaps.dtype.kind == "f":
            gaps = np.where(np.isnan(gaps), -1.0, gaps)  # NaN pairs are counted on their own line
        worst = int(np.argmax(gaps))
        largest = gaps[worst].item() if gaps.size else 0
        largest = largest if largest >= 0 else 0.0
        lines.append(f"Greatest absolute difference: {largest} at index {_index(worst, first.shape)} "
                     f"(up to {atol} allowed)")
    else:
        lines.append(f"First mismatch at index {_index(int(np.argmax(mask.reshape(-1))), first.shape)}")
    if _has_ulps(first):
        lonely = nan_mismatch(later, first).reshape(-1)
        if lonely.any():
            count = int(np.count_nonzero(lonely))
            lines.append(f"NaN in one call only: {count} element{'s' if count > 1 else ''}, the first at index "
                         f"{_index(int(np.argmax(lonely)), first.shape)}")
        elif exact and int(ulps.max(initial=0)) == 0:
            what = ("the sign of zero differs (+0 vs -0)" if not (_is_nan(later) & mask).any() else
                    "the payload of a NaN differs (NaN vs NaN)" if not (later[mask] == 0).any() else
                    "the sign of zero (+0 vs -0) and the payload of a NaN differ")
            lines.append(f"Only {what}: 0 ULP apart, but the default check is bit for bit (a bitwise mismatch "
                         "counts); any tolerance (max_ulp >= 1 or atol > 0) counts them as equal.")
    lines.append(f"Later calls that differ: {tensor.n_repeats_differ} of {repeats - 1}.")
    if others:
        lines.append("Also differ: " + ", ".join(f"`{t.name}` (call {t.first_difference[0]})" for t in others
                                                 if t.first_difference is not None) + ".")
    return "\n".join(lines)
