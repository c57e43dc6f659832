"""λ_max at B = 0 (THEORY.md §4): the generated ``*_b0`` Hessian-vector products and the
Lanczos path that uses them give the general path's results bit for bit."""

import numpy as np
import pytest

import signaldrift
from signaldrift import SimConfig
from signaldrift import _sharpness
from signaldrift._generated import factorised as gen
from signaldrift._lanczos import _lanczos_max, hessian_matvec, hessian_matvec_b0, lanczos_max
from signaldrift._sharpness import sharpness


def _bits(x):
    """The float64 bit patterns (distinguishes −0.0 from +0.0, unlike ``==``)."""
    return np.ascontiguousarray(x, dtype=np.float64).view(np.uint64)


def _assert_bit_identical(got, expected):
    assert np.array_equal(got, expected)
    assert np.array_equal(_bits(got), _bits(expected))


def _setup(*, d, m, k, r, basis="eigen", seed=0, spectrum=0.5):
    cfg = SimConfig(d=d, m=m, task_rank=k, rank=r, spectrum=spectrum, seed=seed, basis=basis)
    task = signaldrift.make_task(cfg)
    A = np.random.default_rng(seed + 7).standard_normal((r, d)) / np.sqrt(d)
    return task, A, np.zeros((m, r))


def _precond(A, B, on, seed=3):
    if not on:
        return None, None
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, A.shape), rng.uniform(0.1, 2.0, B.shape)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_b0_kernels_equal_the_general_kernels_bitwise(seed):
    # Expected: hvp_A, hvp_B at B = 0 (B, BᵀB, BᵀT_B the zero matrices), bit for bit.
    rng = np.random.default_rng(seed)
    m, d, r, k = 13, 17, 5, 3
    s = float(rng.uniform(0.1, 4.0))
    A, tA, tB = (rng.standard_normal(x) for x in ((r, d), (r, d), (m, r)))
    U, V = rng.standard_normal((m, k)), rng.standard_normal((d, k))
    lam, Sg = rng.uniform(0.1, 2.0, d), np.diag(rng.uniform(0.5, 2.0, k))
    B = np.zeros((m, r))
    AS, tAS, VtS = A * lam, tA * lam, V.T * lam
    ASAt, AStAt, VStAt, tBtU = AS @ A.T, AS @ tA.T, VtS @ tA.T, tB.T @ U
    BtB, BttB = B.T @ B, B.T @ tB
    _assert_bit_identical(gen.hvp_B_b0(s, tB, U, Sg, ASAt, VStAt),
                          gen.hvp_B(s, tB, B, U, Sg, ASAt, AStAt, VStAt))
    _assert_bit_identical(gen.hvp_A_b0(s, tBtU, Sg, VtS),
                          gen.hvp_A(s, BttB, BtB, AS, tAS, tBtU, Sg, VtS))


def test_b0_kernels_at_exact_zeros_differ_at_most_in_the_sign_of_zero():
    # Expected: the general kernels at B = 0 with T_B = 0 (so T_BᵀUΣ⋆VᵀΣ is an exact zero
    # matrix): equal as numbers; where the bits differ, both entries are zeros.
    rng = np.random.default_rng(5)
    m, d, r, k = 13, 17, 5, 3
    s = 1.3
    A, tA, tB = rng.standard_normal((r, d)), rng.standard_normal((r, d)), np.zeros((m, r))
    U, V = rng.standard_normal((m, k)), rng.standard_normal((d, k))
    lam, Sg = rng.uniform(0.1, 2.0, d), np.diag(rng.uniform(0.5, 2.0, k))
    B = np.zeros((m, r))
    AS, VtS = A * lam, V.T * lam
    tBtU = tB.T @ U
    pairs = [(gen.hvp_A_b0(s, tBtU, Sg, VtS),
              gen.hvp_A(s, B.T @ tB, B.T @ B, AS, tA * lam, tBtU, Sg, VtS)),
             (gen.hvp_B_b0(s, tB, U, Sg, AS @ A.T, VtS @ tA.T),
              gen.hvp_B(s, tB, B, U, Sg, AS @ A.T, AS @ tA.T, VtS @ tA.T))]
    for got, expected in pairs:
        assert np.array_equal(got, expected)
        differ = _bits(got) != _bits(expected)
        assert np.all(got[differ] == 0.0)


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("basis", ["eigen", "random"])
def test_matvec_b0_equals_the_general_matvec_bitwise(basis, precond):
    # Expected: hessian_matvec at B = 0, in the feature basis (random) and with P^{-½}.
    task, A, B = _setup(d=24, m=16, k=3, r=4, basis=basis)
    PA, PB = _precond(A, B, precond)
    s, A_, B_, U, Sg, VtS, lam, scale_vec = _sharpness._operator_arrays(task, 1.7, A, B, PA, PB)
    assert scale_vec.size == (A.size + B.size if precond else 0)
    AS = A_ * lam
    ASAt, BtB = AS @ A_.T, B_.T @ B_
    basis_args = task.basis.kernel_args()
    rng = np.random.default_rng(9)
    for _ in range(3):
        x = rng.standard_normal(A.size + B.size)
        general = hessian_matvec(x, s, A_, B_, U, Sg, VtS, lam, AS, ASAt, BtB, scale_vec,
                                 *basis_args)
        b0 = hessian_matvec_b0(x, s, A_, B_.shape[0], U, Sg, VtS, lam, ASAt, scale_vec,
                               *basis_args)
        _assert_bit_identical(b0, general)


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("basis", ["eigen", "random"])
def test_lanczos_b0_equals_the_general_path_bitwise(basis, precond):
    # Expected: _lanczos_max with the general products (b0=False) at B = 0: θ, residual and
    # number of products identical; lanczos_max takes the B = 0 path by itself.
    task, A, B = _setup(d=40, m=32, k=4, r=3, basis=basis)
    PA, PB = _precond(A, B, precond)
    arrays = _sharpness._operator_arrays(task, 2.3, A, B, PA, PB)
    v0 = np.random.default_rng(4).standard_normal(A.size + B.size)
    args = (v0, 1e-10, 120, 3, *arrays, *task.basis.kernel_args())
    general = _lanczos_max(*args, False)
    b0 = _lanczos_max(*args, True)
    assert general[3] and b0 == general
    assert _bits(b0[0]) == _bits(general[0]) and _bits(b0[1]) == _bits(general[1])
    assert lanczos_max(*args) == b0
    # One non-zero entry of B: lanczos_max takes the general path (the B = 0 products would
    # drop its terms and give another θ).
    arrays = list(arrays)
    arrays[2] = arrays[2].copy()
    arrays[2][0, 0] = 0.5
    args = (v0, 1e-10, 120, 3, *arrays, *task.basis.kernel_args())
    assert lanczos_max(*args) == _lanczos_max(*args, False) != _lanczos_max(*args, True)


def _general_lanczos(*args):
    """:func:`lanczos_max` with the general products forced (the path before B = 0 had its
    own)."""
    return _lanczos_max(*args, False)


@pytest.mark.parametrize("case", [
    dict(d=64, m=48, k=4, r=4),
    dict(d=64, m=48, k=4, r=8, basis="random"),
    dict(d=32, m=40, k=2, r=2, spectrum=1.0, precond=True),
    dict(d=32, m=40, k=2, r=5, basis="random", precond=True),
])
def test_sharpness_at_b0_returns_the_same_float(case, monkeypatch):
    # Expected: sharpness() with the general Hessian-vector products forced, the same float
    # (the F1 figure measures λ_max at B = 0 and must not change).
    case = dict(case)
    precond = case.pop("precond", False)
    task, A, B = _setup(**case)
    PA, PB = _precond(A, B, precond)
    scale = 16.0 / A.shape[0]
    got = sharpness(task, scale, A, B, precond_A=PA, precond_B=PB, seed=2)
    monkeypatch.setattr(_sharpness, "lanczos_max", _general_lanczos)
    expected = sharpness(task, scale, A, B, precond_A=PA, precond_B=PB, seed=2)
    assert got == expected and got.hex() == expected.hex()
