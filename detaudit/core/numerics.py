"""Bitwise and ULP comparison of floating-point tensors. Pure NumPy (+ ml_dtypes).

ULP distances are exact integers: floats are mapped onto an order-preserving
integer key (the bits when the sign is clear, minus the magnitude when it is
set, so that +0 and -0 coincide) and the distance is the difference of keys,
taken so that it cannot wrap even for float64 -inf vs +inf. numpy.testing's
``nulp_diff`` subtracts at the dtype's own integer width and returns floats, so
float32 -inf vs +inf comes out as 16,777,216 instead of 4,278,190,080; this
module exists partly to not do that.

:func:`compare` runs at a few passes over cache-resident blocks per element:
see its docstring for the paths, and ``benchmarks/bench.py`` for the figures.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

__all__ = [
    "Comparison",
    "same_bits",
    "FLOAT_DTYPES",
    "compare",
    "max_finite_abs",
    "digest",
    "float_dtype",
    "float_info",
    "narrower_dtype",
    "nan_mismatch",
    "ulp_distance",
    "worst",
]

class _FloatDtypes(Mapping[str, np.dtype]):
    """The dtypes by name, made on first use: importing ml_dtypes (bfloat16, float8) takes over a second on a
    2-core VM (measured: 1.2 s of the 1.3 s ``detaudit --help`` took), which every command would pay for
    nothing when no narrow float is compared."""

    def __init__(self) -> None:
        self._table: dict[str, np.dtype] | None = None

    def _load(self) -> dict[str, np.dtype]:
        if self._table is None:
            import ml_dtypes

            self._table = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
                           "float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16),
                           "float8_e4m3fn": np.dtype(ml_dtypes.float8_e4m3fn),
                           "float8_e5m2": np.dtype(ml_dtypes.float8_e5m2)}
        return self._table

    def __getitem__(self, name: str) -> np.dtype:
        return self._load()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __len__(self) -> int:
        return len(self._load())


_NUMPY_FLOATS = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))

#: Dtypes this module understands, by the names used in configs and tables.
FLOAT_DTYPES: Mapping[str, np.dtype] = _FloatDtypes()


def float_info(dtype: Any) -> Any:
    """``finfo`` of a supported float dtype (or its name): NumPy's for its own floats, ml_dtypes' for the rest."""
    d = float_dtype(dtype)
    if d in _NUMPY_FLOATS:  # (ml_dtypes' float8 types say kind "f" too, but np.finfo refuses them)
        return np.finfo(d)
    import ml_dtypes

    return ml_dtypes.finfo(d)
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


def max_finite_abs(x: np.ndarray) -> float:
    """The largest finite magnitude of ``x`` (0.0 when it has none): the scale a relative error is taken against."""
    values = np.abs(np.asarray(x, dtype=np.float64))
    finite = values[np.isfinite(values)]
    return float(finite.max()) if finite.size else 0.0


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two arrays of one dtype and shape hold the same bits (memcmp: the cheapest exact check)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.flags.c_contiguous and b.flags.c_contiguous:
        return _MEMCMP(a.ctypes.data, b.ctypes.data, a.nbytes) == 0 if _MEMCMP is not None else \
            bool(np.array_equal(a.view(np.uint8), b.view(np.uint8)))
    return _same_bytes(_bits(a), _bits(b))


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
    sign_shift: int  # bits - 1: an arithmetic shift by this gives 0 or -1
    lowest: int  # the most negative signed integer: a difference of +0 and -0, and nothing else of one sign
    nan_above: int  # a magnitude above this is NaN
    inf_bits: int | None  # magnitude of +inf, None where the format has none (float8_e4m3fn)
    finite_below: int  # a magnitude below this is finite
    nmant: int  # explicit mantissa bits: 1 << nmant ULPs span one binade
    work: np.dtype  # float dtype that NumPy arithmetic runs in (float32 for the narrow formats)

    @property
    def native(self) -> bool:
        """Whether NumPy computes in this dtype directly (float32, float64)."""
        return self.work == self.dtype


@functools.lru_cache(maxsize=None)
def _format(dtype: np.dtype) -> _Format:
    width = dtype.itemsize
    signed, unsigned = np.dtype(f"i{width}"), np.dtype(f"u{width}")
    mask = signed.type((1 << (8 * width - 1)) - 1)
    info = float_info(dtype)
    with np.errstate(invalid="ignore", over="ignore"):
        inf = np.array([np.inf]).astype(dtype)
    has_inf = bool(np.isinf(inf.astype(np.float64))[0])
    largest = np.array([inf[0] if has_inf else info.max], dtype=dtype)
    bits = int(largest.view(unsigned)[0])
    return _Format(dtype, signed, unsigned, mask, 8 * width - 1, -(1 << (8 * width - 1)), bits,
                   bits if has_inf else None, bits if has_inf else bits + 1, int(info.nmant),
                   np.dtype(np.float32) if width < 4 else dtype)


# Elements per block. The dense path's working set is two input slices, one buffer and one mask:
# 13 bytes per float32 element, 1.7 MB at 2**17, within a 2 MB L2. Larger blocks spill to L3,
# smaller ones pay NumPy's per-call overhead (a block makes about 15 calls) more often.
_CHUNK = 1 << 17
_SPARSE = 16  # a block with at most 1/_SPARSE of its elements differing is measured on those elements only
_LAYER = 8  # blocks with distances up to this are counted with comparisons, larger ones with bincount
_HIST = 1 << 16  # distances up to this are counted in a histogram, larger ones kept for a sort

_max, _min = np.maximum.reduce, np.minimum.reduce  # bound once: a block makes a dozen of these calls
_fmax, _fmin = np.fmax.reduce, np.fmin.reduce
_count = np.count_nonzero


class _Scratch:
    """Per-block buffers, allocated once per call; slicing the last, shorter block reuses them."""

    def __init__(self, fmt: _Format, size: int):
        self.fmt, self.size = fmt, size
        self.diff = np.empty(size, fmt.signed)
        self.mask = np.empty(size, bool)
        self._general: tuple[np.ndarray, ...] | None = None

    def general(self, m: int) -> tuple[np.ndarray, ...]:
        """Buffers for the general path (keys, distances, float64 gaps), made on first use."""
        if self._general is None:
            self._general = (np.empty(self.size, self.fmt.signed), np.empty(self.size, self.fmt.signed),
                             np.empty(self.size, self.fmt.signed), np.empty(self.size, np.float64),
                             np.empty(self.size, np.float64))
        return tuple(buffer[:m] for buffer in self._general)


def _distance(x: np.ndarray, y: np.ndarray, fmt: _Format,
              key_a: np.ndarray, key_b: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, int, int]:
    """ULP distances of the signed-int bit views ``x``, ``y``, NaN pairs set to 0.

    Each side becomes an order-preserving key: the bits when the sign is clear,
    minus the magnitude when it is set, so that +0 and -0 coincide. The
    distance |key_a - key_b| is at most 2 * magnitude_mask, which fits the
    format's own unsigned width: max - min computed with wraparound is exact
    there, even for float64 -inf vs +inf.

    Returns:
        (the distances, an unsigned view of ``out``; the number of elements
        where exactly one side is NaN; the largest magnitude of ``y``, as bits).
    """
    np.bitwise_and(x, fmt.magnitude_mask, out=key_a)
    np.bitwise_and(y, fmt.magnitude_mask, out=key_b)
    top_b = int(_max(key_b))
    nans = None
    if max(int(_max(key_a)), top_b) > fmt.nan_above:
        nans = key_a > fmt.nan_above, key_b > fmt.nan_above
    if int(_min(np.bitwise_xor(x, y, out=out))) >= 0:  # no opposite signs: the sign bits cancel
        np.subtract(x, y, out=out)  # the magnitudes' difference, below 2**(bits-1)
        np.abs(out, out=out)
    else:
        for bits, key in ((x, key_a), (y, key_b)):
            np.right_shift(bits, fmt.sign_shift, out=out)  # 0 or -1
            np.bitwise_xor(key, out, out=key)
            np.subtract(key, out, out=key)  # conditional negation
        np.maximum(key_a, key_b, out=out)
        np.minimum(key_a, key_b, out=key_a)
        np.subtract(out, key_a, out=out)
    dist = out.view(fmt.unsigned)
    if nans is None:
        return dist, 0, top_b
    dist[nans[0] | nans[1]] = 0
    return dist, int(_count(nans[0] ^ nans[1])), top_b


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
        key_a, key_b, dist, _, _ = scratch.general(stop - start)
        out[start:stop] = _distance(xa[start:stop], xb[start:stop], fmt, key_a, key_b, dist)[0]
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
    info = float_info(dtype)
    exponent = math.frexp(magnitude)[1] - 1 if magnitude > 0 and math.isfinite(magnitude) else info.minexp
    return math.ldexp(1.0, max(exponent, info.minexp) - info.nmant)


def _float_gaps(a: np.ndarray, b: np.ndarray, fmt: _Format, work_a: np.ndarray, work_b: np.ndarray,
                b_has_special: bool) -> tuple[float, float]:
    """(max |a - b|, max |a - b| / |b|) over one block, in float64; NaN elements are ignored."""
    if not fmt.native:  # ml_dtypes and float16: widen to float32 first, exactly
        a, b = a.astype(np.float32), b.astype(np.float32)
    np.subtract(a, b, out=work_a, dtype=np.float64)
    np.abs(work_a, out=work_a)
    np.abs(b, out=work_b, dtype=np.float64)
    max_abs = float(_fmax(work_a))  # fmax skips NaN: NaN pairs are counted apart
    np.divide(work_a, work_b, out=work_b)  # x/0 -> inf (as torch does); 0/0 -> NaN, skipped
    if b_has_special:  # a finite value against an infinite reference is infinitely far, not NaN
        np.copyto(work_b, np.inf, where=np.isinf(b) & (a != b) & ~np.isnan(a))
    return max_abs, float(_fmax(work_b))


_LOCAL = threading.local()


def _kept_buffer(n: int, dtype: np.dtype) -> np.ndarray:
    """A reused per-thread buffer of at least ``n`` elements: a fresh one costs a page fault per 4 KiB."""
    buffer = getattr(_LOCAL, "kept", None)
    if buffer is None or buffer.nbytes < n * dtype.itemsize:
        buffer = _LOCAL.kept = np.empty(max(n * dtype.itemsize, 1 << 20), np.uint8)
    return buffer[: n * dtype.itemsize].view(dtype)


def _exact_sum(values: np.ndarray) -> int:
    """The sum of unsigned integers as a Python int, without wraparound."""
    if values.dtype.itemsize < 8:
        return int(np.add.reduce(values, dtype=np.uint64))
    return (int(np.add.reduce(values >> np.uint64(32))) << 32) + int(np.add.reduce(values & np.uint64(0xFFFFFFFF)))


class _Tally:
    """Running statistics of one comparison, fed block by block.

    Nonzero ULP distances up to ``_HIST`` are counted in a histogram; blocks
    with larger ones keep their nonzero distances, sorted at the end. Everything
    here is an exact integer or a maximum, so the blocks may come in any order.
    """

    def __init__(self, fmt: _Format, n: int):
        self.fmt, self.n = fmt, n
        self.scratch = _Scratch(fmt, min(_CHUNK, n))
        self.hist = np.zeros(_HIST + 1, np.int64)  # hist[v]: how many distances are v (lazily zeroed pages)
        self.hist_top = 0  # highest index of hist that may be nonzero
        self.kept: np.ndarray | None = None  # made on first use
        self.n_kept = 0
        self.n_mismatch = self.n_nan_mismatch = 0
        self.max_abs = self.max_rel = 0.0
        self.rel32 = -1.0  # float32 blocks: the largest ratio rounded to float32 so far ...
        self.rel64 = 0.0  # ... and the largest float64 ratio among the elements at that rounded value
        self.max_b_bits = 0
        self.sparse = False  # whether the last block had few differences

    # -- per block ---------------------------------------------------------------------------------

    def block(self, x: np.ndarray, y: np.ndarray) -> None:
        """Fold in one block of signed-int bit views."""
        m, s = x.size, self.scratch
        self._largest_finite_b(y)
        diff, differ = s.diff[:m], None
        if self.sparse:  # the last block was sparse: a boolean mask is the cheaper first pass
            differ = np.not_equal(x, y, out=s.mask[:m])
            k = int(_count(differ))
        else:
            np.subtract(x, y, out=diff)  # wraps; zero exactly where the bits are equal
            k = int(_count(diff))
        if k == 0:
            return
        self.n_mismatch += k
        self.sparse = k * _SPARSE <= m
        if self.sparse:  # a few differences: measure those elements only
            if differ is None:
                differ = np.not_equal(diff, 0, out=s.mask[:m])
            where = np.flatnonzero(differ)  # nonzero() of a bool array: 10x faster than of ints
            self._general(x[where], y[where])
            return
        if differ is not None:
            np.subtract(x, y, out=diff)
        if not (self.fmt.native and self._dense(x, y, diff, k)):
            self._general(x, y)

    def _largest_finite_b(self, y: np.ndarray) -> None:
        """Fold in the largest finite magnitude of ``b``, from two reductions and no temporary.

        The signed maximum is the largest non-negative value, the unsigned one
        the largest negative value (if any) with its sign bit set.
        """
        fmt = self.fmt
        signed_top, unsigned_top = int(_max(y)), int(_max(y.view(fmt.unsigned)))
        largest = max(signed_top, 0, unsigned_top + fmt.lowest)
        if largest >= fmt.finite_below:  # inf or NaN in this block: mask them out
            magnitude = y & fmt.magnitude_mask
            largest = int(_max(magnitude, initial=0, where=magnitude < fmt.finite_below))
        self.max_b_bits = max(self.max_b_bits, largest)

    def _dense(self, x: np.ndarray, y: np.ndarray, diff: np.ndarray, k: int) -> bool:
        """The usual block: finite, same signs, within a factor of 2. False (nothing folded in) otherwise.

        One float subtraction and one division, four float reductions and the
        integer maximum decide it and measure it:

        * max |integer difference| is below two binades of ULPs: no +0 against -0
          (a difference of exactly the lowest integer, whose abs stays negative);
        * max and min of a - b are finite (NaN propagates): no NaN or inf on either side;
        * every (a - b) / b lies in (-1/2, 1) (0/0 of two equal zeros is skipped):
          same signs and b/2 < a < 2b, so by Sterbenz' lemma a - b is exact in
          the format itself and |integer difference| is the ULP distance (the
          sign bits cancel).

        The distances are counted first, so that the float work reuses their
        buffer (the block's working set stays in L2). The quotient is rounded,
        but rounding is monotone, so the largest float64 ratio is among the
        elements tied at the largest rounded one; only those are recomputed in
        float64, and only when they could win.
        """
        fmt = self.fmt
        dist = np.abs(diff, out=diff).view(fmt.unsigned)  # +0 against -0: |lowest| wraps to 2**(bits-1)
        top = int(_max(dist))
        if top >> (fmt.nmant + 1):  # +0 against -0, or too far apart for the fast path
            return False
        counted = self._count(dist, top, k)
        a, b = x.view(fmt.dtype), y.view(fmt.dtype)
        gaps = diff.view(fmt.dtype)
        np.subtract(a, b, out=gaps)
        gap_top, gap_bottom = float(_max(gaps)), float(_min(gaps))
        if not (math.isfinite(gap_top) and math.isfinite(gap_bottom)):
            return False
        np.divide(gaps, b, out=gaps)
        ratio_top, ratio_bottom = float(_fmax(gaps)), float(_fmin(gaps))
        if not (ratio_bottom > -0.5 and ratio_top < 1.0):  # NaN fails too
            return False
        self.max_abs = max(self.max_abs, gap_top, -gap_bottom)
        self._ratio(max(ratio_top, -ratio_bottom), gaps, a, b)
        self._fold(counted)
        return True

    def _ratio(self, top: float, ratios: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        if self.fmt.dtype.itemsize == 8:  # float64: the quotient of an exact difference is the float64 ratio
            self.max_rel = max(self.max_rel, top)
            return
        if top < self.rel32:
            return
        np.abs(ratios, out=ratios)
        ties = np.flatnonzero(np.equal(ratios, ratios.dtype.type(top), out=self.scratch.mask[:ratios.size]))
        wa, wb = a[ties].astype(np.float64), b[ties].astype(np.float64)
        exact = float(_max(np.abs(wa - wb) / np.abs(wb)))
        self.rel64 = exact if top > self.rel32 else max(self.rel64, exact)
        self.rel32 = top

    def _count(self, dist: np.ndarray, top: int, k: int | None = None) -> tuple[str, Any]:
        """Count distances for :meth:`_fold`: ``dist`` non-negative (zeros allowed), the largest ``top`` > 0,
        ``k`` of them nonzero if known. ``dist`` is free for other use afterwards.

        Up to ``_LAYER`` a layer cake: at_least[v] = #(dist >= v), one comparison
        each from v = 3 on; their sum over v >= 1 is the sum of the distances,
        which gives at_least[2] (and nothing is needed beyond k when top is 1).
        """
        if top > min(_LAYER, _HIST):
            return self._histogram(dist.view(self.fmt.unsigned), top)
        k = int(_count(dist)) if k is None else k
        if top == 1:  # the commonest block
            return "layers", [k]
        dist = dist.view(self.fmt.unsigned)
        exact = dist.dtype.itemsize == 4 and not dist.size * top >> 32  # no wraparound in the own width
        total = int(np.add.reduce(dist, dtype=dist.dtype if exact else np.uint64))
        at_least = [k, 0] + [int(_count(np.greater_equal(dist, v, out=self.scratch.mask[:dist.size])))
                             for v in range(3, top + 1)]
        at_least[1] = total - sum(at_least)
        return "layers", at_least

    def _histogram(self, dist: np.ndarray, top: int) -> tuple[str, Any]:
        """Count unsigned distances (zeros allowed, the largest ``top`` > 0), for :meth:`_fold`."""
        if top <= _HIST:
            return "counts", np.bincount(dist.view(self.fmt.signed) if dist.dtype.itemsize == 8 else dist)
        return "values", dist[dist != 0]

    def _fold(self, counted: tuple[str, Any]) -> None:
        kind, data = counted
        if kind == "layers":  # counts of distances >= 1, >= 2, ...
            for value, (here, above) in enumerate(zip(data, [*data[1:], 0]), start=1):
                self.hist[value] += here - above
            self.hist_top = max(self.hist_top, len(data))
        elif kind == "counts":  # counts of distances 0, 1, 2, ...
            self.hist[1:data.size] += data[1:]
            self.hist_top = max(self.hist_top, data.size - 1)
        else:  # nonzero distances
            if self.kept is None:
                self.kept = _kept_buffer(self.n, self.fmt.unsigned)
            self.kept[self.n_kept:self.n_kept + data.size] = data
            self.n_kept += data.size

    def _general(self, x: np.ndarray, y: np.ndarray) -> None:
        """Any block, or the differing elements of a sparse one: NaN, inf, signed zeros, any dtype."""
        fmt = self.fmt
        key_a, key_b, out, work_a, work_b = self.scratch.general(x.size)
        dist, nan_mismatches, top_b = _distance(x, y, fmt, key_a, key_b, out)
        self.n_nan_mismatch += nan_mismatches
        top = int(_max(dist))
        if top:
            self._fold(self._count(dist, top))
        special_b = fmt.inf_bits is not None and top_b >= fmt.inf_bits  # inf or NaN in b
        gap, rel = _float_gaps(x.view(fmt.dtype), y.view(fmt.dtype), fmt, work_a, work_b, special_b)
        self.max_abs, self.max_rel = max(self.max_abs, gap), max(self.max_rel, rel)

    # -- at the end ----------------------------------------------------------------------------------

    def result(self, n: int, hexdigest: str | None) -> Comparison:
        kept = self.kept[:self.n_kept] if self.kept is not None else np.empty(0, self.fmt.unsigned)
        kept.sort()  # exact order statistics of the large distances; NumPy's SIMD sort beats partition
        counts = self.hist[1:self.hist_top + 1]  # counts[v - 1]: how many distances are v
        cumulative = np.cumsum(counts)
        in_hist = int(cumulative[-1]) if cumulative.size else 0
        n_nonzero = in_hist + int(kept.size)
        population = n - self.n_nan_mismatch
        n_zeros = population - n_nonzero  # matching bits, +0/-0 and NaN/NaN pairs

        def nonzero_at(rank: int) -> int:
            """The rank-th smallest nonzero distance (1-based) of the histogram and the kept values together."""
            below = int(np.searchsorted(kept, counts.size, side="right"))  # kept values the histogram spans
            if rank > in_hist + below:  # past every value the histogram holds
                return int(kept[rank - in_hist - 1])
            merged = cumulative
            if below:
                merged = cumulative + np.searchsorted(kept[:below], np.arange(1, counts.size + 1), side="right")
            return int(np.searchsorted(merged, rank)) + 1

        def nearest_rank(q: float) -> int:
            if population == 0:
                return 0
            rank = max(1, math.ceil(q * population)) - n_zeros  # 1-based among the nonzero distances
            return nonzero_at(rank) if rank > 0 else 0

        total = int(np.dot(counts, np.arange(1, counts.size + 1, dtype=np.int64))) + _exact_sum(kept)
        max_ulp = int(np.flatnonzero(counts)[-1]) + 1 if in_hist else 0
        if kept.size:
            max_ulp = max(max_ulp, int(kept[-1]))
        max_rel = max(self.max_rel, self.rel64)
        max_b = float(np.array([self.max_b_bits], self.fmt.unsigned).view(self.fmt.dtype)[0])
        return Comparison(
            n_elements=n,
            n_mismatch=self.n_mismatch,
            bitwise_equal=False,
            max_ulp=max_ulp,
            p50_ulp=nearest_rank(0.50),
            p99_ulp=nearest_rank(0.99),
            mean_ulp=total / population if population else 0.0,
            max_abs=self.max_abs,
            max_rel=max_rel,
            max_ulp_scaled=self.max_abs / _spacing_at(max_b, self.fmt.dtype),
            n_nan_mismatch=self.n_nan_mismatch,
            digest=hexdigest,
        )


def compare(a: np.ndarray, b: np.ndarray, *, digest: bool = True) -> Comparison:
    """Compare tensor ``a`` against the reference ``b``, bitwise and in ULPs.

    Identical tensors take a fast path that only checks the bits. Otherwise
    the work runs in cache-sized blocks with preallocated buffers: one integer
    subtraction per block finds the differing elements; a block with few of
    them measures only those, a dense block of finite same-sign values near
    each other (the usual case) takes a path of two float operations and a few
    reductions, and anything else (NaN, inf, signed zeros, narrow dtypes) the
    general path. ULP distances are counted in a histogram, not sorted, so the
    percentiles are exact at little cost.

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
    tally = _Tally(fmt, n)
    with np.errstate(all="ignore"):  # wraparound, x/0, 0/0 and inf-inf are all accounted for
        for start, stop in _chunks(n):
            tally.block(xa[start:stop], xb[start:stop])
    return tally.result(n, hexdigest)


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
    i1, i2 = float_info(d1), float_info(d2)
    return d1 if (i1.nmant, i1.nexp) <= (i2.nmant, i2.nexp) else d2
