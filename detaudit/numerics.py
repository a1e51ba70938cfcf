"""Bitwise and ULP comparison of floating-point tensors. Pure NumPy (+ ml_dtypes).

ULP distances are exact integers: floats are mapped onto an ordered unsigned
64-bit key (sign-magnitude bits folded around 2**63) so that the distance is a
plain unsigned subtraction, with no wraparound even for float64 -inf vs +inf.
numpy.testing's ``nulp_diff`` subtracts at the dtype's own integer width and
returns floats, so float32 -inf vs +inf comes out as 16,777,216 instead of
4,278,190,080; this module exists partly to not do that.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "Comparison",
    "FLOAT_DTYPES",
    "compare",
    "digest",
    "float_dtype",
    "narrower_dtype",
    "nan_mismatch",
    "ulp_distance",
    "worst",
]

#: Dtypes this module understands, by the names used in configs and tables.
FLOAT_DTYPES: dict[str, np.dtype] = {
    "float64": np.dtype(np.float64),
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
    "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2),
}
_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}
_BIAS = np.uint64(1 << 63)


def float_dtype(dtype: Any) -> np.dtype:
    """Return ``dtype`` as a NumPy dtype, or raise TypeError if it is not a supported float."""
    if isinstance(dtype, str) and dtype in FLOAT_DTYPES:
        return FLOAT_DTYPES[dtype]
    d = np.dtype(dtype)
    if d not in FLOAT_DTYPES.values():
        allowed = ", ".join(FLOAT_DTYPES)
        raise TypeError(f"Unsupported dtype {d}. Expected one of {allowed}.")
    return d


def _check_pair(a: np.ndarray, b: np.ndarray) -> np.dtype:
    if a.dtype != b.dtype:
        raise TypeError(f"Cannot compare {a.dtype} with {b.dtype}; cast one of them first.")
    if a.shape != b.shape:
        raise ValueError(f"Cannot compare shapes {a.shape} and {b.shape}.")
    return float_dtype(a.dtype)


def _bits(x: np.ndarray) -> np.ndarray:
    """The raw bits of ``x``, flattened, as an unsigned integer array of the same width."""
    return np.ascontiguousarray(x).reshape(-1).view(_UNSIGNED[x.dtype.itemsize])


def _ordered_keys(bits: np.ndarray) -> np.ndarray:
    """Map sign-magnitude float bits to uint64 keys whose order is the float order.

    +0 and -0 both map to 2**63, so they are 0 ULP apart.
    """
    nbits = bits.dtype.itemsize * 8
    wide = bits.astype(np.uint64, copy=False)
    magnitude = wide & np.uint64((1 << (nbits - 1)) - 1)
    negative = (wide >> np.uint64(nbits - 1)).astype(bool)
    return np.where(negative, _BIAS - magnitude, _BIAS + magnitude)


def _isnan(x: np.ndarray) -> np.ndarray:
    if x.dtype.itemsize < 4:  # ml_dtypes and float16: go through float32, exact for all of them
        x = x.astype(np.float32)
    return np.isnan(x)


def _key_distance(ka: np.ndarray, kb: np.ndarray) -> np.ndarray:
    return np.where(ka >= kb, ka - kb, kb - ka)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise distance between ``a`` and ``b`` in units in the last place.

    Args:
        a, b: arrays of one supported float dtype (float64, float32, float16,
            bfloat16, float8_e4m3fn, float8_e5m2) and the same shape.

    Returns:
        A ``numpy.uint64`` array of ``a``'s shape: the number of representable
        values between each pair, exact. +0 vs -0 is 0; inf vs the largest
        finite value is 1. Where either element is NaN the distance is 0: NaN
        vs NaN is a match, and NaN vs a number is not a ULP distance at all;
        count those with :func:`nan_mismatch`.

    Raises:
        TypeError: the dtypes differ or are not supported floats.
        ValueError: the shapes differ.
    """
    a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b)
    distance = _key_distance(_ordered_keys(_bits(a)), _ordered_keys(_bits(b)))
    either_nan = _isnan(a).reshape(-1) | _isnan(b).reshape(-1)
    distance[either_nan] = 0
    return distance.reshape(a.shape)


def nan_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask of elements where exactly one of ``a`` and ``b`` is NaN."""
    a, b = np.asarray(a), np.asarray(b)
    _check_pair(a, b)
    return _isnan(a) ^ _isnan(b)


def _sha256(x: np.ndarray) -> str:
    return hashlib.sha256(_bits(x) if x.size else b"").hexdigest()


def digest(x: np.ndarray) -> str:
    """sha256 hex digest of the raw bytes of ``x`` (C order)."""
    return _sha256(np.asarray(x))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One comparison of a tensor ``a`` against a reference ``b``.

    ULP statistics (``max_ulp``, ``p50_ulp``, ``p99_ulp``) are exact integers
    over the elements where neither side is NaN; percentiles use the nearest
    rank. ``max_ulp_scaled`` is ``max_abs`` divided by the spacing of ``b``'s
    dtype at ``max |b|``, which stays meaningful where raw ULP counts explode
    near zero. ``max_rel`` is ``max |a - b| / |b|`` (inf where ``b`` is 0).
    """

    n_elements: int
    n_mismatch: int
    bitwise_equal: bool
    max_ulp: int
    p50_ulp: int
    p99_ulp: int
    mean_ulp: float
    max_abs: float
    max_rel: float
    max_ulp_scaled: float
    n_nan_mismatch: int
    digest: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _nearest_rank(sorted_tail: np.ndarray, n_zeros: int, population: int, q: float) -> int:
    """The q-quantile (nearest rank) of ``n_zeros`` zeros plus the values in ``sorted_tail``."""
    if population == 0:
        return 0
    rank = max(1, math.ceil(q * population))  # 1-based
    if rank <= n_zeros:
        return 0
    return int(np.partition(sorted_tail, rank - n_zeros - 1)[rank - n_zeros - 1])


def _spacing_at(magnitude: float, dtype: np.dtype) -> float:
    """The distance between ``magnitude`` and the next representable value of ``dtype`` (as float64)."""
    info = ml_dtypes.finfo(dtype)
    exponent = math.frexp(magnitude)[1] - 1 if magnitude > 0 and math.isfinite(magnitude) else info.minexp
    return math.ldexp(1.0, max(exponent, info.minexp) - info.nmant)


def compare(a: np.ndarray, b: np.ndarray, *, digest: bool = True) -> Comparison:
    """Compare tensor ``a`` against the reference ``b``, bitwise and in ULPs.

    Identical tensors take a fast path that only checks the bits. Otherwise
    the ULP, absolute and relative statistics are computed on the mismatching
    elements alone, so the cost grows with the number of differences.

    Args:
        a: the tensor under test.
        b: the reference, of the same dtype and shape.
        digest: whether to compute the sha256 of ``a``'s bytes (the slowest
            part of an identical comparison; the runner hashes each tensor once).

    Returns:
        A :class:`Comparison`.
    """
    a, b = np.asarray(a), np.asarray(b)
    dtype = _check_pair(a, b)
    bits_a, bits_b = _bits(a), _bits(b)
    hexdigest = _sha256(a) if digest else None
    n = int(a.size)
    if np.array_equal(bits_a, bits_b):
        return Comparison(n, 0, True, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, hexdigest)

    index = np.flatnonzero(bits_a != bits_b)
    sub_a, sub_b = a.reshape(-1)[index], b.reshape(-1)[index]
    nan_a, nan_b = _isnan(sub_a), _isnan(sub_b)
    n_nan_mismatch = int(np.count_nonzero(nan_a ^ nan_b))
    numeric = ~(nan_a | nan_b)
    sub_a, sub_b = sub_a[numeric], sub_b[numeric]
    ulps = _key_distance(_ordered_keys(_bits(sub_a)), _ordered_keys(_bits(sub_b)))

    population = n - n_nan_mismatch
    n_zeros = population - ulps.size  # matching bits, +0/-0 and NaN/NaN pairs
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        wa, wb = sub_a.astype(np.float64), sub_b.astype(np.float64)
        abs_diff = np.abs(wa - wb)  # never NaN: inf - inf of one sign has equal bits
        # +0 vs -0 is 0/0 and counts as 0; anything against an infinite reference is inf.
        rel_diff = np.where(abs_diff == 0, 0.0, abs_diff / np.abs(wb))
    rel_diff = np.nan_to_num(rel_diff, nan=np.inf, posinf=np.inf)
    b_finite = b.astype(np.float32) if dtype.itemsize < 4 else b
    max_b = float(np.max(np.abs(b_finite), initial=0.0, where=np.isfinite(b_finite)))
    max_abs = float(abs_diff.max(initial=0.0))
    return Comparison(
        n_elements=n,
        n_mismatch=int(index.size),
        bitwise_equal=False,
        max_ulp=int(ulps.max(initial=0)),
        p50_ulp=_nearest_rank(ulps, n_zeros, population, 0.50),
        p99_ulp=_nearest_rank(ulps, n_zeros, population, 0.99),
        mean_ulp=float(ulps.sum(dtype=np.float64) / population) if population else 0.0,
        max_abs=max_abs,
        max_rel=float(rel_diff.max(initial=0.0)),
        max_ulp_scaled=max_abs / _spacing_at(max_b, dtype),
        n_nan_mismatch=n_nan_mismatch,
        digest=hexdigest,
    )


def worst(first: Comparison, second: Comparison) -> Comparison:
    """Fold two comparisons of the same tensor into their elementwise worst case.

    Used to stream repeats: memory stays constant however many are compared.
    The digest of ``first`` is kept.
    """
    return Comparison(
        n_elements=max(first.n_elements, second.n_elements),
        n_mismatch=max(first.n_mismatch, second.n_mismatch),
        bitwise_equal=first.bitwise_equal and second.bitwise_equal,
        max_ulp=max(first.max_ulp, second.max_ulp),
        p50_ulp=max(first.p50_ulp, second.p50_ulp),
        p99_ulp=max(first.p99_ulp, second.p99_ulp),
        mean_ulp=max(first.mean_ulp, second.mean_ulp),
        max_abs=max(first.max_abs, second.max_abs),
        max_rel=max(first.max_rel, second.max_rel),
        max_ulp_scaled=max(first.max_ulp_scaled, second.max_ulp_scaled),
        n_nan_mismatch=max(first.n_nan_mismatch, second.n_nan_mismatch),
        digest=first.digest,
    )


def narrower_dtype(first: Any, second: Any) -> np.dtype:
    """The less precise of two float dtypes: fewer mantissa bits, then fewer exponent bits."""
    d1, d2 = float_dtype(first), float_dtype(second)
    i1, i2 = ml_dtypes.finfo(d1), ml_dtypes.finfo(d2)
    return d1 if (i1.nmant, i1.nexp) <= (i2.nmant, i2.nexp) else d2
