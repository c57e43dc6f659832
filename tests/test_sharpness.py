"""Sharpness λ_max of the Hessian (THEORY.md §4): HVP operator, Lanczos, closed form at init."""

import numpy as np
import pytest
from scipy.sparse.linalg import eigsh

import signaldrift
from signaldrift import SimConfig
from signaldrift import _sharpness
from signaldrift._lanczos import hessian_matvec, lanczos_max, top_ritz
from signaldrift._sharpness import (dense_hessian, hessian_operator, sharpness,
                                    sharpness_at_init)


def _setup(*, d, m, k, r, spectrum=0.0, init="peft", seed=0, b_scale=0.0, basis="eigen"):
    # eigenbasis by default: Σ = diag(λ); dense_hessian also handles the random basis
    cfg = SimConfig(d=d, m=m, task_rank=k, rank=r, spectrum=spectrum, init=init, seed=seed,
                    basis=basis)
    task = signaldrift.make_task(cfg)
    A, B = signaldrift.init_adapter(cfg)
    B = B + b_scale * np.random.default_rng(seed + 100).standard_normal(B.shape)
    return task, A, B


TINY = [dict(d=9, m=7, k=2, r=3, spectrum=1.0, b_scale=0.4),   # n = 48: dense path
        dict(d=24, m=16, k=3, r=2, spectrum=0.5, b_scale=0.3),  # n = 80: Lanczos path
        dict(d=24, m=16, k=3, r=2, spectrum=0.0, b_scale=0.0, init="gaussian")]


@pytest.mark.parametrize("case", TINY)
def test_operator_matches_dense_hessian(case):
    # Expected: the explicit Hessian of THEORY §4's quadratic form (dense_hessian).
    task, A, B = _setup(**case)
    s = 1.7
    H = dense_hessian(task, s, A, B)
    np.testing.assert_allclose(H, H.T, rtol=0, atol=1e-13)
    op = hessian_operator(task, s, A, B)
    V = np.random.default_rng(1).standard_normal((H.shape[0], 3))
    np.testing.assert_allclose(op.matmat(V), H @ V, rtol=1e-12, atol=1e-12 * np.abs(H).max())


@pytest.mark.parametrize("case", TINY)
def test_sharpness_matches_dense_eigendecomposition(case):
    # Expected: numpy.linalg.eigvalsh of the dense Hessian; Lanczos converges to ~1e-12.
    task, A, B = _setup(**case)
    s = 2.3
    expected = np.linalg.eigvalsh(dense_hessian(task, s, A, B))[-1]
    assert sharpness(task, s, A, B, seed=3) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("case", TINY[:2])
def test_preconditioned_sharpness(case):
    # Expected: λ_max(P^{-½} H P^{-½}) from the dense Hessian, P random positive.
    task, A, B = _setup(**case)
    s = 1.3
    rng = np.random.default_rng(2)
    PA = rng.uniform(0.1, 2.0, A.shape)
    PB = rng.uniform(0.1, 2.0, B.shape)
    p = 1 / np.sqrt(np.concatenate([PA.ravel(), PB.ravel()]))
    H = dense_hessian(task, s, A, B)
    expected = np.linalg.eigvalsh(p[:, None] * H * p[None, :])[-1]
    got = sharpness(task, s, A, B, precond_A=PA, precond_B=PB)
    assert got == pytest.approx(expected, rel=1e-8)
    # A constant preconditioner c divides the spectrum by c.
    c = 4.0
    scaled = sharpness(task, s, A, B, precond_A=np.full(A.shape, c), precond_B=np.full(B.shape, c))
    assert scaled == pytest.approx(sharpness(task, s, A, B) / c, rel=1e-8)


@pytest.mark.parametrize("case", [dict(d=9, m=7, k=2, r=3, spectrum=1.0),
                                  dict(d=24, m=16, k=3, r=2, spectrum=0.0),
                                  dict(d=12, m=5, k=5, r=4, spectrum=2.0, init="gaussian")])
@pytest.mark.parametrize("s", [0.1, 2.0, 30.0])
def test_closed_form_at_init_exact(case, s):
    # Expected: dense eigvalsh at B = 0; the closed form (s²μ + √(s⁴μ² + 4s²g²))/2 is exact
    # there (signaldrift derive hessian), so agreement is to rounding (rtol 1e-8).
    task, A, B = _setup(**case)
    expected = np.linalg.eigvalsh(dense_hessian(task, s, A, B))[-1]
    assert sharpness_at_init(task, s, A) == pytest.approx(expected, rel=1e-8)
    assert sharpness(task, s, A, B) == pytest.approx(expected, rel=1e-8)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_block_formula_with_mean_moment(seed):
    # THEORY §4: with PEFT init and mean-1 isotropic Σ, AΣAᵀ ≈ trΣ/(3d)·I_r = I_r/3 for r ≪ d.
    # Substituting μ = 1/3 in the closed form predicts λ_max within a few percent: the top
    # eigenvalue of the random 2×2 AΣAᵀ exceeds its mean by O(1/√d). Measured over seeds 0–5
    # at d = 4096, r = 2: 0.8%–4.0%, so the tolerance is 5%.
    d, s = 4096, 8.0
    task, A, B = _setup(d=d, m=64, k=4, r=2, seed=seed)
    mu = task.lam.sum() / (3 * d)
    g = np.linalg.svd(task.delta_star() * task.lam, compute_uv=False)[0]
    predicted = 0.5 * (s**2 * mu + np.sqrt(s**4 * mu**2 + 4 * s**2 * g**2))
    assert sharpness(task, s, A, B) == pytest.approx(predicted, rel=0.05)


def _gd(task, s, A, B, lr, steps):
    """Full-batch GD on (A, B) with the dense population gradient (THEORY §2)."""
    delta, lam = task.delta_star(), task.lam
    losses = []
    for _ in range(steps):
        E = s * B @ A - delta
        losses.append(0.5 * np.sum(E * E * lam))
        G = E * lam
        A, B = A - lr * s * B.T @ G, B - lr * s * G @ A.T
    return np.array(losses), A, B


@pytest.mark.parametrize("seed", [0, 1])
def test_gradient_descent_stability_threshold(seed):
    # Regime: s = 4000 makes the B-block s²·AΣAᵀ dominate H and the solution B ~ 1/s tiny,
    # so A hardly moves and λ_max barely changes while GD converges (checked below: < 0.1%).
    # Above 2/λ_max the top mode grows by |1 − ηλ| = 1.2 per step; the loss blows up by more
    # than 1000× (it would trip a divergence bound) before the growth of B finally moves A
    # and GD catapults to a flatter region (λ_max ≈ 0.8 of its initial value; loss peaks at
    # 3.7e3–1.4e4× the initial loss for seeds 0–2).
    s, steps = 4000.0, 200
    task, A, B = _setup(d=16, m=12, k=2, r=2, spectrum=1.0, seed=seed)
    lam_max = sharpness(task, s, A, B)
    stable, A1, B1 = _gd(task, s, A, B, 0.9 * 2 / lam_max, steps)
    assert np.all(np.diff(stable) <= 1e-12 * stable[0])
    assert stable[-1] < stable[0]
    assert sharpness(task, s, A1, B1) == pytest.approx(lam_max, rel=1e-3)
    unstable, _, _ = _gd(task, s, A, B, 1.1 * 2 / lam_max, steps)
    assert unstable.max() > 1e3 * unstable[0]


# --- Lanczos in Numba (signaldrift._lanczos) ------------------------------------------------
#
# Tolerance 1e-10 (relative) throughout: Lanczos stops at a Ritz residual ‖Hx − θx‖ ≤ 1e-10·|θ|,
# which bounds |θ − λ| by 1e-10·|θ| for some eigenvalue λ (and by (1e-10·θ)²/gap when λ_max
# is separated); the dense references are exact to ~1e-15·‖H‖. A solver that returned the
# wrong eigenvalue, the largest |λ| or a non-converged Ritz value would miss by far more.

# n = r·d + m·r > 64 (_DENSE_MAX), so these go through Lanczos, not the dense path.
SMALL = [dict(d=24, m=16, k=3, r=2, spectrum=0.5, b_scale=0.3),     # n = 80, generic point
         dict(d=20, m=12, k=4, r=3, spectrum=1.0, b_scale=0.0),     # n = 96, B = 0 (init)
         dict(d=24, m=16, k=3, r=2, spectrum=0.0, b_scale=0.2, init="gaussian")]


def _no_arpack(*args, **kwargs):
    raise AssertionError("the ARPACK fallback ran: Lanczos did not converge")


def _precond(A, B, on, seed=2):
    if not on:
        return None, None
    rng = np.random.default_rng(seed)
    return rng.uniform(0.1, 2.0, A.shape), rng.uniform(0.1, 2.0, B.shape)


def _dense_lambda_max(task, s, A, B, PA=None, PB=None):
    """λ_max of P^{-½} H P^{-½} from numpy.linalg.eigvalsh of the explicit Hessian (features)."""
    H = dense_hessian(task, s, A, B)
    if PA is not None:
        p = 1 / np.sqrt(np.concatenate([PA.ravel(), PB.ravel()]))
        H = p[:, None] * H * p[None, :]
    return np.linalg.eigvalsh(0.5 * (H + H.T))[-1]


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("basis", ["eigen", "random"])
@pytest.mark.parametrize("case", SMALL)
def test_lanczos_matches_dense_eigvalsh(case, basis, precond, monkeypatch):
    # Expected: numpy.linalg.eigvalsh of dense_hessian (the explicit quadratic form of
    # THEORY §4, rotated to the feature basis), with P^{-½}·P^{-½} applied densely.
    monkeypatch.setattr(_sharpness, "eigsh", _no_arpack)
    task, A, B = _setup(**case, basis=basis)
    s = 1.9
    PA, PB = _precond(A, B, precond)
    expected = _dense_lambda_max(task, s, A, B, PA, PB)
    got = sharpness(task, s, A, B, precond_A=PA, precond_B=PB, seed=5)
    assert got == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("basis", ["eigen", "random"])
@pytest.mark.parametrize("b_scale", [0.0, 0.05])
def test_lanczos_matches_arpack_medium(b_scale, basis, precond, monkeypatch):
    # Expected: ARPACK (scipy eigsh, which="LA", tol = machine precision) on
    # hessian_operator from the same start vector, at d = m = 64, r = 8 (n = 1024).
    task, A, B = _setup(d=64, m=64, k=8, r=8, spectrum=1.0, b_scale=b_scale, basis=basis)
    s = 2.0
    PA, PB = _precond(A, B, precond)
    op = hessian_operator(task, s, A, B, precond_A=PA, precond_B=PB)
    v0 = np.random.default_rng(0).standard_normal(op.shape[0])
    expected = eigsh(op, k=1, which="LA", v0=v0, return_eigenvectors=False)[0]
    monkeypatch.setattr(_sharpness, "eigsh", _no_arpack)
    for seed in (0, 7):
        got = sharpness(task, s, A, B, precond_A=PA, precond_B=PB, seed=seed)
        assert got == pytest.approx(expected, rel=1e-10)
    # Deterministic: the same seed gives the same float.
    assert sharpness(task, s, A, B, precond_A=PA, precond_B=PB, seed=7) == got


@pytest.mark.parametrize("precond", [False, True])
@pytest.mark.parametrize("basis", ["eigen", "random"])
def test_largest_algebraic_on_symmetric_degenerate_spectrum(basis, precond, monkeypatch):
    # At A = B = 0 the Gauss–Newton part vanishes and H = s·[[0, C], [Cᵀ, 0]] (the cross term
    # of THEORY §4): its spectrum is symmetric, λ_min = −λ_max, and λ_max = s·σ_max(Δ⋆Σ) is
    # r-fold degenerate (C = G ⊗ I_r). This is the hardest case for "largest algebraic":
    # elsewhere H = cross + PSD, so λ_max ≥ |λ_min| always (Weyl), and a solver that ranked
    # by |λ| could return −λ_max here. Expected: dense eigvalsh and, without P, the closed
    # form of sharpness_at_init with μ = 0.
    monkeypatch.setattr(_sharpness, "eigsh", _no_arpack)
    task, A, B = _setup(d=24, m=16, k=3, r=3, spectrum=1.0, basis=basis)
    A, B = np.zeros_like(A), np.zeros_like(B)
    s = 0.7
    PA, PB = _precond(A, B, precond)
    H = dense_hessian(task, s, A, B)
    ev = np.linalg.eigvalsh(H)
    assert ev[0] == pytest.approx(-ev[-1], rel=1e-12)   # the case is what it claims
    assert ev[-3:] == pytest.approx(np.full(3, ev[-1]), rel=1e-12)
    expected = _dense_lambda_max(task, s, A, B, PA, PB)
    if not precond:
        assert sharpness_at_init(task, s, A) == pytest.approx(expected, rel=1e-12)
    got = sharpness(task, s, A, B, precond_A=PA, precond_B=PB, seed=1)
    assert got > 0
    assert got == pytest.approx(expected, rel=1e-10)


def _tridiagonal(alpha, beta):
    return np.diag(alpha) + np.diag(beta, 1) + np.diag(beta, -1)


@pytest.mark.parametrize("name", ["random", "wilkinson21", "negative", "one"])
def test_top_ritz_tridiagonal(name):
    # Expected: numpy.linalg.eigvalsh (LAPACK) of the dense tridiagonal, to 1e-13·‖T‖: LAPACK
    # is itself off by ~10ε‖T‖ on the random case (against mpmath at 40 digits: LAPACK
    # −9.3e-15, top_ritz −4e-16); a wrong root would miss by its gap to λ_max (≥ 0.1 in
    # these cases except W21+'s top pair, where either root is right to 1e-14).
    # Wilkinson's W21+ has its top two eigenvalues equal to ~1e-14 (near-degenerate);
    # "negative" has every eigenvalue < 0 (largest algebraic, not largest |λ|).
    rng = np.random.default_rng(3)
    if name == "random":
        alpha, beta = rng.standard_normal(30), rng.standard_normal(29)
    elif name == "wilkinson21":
        alpha, beta = np.abs(np.arange(21.0) - 10), np.ones(20)
    elif name == "negative":
        alpha, beta = -10 - rng.uniform(0, 1, 12), 0.3 * rng.standard_normal(11)
    else:
        alpha, beta = np.array([-2.5]), np.zeros(0)
    T = _tridiagonal(alpha, beta)
    norm = np.abs(np.linalg.eigvalsh(T)).max()
    expected = np.linalg.eigvalsh(T)[-1]
    for guess, slack in [(-np.inf, 0.0), (expected - 0.1, 1e-3), (expected, 0.0)]:
        theta, y = top_ritz(alpha, beta, guess, slack)
        assert abs(theta - expected) <= 1e-13 * norm
        assert np.linalg.norm(y) == pytest.approx(1.0, rel=1e-12)
        assert np.linalg.norm(T @ y - theta * y) <= 1e-12 * norm


def test_lanczos_restarts_and_arpack_fallback(monkeypatch):
    # Expected: dense eigvalsh (as above). A Krylov dimension of 6 forces restarts from the
    # Ritz vector (converging within the 200 allowed); with 3 vectors and no restart
    # Lanczos cannot converge and sharpness() must fall back to ARPACK.
    task, A, B = _setup(**SMALL[0])
    s = 1.9
    expected = _dense_lambda_max(task, s, A, B)
    arrays = _sharpness._operator_arrays(task, s, A, B, None, None)
    v0 = np.random.default_rng(0).standard_normal(A.size + B.size)
    theta, resid, matvecs, converged = lanczos_max(v0, 1e-10, 6, 200, *arrays,
                                                   *task.basis.kernel_args())
    assert converged and matvecs > 6
    assert resid <= 1e-10 * abs(theta)
    assert theta == pytest.approx(expected, rel=1e-10)
    *_, converged = lanczos_max(v0, 1e-10, 3, 0, *arrays, *task.basis.kernel_args())
    assert not converged

    calls = []
    real = _sharpness.eigsh
    monkeypatch.setattr(_sharpness, "eigsh", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_sharpness, "_LANCZOS_KMAX", 3)
    monkeypatch.setattr(_sharpness, "_LANCZOS_RESTARTS", 0)
    assert sharpness(task, s, A, B) == pytest.approx(expected, rel=1e-10)
    assert calls == [1]


def test_kernels_compile_once_for_any_memory_order():
    # F-ordered or non-contiguous inputs are made C-contiguous before the Numba calls, so
    # every basis and preconditioner shares one compiled specialisation of each kernel.
    for basis in ("eigen", "random"):
        task, A, B = _setup(d=24, m=16, k=3, r=2, spectrum=0.5, b_scale=0.3, basis=basis)
        PA, PB = _precond(A, B, True)
        for f in (np.asfortranarray, lambda x: np.repeat(x, 2, axis=1)[:, ::2], np.array):
            sharpness(task, 1.5, f(A), f(B))
            sharpness(task, 1.5, f(A), f(B), precond_A=f(PA), precond_B=f(PB))
            hessian_operator(task, 1.5, f(A), f(B)).matvec(np.ones(A.size + B.size))
    assert len(lanczos_max.signatures) == 1
    assert len(hessian_matvec.signatures) == 1
