"""pytest_plugin and testing: the plugin in real pytest sessions (pytester, subprocess), the assertion directly."""

from __future__ import annotations

import itertools
import textwrap

import numpy as np
import pytest

from detaudit.errors import UsageError
from detaudit.testing import assert_deterministic
from tests.helpers.values import returning as _calls

pytest_plugins = ["pytester"]

INNER = ("-p", "no:cacheprovider", "--strict-markers")

# A user's test file: everything here must pass, without a warning and without importing TensorFlow.
PASSING = """
    import itertools
    import sys

    import numpy as np
    import pytest

    calls = itertools.count()


    def one_ulp_on_odd_calls():
        x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
        if next(calls) % 2:
            x[1, 2] = np.nextafter(x[1, 2], np.float32(2))
        return x


    @pytest.mark.deterministic
    def test_same_array():
        return np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7


    @pytest.mark.deterministic(repeats=5)
    def test_structures():
        return {"grads": [np.ones(3), np.int32(4)], "loss": 0.25, "names": ("a", "b"), "flag": True}


    @pytest.mark.parametrize("n", [1, 3])
    @pytest.mark.deterministic(repeats=2)
    def test_parametrized_with_a_fixture(n, tmp_path):
        return np.full(n, float(len(tmp_path.name)))


    @pytest.mark.deterministic(max_ulp=1)
    def test_one_ulp_within_max_ulp():
        return one_ulp_on_odd_calls()


    @pytest.mark.deterministic(atol=1e-6)
    def test_one_ulp_within_atol():
        return one_ulp_on_odd_calls()


    def test_fixture(assert_deterministic):
        assert_deterministic(np.linspace, 0, 1, num=5)
        assert_deterministic(one_ulp_on_odd_calls, repeats=4, max_ulp=1)
        with pytest.raises(AssertionError, match="Mismatched elements: 1 / 12"):
            assert_deterministic(one_ulp_on_odd_calls)


    unmarked_calls = itertools.count()


    def test_unmarked_tests_are_untouched():
        assert next(unmarked_calls) == 0  # called once; the plugin calls a marked test three times


    def test_zz_the_plugin_did_not_import_tensorflow():
        assert "tensorflow" not in sys.modules
"""

# Each test here fails, each for its own reason.
FAILING = """
    import itertools

    import numpy as np
    import pytest

    calls = itertools.count()


    @pytest.mark.deterministic
    def test_random():
        return np.random.rand(4, 5).astype(np.float32)


    @pytest.mark.deterministic
    def test_one_ulp_bitwise():
        x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
        if next(calls) % 2:
            x[1, 2] = np.nextafter(x[1, 2], np.float32(2))
        return {"out": x}


    @pytest.mark.deterministic(atol=1e-9)
    def test_atol_too_small():
        return np.float32(1) + np.float32(2.0 ** -23) * (next(calls) % 2)


    @pytest.mark.deterministic
    def test_returns_none():
        pass


    @pytest.mark.deterministic(repeats=1)
    def test_bad_repeats():
        return 1


    @pytest.mark.deterministic(reps=4)
    def test_unknown_argument():
        return 1
"""


def _run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest_subprocess(*INNER, *args)


def test_a_plain_session_passes_with_a_header_no_warning_and_no_tensorflow(pytester):
    result = _run(pytester, PASSING, "-W", "error::pytest.PytestReturnNotNoneWarning", "-rA")
    result.assert_outcomes(passed=9)
    header = [line for line in result.outlines if line.startswith("detaudit")]
    assert len(header) == 1, result.outlines[:8]
    for part in ("TensorFlow", "Keras", "oneDNN", "op determinism", "XLA", "TF32"):
        assert part in header[0]
    assert "PytestReturnNotNoneWarning" not in result.stdout.str()
    assert "warnings summary" not in result.stdout.str()


def test_failures_read_like_assert_close(pytester):
    result = _run(pytester, FAILING)
    result.assert_outcomes(failed=6)
    result.stdout.fnmatch_lines([
        "*_ test_random _*",
        "E   AssertionError: Tensor `output` (shape (4, 5), float32) differs between call 1 and call 2.",
        "*Mismatched elements: 20 / 20 (100.0%)",
        "*Greatest ULP difference: * at index (*, *) (up to 0 allowed)",
        "*Greatest absolute difference: * at index (*, *) (up to 0.0 allowed)",
        "*Later calls that differ: 2 of 2.",
        "*_ test_one_ulp_bitwise _*",
        "E   AssertionError: Tensor `['out']` (shape (3, 4), float32) differs between call 1 and call 2.",
        "*Mismatched elements: 1 / 12 (8.3%)",
        "*Greatest ULP difference: 1 at index (1, 2) (up to 0 allowed)",
        "*_ test_atol_too_small _*",
        "*Greatest absolute difference: 1.1920928955078125e-07 at index () (up to 1e-09 allowed)",
        "*_ test_returns_none _*",
        "test_returns_none is marked @pytest.mark.deterministic but returned None*",
        "*_ test_bad_repeats _*",
        "*UsageError: Invalid value for argument `repeats`. Expected an integer >= 2. Received repeats=1.",
        "*_ test_unknown_argument _*",
        "*UsageError: Invalid arguments for `@pytest.mark.deterministic`: got an unexpected keyword argument "
        "'reps'. Expected deterministic(repeats=3, max_ulp=0, atol=0.0).",
    ])
    assert "detaudit/testing.py" not in result.stdout.str()  # the traceback stops at the user's test


@pytest.mark.tf
def test_a_marked_keras_conv2d_transpose_passes_on_cpu(pytester):
    result = _run(pytester, """
        import os

        os.environ["CUDA_VISIBLE_DEVICES"] = "-1"

        import keras
        import numpy as np
        import pytest


        @pytest.mark.deterministic(repeats=3)
        def test_conv2d_transpose():
            keras.utils.set_random_seed(0)
            layer = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")
            return layer(np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype("float32"))
    """, "-W", "error::pytest.PytestReturnNotNoneWarning")
    result.assert_outcomes(passed=1)


# ------------------------------------------------------------------------------- assert_deterministic itself


def _ulps_up(x, n):
    x = np.array(x)
    for _ in range(n):
        x = np.nextafter(x, np.array(np.inf, x.dtype))
    return x


X = np.array([1.0, 2.0, 3.0], np.float32)


def test_the_message_for_a_small_case():
    changed = X.copy()
    changed[1] = _ulps_up(X[1], 2)
    with pytest.raises(AssertionError) as info:
        assert_deterministic(_calls(X, X, changed))
    assert str(info.value) == (
        "Tensor `output` (shape (3,), float32) differs between call 1 and call 3.\n"
        "Mismatched elements: 1 / 3 (33.3%)\n"
        "Greatest ULP difference: 2 at index (1,) (up to 0 allowed)\n"
        "Greatest absolute difference: 4.76837158203125e-07 at index (1,) (up to 0.0 allowed)\n"
        "Later calls that differ: 1 of 2.")


def test_the_call_named_is_the_first_that_fails_the_tolerance():
    with pytest.raises(AssertionError) as info:
        assert_deterministic(_calls(X, _ulps_up(X, 1), _ulps_up(X, 3)), max_ulp=1)
    message = str(info.value)
    assert "differs between call 1 and call 3." in message
    assert "Mismatched elements: 3 / 3 (100.0%)" in message
    assert "Greatest ULP difference: 3 at index (0,) (up to 1 allowed)" in message
    assert "Later calls that differ: 1 of 2." in message
    assert_deterministic(_calls(X, _ulps_up(X, 1), _ulps_up(X, 3)), max_ulp=3)
    assert_deterministic(_calls(X, _ulps_up(X, 1), _ulps_up(X, 3)), atol=1e-6)


def test_tolerances_count_only_the_elements_outside_them():
    later = X.copy()
    later[0], later[2] = _ulps_up(X[0], 1), _ulps_up(X[2], 5)
    with pytest.raises(AssertionError, match=r"Mismatched elements: 1 / 3 \(33.3%\)"):
        assert_deterministic(_calls(X, later), repeats=2, max_ulp=2)
    # Either tolerance suffices for an element: 5 ULP of 3.0 is 1.2e-6.
    assert_deterministic(_calls(X, later), repeats=2, max_ulp=1, atol=2e-6)


def test_signed_zeros_differ_by_default_only():
    zeros, negative = np.zeros(4, np.float32), -np.zeros(4, np.float32)
    with pytest.raises(AssertionError) as info:
        assert_deterministic(_calls(zeros, negative))
    assert "Mismatched elements: 4 / 4 (100.0%)" in str(info.value)
    assert "Only the sign of zero differs (+0 vs -0)" in str(info.value)
    assert_deterministic(_calls(zeros, negative), max_ulp=1)
    assert_deterministic(_calls(zeros, negative), atol=1e-30)


def test_nan_matches_nan_and_never_a_number():
    quiet, payload = np.array([np.nan], np.float32), np.array([0x7FC00001], np.uint32).view(np.float32)
    # One bit-for-bit rule (as numerics.compare): other NaN payloads are a bitwise mismatch at 0 ULP, like -0.
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 1"):
        assert_deterministic(_calls(quiet, payload))
    assert_deterministic(_calls(quiet, payload), max_ulp=1)
    with pytest.raises(AssertionError, match="NaN in one call only: 1 element, the first at index \\(0,\\)"):
        assert_deterministic(_calls(quiet, np.array([1.0], np.float32)), max_ulp=10**9, atol=1e30)


def test_integers_and_booleans_are_exact_unless_atol_allows():
    ints = _calls(np.array([5, -3], np.int64), np.array([5, -1], np.int64))
    with pytest.raises(AssertionError, match=r"Greatest absolute difference: 2 at index \(1,\) \(up to 0.0"):
        assert_deterministic(ints, max_ulp=100)  # no ULPs for integers
    assert_deterministic(_calls(np.array([5, -3], np.int64), np.array([5, -1], np.int64)), atol=2)
    with pytest.raises(AssertionError, match="Mismatched elements: 1 / 1"):
        assert_deterministic(_calls(True, False))
    extremes = np.array([np.iinfo(np.int64).min], np.int64)
    with pytest.raises(AssertionError, match=r"Greatest absolute difference: 18446744073709551615 "):
        assert_deterministic(_calls(extremes, -extremes - 1))  # exact, no float64 rounding or overflow


def test_nested_results_are_named_by_path():
    def grads(n=itertools.count()):
        return {"loss": 0.5, "grads": [np.float32(1) + np.float32(next(n) % 2), np.zeros(2)]}

    with pytest.raises(AssertionError, match=r"Tensor `\['grads'\]\[0\]` \(shape \(\), float32\)"):
        assert_deterministic(grads)
    with pytest.raises(AssertionError, match=r"Tensor `\[1\]` \(shape \(2,\), float64\)"):
        assert_deterministic(_calls((np.zeros(2), np.zeros(2)), (np.zeros(2), np.ones(2))))


def test_a_changing_structure_shape_or_dtype_is_an_assertion():
    with pytest.raises(AssertionError, match=r"changed between call 1 and call 2: at `output` call 1 returned a "
                                             r"dict with keys \['a', 'b'\], call 2 returned a dict with keys \['a'\]"):
        assert_deterministic(_calls({"a": 1, "b": 2}, {"a": 1}))
    with pytest.raises(AssertionError, match=r"at `\[0\]` call 1 returned a float32 array of shape \(3,\), call 3 "
                                             r"returned a float32 array of shape \(4,\)"):
        assert_deterministic(_calls([X], [X], [np.zeros(4, np.float32)]))
    with pytest.raises(AssertionError, match="returned a float64 array"):
        assert_deterministic(_calls(X, X.astype(np.float64)))


def test_tensors_are_read_through_numpy_and_copied():
    class Tensor:  # the duck type of a TensorFlow/Keras tensor or variable
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value

    assert_deterministic(lambda: [Tensor(X), Tensor(np.int8(3))])
    buffer = np.zeros(3)

    def overwrites_its_buffer(n=itertools.count()):
        buffer[:] = next(n)
        return buffer

    with pytest.raises(AssertionError, match="differs between call 1 and call 2"):
        assert_deterministic(overwrites_its_buffer)


def test_arguments_are_passed_on():
    assert_deterministic(np.full, (2, 2), fill_value=3.5, repeats=4)


@pytest.mark.parametrize("kwargs, message", [
    ({"repeats": 1}, "Invalid value for argument `repeats`. Expected an integer >= 2. Received repeats=1."),
    ({"repeats": 2.0}, "Invalid value for argument `repeats`. Expected an integer >= 2. Received repeats=2.0."),
    ({"max_ulp": -1}, "Invalid value for argument `max_ulp`. Expected an integer >= 0. Received max_ulp=-1."),
    ({"atol": -1e-3}, "Invalid value for argument `atol`. Expected a number >= 0. Received atol=-0.001."),
    ({"atol": float("nan")}, "Invalid value for argument `atol`. Expected a number >= 0. Received atol=nan."),
])
def test_invalid_arguments(kwargs, message):
    with pytest.raises(UsageError) as info:
        assert_deterministic(lambda: 1, **kwargs)
    assert str(info.value) == message


def test_a_function_is_required():
    with pytest.raises(UsageError, match="Invalid value for argument `fn`. Expected a callable. Received fn=3."):
        assert_deterministic(3)
