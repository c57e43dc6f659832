"""The step kernels' products (:mod:`signaldrift._gemm`) against NumPy's and an exact sum.

Expected values: ``X @ Y`` by NumPy (BLAS) within a bound on the rounding of a length-K dot
product (K·ε·Σ|x||y|, the standard a-priori bound), and, where it is exact, integer-valued
inputs whose products and sums are exactly representable (every summation order gives the
same bits there). Bits: the micro-kernels' result does not depend on X's layout (a
transposed view and its contiguous copy give the same bits) nor on where a row sits
(a row alone, as a 1-row product, gives the same bits as inside a tile), which is what makes
a run the same whatever block or thread computes it.
"""

from __future__ import annotations

import numpy as np
import pytest

from signaldrift._gemm import matmul, transpose_into

EPS = np.finfo(np.float64).eps

# (M, K, N): the step's shapes at d = m = 128, r = k = 8 and 16, n = 32, tails in every
# direction (M mod 4, N mod 8, N mod 4), N < 4 (BLAS), K = 0 and 1, one row, d = 4096.
SHAPES = [(16, 128, 8), (16, 128, 16), (128, 24, 16), (8, 16, 128), (32, 128, 8),
          (5, 7, 9), (17, 33, 13), (3, 1, 4), (6, 0, 8), (1, 5, 3), (1, 40, 12),
          (7, 3, 2), (9, 11, 6), (16, 4096, 8), (8, 16, 4096)]


def _bound(X, Y):
    """|fl(XY) − XY| ≤ K·ε/(1 − K·ε)·|X||Y| entrywise (any summation order, with or
    without fused multiply–adds); 2K·ε keeps clear of the denominator for K·ε ≪ 1."""
    K = X.shape[1]
    return 2.0 * max(K, 1) * EPS * (np.abs(X) @ np.abs(Y))


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_agrees_with_numpy_within_the_rounding_bound(shape):
    M, K, N = shape
    rng = np.random.default_rng(M * 10007 + K * 101 + N)
    X = rng.standard_normal((M, K))
    Y = rng.standard_normal((K, N))
    C = np.full((M, N), np.nan)
    matmul(X, Y, C)
    assert np.all(np.abs(C - X @ Y) <= _bound(X, Y))


@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_is_exact_on_integer_inputs(shape):
    # Small integers: every product and partial sum is an integer below 2^53, so exact.
    M, K, N = shape
    rng = np.random.default_rng(7 + M + K + N)
    X = rng.integers(-50, 51, (M, K)).astype(np.float64)
    Y = rng.integers(-50, 51, (K, N)).astype(np.float64)
    C = np.full((M, N), np.nan)
    matmul(X, Y, C)
    exact = X.astype(np.int64) @ Y.astype(np.int64)
    assert np.array_equal(C, exact.astype(np.float64))


@pytest.mark.parametrize("shape", SHAPES)
def test_layout_and_position_of_a_row_do_not_change_its_bits(shape):
    M, K, N = shape
    rng = np.random.default_rng(3 * M + K + 5 * N)
    X = rng.standard_normal((M, K))
    Y = rng.standard_normal((K, N))
    C = np.empty((M, N))
    matmul(X, Y, C)
    # X given as the transpose of a C-contiguous (K, M) array: the same bits.
    Xt = np.ascontiguousarray(X.T)
    C_view = np.empty((M, N))
    matmul(Xt.T, Y, C_view)
    assert np.array_equal(C, C_view)
    # Each row alone: the same bits as inside the tiles of the whole product (N ≥ 4:
    # the micro-kernels; N < 4 goes to BLAS, whose tiling is its own).
    if N >= 4:
        for i in range(M):
            row = np.empty((1, N))
            matmul(X[i:i + 1], Y, row)
            assert np.array_equal(row[0], C[i])


@pytest.mark.parametrize("shape", SHAPES)
def test_padded_views_give_the_bits_of_contiguous_arrays(shape):
    # X, Y and C as views of the first columns of wider buffers, as the kernels' padded H
    # (_kernels.padded_rows): the micro-kernels read the row strides, so each entry is the
    # same sum in the same order; N < 4 goes to BLAS with the strided operands passed as
    # C arrays. Either way the same bits as contiguous arrays, and nothing written past
    # the end of a row of C (the padding stays NaN).
    M, K, N = shape
    rng = np.random.default_rng(7 * M + 3 * K + N)
    X = rng.standard_normal((M, K))
    Y = rng.standard_normal((K, N))
    C = np.empty((M, N))
    matmul(X, Y, C)

    def padded(a, pad):
        buf = np.full((a.shape[0], a.shape[1] + pad), np.nan)
        buf[:, :a.shape[1]] = a
        return buf, buf[:, :a.shape[1]]

    for pad in (1, 8):
        for x_pad, y_pad in ((True, True), (True, False), (False, True)):
            c_buf, Cp = padded(np.full((M, N), np.nan), pad)
            Xp = padded(X, pad)[1] if x_pad else X
            Yp = padded(Y, pad)[1] if y_pad else Y
            matmul(Xp, Yp, Cp)
            assert np.array_equal(Cp, C)
            assert np.isnan(c_buf[:, N:]).all()


def test_rows_with_a_gap_are_refused():
    # The micro-kernels load four contiguous doubles of a row of Y or C at once.
    Y = np.ones((5, 16))[:, ::2]
    with pytest.raises(ValueError, match="contiguous"):
        matmul(np.ones((4, 5)), Y, np.empty((4, 8)))
    with pytest.raises(ValueError, match="contiguous"):
        matmul(np.ones((4, 5)), np.ones((5, 8)), np.empty((4, 16))[:, ::2])


def test_transpose_into_writes_the_transpose():
    Y = np.arange(24.0).reshape(4, 6)
    Yt = np.full((6, 4), np.nan)
    transpose_into(Y, Yt)
    assert np.array_equal(Yt, Y.T)


def test_mismatched_shapes_are_refused():
    # The micro-kernels do not check bounds: matmul checks the shapes once instead.
    with pytest.raises(ValueError, match="shapes"):
        matmul(np.ones((4, 5)), np.ones((6, 8)), np.empty((4, 8)))
    with pytest.raises(ValueError, match="shapes"):
        matmul(np.ones((4, 5)), np.ones((5, 8)), np.empty((3, 8)))
