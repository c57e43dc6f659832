"""The fused building blocks of the LoRA kernel (signaldrift/_kernels.py) against the
generated SymPy forms (signaldrift/_generated/factorised.py, themselves checked against dense
forms in test_generated.py), against dense NumPy, and against torch.optim's update written
as NumPy array expressions (THEORY.md §2–§3).

The hot loop does not call the generated ``grad_A``/``grad_B``/``excess_loss``/``batch_*``
functions: it evaluates the same expressions as one GEMM on stacked factors each, into
preallocated buffers. These tests pin the two to each other, so the chain SymPy → generated
code → kernel is checked link by link.
"""

import numpy as np
import pytest

import signaldrift as sd
from signaldrift import _kernels as K
from signaldrift._generated import factorised as gen

# Rounding tolerance for a fused form against the generated one: both sum the same O(r + k)
# products in a different order, so they agree to a few ulp of the largest term; 1e-13
# relative to the result's scale leaves a margin of ~10² over the float64 ulp (2.2e-16).
RTOL = 1e-13


def _setup(seed=0, d=37, m=23, r=5, k=3, n=11):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((r, d))
    B = rng.standard_normal((m, r))
    lam = rng.uniform(0.1, 2.0, d)
    U = np.linalg.qr(rng.standard_normal((m, k)))[0]
    V = np.linalg.qr(rng.standard_normal((d, k)))[0]
    sig = rng.uniform(0.5, 3.0, k)
    s = 1.7
    X = rng.standard_normal((n, d))
    N = 0.3 * rng.standard_normal((n, m))
    return dict(A=A, B=B, lam=lam, U=U, V=V, sig=sig, Sg=np.diag(sig), s=s, X=X, N=N,
                VtS=np.ascontiguousarray((V * lam[:, None]).T), r=r, k=k, d=d, m=m, n=n)


def _stacked(p):
    r, k, d, m = p["r"], p["k"], p["d"], p["m"]
    H = np.empty((r + k, d))
    H[r:] = p["VtS"]
    F = np.empty((m, r + k))
    F[:, r:] = p["U"]
    P, Gm = np.empty((r + k, r)), np.empty((r + k, r))
    K._population_grams(p["A"], p["B"], p["lam"], H, F, P, Gm, np.empty((d, r)))
    return H, F, P, Gm


def _close(x, y):
    scale = max(np.max(np.abs(y)), 1e-300)
    assert np.max(np.abs(np.asarray(x) - np.asarray(y))) <= RTOL * scale


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stacked_grams_and_trace_loss_equal_the_generated_loss(seed):
    p = _setup(seed)
    A, B, lam = p["A"], p["B"], p["lam"]
    H, F, P, Gm = _stacked(p)
    r = p["r"]
    _close(P[:r], (A * lam) @ A.T)
    _close(P[r:], p["VtS"] @ A.T)
    _close(Gm[:r], B.T @ B)
    _close(Gm[r:], p["U"].T @ B)
    Dstar = p["U"] @ p["Sg"] @ p["V"].T
    c_loss = float(np.sum(Dstar**2 * lam))
    L_gen = gen.excess_loss(p["s"], B.T @ B, (A * lam) @ A.T, p["U"].T @ B,
                            p["VtS"] @ A.T, p["Sg"], c_loss)
    # Dense: L = ½‖(sBA − Δ⋆)Σ^½‖² (THEORY §2).
    E = p["s"] * B @ A - Dstar
    L_dense = 0.5 * np.sum(E**2 * lam)
    L = K._trace_loss(p["s"], P, Gm, p["sig"], c_loss, r)
    assert L == pytest.approx(L_gen, rel=RTOL)
    assert L == pytest.approx(L_dense, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_population_gradients_equal_the_generated_ones(seed):
    p = _setup(seed)
    A, B, lam, s = p["A"], p["B"], p["lam"], p["s"]
    H, F, P, Gm = _stacked(p)
    r, k = p["r"], p["k"]
    gA, gB = np.empty_like(A), np.empty_like(B)
    K._population_grads(s, p["sig"], H, F, P, Gm, np.empty((r, r + k)),
                        np.empty((r + k, r)), gA, gB)
    ASAt, VSAt = (A * lam) @ A.T, p["VtS"] @ A.T
    _close(gB, gen.grad_B(s, B, p["U"], p["Sg"], ASAt, VSAt))
    _close(gA, gen.grad_A(s, B.T @ B, p["U"].T @ B, p["Sg"], A * lam, p["VtS"]))
    # Dense (THEORY §2): ∇_B = s·G·Aᵀ, ∇_A = s·Bᵀ·G with G = (sBA − Δ⋆)Σ.
    G = (s * B @ A - p["U"] @ p["Sg"] @ p["V"].T) * lam
    _close(gB, s * G @ A.T)
    _close(gA, s * B.T @ G)


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_gradients_equal_the_generated_ones(seed):
    p = _setup(seed)
    A, B, s, X, N, U = p["A"], p["B"], p["s"], p["X"], p["N"], p["U"]
    n, r, k, m = p["n"], p["r"], p["k"], p["m"]
    XV = X @ p["V"]
    R = np.empty((n, m))
    gA, gB = np.empty_like(A), np.empty_like(B)
    Ft = np.empty((r + k, m))
    Ft[r:] = U.T
    Ft[:r] = np.nan  # filled with Bᵀ by _batch_grads
    K._batch_grads(s, X, XV, N, A, B, p["sig"], Ft, np.empty((p["d"], r)), np.empty((n, r)),
                   np.empty((n, r + k)), R, np.empty((n, r)), gA, gB)
    R_gen = gen.batch_residual(s, B, X @ A.T, U, p["Sg"], XV, N)
    _close(R, R_gen)
    _close(gB, gen.batch_grad_B(s, n, R_gen, X @ A.T))
    _close(gA, gen.batch_grad_A(s, n, R_gen, B, X))


@pytest.mark.parametrize("shape", [(40, 6), (200, 16), (5, 9), (1, 3)])
def test_r_factor_is_a_thin_qr_r(shape):
    # R of a thin QR is unique up to the signs of its rows (for full column rank), so
    # compare with NumPy's (LAPACK) R after matching signs, and check RᵀR = XᵀX.
    rng = np.random.default_rng(3)
    X = rng.standard_normal(shape) * np.exp(rng.standard_normal(shape[1]))
    R = K._qr_r(X)
    R_np = np.linalg.qr(X, mode="r")
    assert R.shape == R_np.shape
    sign = np.sign(np.diag(R)) * np.sign(np.diag(R_np))
    scale = np.max(np.abs(R_np))
    assert np.max(np.abs(R - sign[:, None] * R_np)) <= 1e-13 * scale
    assert np.allclose(np.triu(R), R)
    np.testing.assert_allclose(R.T @ R, X.T @ X, rtol=0, atol=1e-13 * scale**2)


def _overlap_dense(A, V):
    """The definition: Σ over A's left singular vectors (sv > 1e-12·max) of ‖uᵀV‖²."""
    Ua, sv, _ = np.linalg.svd(A.T, full_matrices=False)
    keep = sv > 1e-12 * sv.max() if sv.size and sv.max() > 0 else np.zeros(sv.size, bool)
    return float(np.sum((Ua[:, keep].T @ V) ** 2))


@pytest.mark.parametrize("case", ["full rank", "ill-conditioned", "rank deficient", "zero"])
def test_subspace_overlap_from_the_r_factor(case):
    # Both branches (triangular solve when A is well conditioned, r×r SVD otherwise) against
    # the SVD of the d×r Aᵀ itself.
    rng = np.random.default_rng(4)
    d, r, k = 50, 6, 4
    V = np.linalg.qr(rng.standard_normal((d, k)))[0]
    A = rng.standard_normal((r, d))
    if case == "ill-conditioned":
        A[-1] = A[0] + 1e-9 * rng.standard_normal(d)  # cond ~1e9: the SVD branch
    elif case == "rank deficient":
        A[3:] = 0.0
    elif case == "zero":
        A[:] = 0.0
    RA = K._qr_r(np.ascontiguousarray(A.T))
    got = K._subspace_overlap(np.ascontiguousarray(RA[:r, :r]), A @ V)
    want = _overlap_dense(A, V)
    # ill-conditioned: the direction of the 1e-9 singular value is known to ~1e-16/1e-9.
    tol = 1e-6 if case == "ill-conditioned" else 1e-12
    assert got == pytest.approx(want, rel=tol, abs=tol)
    if case == "zero":
        assert got == 0.0


def _adam_numpy(p, g, m, v, t, lr, beta1, beta2, eps, wd, adamw, torch_division=False):
    """torch.optim.Adam/AdamW's single-tensor update as NumPy array expressions, in torch's
    order (lerp_, mul_.addcmul_, sqrt/bias_correction2_sqrt + eps, addcdiv_). The kernel
    multiplies √v by 1/√bc₂ where torch divides by √bc₂ (``torch_division=True``: torch's
    exact form)."""
    p, g, m, v = p.copy(), g.copy(), m.copy(), v.copy()
    if adamw:
        p = p * (1.0 - lr * wd)
    elif wd:
        g = g + wd * p
    m = m + (1.0 - beta1) * (g - m)
    v = beta2 * v + (1.0 - beta2) * g * g
    bc1, bc2 = 1.0 - beta1 ** (t + 1), 1.0 - beta2 ** (t + 1)
    root = np.sqrt(v) / np.sqrt(bc2) if torch_division else np.sqrt(v) * (1.0 / np.sqrt(bc2))
    return p - lr / bc1 * (m / (root + eps)), m, v


@pytest.mark.parametrize("opt", [K.OPT_ADAM, K.OPT_ADAMW])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_fused_adam_is_bit_identical_to_the_array_form(opt, wd):
    # IEEE arithmetic is exact per operation, so the fused in-place loop (vectorised with
    # error_model="numpy") must give the same bits as the same operations on arrays.
    rng = np.random.default_rng(5)
    p, m, v = rng.standard_normal((4, 33)), rng.standard_normal((4, 33)), rng.random((4, 33))
    no_rot = (np.zeros((0, 2), np.int64), np.zeros((0, 2)), np.zeros((0, 0)))
    for t in (0, 7):
        g = rng.standard_normal((4, 33))
        want = _adam_numpy(p, g, m, v, t, 3e-3, 0.9, 0.999, 1e-8, wd, opt == K.OPT_ADAMW)
        K.optimizer_step(p, g.copy(), m, v, t, 3e-3, opt, 0.0, False, 0.9, 0.999, 1e-8, wd,
                         0, *no_rot)
        for got, exp in zip((p, m, v), want):
            np.testing.assert_array_equal(got, exp)


def test_fused_adam_is_within_a_few_ulp_of_torchs_division():
    # The kernel's only departure from torch's Adam: √v·(1/√bc₂) for √v/√bc₂. Each is
    # correctly rounded from the same exact value up to the reciprocal's own rounding, so
    # the denominators differ by at most 2 ulp and one update by a few ulp of itself.
    rng = np.random.default_rng(7)
    p, m, v = rng.standard_normal((4, 33)), rng.standard_normal((4, 33)), rng.random((4, 33))
    g = rng.standard_normal((4, 33))
    for t in (0, 3, 100):
        ours = _adam_numpy(p, g, m, v, t, 3e-3, 0.9, 0.999, 1e-8, 0.0, False)[0]
        torch_form = _adam_numpy(p, g, m, v, t, 3e-3, 0.9, 0.999, 1e-8, 0.0, False,
                                 torch_division=True)[0]
        step_ours, step_torch = p - ours, p - torch_form
        np.testing.assert_allclose(step_ours, step_torch, rtol=4 * np.finfo(float).eps,
                                   atol=0)


@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_is_bit_identical_to_the_array_form(nesterov):
    rng = np.random.default_rng(6)
    p, buf = rng.standard_normal((3, 20)), np.zeros((3, 20))
    p_ref, buf_ref = p.copy(), buf.copy()
    no_rot = (np.zeros((0, 2), np.int64), np.zeros((0, 2)), np.zeros((0, 0)))
    for t in range(3):
        g = rng.standard_normal((3, 20))
        # torch.optim.SGD (momentum 0.9, no dampening, weight decay 0.01)
        gr = g + 0.01 * p_ref
        buf_ref = gr.copy() if t == 0 else 0.9 * buf_ref + gr
        gr = gr + 0.9 * buf_ref if nesterov else buf_ref
        p_ref = p_ref - 0.1 * gr
        K.optimizer_step(p, g.copy(), buf, buf, t, 0.1, K.OPT_SGD, 0.9, nesterov, 0.9, 0.999,
                         1e-8, 0.01, 0, *no_rot)
        np.testing.assert_array_equal(p, p_ref)
        np.testing.assert_array_equal(buf, buf_ref)


def test_cheap_loss_bound_never_passes_a_loss_above_the_bound():
    # _loss_surely_within(…) = True must imply the exact loss ½‖(sBA − Δ⋆)Σ^½‖² ≤ bound
    # (it stands in for the trace-form check on steps whose gradient is sampled). Checked
    # against the dense loss with bounds just below, at and above it, and far above the
    # bound U = ½(s‖B‖‖AΣ^½‖ + ‖Δ⋆Σ^½‖)², where it must pass (else it saves nothing).
    rng = np.random.default_rng(11)
    for trial in range(200):
        d, m, r, k = rng.integers(2, 40), rng.integers(2, 40), rng.integers(1, 6), rng.integers(1, 6)
        lam = rng.random(d) * 3
        A, B = rng.standard_normal((r, d)), rng.standard_normal((m, r)) * rng.choice([0.0, 1e-3, 1.0])
        Dstar = rng.standard_normal((m, k)) @ rng.standard_normal((k, d))
        s = float(rng.choice([0.1, 2.0, 64.0]))
        E = s * B @ A - Dstar
        L = 0.5 * np.sum(E * E * lam)
        c_loss = float(np.sum(Dstar * Dstar * lam))
        for bound in (L * (1 - 1e-9), L, L * (1 + 1e-9), L * 2):
            if K._loss_surely_within(s, A, B, lam, c_loss, bound):
                assert L <= bound
        U = 0.5 * (s * np.linalg.norm(B) * np.sqrt(np.sum(A * A * lam)) + np.sqrt(c_loss)) ** 2
        assert K._loss_surely_within(s, A, B, lam, c_loss, 2.0 * U)
    bad = np.ones((2, 3))
    bad[0, 1] = np.nan
    assert not K._loss_surely_within(1.0, bad, np.ones((3, 2)), np.ones(3), 1.0, np.inf)


@pytest.mark.parametrize("batch, train_size", [(16, 0), (8, 40), (0, 40)])
def test_skipped_divergence_checks_change_no_result(batch, train_size):
    # Recorded steps always take the exact trace-form check; the others with sampled
    # gradients may skip it where the cheap bound decides. So the same run recorded at
    # every step and at t = 0 only must end in the same state, bit for bit, and diverge
    # at the same step (a tight bound just above the initial loss makes the cheap bound
    # undecided on many steps; the large lrs diverge at different steps).
    base = sd.SimConfig(d=24, m=20, rank=4, task_rank=3, spectrum=1.0, steps=40, batch=batch,
                        train_size=train_size, optimizer="adam", lr=1e-2, noise=0.1)
    steps_seen = set()
    for lr, bound_factor in ((1e-2, 1e6), (0.3, 1e6), (3.0, 1e6), (30.0, 1e6), (0.05, 1.02)):
        cfg = base.replace(lr=lr)
        L0 = sd.simulate(cfg.replace(steps=1)).records["loss"][0]
        cfg = cfg.replace(divergence_bound=float(L0 * bound_factor))
        every = sd.simulate(cfg.replace(record_every=1))
        sparse = sd.simulate(cfg.replace(record_every=cfg.steps))
        assert (every.diverged, every.diverged_step) == (sparse.diverged, sparse.diverged_step)
        np.testing.assert_array_equal(every.A, sparse.A)
        np.testing.assert_array_equal(every.B, sparse.B)
        steps_seen.add(every.diverged_step)
    assert len(steps_seen) >= 3  # several different outcomes were compared
