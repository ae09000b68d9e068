"""BitDelta: the paper's algebra (Theorem 2), the documented layout, and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fai_core import bitdelta


def reference(x: np.ndarray, base: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
    """Loop-per-group reference, written from the paper's Algorithm 1 (float64 scales)."""
    delta = x.astype(np.float64) - base.astype(np.float64)
    d = x.shape[1]
    scales = np.stack([np.abs(delta[:, j : j + g]).mean(axis=1) for j in range(0, d, g)], axis=1)
    signs = np.packbits(delta < 0, axis=1, bitorder="big")
    return signs, scales


@st.composite
def problems(draw, max_d: int = 64, max_m: int = 8):
    d = draw(st.integers(1, max_d))
    m = draw(st.integers(0, max_m))
    g = draw(st.integers(1, d))
    values = st.floats(-4.0, 4.0, width=32, allow_subnormal=False)
    x = draw(hnp.arrays(np.float32, (m, d), elements=values))
    base = draw(hnp.arrays(np.float32, (d,), elements=values))
    return x, base, g


@given(problems())
@settings(max_examples=300, deadline=None)
def test_matches_reference_layout(problem):
    x, base, g = problem
    code = bitdelta.encode(x, base, g)
    ref_signs, ref_scales = reference(x, base, g)
    assert code.signs.dtype == np.uint8
    assert code.signs.shape == (x.shape[0], -(-x.shape[1] // 8))
    np.testing.assert_array_equal(code.signs, ref_signs)
    np.testing.assert_allclose(code.scales, ref_scales, rtol=1e-5, atol=1e-6)
    assert bitdelta.padding_is_clean(code.signs, x.shape[1])


@given(problems())
@settings(max_examples=300, deadline=None)
def test_decode_is_baseline_plus_signed_scale(problem):
    x, base, g = problem
    code = bitdelta.encode(x, base, g)
    out = bitdelta.decode(code, base)
    d = x.shape[1]
    bits = np.unpackbits(code.signs, axis=1, bitorder="big")[:, :d].astype(bool)
    per_coord = np.repeat(code.scales.astype(np.float32), g, axis=1)[:, :d]
    expected = base + np.where(bits, -per_coord, per_coord)
    np.testing.assert_array_equal(out, expected.astype(np.float32))


@given(problems())
@settings(max_examples=200, deadline=None)
def test_group_size_one_reconstructs_exactly(problem):
    x, base, _ = problem
    out = bitdelta.decode(bitdelta.encode(x, base, 1), base)
    # Exact up to the float32 rounding of base + (x - base).
    np.testing.assert_allclose(out, x, rtol=0, atol=4 * np.finfo(np.float32).eps * 8)


@given(problems())
@settings(max_examples=300, deadline=None)
def test_squared_error_is_sum_of_group_variances(problem):
    """Paper Theorem 2: ||delta - delta_hat||^2 = sum_j g_j * Var(|delta^(j)|)."""
    x, base, g = problem
    code = bitdelta.encode(x, base, g)
    out = bitdelta.decode(code, base).astype(np.float64)
    delta = x.astype(np.float64) - base.astype(np.float64)
    error = ((delta - (out - base.astype(np.float64))) ** 2).sum(axis=1)
    d = x.shape[1]
    theory = sum(
        np.abs(delta[:, j : j + g]).var(axis=1) * delta[:, j : j + g].shape[1]
        for j in range(0, d, g)
    )
    np.testing.assert_allclose(error, theory, rtol=1e-4, atol=1e-4)


@given(problems())
@settings(max_examples=200, deadline=None)
def test_reencoding_a_reconstruction_is_stable(problem):
    """encode(decode(c)) == c: a relay that decodes and re-encodes changes nothing."""
    x, base, g = problem
    first = bitdelta.encode(x, base, g)
    again = bitdelta.encode(bitdelta.decode(first, base), base, g)
    # A coordinate whose reconstruction equals the baseline (zero scale) has delta 0 -> +1.
    nonzero_scale = np.repeat(first.scales > 0, g, axis=1)[:, : x.shape[1]]
    bits_first = np.unpackbits(first.signs, axis=1)[:, : x.shape[1]]
    bits_again = np.unpackbits(again.signs, axis=1)[:, : x.shape[1]]
    np.testing.assert_array_equal(bits_first[nonzero_scale], bits_again[nonzero_scale])
    np.testing.assert_allclose(again.scales, first.scales, rtol=1e-5, atol=1e-6)


def test_documented_bit_order_and_zero_sign():
    base = np.zeros(10, dtype=np.float32)
    x = np.array([[-1, 2, 0, -0.0, 5, -5, 1, 1, -3, 0]], dtype=np.float32)
    code = bitdelta.encode(x, base, g=4)
    # MSB first; bit 1 = negative; 0 and -0.0 are +1. Bits: 1000 0100 | 10 + six zero pad bits.
    assert code.signs.tolist() == [[0b10000100, 0b10000000]]
    # Groups [0:4], [4:8], [8:10]: the short last group averages over its own 2 coordinates.
    np.testing.assert_allclose(code.scales[0], [0.75, 3.0, 1.5])
    out = bitdelta.decode(code, base)
    np.testing.assert_allclose(out[0], [-0.75, 0.75, 0.75, 0.75, 3, -3, 3, 3, -1.5, 1.5])


def test_float16_scales():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((50, 384)).astype(np.float32)
    base = x.mean(axis=0)
    c32 = bitdelta.encode(x, base, 128, "f32")
    c16 = bitdelta.encode(x, base, 128, "f16")
    assert c16.scales.dtype == np.float16
    np.testing.assert_array_equal(c16.signs, c32.signs)
    np.testing.assert_allclose(c16.scales, c32.scales, rtol=1e-3)


def test_padding_check_detects_dirty_bits():
    signs = np.array([[0xFF, 0b11000000]], dtype=np.uint8)
    assert bitdelta.padding_is_clean(signs, 10)
    signs[0, 1] |= 0b00000001
    assert not bitdelta.padding_is_clean(signs, 10)
    assert bitdelta.padding_is_clean(np.zeros((0, 2), np.uint8), 10)


@pytest.mark.parametrize(
    "x_shape, base_shape, g, message",
    [
        ((2, 8), (7,), 4, r"embeddings \(2, 8\) and baseline \(7,\) do not match"),
        ((8,), (8,), 4, r"embeddings \(8,\) and baseline \(8,\) do not match"),
        ((2, 8), (8,), 0, r"group size must be in \[1, 8\], got 0"),
        ((2, 8), (8,), 9, r"group size must be in \[1, 8\], got 9"),
    ],
)
def test_shape_errors(x_shape, base_shape, g, message):
    with pytest.raises(ValueError, match=message):
        bitdelta.encode(np.zeros(x_shape, np.float32), np.zeros(base_shape, np.float32), g)
