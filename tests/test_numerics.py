"""numerics: exact ULP distances and comparison records. Pure NumPy, milliseconds."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.testing._private.utils import nulp_diff

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
    import detaudit.core.numerics as numerics
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
