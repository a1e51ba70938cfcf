"""shapes: formulas, round trips, rejections and checkerboards, analytically. No TensorFlow."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detaudit.core.reference import output_length
from detaudit.core.shapes import (
    checkerboard_pattern,
    checkerboard_score,
    conv_length,
    shape_row,
)


def test_the_seed_posts_examples():
    assert shape_row(4, 3, 2, "same").output == 8             # 8x8 -> 4x4 -> 8x8
    assert (shape_row(8, 3, 2, "same").conv, shape_row(8, 3, 2, "same").round_trip) == (4, 8)
    assert shape_row(16, 3, 2, "valid").output == 33
    assert shape_row(15, 3, 2, "same").output == 30
    odd = shape_row(15, 3, 2, "same")
    assert (odd.conv, odd.round_trip, odd.round_trip_ok) == (8, 16, False)  # 15 -> 8 -> 16
    assert odd.fixing_output_padding == 0 and output_length(8, 3, 2, "same", 1, 0) == 15


def test_the_known_crash_is_flagged_before_running():
    row = shape_row(5, 4, 2, "same", output_padding=0)
    assert row.output is None and "Size of out_backprop doesn't match computed" in row.rejected
    assert "smaller than the stride" in shape_row(5, 3, 2, "same", output_padding=2).rejected


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 40), k=st.integers(1, 7), s=st.integers(1, 4), padding=st.sampled_from(["same", "valid"]))
def test_the_fixing_output_padding_restores_the_input_length(n, k, s, padding):
    row = shape_row(n, k, s, padding)
    if row.conv > 0 and row.fixing_output_padding is not None:
        assert output_length(row.conv, k, s, padding, 1, row.fixing_output_padding) == n
        assert conv_length(n, k, s, padding) == row.conv


@pytest.mark.parametrize("k, s, pattern", [(3, 2, [2, 1]), (4, 2, [2, 2]), (5, 3, [2, 2, 1]), (3, 3, [1, 1, 1])])
def test_tap_counts_alternate_between_floor_and_ceil_of_k_over_s(k, s, pattern):
    assert checkerboard_pattern(k, s) == pattern


def test_checkerboard_score_is_zero_exactly_when_the_stride_divides_the_kernel():
    assert checkerboard_score(4, 2) == 0 and checkerboard_score(3, 2) > 0
    for k in range(1, 9):
        for s in range(1, 5):
            assert (checkerboard_score(k, s) == 0) == (k % s == 0)
