"""reference: the NumPy float64 transposed convolution, checked by the adjoint identity. No TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detaudit.core.reference import (
    TransposeSpec,
    conv_transpose,
    conv_transpose_grads,
    output_length,
)


@pytest.mark.parametrize("n, k, s, padding, expected", [
    (4, 3, 2, "same", 8),     # the seed post: 8x8 -> conv s2 same -> 4x4 -> transpose -> 8x8
    (16, 3, 2, "valid", 33),  # the seed post's 16 -> 33 with valid padding
    (15, 3, 2, "same", 30),   # and 15 -> 30 with same padding
    (15, 3, 1, "same", 15),
])
def test_output_length_reproduces_the_seed_post(n, k, s, padding, expected):
    assert output_length(n, k, s, padding) == expected


@st.composite
def geometries(draw):
    rank = draw(st.integers(1, 3))
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    d = 1 if s > 1 else draw(st.integers(1, 2))
    padding = draw(st.sampled_from(["same", "valid"]))
    op = draw(st.one_of(st.none(), st.integers(0, s - 1)))
    n = draw(st.integers(1, 4))
    length = output_length(n, k, s, padding, d, op)
    channels_first = draw(st.booleans())
    spec = TransposeSpec((s,) * rank, padding, (d,) * rank, (length,) * rank, channels_first)
    return spec, rank, k, n, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(0, 2**32 - 1))


def _layout(shape_last, spec):
    return (shape_last[0], shape_last[-1], *shape_last[1:-1]) if spec.channels_first else shape_last


@settings(max_examples=150, deadline=None)
@given(geometries())
def test_the_reference_is_the_adjoint_of_its_input_gradient(geometry):
    spec, rank, k, n, c_in, c_out, seed = geometry
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(_layout((2, *(n,) * rank, c_in), spec))
    kernel = rng.standard_normal((*(k,) * rank, c_out, c_in))
    y = conv_transpose(x, kernel, None, spec)
    assert y.shape == _layout((2, *spec.output_lengths, c_out), spec)
    g = rng.standard_normal(y.shape)
    grads = conv_transpose_grads(x, kernel, g, spec, with_bias=True)
    # <T x, g> = <x, T* g>, and the map is linear in the kernel too: <T_W x, g> = <W, dW>.
    assert np.vdot(y, g) == pytest.approx(np.vdot(x, grads["grad_input"]), rel=1e-12, abs=1e-12)
    assert np.vdot(y, g) == pytest.approx(np.vdot(kernel, grads["grad_kernel"]), rel=1e-12, abs=1e-12)
    bias = rng.standard_normal(c_out)
    with_bias = conv_transpose(x, kernel, bias, spec)
    assert np.vdot(with_bias - y, g) == pytest.approx(np.vdot(bias, grads["grad_bias"]), rel=1e-12, abs=1e-12)


def test_a_one_dimensional_example_by_hand():
    # x = [1, 2], kernel taps [1, 10], stride 2, valid: outputs 1, 10, 2, 20.
    spec = TransposeSpec((2,), "valid", (1,), (4,))
    y = conv_transpose(np.array([[[1.0], [2.0]]]), np.array([[[1.0]], [[10.0]]]), None, spec)
    assert y.ravel().tolist() == [1.0, 10.0, 2.0, 20.0]
