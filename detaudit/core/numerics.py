"""Bitwise and ULP comparison of floating-point tensors. Pure NumPy (+ ml_dtypes).

ULP distances are exact integers: floats are mapped onto an ordered unsigned
64-bit key (sign-magnitude bits folded around 2**63) so that the distance is a
plain unsigned subtraction, with no wraparound even for float64 -inf vs +inf.
numpy.testing's ``nulp_diff`` subtracts at the dtype's own integer width and
returns floats, so float32 -inf vs +inf comes out as 16,777,216 instead of
4,278,190,080; this module exists partly to not do that.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import threading
from collections.abc import Iterator
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


def _load_memcmp() -> Any:
    try:
        memcmp = ctypes.CDLL(None).memcmp  # the C library of this process (Linux, macOS)
    except (OSError, AttributeError):
        return None
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    return memcmp


_MEMCMP = _load_memcmp()


def _same_bytes(bits_a: np.ndarray, bits_b: np.ndarray) -> bool:
    """Whether two contiguous arrays hold the same bytes.

    libc's memcmp reads at memory bandwidth with no temporary array: a quarter
    faster than ``np.array_equal`` on the tensors the runner compares every pass.
    """
    if _MEMCMP is not None:
        return _MEMCMP(bits_a.ctypes.data, bits_b.ctypes.data, bits_a.nbytes) == 0
    return bool(np.array_equal(bits_a, bits_b))


def _bits(x: np.ndarray) -> np.ndarray:
    """The raw bits of ``x``, flattened, as an unsigned integer array of the same width."""
    return np.ascontiguousarray(x).reshape(-1).view(_UNSIGNED[x.dtype.itemsize])


@dataclasses.dataclass(frozen=True)
class _Format:
    """Integer facts about one float format, for the bit-level kernels."""

    dtype: np.dtype
    signed: np.dtype
    unsigned: np.dtype
    magnitude_mask: Any  # all bits but the sign, as a signed scalar
    nan_above: int  # a magnitude above this is NaN
    inf_bits: int | None  # magnitude of +inf, None where the format has none (float8_e4m3fn)
    nmant: int  # explicit mantissa bits: 1 << nmant ULPs span one binade
    work: np.dtype  # float dtype that NumPy arithmetic runs in (float32 for the narrow formats)


@functools.lru_cache(maxsize=None)
def _format(dtype: np.dtype) -> _Format:
    width = dtype.itemsize
    signed, unsigned = np.dtype(f"i{width}"), np.dtype(f"u{width}")
    mask = signed.type((1 << (8 * width - 1)) - 1)
    info = ml_dtypes.finfo(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        inf = np.array([np.inf]).astype(dtype)
    has_inf = bool(np.isinf(inf.astype(np.float64))[0])
    largest = np.array([inf[0] if has_inf else info.max], dtype=dtype)
    bits = int(largest.view(unsigned)[0])
    return _Format(dtype, signed, unsigned, mask, bits, bits if has_inf else None, int(info.nmant),
                   np.dtype(np.float32) if width < 4 else dtype)


_CHUNK = 1 << 16  # elements per block: temporaries stay in cache and are reused, never reallocated


class _Scratch:
    """Preallocated per-chunk buffers; slicing the last, shorter chunk reuses them."""

    def __init__(self, fmt: _Format, size: int):
        self.mag_a = np.empty(size, fmt.signed)
        self.mag_b = np.empty(size, fmt.signed)
        self.dist = np.empty(size, fmt.signed)
        self.opposite_sum = np.empty(size, fmt.unsigned)
        self.xor = np.empty(size, fmt.signed)
        self.mask = np.empty(size, bool)
        self.work_a = np.empty(size, np.float64)
        self.work_b = np.empty(size, np.float64)
        self.native_a = np.empty(size, fmt.work)
        self.native_b = np.empty(size, fmt.work)
        self.any_opposite = False


def _chunk_distance(x: np.ndarray, y: np.ndarray, fmt: _Format, s: _Scratch, m: int) -> np.ndarray:
    """ULP distance of signed-int views ``x``, ``y`` (one chunk), as an unsigned view, NaNs not handled.

    Same sign: |mag_a - mag_b|. Opposite signs: mag_a + mag_b, which counts +0 and -0
    as one point. Both fit the format's own unsigned width, so nothing wraps.
    """
    mag_a, mag_b, dist = s.mag_a[:m], s.mag_b[:m], s.dist[:m]
    np.bitwise_and(x, fmt.magnitude_mask, out=mag_a)
    np.bitwise_and(y, fmt.magnitude_mask, out=mag_b)
    np.subtract(mag_a, mag_b, out=dist)
    np.abs(dist, out=dist)
    udist = dist.view(fmt.unsigned)
    s.any_opposite = int(np.bitwise_xor(x, y, out=s.xor[:m]).min()) < 0  # sign bits differ somewhere
    if s.any_opposite:
        opposite_sum, mask = s.opposite_sum[:m], s.mask[:m]
        np.add(mag_a.view(fmt.unsigned), mag_b.view(fmt.unsigned), out=opposite_sum)
        np.less(s.xor[:m], 0, out=mask)
        np.copyto(udist, opposite_sum, where=mask)
    return udist


def _nan_masks(fmt: _Format, s: _Scratch, m: int, largest: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(nan_a, nan_b) for the chunk just measured, or None when it holds no NaN (the usual case).

    ``largest`` is the largest magnitude of either side, already known to the caller.
    """
    if largest <= fmt.nan_above:
        return None
    return s.mag_a[:m] > fmt.nan_above, s.mag_b[:m] > fmt.nan_above


def _chunks(n: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, _CHUNK):
        yield start, min(start + _CHUNK, n)


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
    fmt = _format(_check_pair(a, b))
    xa, xb = _bits(a).view(fmt.signed), _bits(b).view(fmt.signed)
    out = np.empty(xa.size, np.uint64)
    scratch = _Scratch(fmt, min(_CHUNK, max(xa.size, 1)))
    for start, stop in _chunks(xa.size):
        m = stop - start
        dist = _chunk_distance(xa[start:stop], xb[start:stop], fmt, scratch, m)
        nans = _nan_masks(fmt, scratch, m, max(int(scratch.mag_a[:m].max()), int(scratch.mag_b[:m].max())))
        if nans is not None:
            dist[nans[0] | nans[1]] = 0
        out[start:stop] = dist
    return out.reshape(a.shape)


def nan_mismatch(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boolean mask of elements where exactly one of ``a`` and ``b`` is NaN."""
    a, b = np.asarray(a), np.asarray(b)
    fmt = _format(_check_pair(a, b))
    mag_a = _bits(a).view(fmt.signed) & fmt.magnitude_mask
    mag_b = _bits(b).view(fmt.signed) & fmt.magnitude_mask
    return ((mag_a > fmt.nan_above) ^ (mag_b > fmt.nan_above)).reshape(a.shape)


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
    dtype at ``max |b|`` (finite elements), which stays meaningful where raw
    ULP counts explode near zero. ``max_rel`` is ``max |a - b| / |b|`` (inf
    where ``b`` is 0 and ``a`` is not).
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


def _spacing_at(magnitude: float, dtype: np.dtype) -> float:
    """The distance between ``magnitude`` and the next representable value of ``dtype`` (as float64)."""
    info = ml_dtypes.finfo(dtype)
    exponent = math.frexp(magnitude)[1] - 1 if magnitude > 0 and math.isfinite(magnitude) else info.minexp
    return math.ldexp(1.0, max(exponent, info.minexp) - info.nmant)


def _nearest_rank(sorted_values: np.ndarray, n_zeros: int, population: int, q: float) -> int:
    """The q-quantile (nearest rank) of ``n_zeros`` zeros plus the sorted nonzero ``sorted_values``."""
    if population == 0:
        return 0
    rank = max(1, math.ceil(q * population))  # 1-based
    return 0 if rank <= n_zeros else int(sorted_values[rank - n_zeros - 1])


def _float_gaps_native(a: np.ndarray, b: np.ndarray, s: _Scratch, m: int) -> tuple[float, float]:
    """As :func:`_float_gaps`, in the tensors' own float32/float64, for pairs within a factor of 2.

    The caller guarantees same signs, finite values and distances below one
    binade of ULPs, so Sterbenz' lemma makes ``a - b`` exact. The quotient is
    rounded, but rounding is monotone, so the true maximum is among the
    elements tied at the rounded maximum; those are recomputed in float64.
    """
    diff, ratio = s.native_a[:m], s.native_b[:m]
    np.subtract(a, b, out=diff)
    np.abs(diff, out=diff)
    max_abs = float(diff.max())
    np.abs(b, out=ratio)
    np.divide(diff, ratio, out=ratio)
    top = np.fmax.reduce(ratio)  # 0/0 (equal zeros) is NaN and skipped
    if not top > 0:
        return max_abs, 0.0
    ties = np.flatnonzero(ratio == top)
    wa, wb = a[ties].astype(np.float64), b[ties].astype(np.float64)
    return max_abs, float(np.max(np.abs(wa - wb) / np.abs(wb)))


def _float_gaps(a: np.ndarray, b: np.ndarray, fmt: _Format, s: _Scratch, m: int,
                b_has_special: bool) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / |b|) over one chunk, in float64; NaN elements are ignored."""
    work_a, work_b = s.work_a[:m], s.work_b[:m]
    if fmt.work != fmt.dtype:  # ml_dtypes and float16: widen to float32 first, exactly
        a, b = a.astype(np.float32), b.astype(np.float32)
    np.subtract(a, b, out=work_a, dtype=np.float64)
    np.abs(work_a, out=work_a)
    np.abs(b, out=work_b, dtype=np.float64)
    max_abs = float(np.fmax.reduce(work_a))  # fmax skips NaN: NaN pairs are counted apart
    np.divide(work_a, work_b, out=work_b)  # x/0 -> inf (as torch does); 0/0 -> NaN, skipped
    if b_has_special:  # a finite value against an infinite reference is infinitely far, not NaN
        np.copyto(work_b, np.inf, where=np.isinf(b) & (a != b) & ~np.isnan(a))
    return max_abs, float(np.fmax.reduce(work_b))


_LOCAL = threading.local()


def _kept_buffer(n: int, dtype: np.dtype) -> np.ndarray:
    """A reused per-thread buffer of at least ``n`` elements: a fresh one costs a page fault per 4 KiB."""
    buffer = getattr(_LOCAL, "kept", None)
    if buffer is None or buffer.nbytes < n * dtype.itemsize:
        buffer = _LOCAL.kept = np.empty(max(n * dtype.itemsize, 1 << 20), np.uint8)
    return buffer[: n * dtype.itemsize].view(dtype)


def compare(a: np.ndarray, b: np.ndarray, *, digest: bool = True) -> Comparison:
    """Compare tensor ``a`` against the reference ``b``, bitwise and in ULPs.

    Identical tensors take a fast path that only checks the bits. Otherwise
    the work runs in cache-sized chunks with preallocated buffers; only the
    nonzero ULP distances are kept, for the exact percentiles.

    Args:
        a: the tensor under test.
        b: the reference, of the same dtype and shape.
        digest: whether to compute the sha256 of ``a``'s bytes (the slowest
            part of an identical comparison; the runner hashes each tensor once).

    Returns:
        A :class:`Comparison`.
    """
    a, b = np.asarray(a), np.asarray(b)
    fmt = _format(_check_pair(a, b))
    hexdigest = _sha256(a) if digest else None
    bits_a, bits_b = _bits(a), _bits(b)
    n = int(a.size)
    if _same_bytes(bits_a, bits_b):  # memcmp stops at the first difference
        return Comparison(n, 0, True, 0, 0, 0, 0.0, 0.0, 0.0, 0.0, 0, hexdigest)

    xa, xb = bits_a.view(fmt.signed), bits_b.view(fmt.signed)
    va, vb = a.reshape(-1), b.reshape(-1)
    scratch = _Scratch(fmt, min(_CHUNK, n))
    kept = _kept_buffer(n, fmt.unsigned)  # distances, filled front to back
    n_kept = n_mismatch = n_nan_mismatch = 0
    max_abs = max_rel = 0.0
    max_b_bits = 0
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # x/0, 0/0, inf-inf are handled
        for start, stop in _chunks(n):
            m = stop - start
            x, y = xa[start:stop], xb[start:stop]
            dist = _chunk_distance(x, y, fmt, scratch, m)
            mag_b = scratch.mag_b[:m]
            largest_b = int(mag_b.max())
            nans = _nan_masks(fmt, scratch, m, max(int(scratch.mag_a[:m].max()), largest_b))
            special_b = fmt.inf_bits is not None and largest_b >= fmt.inf_bits  # inf or NaN in b
            if nans is not None or special_b:  # the largest finite magnitude, for the scaled ULP
                limit = fmt.inf_bits if fmt.inf_bits is not None else fmt.nan_above + 1
                largest_b = int(mag_b.max(initial=0, where=mag_b < limit))
            max_b_bits = max(max_b_bits, largest_b)
            if nans is not None:
                n_nan_mismatch += int(np.count_nonzero(nans[0] ^ nans[1]))
                dist[nans[0] | nans[1]] = 0
            largest_dist = int(dist.max())
            if largest_dist == 0 and nans is None and not scratch.any_opposite:
                continue  # identical chunk
            if nans is not None or scratch.any_opposite:
                # Bits can differ at distance 0 only for +0/-0 (opposite signs) and NaN payloads.
                n_mismatch += int(np.count_nonzero(np.not_equal(x, y, out=scratch.mask[:m])))
                n_mismatch -= int(np.count_nonzero(dist))  # counted again from the kept distances
            kept[n_kept:n_kept + m] = dist  # zeros too: sorting them costs less than compressing
            n_kept += m
            if largest_dist == 0:
                continue
            # Same signs, finite, within one binade of ULPs: the cheap exact path (the usual case).
            within_factor_two = (not scratch.any_opposite and nans is None and not special_b
                                 and fmt.work == fmt.dtype and largest_dist < 1 << fmt.nmant)
            if within_factor_two:
                chunk_abs, chunk_rel = _float_gaps_native(va[start:stop], vb[start:stop], scratch, m)
            else:
                chunk_abs, chunk_rel = _float_gaps(va[start:stop], vb[start:stop], fmt, scratch, m, special_b)
            max_abs, max_rel = max(max_abs, chunk_abs), max(max_rel, chunk_rel)

    ulps = kept[:n_kept]
    ulps.sort()  # in place: exact percentiles; NumPy's SIMD sort beats partition here
    ulps = ulps[int(np.searchsorted(ulps, ulps.dtype.type(1))):]  # the nonzero distances (a Python 1 would copy)
    n_nonzero = int(ulps.size)
    n_mismatch += n_nonzero
    population = n - n_nan_mismatch
    n_zeros = population - n_nonzero  # matching bits, +0/-0 and NaN/NaN pairs
    total = float(ulps.sum(dtype=np.float64 if fmt.dtype.itemsize == 8 else np.uint64))
    max_b = float(np.array([max_b_bits], fmt.unsigned).view(fmt.dtype)[0])
    return Comparison(
        n_elements=n,
        n_mismatch=n_mismatch,
        bitwise_equal=False,
        max_ulp=int(ulps[-1]) if ulps.size else 0,
        p50_ulp=_nearest_rank(ulps, n_zeros, population, 0.50),
        p99_ulp=_nearest_rank(ulps, n_zeros, population, 0.99),
        mean_ulp=total / population if population else 0.0,
        max_abs=max_abs,
        max_rel=max_rel,
        max_ulp_scaled=max_abs / _spacing_at(max_b, fmt.dtype),
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
