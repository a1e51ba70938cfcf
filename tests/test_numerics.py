"""numerics: exact ULP distances and comparison records. Pure NumPy, milliseconds."""

from __future__ import annotations

import math
from contextlib import contextmanager

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing._private.utils import nulp_diff

import detaudit.core.numerics as numerics
from detaudit.core.numerics import (
    FLOAT_DTYPES,
    compare,
    digest,
    float_dtype,
    nan_mismatch,
    narrower_dtype,
    ulp_distance,
    worst,
)

ALL_DTYPES = list(FLOAT_DTYPES.values())
NATIVE = [np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)]


def _ulp(a, b, dtype) -> int:
    return int(ulp_distance(np.array([a], dtype=dtype), np.array([b], dtype=dtype))[0])


# --- exact special cases (TF-FACTS: nulp_diff gets the first two wrong) -------------------------

def test_float32_infinities_are_exact():
    assert _ulp(-np.inf, np.inf, np.float32) == 4_278_190_080


def test_float16_extremes_are_exact():
    assert _ulp(-60000, 60000, np.float16) == 63_142


def test_float64_infinities_do_not_wrap():
    assert _ulp(-np.inf, np.inf, np.float64) == 2 * 0x7FF0000000000000


def test_result_is_uint64():
    out = ulp_distance(np.float32([1, 2]), np.float32([1, 3]))
    assert out.dtype == np.uint64 and out.shape == (2,)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_signed_zeros_are_zero_ulp_but_bitwise_different(dtype):
    a, b = np.array([0.0], dtype=dtype), np.array([-0.0], dtype=dtype)
    assert ulp_distance(a, b)[0] == 0
    result = compare(a, b)
    assert not result.bitwise_equal and result.n_mismatch == 1 and result.max_ulp == 0


@pytest.mark.parametrize("dtype", [d for d in ALL_DTYPES if d.name != "float8_e4m3fn"], ids=lambda d: d.name)
def test_infinity_is_one_ulp_from_the_largest_finite(dtype):
    big = ml_dtypes.finfo(dtype).max
    assert _ulp(np.inf, big, dtype) == 1
    assert _ulp(-np.inf, -big, dtype) == 1


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda d: d.name)
def test_nan_against_nan_is_zero_and_against_a_number_is_counted_apart(dtype):
    a = np.array([np.nan, np.nan, 1.0], dtype=dtype)
    b = np.array([np.nan, 1.0, 1.0], dtype=dtype)
    assert ulp_distance(a, b).tolist() == [0, 0, 0]
    assert nan_mismatch(a, b).tolist() == [False, True, False]
    result = compare(a, b)
    assert result.n_nan_mismatch == 1 and result.max_ulp == 0 and not result.bitwise_equal


def test_bfloat16_one_step_above_one():
    one = np.array([1.0], dtype=ml_dtypes.bfloat16)
    assert one.view(np.uint16)[0] == 0x3F80
    assert ulp_distance(one, (one.view(np.uint16) + 1).view(ml_dtypes.bfloat16))[0] == 1


def test_mismatched_inputs_are_refused():
    with pytest.raises(TypeError, match="cast one of them"):
        ulp_distance(np.float32([1]), np.float64([1]))
    with pytest.raises(ValueError, match="shapes"):
        compare(np.float32([1, 2]), np.float32([1]))
    with pytest.raises(TypeError, match="Unsupported dtype"):
        ulp_distance(np.int32([1]), np.int32([1]))


# --- properties --------------------------------------------------------------------------------

def _finite(dtype):
    return hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NATIVE).flatmap(lambda d: st.tuples(st.just(d), _finite(d))))
def test_nextafter_is_one_ulp(pair):
    dtype, value = pair
    x = np.array([value], dtype=dtype)
    for direction in (np.inf, -np.inf):
        with np.errstate(over="ignore"):
            step = np.nextafter(x, np.array([direction], dtype=dtype))
        if np.isfinite(step[0]) and not (x[0] == 0 and step[0] == 0):
            assert ulp_distance(x, step)[0] == 1


@pytest.fixture()
def small_chunks(monkeypatch):
    """Chunks of 16 elements, so that a 200-element array crosses many chunk boundaries."""
    monkeypatch.setattr(numerics, "_CHUNK", 16)


def _any_bits(dtype, n=8):
    """Every bit pattern of the dtype, NaNs and infinities included (ml_dtypes too)."""
    return hnp.arrays(np.dtype(f"u{dtype.itemsize}"), n).map(lambda bits: bits.view(dtype))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_DTYPES), st.data())
def test_symmetric_and_zero_on_itself(dtype, data):
    a, b = data.draw(_any_bits(dtype)), data.draw(_any_bits(dtype))
    assert np.array_equal(ulp_distance(a, b), ulp_distance(b, a))
    assert not ulp_distance(a, a).any()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NATIVE).flatmap(lambda d: st.tuples(st.just(d), st.lists(_finite(d), min_size=3, max_size=3))))
def test_distances_add_up_along_a_monotone_run(triple):
    dtype, values = triple
    x, y, z = sorted(np.array(values, dtype=dtype))
    d = lambda p, q: int(ulp_distance(np.array([p], dtype), np.array([q], dtype))[0])  # noqa: E731
    assert d(x, y) + d(y, z) == d(x, z)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(NATIVE).flatmap(
    lambda d: st.tuples(st.just(d), hnp.arrays(d, 16, elements=_finite(d)), hnp.arrays(d, 16, elements=_finite(d)))))
def test_agrees_with_nulp_diff_where_nulp_diff_is_right(triple):
    dtype, a, b = triple
    # nulp_diff subtracts at the dtype's own width and returns the count in the input's own
    # float dtype: it is right when both sides share a sign and the count is exactly
    # representable (below 2**(nmant + 1): 2,048 for float16).
    a, b = np.abs(a), np.abs(b)
    ours = ulp_distance(a, b)
    theirs = np.asarray(nulp_diff(a, b)).reshape(ours.shape)  # it returns shape (1, n) for 1-d input
    small = ours < 2 ** (np.finfo(dtype).nmant + 1)
    assert np.array_equal(ours[small].astype(np.float64), theirs[small])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ALL_DTYPES), st.data(), st.integers(0, 3))
def test_compare_agrees_with_ulp_distance_on_any_bits(small_chunks, dtype, data, density):
    a = data.draw(_any_bits(dtype, 100))
    b = data.draw(_any_bits(dtype, 100))
    keep = data.draw(hnp.arrays(bool, 100, elements=st.booleans() if density else st.just(True)))
    if density:  # sparse and dense chunks both: equal elements where keep is set
        b = np.where(keep, a, b) if density > 1 else b
    result = compare(a, b)
    distances = ulp_distance(a, b)
    assert result.max_ulp == int(distances.max())
    assert result.n_mismatch == int(np.count_nonzero(a.view(f"u{dtype.itemsize}") != b.view(f"u{dtype.itemsize}")))
    assert result.n_nan_mismatch == int(nan_mismatch(a, b).sum())
    numeric = ~nan_mismatch(a, b)
    population = np.sort(distances[numeric])
    if population.size:
        assert result.p50_ulp == int(population[int(np.ceil(0.5 * population.size)) - 1])
        assert result.p99_ulp == int(population[int(np.ceil(0.99 * population.size)) - 1])


def _reference_gaps(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """max |a-b| and max |a-b|/|b| in plain float64, NaN pairs and equal bits skipped."""
    bits = f"u{a.dtype.itemsize}"
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it widens a NaN
        wa, wb = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    keep = (a.view(bits) != b.view(bits)).ravel() & ~np.isnan(wa) & ~np.isnan(wb)
    wa, wb = wa[keep], wb[keep]
    with np.errstate(all="ignore"):
        gap = np.abs(wa - wb)
        rel = np.where(gap == 0, 0.0, gap / np.abs(wb))
    rel = np.where(np.isnan(rel), np.inf, rel)
    return float(gap.max(initial=0.0)), float(rel.max(initial=0.0))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ALL_DTYPES), st.data(), st.booleans())
def test_float_statistics_match_a_float64_reference(small_chunks, dtype, data, nearby):  # the patch holds throughout
    a = data.draw(_any_bits(dtype, 200))
    if nearby:  # mostly tiny ULP nudges: the fast same-binade path
        steps = data.draw(hnp.arrays(np.dtype(f"u{dtype.itemsize}"), 200, elements=st.integers(0, 3)))
        b = (a.view(steps.dtype) + steps).view(dtype)
    else:
        b = data.draw(_any_bits(dtype, 200))
    result = compare(a, b)
    max_abs, max_rel = _reference_gaps(a, b)
    assert result.max_abs == max_abs
    assert result.max_rel == pytest.approx(max_rel, rel=1e-15) or (np.isinf(max_rel) and np.isinf(result.max_rel))
    assert result.max_ulp == int(ulp_distance(a, b).max())


# --- compare ------------------------------------------------------------------------------------

def test_identical_tensors_take_the_fast_path():
    a = np.arange(10, dtype=np.float32)
    result = compare(a, a.copy())
    assert result.bitwise_equal and result.n_mismatch == 0 and result.max_ulp == 0
    assert result.digest == digest(a)
    assert compare(a, a, digest=False).digest is None


def test_compare_statistics_are_exact_integers():
    b = np.ones(100, dtype=np.float32)
    a = b.copy()
    a[:3] = np.nextafter(a[:3], np.float32(2))          # 1 ULP
    a[3] = (b[3:4].view(np.uint32) + 7).view(np.float32)[0]  # 7 ULP
    result = compare(a, b)
    assert result.n_mismatch == 4 and result.max_ulp == 7
    assert isinstance(result.max_ulp, int) and isinstance(result.p99_ulp, int)
    assert result.p50_ulp == 0 and result.p99_ulp == 1  # nearest rank: 99th of 100 is a 1-ULP element
    assert result.mean_ulp == pytest.approx(10 / 100)
    assert result.max_ulp_scaled == pytest.approx(7.0)
    assert result.max_abs == pytest.approx(7 * 2.0 ** -23)


def test_scaled_ulp_stays_small_where_raw_ulp_explodes_near_zero():
    b = np.array([1.0, 1e-30], dtype=np.float32)
    a = np.array([1.0, 2e-30], dtype=np.float32)
    result = compare(a, b)
    assert result.max_ulp > 1_000_000
    assert result.max_ulp_scaled < 1e-20


def test_relative_error_against_zero_is_infinite():
    assert compare(np.float32([1.0]), np.float32([0.0])).max_rel == np.inf


def test_worst_folds_repeats_without_keeping_them():
    ref = np.ones(4, dtype=np.float32)
    one = compare(np.float32([1, 1, 1, 1 + 2 ** -23]), ref, digest=False)
    two = compare(np.float32([1, 1 + 2 ** -22, 1, 1]), ref, digest=False)
    folded = worst(one, two)
    assert folded.max_ulp == 2 and folded.n_mismatch == 1 and not folded.bitwise_equal


def test_narrower_dtype_prefers_fewer_mantissa_bits():
    assert narrower_dtype("float32", "bfloat16").name == "bfloat16"
    assert narrower_dtype("float16", "bfloat16").name == "bfloat16"
    assert narrower_dtype(np.float64, np.float32) == np.float32
    assert float_dtype("float8_e5m2").itemsize == 1


def test_digest_is_sha256_of_the_bytes():
    import hashlib
    a = np.arange(5, dtype=np.float64)
    assert digest(a) == hashlib.sha256(a.tobytes()).hexdigest()


# --- against a reference written the obvious way ------------------------------------------------
#
# compare() takes several paths (identical blocks, sparse blocks measured on their differing
# elements, the dense same-sign fast path, the general path) and counts distances in layers, a
# histogram or a kept list. These tests hold all of them to one reference that walks the elements
# in Python ints and floats. Block size and thresholds are shrunk so that small arrays cross them.

@contextmanager
def _tuned(**values):
    """Set numerics' block size and thresholds for the duration (hypothesis-friendly, unlike monkeypatch)."""
    old = {name: getattr(numerics, name) for name in values}
    for name, value in values.items():
        setattr(numerics, name, value)
    try:
        yield
    finally:
        for name, value in old.items():
            setattr(numerics, name, value)


def _reference_spacing(magnitude: float, dtype) -> float:
    """Gap from a representable ``magnitude`` >= 0 to its upper neighbour (lower one for the largest finite)."""
    unsigned = np.dtype(f"u{dtype.itemsize}")
    bits = np.array([magnitude], dtype=dtype).view(unsigned)
    with np.errstate(invalid="ignore"):  # the neighbour of float8_e4m3fn's largest value is NaN
        up = float((bits + 1).view(dtype).astype(np.float64)[0])
    if math.isfinite(up):
        return up - magnitude
    return magnitude - float((bits - 1).view(dtype).astype(np.float64)[0])


def _reference_compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Every Comparison field but the digest, one element at a time."""
    width = 8 * a.dtype.itemsize
    unsigned = f"u{a.dtype.itemsize}"

    def key(bits: int) -> int:  # order-preserving: -0 and +0 are both 0
        return bits if bits < 1 << (width - 1) else -(bits - (1 << (width - 1)))

    bits_a, bits_b = a.view(unsigned).ravel().tolist(), b.view(unsigned).ravel().tolist()
    with np.errstate(invalid="ignore"):  # ml_dtypes warns when it widens a NaN
        values_a, values_b = a.astype(np.float64).ravel().tolist(), b.astype(np.float64).ravel().tolist()
    population, n_mismatch, n_nan_mismatch, n_equal = [], 0, 0, 0
    max_abs = max_rel = largest_b = 0.0
    for ia, ib, va, vb in zip(bits_a, bits_b, values_a, values_b):
        if math.isfinite(vb):
            largest_b = max(largest_b, abs(vb))
        if ia == ib:
            n_equal += 1  # distance 0, NaN against the same NaN included
            continue
        n_mismatch += 1
        nan_a, nan_b = math.isnan(va), math.isnan(vb)
        if nan_a != nan_b:
            n_nan_mismatch += 1
            continue
        population.append(0 if nan_a else abs(key(ia) - key(ib)))
        if nan_a:
            continue
        gap = abs(va - vb)  # float64 rounding of the exact difference
        max_abs = max(max_abs, gap)
        if math.isinf(vb) or (vb == 0 and gap > 0):
            max_rel = math.inf
        elif vb != 0:
            max_rel = max(max_rel, gap / abs(vb))
    population = sorted(population + [0] * n_equal)

    def nearest_rank(q: float) -> int:
        return population[max(1, math.ceil(q * len(population))) - 1] if population else 0

    return {
        "n_elements": a.size,
        "n_mismatch": n_mismatch,
        "bitwise_equal": n_mismatch == 0,
        "max_ulp": population[-1] if population else 0,
        "p50_ulp": nearest_rank(0.50),
        "p99_ulp": nearest_rank(0.99),
        "mean_ulp": sum(population) / len(population) if population else 0.0,
        "max_abs": max_abs,
        "max_rel": max_rel,
        "max_ulp_scaled": max_abs / _reference_spacing(largest_b, a.dtype),
        "n_nan_mismatch": n_nan_mismatch,
        "digest": None,
    }


def _assert_matches_reference(a: np.ndarray, b: np.ndarray) -> None:
    result = compare(a, b, digest=False)
    expected = _reference_compare(a, b)
    assert result.to_dict() == expected
    assert all(type(getattr(result, name)) is int for name in ("max_ulp", "p50_ulp", "p99_ulp", "n_mismatch"))
    width = a.dtype.itemsize * 8
    keys = [bits if bits < 1 << (width - 1) else (1 << (width - 1)) - bits
            for bits in a.view(f"u{a.dtype.itemsize}").ravel().tolist()]
    other = [bits if bits < 1 << (width - 1) else (1 << (width - 1)) - bits
             for bits in b.view(f"u{a.dtype.itemsize}").ravel().tolist()]
    with np.errstate(invalid="ignore"):
        nan = np.isnan(a.astype(np.float64)).ravel() | np.isnan(b.astype(np.float64)).ravel()
    assert ulp_distance(a, b).ravel().tolist() == [0 if n else abs(p - q) for p, q, n in zip(keys, other, nan)]


def _special_bits(dtype) -> list[int]:
    """Bit patterns of the values that need care: zeros, infinities, NaNs, the extremes, one."""
    info = ml_dtypes.finfo(dtype)
    unsigned = np.dtype(f"u{dtype.itemsize}")
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, float(info.max), -float(info.max),
                           float(info.smallest_subnormal), -float(info.smallest_subnormal),
                           float(info.smallest_normal), 1.0, -1.0], dtype=np.float64).astype(dtype)
    bits = {int(x) for x in values.view(unsigned)}
    sign = 1 << (8 * dtype.itemsize - 1)
    nan_bits = int(np.array([np.nan], dtype=dtype).view(unsigned)[0])
    bits |= {nan_bits | sign, (sign - 1), (sign - 1) | sign}  # a negative NaN, the NaNs with all bits set
    return sorted(bits)


def _floats(dtype, n: int, finite_share: float = 0.0):
    """Arrays of ``dtype`` from any bits, special values, and (often) ordinary numbers of mixed sign."""
    unsigned = np.dtype(f"u{dtype.itemsize}")
    width = 8 * dtype.itemsize
    def bits_of(value: float) -> int:
        with np.errstate(over="ignore", invalid="ignore"):  # float8 saturates or overflows: fine, any bits do
            return int(np.array([value]).astype(dtype).view(unsigned)[0])

    ordinary = st.floats(-1e4, 1e4, width=32).map(bits_of)
    element = st.one_of(st.integers(0, (1 << width) - 1), st.sampled_from(_special_bits(dtype)), ordinary, ordinary)
    return hnp.arrays(unsigned, n, elements=element).map(lambda bits: bits.view(dtype))


def _derive(data, a: np.ndarray, mode: str) -> np.ndarray:
    """A second array from ``a``: what kernels under audit produce (nudges, sign flips, NaNs, sparse edits)."""
    dtype, n = a.dtype, a.size
    unsigned = np.dtype(f"u{dtype.itemsize}")
    if mode == "any":
        return data.draw(_floats(dtype, n))
    if mode in ("nudge", "far"):
        limit = 4 if mode == "nudge" else 1 << min(40, 8 * dtype.itemsize - 2)
        steps = data.draw(hnp.arrays(np.int64, n, elements=st.integers(-limit, limit)))
        return (a.view(unsigned).astype(np.int64) + steps).astype(unsigned).view(dtype)  # wraps: any bits
    b = a.copy()
    where = data.draw(hnp.arrays(bool, n, elements=st.booleans()))
    if mode == "sparse":
        replacement = data.draw(_floats(dtype, n))
        b[where] = replacement[where]
    else:  # "negate": sign flips, so +0/-0 pairs and opposite signs
        b.view(unsigned)[where] ^= unsigned.type(1 << (8 * dtype.itemsize - 1))
    return b


_MODES = ("any", "nudge", "far", "sparse", "negate")


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(ALL_DTYPES), st.data())
def test_compare_matches_the_reference_on_every_path(dtype, data):
    a = data.draw(_floats(dtype, data.draw(st.integers(1, 120))), label="a")
    b = _derive(data, a, data.draw(st.sampled_from(_MODES), label="mode"))
    if data.draw(st.booleans(), label="swap"):
        a, b = b, a
    tuning = {
        "_CHUNK": data.draw(st.sampled_from([1, 3, 8, 16, 64, 1 << 17]), label="chunk"),
        "_SPARSE": data.draw(st.sampled_from([1, 4, 16, 1 << 30]), label="sparse"),
        "_LAYER": data.draw(st.sampled_from([1, 2, 3, 8]), label="layer"),
        "_HIST": data.draw(st.sampled_from([1, 2, 5, 1 << 16]), label="hist"),
    }
    with _tuned(**tuning):
        _assert_matches_reference(a, b)


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(NATIVE), st.data())
def test_dense_fast_path_matches_the_reference(dtype, data):
    """Finite values nudged by a few ULPs in blocks that are all dense: the same-sign fast path,
    with equal zeros (0/0 in its quotient), +0/-0 pairs and NaNs sprinkled in to knock it off."""
    n = data.draw(st.integers(1, 300))
    values = data.draw(hnp.arrays(dtype, n, elements=hnp.from_dtype(dtype, allow_nan=False, allow_infinity=False,
                                                                    allow_subnormal=True)))
    a = values.copy()
    b = _derive(data, a, "nudge")
    for special in data.draw(st.lists(st.sampled_from(["zeros", "signed zero", "nan", "inf", "negate"]),
                                      max_size=2)):
        i = data.draw(st.integers(0, n - 1))
        if special == "zeros":
            a[i] = b[i] = 0
        elif special == "signed zero":
            a[i], b[i] = 0.0, -0.0
        elif special == "nan":
            a[i] = np.nan
        elif special == "inf":
            b[i] = np.inf
        else:
            b[i] = -a[i]
    with _tuned(_CHUNK=data.draw(st.sampled_from([4, 16, 64])), _SPARSE=1 << 30):
        _assert_matches_reference(a, b)


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(ALL_DTYPES), st.data())
def test_differences_at_block_edges(dtype, data):
    """Arrays of several blocks plus a remainder, differing only next to block boundaries."""
    chunk = data.draw(st.sampled_from([2, 5, 16, 32]), label="chunk")
    n = chunk * data.draw(st.integers(1, 5)) + data.draw(st.integers(0, chunk - 1))
    a = data.draw(_floats(dtype, n), label="a")
    edges = sorted({i for j in range(0, n + 1, chunk) for i in (j - 1, j) if 0 <= i < n})
    chosen = data.draw(st.lists(st.sampled_from(edges), min_size=1, unique=True), label="edges")
    b = a.copy()
    unsigned = np.dtype(f"u{dtype.itemsize}")
    other = data.draw(_floats(dtype, n), label="other")
    for i in chosen:
        how = data.draw(st.sampled_from(["step", "flip sign", "replace"]))
        if how == "step":
            b.view(unsigned)[i] = (int(b.view(unsigned)[i]) + data.draw(st.integers(1, 3))) % (1 << 8 * dtype.itemsize)
        elif how == "flip sign":
            b.view(unsigned)[i] ^= unsigned.type(1 << (8 * dtype.itemsize - 1))
        else:
            b[i] = other[i]
    with _tuned(_CHUNK=chunk, _SPARSE=data.draw(st.sampled_from([1, 16, 1 << 30]))):
        _assert_matches_reference(a, b)


@settings(max_examples=8, deadline=None)
@given(st.sampled_from(ALL_DTYPES), st.data())
def test_real_block_size_with_edges_and_a_dense_block(dtype, data):
    """Longer than two real blocks: block 0 dense (nudged everywhere), the rest sparse, edges touched."""
    chunk = numerics._CHUNK
    n = 2 * chunk + data.draw(st.integers(1, 40))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    a = rng.standard_normal(n).astype(np.float32).astype(dtype)
    unsigned = np.dtype(f"u{dtype.itemsize}")
    b = a.copy()
    b.view(unsigned)[:chunk] += rng.integers(0, 5, chunk).astype(unsigned)
    for i in (chunk - 1, chunk, 2 * chunk - 1, 2 * chunk, n - 1):
        b.view(unsigned)[i] ^= unsigned.type(data.draw(st.sampled_from([1, 3, 1 << (8 * dtype.itemsize - 1)])))
    for i in data.draw(st.lists(st.integers(0, n - 1), max_size=5)):
        b.view(unsigned)[i] = data.draw(st.sampled_from(_special_bits(dtype)))
    _assert_matches_reference(a, b)
