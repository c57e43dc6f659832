"""Numba kernels of the simulator: factorised LoRA dynamics and dense full fine-tuning.

The LoRA kernel never forms an m×d matrix (THEORY.md §2 "Cost"): every quantity comes from
the generated factorised expressions in :mod:`signaldrift._generated.factorised`, evaluated
on r×r, k×r Gram matrices and thin products. A population step costs
O((m + d)·r·(r + k)); a minibatch step O(n·(m + d)·(r + k)).

The hot loop evaluates the generated gradient and loss expressions in a fused form: four
GEMMs a step on the stacked thin factors ``H = [AΣ; VᵀΣ]`` and ``F = [B, U]``
(``H·Aᵀ``, ``Fᵀ·B``, ``F·C_B``, ``C_A·H``, with the small coefficient blocks ``C_A``, ``C_B``
built from the Gram products) by the register-blocked micro-kernels of
:mod:`signaldrift._gemm` (BLAS calls cost 2–3× more on these thin shapes), written into
buffers allocated once per call, and one
fused in-place optimiser pass per factor, compiled with ``error_model="numpy"`` so LLVM
vectorises Adam's division and square root. ``tests/test_kernels.py`` checks each fused
form against the generated one (which ``test_generated.py`` checks against the dense
forms and its SymPy source).

Both kernels advance a *segment* of steps [t0, t1) in place, so the Python driver can pause
between segments (fresh minibatch chunks, sharpness measurements) without changing the
arithmetic: the optimiser state lives in arrays the driver owns.

Record layout: ``rec[q, i]`` is record ``q`` (see :data:`RECORD_NAMES`) at the i-th recorded
step (steps t with ``t % record_every == 0``); ``loss[i]`` is the excess loss at the i-th
recorded loss step (t % record_every == 0, and the final t = steps, written by the driver);
``train_loss[i]`` likewise, the empirical loss on a fixed training set (length 0 without one).

Recorded losses and norms have no rounding floor: each is the Frobenius norm of a product
``F Hᵀ`` of two thin factors (e.g. ``EΣ^½ = [sB, −U·diag σ⋆]·[AΣ^½; VᵀΣ^½]``), computed as
``‖R_F R_Hᵀ‖`` from the R factors of their thin QR decompositions. Householder QR is
backward stable, so the error is ~1e-16·‖F‖‖H‖, as for a dense ``E = sBA − Δ⋆``, and a
norm is never negative; the Gram-trace forms (``½s²tr(ASAᵀBᵀB) − …``) cancel instead. The
divergence check uses the cheap trace form at every step. The signed quantities (descent
terms, ⟨S,D⟩_Σ) are generated trace forms.

Feature basis (THEORY §1, :mod:`signaldrift._basis`): A is held in Σ's eigen-coordinates;
only Adam's per-coordinate moments of A live in the feature coordinates, so its gradient is
rotated to the features and its step back (``O(r·d·log d)`` for the random basis, nothing
for the eigenbasis or for SGD, which is rotation-equivariant).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._basis import BASIS_EIGEN, to_eigen, to_features
from ._gemm import matmul, transpose_into
from ._rng import epoch_indices
from ._rng import minibatch as minibatch_sample
from ._rng import normals, scale_minibatch
from ._generated.factorised import (
    batch_residual,
    curvature_cross,
    descent,
    descent_drift,
    descent_signal,
)

#: Names of the per-step records, in the row order of the kernels' ``rec`` array.
RECORD_NAMES = (
    "grad_norm",
    "signal_norm",
    "drift_norm",
    "drift_ratio",
    "progress",
    "descent",
    "curvature",
    "update_norm",
    "adapter_norm",
    "A_norm",
    "B_norm",
    "subspace_overlap",
    # the exact split of L_{t+1} − L_t (THEORY §3): descent = descent_signal + descent_drift,
    # curvature = curvature_signal + curvature_cross + curvature_drift
    "descent_signal",
    "descent_drift",
    "curvature_signal",
    "curvature_cross",
    "curvature_drift",
)

OPT_SGD, OPT_ADAM, OPT_ADAMW = 0, 1, 2

#: Kernel return status.
STATUS_OK, STATUS_DIVERGED = 0, 1

# Row indices of the records written below (RECORD_NAMES order).
(_GRAD_NORM, _SIGNAL_NORM, _DRIFT_NORM, _DRIFT_RATIO, _PROGRESS, _DESCENT, _CURVATURE,
 _UPDATE_NORM, _ADAPTER_NORM, _A_NORM, _B_NORM, _SUBSPACE, _DESCENT_SIGNAL, _DESCENT_DRIFT,
 _CURV_SIGNAL, _CURV_CROSS, _CURV_DRIFT) = range(17)


@njit(cache=True, error_model="numpy")
def _axpy_inplace(y, a, x):
    """y ← y + a·x, elementwise (flat views of C-contiguous arrays)."""
    yf, xf = y.reshape(-1), x.reshape(-1)
    for i in range(yf.size):
        yf[i] = yf[i] + a * xf[i]


@njit(cache=True, error_model="numpy")
def _adam_moments(g, buf, sq, beta1, beta2, step_size, bc2_root, eps, out, subtract):
    """Adam's moments and step in one pass (``error_model="numpy"`` lets LLVM vectorise
    the division; ε > 0 is validated, so no denominator is zero):
    ``m ← m + (1 − β₁)(g − m)``, ``v ← β₂v + (1 − β₂)g²``, and
    ``out ← out − step·m / (√v·(1/√bc₂) + ε)`` (``subtract``) or ``out ← step·m / (…)``.

    The operations are torch's (``lerp_``, ``mul_().addcmul_()``, ``addcdiv_``), in its
    order, but for one: torch divides √v by √bc₂ elementwise, this multiplies by the
    reciprocal 1/√bc₂ computed once (≤ 1 ulp from the division in the denominator). The
    square root and the two divisions were the whole cost of the pass (they share one
    divider unit); one division fewer makes Adam's pass about 20% faster."""
    gf, mf, vf, of = g.reshape(-1), buf.reshape(-1), sq.reshape(-1), out.reshape(-1)
    a1 = 1.0 - beta1
    a2 = 1.0 - beta2
    inv_root = 1.0 / bc2_root
    if subtract:
        for i in range(gf.size):
            gi = gf[i]
            mi = mf[i] + a1 * (gi - mf[i])
            vi = beta2 * vf[i] + a2 * gi * gi
            mf[i] = mi
            vf[i] = vi
            of[i] = of[i] - step_size * (mi / (np.sqrt(vi) * inv_root + eps))
    else:
        for i in range(gf.size):
            gi = gf[i]
            mi = mf[i] + a1 * (gi - mf[i])
            vi = beta2 * vf[i] + a2 * gi * gi
            mf[i] = mi
            vf[i] = vi
            of[i] = step_size * (mi / (np.sqrt(vi) * inv_root + eps))


@njit(cache=True, error_model="numpy")
def optimizer_step(p, g, buf, sq, t, lr, opt, momentum, nesterov, beta1, beta2, eps, wd,
                   code, pairs, cs, Q):
    """One optimiser step on parameter ``p`` in place, with torch.optim's exact semantics.

    ``g`` is the gradient (overwritten: it is scratch space), ``buf`` (SGD momentum buffer
    / Adam first moment) and ``sq`` (Adam second moment) are updated in place; ``t`` is
    the 0-based step index (Adam's step count is t + 1). ``(code, pairs, cs, Q)`` is the
    feature basis of ``p``'s rows (:mod:`._basis`): ``p`` and ``g`` are in
    eigen-coordinates, Adam's moments in feature coordinates.

    - SGD: ``g ← g + wd·p``; with momentum μ: ``buf ← g`` at the first step, else
      ``buf ← μ·buf + g`` (no dampening); ``g ← g + μ·buf`` (Nesterov) or ``g ← buf``;
      ``p ← p − lr·g``. Rotation-equivariant, so it never rotates.
    - Adam: ``g ← g + wd·p``; AdamW: ``p ← p·(1 − lr·wd)``. Then, in feature coordinates,
      ``m ← m + (1 − β₁)(g − m)``, ``v ← β₂v + (1 − β₂)g²``,
      ``p ← p − lr/(1 − β₁^{t+1}) · m / (√v·(1/√(1 − β₂^{t+1})) + ε)`` (torch divides √v
      by √(1 − β₂^{t+1}); the reciprocal is within an ulp, see :func:`_adam_moments`).

    Every pass is a fused in-place loop (no temporaries in the eigenbasis).
    """
    pf, gf = p.reshape(-1), g.reshape(-1)
    if opt == OPT_SGD:
        if wd != 0.0:
            _axpy_inplace(g, wd, p)
        if momentum != 0.0:
            bf = buf.reshape(-1)
            if t == 0:
                for i in range(gf.size):
                    bf[i] = gf[i]
            else:
                for i in range(gf.size):
                    bf[i] = momentum * bf[i] + gf[i]
            if nesterov:
                _axpy_inplace(g, momentum, buf)
            else:
                g = buf
        _axpy_inplace(p, -lr, g)
        return
    if opt == OPT_ADAMW:
        decay = 1.0 - lr * wd
        for i in range(pf.size):
            pf[i] = pf[i] * decay
    elif wd != 0.0:
        _axpy_inplace(g, wd, p)
    # A float exponent: C's pow, as torch's (Python's) ``beta ** step``; an integer one
    # would take Numba's repeated multiplication, an ulp away.
    bc1 = 1.0 - beta1 ** float(t + 1)
    bc2 = 1.0 - beta2 ** float(t + 1)
    step_size = lr / bc1
    if code == BASIS_EIGEN:
        _adam_moments(g, buf, sq, beta1, beta2, step_size, np.sqrt(bc2), eps, p, True)
        return
    gfeat = to_features(g, code, pairs, cs, Q)
    _adam_moments(gfeat, buf, sq, beta1, beta2, step_size, np.sqrt(bc2), eps, gfeat, False)
    step = to_eigen(gfeat, code, pairs, cs, Q)
    _axpy_inplace(p, -1.0, step)


@njit(cache=True)
def draw_minibatch(t, key_x, key_e, key_ep, sqrt_lam, noise, Xtr, Ntr, perm, idx, Xb, Nb,
                   Z, Xi):
    """Step t's minibatch into Xb (n, d) and Nb (n, m): rows of the fixed training set
    (indices of :func:`._rng.epoch_indices`) when there is one, else fresh samples
    (:func:`._rng.minibatch`), from the standard normals ``Z`` (n, d) and ``Xi`` (n, m)
    when they were drawn already (``Z.size > 0``: :func:`lora_block` draws a step's normals
    once for every configuration of the same stream), scaled by
    :func:`._rng.scale_minibatch` as :func:`._rng.minibatch` scales its own: the same
    bits."""
    if Xtr.shape[0] > 0:
        epoch_indices(key_ep, t, Xb.shape[0], Xtr.shape[0], perm, idx)
        for j in range(Xb.shape[0]):
            Xb[j] = Xtr[idx[j]]
            Nb[j] = Ntr[idx[j]]
    elif Z.size > 0:
        scale_minibatch(Z, Xi, sqrt_lam, noise, Xb, Nb)
    else:
        minibatch_sample(key_x, key_e, t, sqrt_lam, noise, Xb, Nb)


@njit(cache=True)
def _safe_sqrt(x):
    return np.sqrt(x) if x > 0.0 else 0.0


@njit(cache=True)
def _ratio(num, den):
    if den > 0.0:
        return num / den
    return 0.0 if num == 0.0 else np.inf


try:  # Numba's binding of LAPACK's dgeqrf (what np.linalg.qr calls first): R without Q
    from numba import types as _nbtypes
    from numba.np.linalg import _LAPACK

    _GEQRF = _LAPACK().numba_ez_geqrf(_nbtypes.float64)
except Exception:  # pragma: no cover - a Numba without it: np.linalg.qr, which also forms Q
    _GEQRF = None

_KIND_D = ord("d")

if _GEQRF is not None:
    @njit(cache=True)
    def _qr_r(X):
        """R factor (min(p, n) × n) of the thin QR decomposition of X (p × n): LAPACK's
        Householder ``dgeqrf``, backward stable; Q is never formed."""
        p, n = X.shape
        K = min(p, n)
        if K == 0:
            return np.zeros((K, n))
        work = np.empty((n, p))  # X in column-major order (leading dimension p)
        for i in range(p):
            for j in range(n):
                work[j, i] = X[i, j]
        tau = np.empty(K)
        _GEQRF(_KIND_D, p, n, work.ctypes, p, tau.ctypes)
        R = np.zeros((K, n))
        for j in range(n):
            for i in range(min(j + 1, K)):
                R[i, j] = work[j, i]
        return R
else:  # pragma: no cover
    @njit(cache=True)
    def _qr_r(X):
        """R factor of the thin QR decomposition of X (backward stable, Householder)."""
        return np.linalg.qr(X)[1]


@njit(cache=True)
def _fro(X):
    return np.sqrt(np.sum(X * X))


@njit(cache=True)
def _cols(X, a, b):
    """Columns a..b−1 of X, contiguous (for fast products of small matrices)."""
    return np.ascontiguousarray(X[:, a:b])


@njit(cache=True)
def _columns(X, Y):
    """[X, Y] (side by side)."""
    out = np.empty((X.shape[0], X.shape[1] + Y.shape[1]))
    out[:, :X.shape[1]] = X
    out[:, X.shape[1]:] = Y
    return out


@njit(cache=True)
def _subspace_overlap(RA, AV):
    """‖Q_Aᵀ V‖², Q_A an orthonormal basis of A's row space: the sum of cos² of the
    principal angles between A's rows and the task's V.

    From ``RA`` (p × r), the R factor of a thin QR of Aᵀ (``Aᵀ = Q·RA``), and ``AV = A·V``
    (r × k): with the SVD ``RA = W·S·Zᵀ``, Aᵀ's left singular vectors are ``Q·W``, so
    ``Q_Aᵀ V = S⁻¹ Zᵀ A V`` over the singular values above 1e-12 of the largest (a
    rank-deficient A, e.g. ``gaussian-b``'s A₀ = 0, keeps only its row space). When RA's
    diagonal is within 10⁶ of its largest entry, the equal ``‖RA⁻ᵀ·AV‖²`` (a triangular
    solve) replaces the r × r SVD."""
    if not np.all(np.isfinite(RA)):
        return np.nan
    p, r = RA.shape
    if p == r:
        dmax, dmin = 0.0, np.inf
        for j in range(r):
            dmax = max(dmax, abs(RA[j, j]))
            dmin = min(dmin, abs(RA[j, j]))
        if dmin > 1e-6 * dmax:
            # Well-conditioned A: Q_Aᵀ V = RA⁻ᵀ·AV, a forward substitution (RAᵀ is lower
            # triangular); the same value as the SVD form below.
            X = AV.copy()
            for i in range(r):
                for j in range(i):
                    for q in range(X.shape[1]):
                        X[i, q] -= RA[j, i] * X[j, q]
                for q in range(X.shape[1]):
                    X[i, q] /= RA[i, i]
            return np.sum(X * X)
    _, sv, Zt = np.linalg.svd(RA, full_matrices=False)
    top = sv.max() if sv.size else 0.0
    out = 0.0
    if top > 0.0:
        C = Zt @ AV
        for j in range(sv.size):
            if sv[j] > 1e-12 * top:
                c = C[j] / sv[j]
                out += np.sum(c * c)
    return out


@njit(cache=True)
def residual_factors(s, B, U, sig):
    """R factor of ``F = [sB, −U·diag σ⋆]`` (m × (r+k)): ``E = F·[A; Vᵀ]``."""
    return _qr_r(_columns(s * B, -(U * sig)))


@njit(cache=True)
def loss_and_grad_norm(RF, A, V, lam):
    """Cancellation-free ``L = ½‖EΣ^½‖²`` and ``‖G‖ = ‖EΣ‖`` (THEORY §2) from
    ``RF = residual_factors(...)``, with ``E = F·[A; Vᵀ]`` and thin QRs of
    ``Σ^½[Aᵀ, V]`` and ``Σ[Aᵀ, V]``."""
    H = _columns(A.T, V)
    root = np.sqrt(lam)
    Rh = _qr_r(H * root[:, None])
    Rg = _qr_r(H * lam[:, None])
    L = 0.5 * _fro(RF @ Rh.T) ** 2
    return L, _fro(RF @ Rg.T)


@njit(cache=True)
def lora_loss(s, A, B, lam, U, sig, V):
    """Population excess loss L = ½tr(EΣEᵀ) at (A, B) (THEORY §2), cancellation-free:
    the first value of :func:`loss_and_grad_norm`, same bits, without ‖G‖'s QR."""
    RF = residual_factors(s, B, U, sig)
    Rh = _qr_r(_columns(A.T, V) * np.sqrt(lam)[:, None])
    return 0.5 * _fro(RF @ Rh.T) ** 2


@njit(cache=True)
def train_residual(s, A, B, U, Sg, Xtr, XVtr, Ntr):
    """Residual ``R = X Eᵀ − N`` of a fixed training set (rows are samples, THEORY §2)."""
    return batch_residual(s, B, Xtr @ A.T, U, Sg, XVtr, Ntr)


@njit(cache=True)
def lora_train_loss(s, A, B, U, Sg, Xtr, XVtr, Ntr):
    """Empirical training loss ``(1/2N)·Σᵢ‖(sBA − Δ⋆)xᵢ − εᵢ‖²`` (THEORY §2 "Data")."""
    R = train_residual(s, A, B, U, Sg, Xtr, XVtr, Ntr)
    return 0.5 * np.sum(R * R) / Xtr.shape[0]


@njit(cache=True)
def padded_rows(rows, cols, pad):
    """An uninitialised (rows, cols) array whose rows are ``cols + pad`` doubles apart (a
    view of a wider buffer; ``pad = 0``: contiguous). Rows of a width that is a multiple of
    256 doubles sit a multiple of 2 KiB apart, in at most two of the L1 cache's sets, and
    a product that reads 16 of them at once (``C_A·H``) ran at half speed at d = 512,
    1024 and 4096: one cache line of padding (``pad = 8``) spreads them."""
    return np.empty((rows, cols + pad))[:, :cols]


@njit(cache=True)
def stacked_factor_pad(r, d):
    """The padding of H = [AΣ; VᵀΣ] (:func:`padded_rows`): one cache line where d is a
    multiple of 256 and r ≥ 4; none otherwise, where it gains nothing, and where with
    r < 4 the product ``P = H·Aᵀ`` (fewer than 4 columns: BLAS) would copy a strided H
    at every step."""
    return 8 if r >= 4 and d % 256 == 0 else 0


@njit(cache=True, error_model="numpy")
def _population_grams(A, B, lam, H, F, P, Gm, At):
    """The step's Gram products, two GEMMs on stacked thin factors
    (:func:`~signaldrift._gemm.matmul`): ``H[:r] = AΣ`` (H[r:] holds VᵀΣ),
    ``F[:, :r] = B`` (F[:, r:] holds U), ``At = Aᵀ``,
    ``P = H·Aᵀ = [AΣAᵀ; VᵀΣAᵀ]`` and ``Gm = Fᵀ·B = [BᵀB; UᵀB]``."""
    r, d = A.shape
    for i in range(r):
        for j in range(d):
            H[i, j] = A[i, j] * lam[j]
    for i in range(B.shape[0]):
        for j in range(r):
            F[i, j] = B[i, j]
    transpose_into(A, At)
    matmul(H, At, P)
    matmul(F.T, B, Gm)


@njit(cache=True, error_model="numpy", fastmath={"reassoc", "contract"})
def _loss_surely_within(s, A, B, lam, c_loss, bound):
    """Whether the population loss at (A, B) is certainly finite and ≤ ``bound``, from
    the bound ``L = ½‖(sBA − Δ⋆)Σ^½‖² ≤ U = ½(s‖B‖·‖AΣ^½‖ + ‖Δ⋆Σ^½‖)²`` (the triangle
    inequality and ‖XY‖ ≤ ‖X‖‖Y‖, Frobenius norms; ``c_loss = ‖Δ⋆Σ^½‖²``), which costs
    O((m + d)·r) where the exact trace form (:func:`_trace_loss`) needs two GEMMs.

    True only when U ≤ 10⁻⁶ below ``bound`` (and ≤ 1e300): the trace form's rounding and
    that of U's own sums (reassociated here: U is a bound, its bits matter to nothing)
    are far smaller, so :func:`_trace_loss` would then pass the divergence check too and
    skipping it changes no result. A NaN or infinity in A or B makes U NaN or infinite:
    False."""
    Bf = B.reshape(-1)
    nb = 0.0
    for i in range(Bf.size):  # an indexed loop: LLVM vectorises it (an iterator, 6× slower)
        nb += Bf[i] * Bf[i]
    r, d = A.shape
    na = 0.0
    for i in range(r):
        for j in range(d):
            na += A[i, j] * A[i, j] * lam[j]
    u = 0.5 * (s * np.sqrt(nb) * np.sqrt(na) + np.sqrt(c_loss)) ** 2
    return np.isfinite(u) and u <= min(bound * (1.0 - 1e-6), 1e300)


@njit(cache=True, error_model="numpy")
def _trace_loss(s, P, Gm, sig, c_loss, r):
    """``L = ½s²tr(AΣAᵀ·BᵀB) − s·tr(diag σ⋆·UᵀB·(VᵀΣAᵀ)ᵀ) + ½c`` from ``P`` and ``Gm``
    (:func:`_population_grams`): the generated ``excess_loss`` as two fused sums (checked
    against it in ``tests/test_kernels.py``)."""
    quad = 0.0
    for i in range(r):
        for j in range(r):
            quad += P[i, j] * Gm[j, i]
    lin = 0.0
    for i in range(sig.size):
        acc = 0.0
        for j in range(r):
            acc += Gm[r + i, j] * P[r + i, j]
        lin += sig[i] * acc
    return 0.5 * s * s * quad - s * lin + 0.5 * c_loss


@njit(cache=True, error_model="numpy")
def _population_grads(s, sig, H, F, P, Gm, Ca, Cb, gA, gB):
    """Population gradients (THEORY §2; the generated ``grad_A``/``grad_B``) as one GEMM
    each on the stacked factors:
    ``∇_B = s²B·AΣAᵀ − sU·diag σ⋆·VᵀΣAᵀ = F·Cb``, ``Cb = [s²AΣAᵀ; −s·diag σ⋆·VᵀΣAᵀ]``;
    ``∇_A = s²BᵀB·AΣ − s(UᵀB)ᵀdiag σ⋆·VᵀΣ = Ca·H``, ``Ca = [s²BᵀB, −s(UᵀB)ᵀdiag σ⋆]``."""
    r = Ca.shape[0]
    k = sig.size
    s2 = s * s
    for i in range(r):
        for j in range(r):
            Cb[i, j] = s2 * P[i, j]
            Ca[i, j] = s2 * Gm[i, j]
    for i in range(k):
        f = -s * sig[i]
        for j in range(r):
            Cb[r + i, j] = f * P[r + i, j]
            Ca[j, r + i] = f * Gm[r + i, j]
    matmul(F, Cb, gB)
    matmul(Ca, H, gA)


@njit(cache=True, error_model="numpy")
def _batch_grads(s, X, XV, N, A, B, sig, Ft, At, XA, Xd, R, RB, gA, gB):
    """Minibatch / training-set gradients (THEORY §2; the generated ``batch_residual``,
    ``batch_grad_A``, ``batch_grad_B``) into preallocated buffers:
    ``R = s·XAᵀBᵀ − XV·diag σ⋆·Uᵀ − N = [s·XAᵀ, −XV·diag σ⋆]·Fᵀ − N``,
    ``∇_B = (s/n)RᵀXAᵀ``, ``∇_A = (s/n)(RB)ᵀX``, every product by
    :func:`~signaldrift._gemm.matmul` (``Ft = Fᵀ = [B, U]ᵀ``, whose last k rows hold Uᵀ,
    and ``At = Aᵀ`` are filled here). Leaves R (n × m) in place."""
    n = X.shape[0]
    r = A.shape[0]
    k = sig.size
    transpose_into(A, At)
    transpose_into(B, Ft[:r])
    matmul(X, At, XA)
    for i in range(n):
        for j in range(r):
            Xd[i, j] = s * XA[i, j]
        for j in range(k):
            Xd[i, r + j] = -XV[i, j] * sig[j]
    matmul(Xd, Ft, R)
    for i in range(n):
        for j in range(R.shape[1]):
            R[i, j] = R[i, j] - N[i, j]
    c = s / n
    matmul(R, B, RB)
    for i in range(n):
        for j in range(r):
            XA[i, j] = c * XA[i, j]
            RB[i, j] = c * RB[i, j]
    matmul(R.T, XA, gB)
    matmul(RB.T, X, gA)


@njit(cache=True, error_model="numpy", inline="always")
def lora_run(t0, t1, state, task, data, optim, basis, out):
    """Advance one configuration's LoRA (A, B) over steps [t0, t1) in place; record
    THEORY §3's terms.

    The arguments come in six tuples, ``state = (A, B, bufA, bufB, sqA, sqB)``,
    ``task = (s, lam, U, V, sig, Sg, VtS, c_loss)``,
    ``data = (n, key_x, key_e, noise, Xtr, XVtr, Ntr, key_ep, Zs, Xis)``,
    ``optim = (lrs, lr_ratio, opt, momentum, nesterov, beta1, beta2, eps, eps_b, wd)``,
    ``basis = (code, pairs, cs, Q)`` and ``out = (record_every, bound, loss, train_loss,
    rec)``, so that the call fits in Python's plain call (more than 30 arguments compile
    to a ``*args`` call, which Numba cannot inline), and it is inlined into its one caller,
    :func:`lora_block` (``inline="always"``). Compiled separately, its whole call tree was
    optimised and compiled to machine code once more for every level that called it:
    about a fifth of the cold compile.

    A step costs four thin GEMMs on stacked factors (:func:`_population_grams`,
    :func:`_population_grads`; with minibatches :func:`_batch_grads`) and two fused
    optimiser passes (:func:`optimizer_step`); every buffer is allocated once per call.
    Each step first checks the population loss against ``bound`` (the trace form); with
    sampled gradients, whose step does not need the Gram products, a cheap upper bound
    (:func:`_loss_surely_within`) stands in for them where it already decides the check,
    except at recorded steps.

    Args:
        t0, t1: global step range.
        A, B: (r, d) in Σ's eigen-coordinates, (m, r); updated in place.
        bufA, bufB, sqA, sqB: optimiser state (see :func:`optimizer_step`); A's in
            feature coordinates.
        s: scaling factor. lam: (d,) Σ's eigenvalues. U (m, k), V (d, k), sig = σ⋆ (k,),
        Sg = diag(σ⋆), VtS = VᵀΣ (k, d), c_loss = ‖Δ⋆Σ^½‖².
        lrs: (steps,) learning rates of A; B's are ``lr_ratio·lrs`` (LoRA+).
        n: minibatch size (0: full batch). key_x, key_e: the counter-based streams of
            fresh inputs and label noise (:mod:`._rng`), noise: σ.
        Xtr (N, d), XVtr = Xtr·V, Ntr (N, m): the fixed training set (N = 0: none); with
            n > 0 step t takes the indices of :func:`._rng.epoch_indices` (stream key_ep).
            Full batch with a training set uses all of it; without one, the population
            gradient.
        Zs (T, n, d), Xis (T, n, m) with T ≥ t1 − t0, or empty: the fresh minibatches'
            standard normals of steps t0…t1−1 (``Zs[t − t0]``; streams key_x, key_e),
            drawn by the caller (:func:`lora_block`); empty: drawn here.
        opt…wd: optimiser settings (``eps_b``: Adam's ε for B).
        code, pairs, cs, Q: the feature basis (:mod:`._basis`).
        record_every, bound: recording stride, divergence bound.
        loss, train_loss, rec: output arrays (see module docstring).

    Returns:
        (status, t): ``STATUS_OK`` and t1, or ``STATUS_DIVERGED`` and the step at which the
        loss was non-finite or above ``bound`` (the state is left at that step).
    """
    A, B, bufA, bufB, sqA, sqB = state
    s, lam, U, V, sig, Sg, VtS, c_loss = task
    n, key_x, key_e, noise, Xtr, XVtr, Ntr, key_ep, Zs, Xis = data
    lrs, lr_ratio, opt, momentum, nesterov, beta1, beta2, eps, eps_b, wd = optim
    code, pairs, cs, Q = basis
    record_every, bound, loss, train_loss, rec = out
    has_train = Xtr.shape[0] > 0
    minibatch = n > 0
    r, d = A.shape
    m, k = U.shape
    no_rot = np.zeros((0, 0))
    nb = n if minibatch else (Xtr.shape[0] if has_train else 0)
    Xb = np.zeros((n, d))
    Nb = np.zeros((n, m))
    XVb = np.zeros((n, k))
    idx = np.zeros(n, dtype=np.int64)
    perm = np.zeros(Xtr.shape[0] if minibatch else 0, dtype=np.int64)
    sqrt_lam = np.sqrt(lam)
    predrawn = Zs.shape[0] > 0
    no_z = np.zeros((0, 0))
    # Stacked factors and every product of a step, allocated once.
    H = padded_rows(r + k, d, stacked_factor_pad(r, d))
    H[r:] = VtS
    F = np.empty((m, r + k))
    F[:, r:] = U
    Ft = np.empty((r + k, m))
    Ft[r:] = U.T
    At = np.empty((d, r))
    P = np.empty((r + k, r))
    Gm = np.empty((r + k, r))
    Ca = np.empty((r, r + k))
    Cb = np.empty((r + k, r))
    gA = np.empty((r, d))
    gB = np.empty((m, r))
    XA = np.empty((nb, r))
    Xd = np.empty((nb, r + k))
    R = np.empty((nb, m))
    RB = np.empty((nb, r))
    A_old = np.empty((r, d))
    B_old = np.empty((m, r))
    for t in range(t0, t1):
        record = t % record_every == 0
        i = t // record_every
        # With sampled gradients the Gram products serve the divergence check alone:
        # skipped where the cheap bound already passes it.
        if not (nb > 0 and not record and _loss_surely_within(s, A, B, lam, c_loss, bound)):
            _population_grams(A, B, lam, H, F, P, Gm, At)
            L = _trace_loss(s, P, Gm, sig, c_loss, r)
            if not (np.isfinite(L) and L <= bound):
                if record:
                    loss[i] = L
                return STATUS_DIVERGED, t
        if minibatch:
            if predrawn:
                draw_minibatch(t, key_x, key_e, key_ep, sqrt_lam, noise, Xtr, Ntr, perm, idx,
                               Xb, Nb, Zs[t - t0], Xis[t - t0])
            else:
                draw_minibatch(t, key_x, key_e, key_ep, sqrt_lam, noise, Xtr, Ntr, perm, idx,
                               Xb, Nb, no_z, no_z)
            matmul(Xb, V, XVb)
            _batch_grads(s, Xb, XVb, Nb, A, B, sig, Ft, At, XA, Xd, R, RB, gA, gB)
        elif has_train:
            _batch_grads(s, Xtr, XVtr, Ntr, A, B, sig, Ft, At, XA, Xd, R, RB, gA, gB)
        else:
            _population_grads(s, sig, H, F, P, Gm, Ca, Cb, gA, gB)
        if record:
            A_old[...] = A
            B_old[...] = B
        lr = lrs[t]
        optimizer_step(A, gA, bufA, sqA, t, lr, opt, momentum, nesterov,
                       beta1, beta2, eps, wd, code, pairs, cs, Q)
        optimizer_step(B, gB, bufB, sqB, t, lr_ratio * lr, opt, momentum, nesterov,
                       beta1, beta2, eps_b, wd, BASIS_EIGEN, pairs, cs, no_rot)
        if record:
            if has_train:
                if minibatch:
                    Rt = train_residual(s, A_old, B_old, U, Sg, Xtr, XVtr, Ntr)
                    train_loss[i] = 0.5 * np.sum(Rt * Rt) / Xtr.shape[0]
                else:
                    train_loss[i] = 0.5 * np.sum(R * R) / Xtr.shape[0]
            _record_lora(s, A_old, B_old, A, B, lam, U, V, sig, Sg, VtS, P, Gm, H, r,
                         loss, rec, i)
    return STATUS_OK, t1


@njit(cache=True, inline="always")
def _record_lora(s, A, B, A1, B1, lam, U, V, sig, Sg, VtS, P, Gm, H, r, loss, rec, i):
    """Step i's records (RECORD_NAMES) from the state (A, B) before and (A1, B1) after
    the step; ``P``, ``Gm``, ``H`` hold the step's Gram products and AΣ
    (:func:`_population_grams`)."""
    ASAt = np.ascontiguousarray(P[:r])
    VSAt = np.ascontiguousarray(P[r:])
    BtB = np.ascontiguousarray(Gm[:r])
    UtB = np.ascontiguousarray(Gm[r:])
    AS = np.ascontiguousarray(H[:r])
    RF = residual_factors(s, B, U, sig)
    L_rec, gn = loss_and_grad_norm(RF, A, V, lam)
    loss[i] = L_rec
    dA = A1 - A
    dB = B1 - B
    # S = s(ΔB·A + B·ΔA), D = sΔB·ΔA, ΔW = S + D = s(ΔB·A₁ + B·ΔA): products of the
    # thin factors [ΔB, B] and [Aᵀ, ΔAᵀ] (Σ^½-weighted for the curvature terms).
    R2 = _qr_r(_columns(dB, B))
    Aside = _columns(A.T, dA.T)
    R3 = _qr_r(Aside)
    R4 = _qr_r(Aside * np.sqrt(lam)[:, None])
    R2a, R2b = _cols(R2, 0, r), _cols(R2, r, 2 * r)
    R3a, R3b = _cols(R3, 0, r), _cols(R3, r, 2 * r)
    R4a, R4b = _cols(R4, 0, r), _cols(R4, r, 2 * r)
    sn = s * _fro(R2a @ R3a.T + R2b @ R3b.T)
    dn = s * _fro(R2a @ R3b.T)
    un = s * _fro(R2a @ (R3a + R3b).T + R2b @ R3b.T)
    kap_s = 0.5 * (s * _fro(R2a @ R4a.T + R2b @ R4b.T)) ** 2
    kap_d = 0.5 * (s * _fro(R2a @ R4b.T)) ** 2
    kap = 0.5 * (s * _fro(R2a @ (R4a + R4b).T + R2b @ R4b.T)) ** 2
    dBtB = dB.T @ B
    dBtU = dB.T @ U
    ASdAt = AS @ dA.T
    dASdAt = (dA * lam) @ dA.T
    VSdAt = VtS @ dA.T
    dBtdB = dB.T @ dB
    des_s = descent_signal(s, dBtB, dBtU, BtB, UtB, Sg, ASAt, VSAt, ASdAt, VSdAt)
    des_d = descent_drift(s, dBtB, dBtU, BtB, UtB, Sg, ASAt, VSAt, ASdAt, VSdAt)
    des = descent(s, dBtB, dBtU, BtB, UtB, Sg, ASAt, VSAt, ASdAt, VSdAt)
    kap_x = curvature_cross(s, dBtdB, dBtB, BtB, ASAt, ASdAt, dASdAt)
    # Aᵀ's R factor is the leading block of R3 (``[Aᵀ, ΔAᵀ] = Q·R3``).
    RA = np.ascontiguousarray(R3[:min(r, R3.shape[0]), :r])
    overlap = _subspace_overlap(RA, A @ V) / min(r, V.shape[1])
    rec[_GRAD_NORM, i] = gn
    rec[_SIGNAL_NORM, i] = sn
    rec[_DRIFT_NORM, i] = dn
    rec[_DRIFT_RATIO, i] = _ratio(dn, sn)
    rec[_PROGRESS, i] = -des / gn if gn > 0.0 else 0.0
    rec[_DESCENT, i] = des
    rec[_CURVATURE, i] = kap
    rec[_UPDATE_NORM, i] = un
    rec[_ADAPTER_NORM, i] = s * _fro(R2b @ R3a.T)
    rec[_A_NORM, i] = _fro(A)
    rec[_B_NORM, i] = _fro(B)
    rec[_SUBSPACE, i] = overlap
    rec[_DESCENT_SIGNAL, i] = des_s
    rec[_DESCENT_DRIFT, i] = des_d
    rec[_CURV_SIGNAL, i] = kap_s
    rec[_CURV_CROSS, i] = kap_x
    rec[_CURV_DRIFT, i] = kap_d


@njit(cache=True)
def full_loss(Delta, Dstar, lam):
    """Excess loss ½‖(Δ − Δ⋆)Σ^½‖² of full fine-tuning (dense, eigen-coordinates)."""
    E = Delta - Dstar
    return 0.5 * np.sum(E * E * lam)


@njit(cache=True)
def full_train_loss(Delta, Dstar, Xtr, Ntr):
    """Empirical training loss of full fine-tuning, (1/2N)‖X Eᵀ − N‖²."""
    R = Xtr @ (Delta - Dstar).T - Ntr
    return 0.5 * np.sum(R * R) / Xtr.shape[0]


@njit(cache=True, error_model="numpy", inline="always")
def full_run(t0, t1, Delta, buf, sq, Dstar, lam, lrs, n, key_x, key_e, noise, Xtr, Ntr,
             key_ep, opt, momentum, nesterov, beta1, beta2, eps, wd,
             basis, record_every, bound, loss, train_loss, rec):
    """Advance one configuration's full fine-tuning (W = W₀ + Δ, THEORY §2 baseline) over
    [t0, t1), dense.

    Δ and Δ⋆ are (m, d) in Σ's eigen-coordinates (Adam's moments in the features). The
    update is all signal: S = ΔW, D = 0, ρ = 0. ``adapter_norm`` is ‖Δ‖; ``A_norm``,
    ``B_norm`` and ``subspace_overlap`` (adapter quantities) are NaN. Arguments and return
    value as :func:`lora_run`, unpacked but for ``basis = (code, pairs, cs, Q)`` (30
    arguments at most: it is inlined into :func:`full_block`, as :func:`lora_run` is).
    """
    code, pairs, cs, Q = basis
    has_train = Xtr.shape[0] > 0
    minibatch = n > 0
    m, d = Delta.shape
    Xb = np.zeros((n, d))
    Nb = np.zeros((n, m))
    idx = np.zeros(n, dtype=np.int64)
    perm = np.zeros(Xtr.shape[0] if minibatch else 0, dtype=np.int64)
    sqrt_lam = np.sqrt(lam)
    E = np.empty((m, d))
    G = np.empty((m, d))
    g = np.empty((m, d))
    D_old = np.empty((m, d))
    for t in range(t0, t1):
        L = 0.0
        for a in range(m):
            for b in range(d):
                e = Delta[a, b] - Dstar[a, b]
                E[a, b] = e
                G[a, b] = e * lam[b]
                L += e * G[a, b]
        L = 0.5 * L
        record = t % record_every == 0
        i = t // record_every
        if record:
            loss[i] = L
        if not (np.isfinite(L) and L <= bound):
            return STATUS_DIVERGED, t
        R_train = np.zeros((0, 0))
        if minibatch:
            draw_minibatch(t, key_x, key_e, key_ep, sqrt_lam, noise, Xtr, Ntr, perm, idx,
                           Xb, Nb, np.zeros((0, 0)), np.zeros((0, 0)))
            R = Xb @ E.T - Nb
            g[...] = (R.T @ Xb) / n
        elif has_train:
            R_train = Xtr @ E.T - Ntr
            g[...] = (R_train.T @ Xtr) / Xtr.shape[0]
        else:
            g[...] = G
        if record:
            D_old[...] = Delta
        optimizer_step(Delta, g, buf, sq, t, lrs[t], opt, momentum, nesterov,
                       beta1, beta2, eps, wd, code, pairs, cs, Q)
        if record:
            if has_train:
                if R_train.shape[0] == 0:
                    R_train = Xtr @ E.T - Ntr
                train_loss[i] = 0.5 * np.sum(R_train * R_train) / Xtr.shape[0]
            dW = Delta - D_old
            gn = np.sqrt(np.sum(G * G))
            des = np.sum(dW * G)
            un = np.sqrt(np.sum(dW * dW))
            kap = 0.5 * np.sum(dW * dW * lam)
            rec[_GRAD_NORM, i] = gn
            rec[_SIGNAL_NORM, i] = un
            rec[_DRIFT_NORM, i] = 0.0
            rec[_DRIFT_RATIO, i] = 0.0
            rec[_PROGRESS, i] = -des / gn if gn > 0.0 else 0.0
            rec[_DESCENT, i] = des
            rec[_CURVATURE, i] = kap
            rec[_UPDATE_NORM, i] = un
            rec[_ADAPTER_NORM, i] = np.sqrt(np.sum(D_old * D_old))
            rec[_A_NORM, i] = np.nan
            rec[_B_NORM, i] = np.nan
            rec[_SUBSPACE, i] = np.nan
            rec[_DESCENT_SIGNAL, i] = des
            rec[_DESCENT_DRIFT, i] = 0.0
            rec[_CURV_SIGNAL, i] = kap
            rec[_CURV_CROSS, i] = 0.0
            rec[_CURV_DRIFT, i] = 0.0
    return STATUS_OK, t1


#: Standard normals held per stream in :func:`lora_block`'s shared minibatch buffer
#: (2¹⁶ doubles = 512 KiB, within a core's L2 cache): ⌊2¹⁶/(n·d)⌋ steps at a time.
SHARED_SAMPLE_DOUBLES = 65536


@njit(cache=True, nogil=True, error_model="numpy")
def lora_block(which, t0, t1, A, B, bufA, bufB, sqA, sqB, s, lam, U, V, sig, Sg, VtS,
               c_loss, lrs, lr_ratio, n, key_x, key_e, noise, Xtr, XVtr, Ntr, key_ep,
               opt, momentum, nesterov, beta1, beta2, eps, eps_b, wd, code, pairs, cs, Q,
               record_every, bound, loss, train_loss, rec, status, stop, last, final):
    """:func:`lora_run` for the configurations ``which`` of a block of C configurations
    that share shapes, optimiser, basis kind and record layout, its arguments unpacked.
    Every member of :func:`lora_run`'s argument tuples that may differ between
    configurations carries a leading axis C;
    ``status`` (C,) and ``stop`` (C,) receive each configuration's return value, and a
    configuration whose status is already ``STATUS_DIVERGED`` is skipped. ``final`` (C,)
    receives :func:`lora_loss` of the state where the run ends: after the segment if
    ``last`` (t1 is the last step), or at the step where it diverged.

    Fresh minibatches (n > 0, no training set) are shared: a sweep's configurations of one
    seed read the same sample streams (:mod:`._rng`: a sample is a pure function of the
    stream's key and its position), so the configurations of ``which`` with the same keys
    ``(key_x, key_e)`` advance together, a chunk of steps at a time
    (:data:`SHARED_SAMPLE_DOUBLES`), from standard normals drawn once per chunk for all of
    them. The Box–Muller draws, most of a minibatch step at small d, are then paid once
    per seed instead of once per configuration. Otherwise each configuration is a group of
    its own, advanced over [t0, t1) in one chunk. Both paths share one call site of the
    inlined :func:`lora_run`, so the compiled kernel holds one copy of the step.

    It releases the GIL (``nogil``), so the driver runs disjoint ``which`` in parallel
    threads (:func:`signaldrift.simulate_block`); each configuration's arithmetic is that
    of running it alone (the same samples, the same operations, segments of steps change
    nothing), so results do not depend on the block or the number of threads.
    (A ``prange`` loop did the same but doubled the cold compile time.)"""
    shared = n > 0 and Xtr.shape[1] == 0
    d = A.shape[2]
    m = B.shape[1]
    if shared:
        # Grouped by stream: a stable sort on key_x, then runs of equal (key_x, key_e),
        # advanced T steps at a time from the chunk's standard normals.
        T = max(1, SHARED_SAMPLE_DOUBLES // (n * d))
        order = which[np.argsort(key_x[which], kind="mergesort")]
        Z = np.empty((T, n, d))
        Xi = np.empty((T, n, m))
    else:
        # Each configuration alone, in one chunk, drawing (if at all) inside lora_run.
        T = max(1, t1 - t0)
        order = which
        Z = np.empty((0, 0, 0))
        Xi = np.empty((0, 0, 0))
    # One call site of lora_run (inlined) for both paths: one copy of the step.
    g0 = 0
    while g0 < order.size:
        g1 = g0 + 1
        while (shared and g1 < order.size and key_x[order[g1]] == key_x[order[g0]]
               and key_e[order[g1]] == key_e[order[g0]]):
            g1 += 1
        group = order[g0:g1]
        g0 = g1
        a = t0
        while a < t1:
            b = min(a + T, t1)
            running = False
            for c in group:
                if status[c] == STATUS_OK:
                    running = True
            if not running:
                break
            if shared:
                with_noise = False
                for c in group:
                    if noise[c] > 0.0:
                        with_noise = True
                kx, ke = key_x[group[0]], key_e[group[0]]
                for t in range(a, b):
                    normals(kx, t * n * d, Z[t - a])
                    if with_noise:
                        normals(ke, t * n * m, Xi[t - a])
            for c in group:
                if status[c] != STATUS_OK:
                    continue
                st, t = lora_run(
                    a, b, (A[c], B[c], bufA[c], bufB[c], sqA[c], sqB[c]),
                    (s[c], lam[c], U[c], V[c], sig[c], Sg[c], VtS[c], c_loss[c]),
                    (n, key_x[c], key_e[c], noise[c], Xtr[c], XVtr[c], Ntr[c], key_ep[c], Z,
                     Xi),
                    (lrs[c], lr_ratio[c], opt, momentum[c], nesterov, beta1[c], beta2[c],
                     eps[c], eps_b[c], wd[c]),
                    (code, pairs[c], cs[c], Q[c]),
                    (record_every, bound[c], loss[c], train_loss[c], rec[c]))
                status[c] = st
                stop[c] = t
                if st != STATUS_OK:
                    final[c] = lora_loss(s[c], A[c], B[c], lam[c], U[c], sig[c], V[c])
            a = b
        if last:
            for c in group:
                if status[c] == STATUS_OK:
                    final[c] = lora_loss(s[c], A[c], B[c], lam[c], U[c], sig[c], V[c])


@njit(cache=True, nogil=True, error_model="numpy")
def full_block(which, t0, t1, Delta, buf, sq, Dstar, lam, lrs, n, key_x, key_e, noise, Xtr,
               Ntr, key_ep, opt, momentum, nesterov, beta1, beta2, eps, wd, code, pairs, cs,
               Q, record_every, bound, loss, train_loss, rec, status, stop):
    """:func:`full_run` for the configurations ``which`` of a block (as
    :func:`lora_block`)."""
    for c in which:
        if status[c] != STATUS_OK:
            continue
        st, t = full_run(t0, t1, Delta[c], buf[c], sq[c], Dstar[c], lam[c], lrs[c], n,
                         key_x[c], key_e[c], noise[c], Xtr[c], Ntr[c], key_ep[c], opt,
                         momentum[c], nesterov, beta1[c], beta2[c], eps[c], wd[c],
                         (code, pairs[c], cs[c], Q[c]), record_every, bound[c], loss[c],
                         train_loss[c], rec[c])
        status[c] = st
        stop[c] = t
