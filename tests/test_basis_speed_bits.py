"""The ``givens`` basis applied by butterflies (signaldrift._basis._givens) gives the same
bits as the rotations applied one by one, forward and inverse.

The reference below is a frozen copy of the rotation-by-rotation algorithm that
``_basis._givens`` replaced (each rotation ``a' = c·a − s·b``, ``b' = s·a + c·b`` in the
stored order; the inverse in reverse order with s → −s). Speed: benchmarks/bench_givens.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from signaldrift._basis import (BASIS_GIVENS, Basis, _givens, _givens_generic, to_eigen,
                                to_features)


@njit(cache=False)
def _reference(X, pairs, cs, forward):
    # Frozen copy of the original _basis._givens: do not "improve".
    Xt = np.ascontiguousarray(X.T)
    r = Xt.shape[1]
    G = pairs.shape[0]
    for h in range(G):
        g = h if forward else G - 1 - h
        i, j = pairs[g, 0], pairs[g, 1]
        c, s = cs[g, 0], cs[g, 1]
        if not forward:
            s = -s
        xi, xj = Xt[i], Xt[j]
        for q in range(r):
            a, b = xi[q], xj[q]
            xi[q] = c * a - s * b
            xj[q] = s * a + c * b
    return np.ascontiguousarray(Xt.T)


DIMS = (1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 31, 33, 63, 64, 65, 100, 127, 128, 129, 257)
ROWS = (0, 1, 2, 3, 4, 5, 8, 9, 16)


def _cases():
    for d in DIMS:
        for r in ROWS:
            yield d, r


@pytest.mark.parametrize("d", DIMS)
def test_same_bits_as_one_rotation_at_a_time(d):
    rng = np.random.default_rng(d)
    for seed in (0, 7):
        b = Basis.random(d, seed=seed)
        code, pairs, cs, Q = b.kernel_args()
        assert code == BASIS_GIVENS
        for r in ROWS:
            # scales from 1e-300 to 1e300, exact zeros and negative zeros included
            X = rng.standard_normal((r, d)) * 10.0 ** rng.integers(-300, 300, size=(r, d))
            if X.size:
                X.flat[:: 3] = 0.0
                X.flat[1:: 5] = -0.0
            F = to_features(X, code, pairs, cs, Q)
            E = to_eigen(X, code, pairs, cs, Q)
            assert F.shape == E.shape == (r, d)
            assert np.array_equal(F, _reference(X, pairs, cs, True)), (d, r, seed)
            assert np.array_equal(E, _reference(X, pairs, cs, False)), (d, r, seed)
            # signed zeros too (array_equal treats 0.0 == -0.0)
            assert np.array_equal(np.signbit(F), np.signbit(_reference(X, pairs, cs, True)))
            assert np.array_equal(np.signbit(E), np.signbit(_reference(X, pairs, cs, False)))


@pytest.mark.parametrize("d, r", [(100, 8), (128, 8), (129, 64), (512, 3), (4096, 8)])
def test_same_bits_larger(d, r):
    b = Basis.random(d, seed=11)
    X = np.random.default_rng(3).standard_normal((r, d))
    for fw, fn in ((True, to_features), (False, to_eigen)):
        assert np.array_equal(fn(X, *b.kernel_args()), _reference(X, b.pairs, b.cs, fw))


def test_same_bits_for_non_contiguous_and_stacked_arguments():
    # X a transposed view (layout "A"); pairs/cs one slice of a stacked (C, G, 2) block, as
    # the simulator passes them.
    d, r = 100, 6
    bases = [Basis.random(d, seed=s) for s in (1, 2)]
    pairs = np.ascontiguousarray(np.stack([b.pairs for b in bases]))
    cs = np.ascontiguousarray(np.stack([b.cs for b in bases]))
    X = np.random.default_rng(0).standard_normal((d, r)).T
    Q = np.zeros((0, 0))
    for c in range(2):
        for fw, fn in ((True, to_features), (False, to_eigen)):
            got = fn(X, BASIS_GIVENS, pairs[c], cs[c], Q)
            assert np.array_equal(got, _reference(np.ascontiguousarray(X), pairs[c], cs[c], fw))
    # pairs/cs with non-unit strides (every other row of a larger array)
    b = bases[0]
    P2 = np.repeat(b.pairs, 2, axis=0)[::2]
    C2 = np.repeat(b.cs, 2, axis=0)[::2]
    assert not P2.flags.c_contiguous
    got = _givens(np.ascontiguousarray(X), P2, C2, True)
    assert np.array_equal(got, _reference(np.ascontiguousarray(X), b.pairs, b.cs, True))


def test_other_pair_layouts_take_the_rotation_by_rotation_path():
    # (pairs, cs) not of Basis.random's count: applied one by one, same bits as the reference.
    rng = np.random.default_rng(5)
    d = 10
    pairs = np.array([[0, 3], [2, 7], [9, 1], [3, 2], [5, 6]], dtype=np.int64)
    th = rng.uniform(0, 2 * np.pi, len(pairs))
    cs = np.ascontiguousarray(np.stack([np.cos(th), np.sin(th)], axis=1))
    X = rng.standard_normal((4, d))
    for fw in (True, False):
        assert np.array_equal(_givens(X, pairs, cs, fw), _reference(X, pairs, cs, fw))
        assert np.array_equal(_givens_generic(X, pairs, cs, fw), _reference(X, pairs, cs, fw))


def test_a_misordered_layout_is_refused():
    b = Basis.random(16, seed=0)
    pairs = b.pairs.copy()
    pairs[[0, 1]] = pairs[[1, 0]]
    with pytest.raises(ValueError, match="layout"):
        Basis(kind="givens", d=16, pairs=pairs, cs=b.cs)
    # the archive round trip keeps the arrays and the layout
    a = b.to_arrays()
    assert set(a) == {"basis_kind", "basis_pairs", "basis_cs"}
    back = Basis.from_arrays(a, 16)
    assert np.array_equal(back.pairs, b.pairs) and np.array_equal(back.cs, b.cs)


def test_the_remembered_layout_check_answers_as_the_check(monkeypatch):
    # Basis remembers _is_butterfly per (d, pairs): a misordered copy of a basis already
    # accepted is still refused (every time), the same pairs are checked once, and the
    # memory stays bounded (256 entries).
    from signaldrift import _basis

    monkeypatch.setattr(_basis, "_BUTTERFLY_SEEN", {})
    calls = []
    check = _basis._is_butterfly
    monkeypatch.setattr(_basis, "_is_butterfly", lambda p, d: calls.append(d) or check(p, d))
    b = Basis.random(16, seed=1)
    Basis(kind="givens", d=16, pairs=b.pairs.copy(), cs=b.cs)
    assert calls == [16]  # Basis.random's own construction; the copy is remembered
    bad = b.pairs.copy()
    bad[[0, 1]] = bad[[1, 0]]
    for _ in range(2):
        with pytest.raises(ValueError, match="layout"):
            Basis(kind="givens", d=16, pairs=bad, cs=b.cs)
    assert calls == [16, 16]
    for seed in range(300):
        Basis.random(8, seed=seed)
    assert 0 < len(_basis._BUTTERFLY_SEEN) <= 256


@pytest.mark.parametrize("d", (2, 3, 5, 100, 128, 129))
def test_orthogonal_and_inverse(d):
    b = Basis.random(d, seed=4)
    Q = b.matrix()
    np.testing.assert_allclose(Q.T @ Q, np.eye(d), atol=1e-13)
    X = np.random.default_rng(1).standard_normal((5, d))
    code, pairs, cs, Qa = b.kernel_args()
    F = to_features(X, code, pairs, cs, Qa)
    np.testing.assert_allclose(to_eigen(F, code, pairs, cs, Qa), X, atol=1e-13)
    np.testing.assert_allclose(F, X @ Q.T, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(F, axis=1), np.linalg.norm(X, axis=1), rtol=1e-13)
    # the result is a new array, X untouched
    X0 = X.copy()
    F2 = to_features(X, code, pairs, cs, Qa)
    assert np.array_equal(X, X0) and not np.shares_memory(F2, X)
