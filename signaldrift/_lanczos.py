"""Lanczos in Numba for λ_max of the LoRA Hessian (THEORY.md §4).

The whole iteration runs in one GIL-free compiled call: the Hessian-vector product
(:func:`hessian_matvec`: the generated :func:`~signaldrift._generated.factorised.hvp_A`,
``hvp_B`` plus the feature-basis rotations of :mod:`signaldrift._basis`), the three-term
recurrence with full reorthogonalisation, and the top eigenpair of the tridiagonal
projection (:func:`top_ritz`: Newton's method from an upper bound certified by Sturm counts,
then inverse iteration). :mod:`signaldrift._sharpness` prepares the arrays, calls
:func:`lanczos_max` and falls back to ARPACK if it does not converge.

At B = 0 (initialisation; every entry of B zero) :func:`lanczos_max` applies
:func:`hessian_matvec_b0` instead, with the generated ``hvp_A_b0``, ``hvp_B_b0`` (THEORY §4:
every term with a factor B or BᵀB vanishes, and ``AΣT_Aᵀ``, ``BᵀT_B``, ``T_AΣ`` are not
formed); F1 measures λ_max there 3,328 times. The result is the same, bit for bit, for finite
factors: the ``_b0`` kernels are the general ones less their B-terms, with the other terms
in the same order and printed alike (checked in ``signaldrift derive factorised``), and at
B = 0 a B-term is an exact zero matrix (products of zeros with finite numbers). So where the
general kernel computes ``(0 + 0) − s·X + Y`` the variant computes ``(−s)·X + Y``; adding
zero is exact and IEEE multiplication rounds ``(−s)·X`` to ``−(s·X)``. Only where ``s·X`` is
itself an exact zero can the two differ, in the sign of that zero (``+0 − 0 = +0`` against
``−0``); a sign of zero does not change a sum or product with a non-zero number, nor a norm,
so θ, the residual and every non-zero entry of the Krylov vectors are the same
(tests/test_lanczos_b0.py compares the two paths).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._basis import to_eigen, to_features
from ._generated.factorised import hvp_A, hvp_A_b0, hvp_B, hvp_B_b0

__all__ = ["hessian_matvec", "hessian_matvec_b0", "lanczos_max", "top_ritz"]

_EPS = np.finfo(np.float64).eps


@njit(cache=True, nogil=True, inline="always")
def hessian_matvec(x, s, A, B, U, Sg, VtS, lam, AS, ASAt, BtB, scale_vec,
                   code, pairs, cs, Q):
    """``y = S H S x`` on flattened θ = (A.ravel(), B.ravel()) (THEORY §4).

    ``H`` is the Hessian of L at (A, B) with A's block in the feature basis;
    ``S = diag(scale_vec)`` (``P^{-½}``; an empty ``scale_vec`` means S = I). The A-block of
    ``x`` is rotated to Σ's eigen-coordinates (``T_A Q``), the generated products
    ``hvp_A``, ``hvp_B`` are applied there, and the A-block of the result is rotated back
    (``· Qᵀ``), so the preconditioner acts in feature coordinates.

    Args:
        x: (n,) direction, n = r·d + m·r.
        s: the LoRA scale. A: (r, d) factor in eigen-coordinates. B: (m, r) factor.
        U: (m, k). Sg: (k, k) diag(σ⋆). VtS: (k, d) ``(ΣV)ᵀ``. lam: (d,) λ.
        AS: ``A·diag(λ)``. ASAt: ``AΣAᵀ``. BtB: ``BᵀB``.
        scale_vec: (n,) ``P^{-½}`` or (0,).
        code, pairs, cs, Q: the basis (:meth:`~signaldrift._basis.Basis.kernel_args`).

    Returns:
        (n,) the product, a new array.
    """
    tA, tB = _split(x, scale_vec, A.shape[0], A.shape[1], B.shape[0], code, pairs, cs, Q)
    hB = hvp_B(s, tB, B, U, Sg, ASAt, AS @ tA.T, VtS @ tA.T)
    hA = hvp_A(s, B.T @ tB, BtB, AS, tA * lam, tB.T @ U, Sg, VtS)
    return _join(hA, hB, scale_vec, code, pairs, cs, Q)


@njit(cache=True, nogil=True)
def _split(x, scale_vec, r, d, m, code, pairs, cs, Q):
    """``(T_A, T_B)`` of ``S x``: T_A (r, d) rotated to Σ's eigen-coordinates, T_B (m, r)."""
    nA = r * d
    xs = x * scale_vec if scale_vec.size else x
    tA = to_eigen(np.ascontiguousarray(xs[:nA]).reshape(r, d), code, pairs, cs, Q)
    tB = np.ascontiguousarray(xs[nA:]).reshape(m, r)
    return tA, tB


@njit(cache=True, nogil=True)
def _join(hA, hB, scale_vec, code, pairs, cs, Q):
    """``S·(hA Qᵀ, hB)`` flattened: the A-block rotated back to feature coordinates."""
    hA = to_features(hA, code, pairs, cs, Q)
    nA = hA.size
    y = np.empty(nA + hB.size)
    y[:nA] = hA.ravel()
    y[nA:] = hB.ravel()
    if scale_vec.size:
        y *= scale_vec
    return y


@njit(cache=True, nogil=True, inline="always")
def hessian_matvec_b0(x, s, A, m, U, Sg, VtS, lam, ASAt, scale_vec, code, pairs, cs, Q):
    """``y = S H S x`` at B = 0 (every entry of B zero), as :func:`hessian_matvec` (THEORY §4).

    At B = 0 the Hessian-vector product is ``(HT)_A = −s·T_BᵀUΣ⋆VᵀΣ`` and
    ``(HT)_B = −s·UΣ⋆VᵀΣT_Aᵀ + s²·T_B·AΣAᵀ``: the generated ``hvp_A_b0``, ``hvp_B_b0``, which
    need neither ``AΣT_Aᵀ`` nor ``BᵀT_B`` (nor ``T_AΣ``). The result equals
    :func:`hessian_matvec`'s at B = 0 bit for bit for finite inputs, up to the sign of an
    exact zero (the module docstring); the caller guarantees that B is zero.

    Args:
        x: (n,) direction, n = r·d + m·r.
        s: the LoRA scale. A: (r, d) factor in eigen-coordinates. m: the rows of B.
        U: (m, k). Sg: (k, k) diag(σ⋆). VtS: (k, d) ``(ΣV)ᵀ``. lam: (d,) λ.
        ASAt: ``AΣAᵀ``.
        scale_vec: (n,) ``P^{-½}`` or (0,).
        code, pairs, cs, Q: the basis (:meth:`~signaldrift._basis.Basis.kernel_args`).

    Returns:
        (n,) the product, a new array.
    """
    tA, tB = _split(x, scale_vec, A.shape[0], A.shape[1], m, code, pairs, cs, Q)
    hB = hvp_B_b0(s, tB, U, Sg, ASAt, VtS @ tA.T)
    return _join(hvp_A_b0(s, tB.T @ U, Sg, VtS), hB, scale_vec, code, pairs, cs, Q)


@njit(cache=True, nogil=True)
def _sturm_below(alpha, beta, x):
    """Number of eigenvalues of the tridiagonal T(alpha, beta) below ``x`` (the negative
    pivots of the LDLᵀ factorisation of T − xI; a zero pivot is nudged as in LAPACK's
    dstebz)."""
    n = alpha.size
    count = 0
    q = alpha[0] - x
    for i in range(n):
        if i > 0:
            q = alpha[i] - x - beta[i - 1] * beta[i - 1] / q
        if q == 0.0:
            q = -1e-300
        if q < 0.0:
            count += 1
    return count


@njit(cache=True, nogil=True)
def _tridiag_solve(alpha, beta, theta, rhs, tiny):
    """Solve ``(T − θI) z = rhs`` by Gaussian elimination with partial pivoting (LAPACK's
    dgttrf/dgttrs); a zero pivot is replaced by ``tiny``, as in inverse iteration."""
    n = alpha.size
    dd = alpha - theta
    dl = beta[: n - 1].copy()
    du = beta[: n - 1].copy()
    du2 = np.zeros(max(n - 2, 0))
    swap = np.zeros(max(n - 1, 0), dtype=np.bool_)
    for i in range(n - 1):
        if abs(dd[i]) >= abs(dl[i]):
            if dd[i] == 0.0:
                dd[i] = tiny
            f = dl[i] / dd[i]
            dl[i] = f
            dd[i + 1] -= f * du[i]
        else:
            f = dd[i] / dl[i]
            dd[i] = dl[i]
            dl[i] = f
            t = du[i]
            du[i] = dd[i + 1]
            dd[i + 1] = t - f * dd[i + 1]
            if i < n - 2:
                du2[i] = du[i + 1]
                du[i + 1] = -f * du[i + 1]
            swap[i] = True
    if dd[n - 1] == 0.0:
        dd[n - 1] = tiny
    z = rhs.copy()
    for i in range(n - 1):
        if swap[i]:
            t = z[i]
            z[i] = z[i + 1]
            z[i + 1] = t - dl[i] * z[i + 1]
        else:
            z[i + 1] -= dl[i] * z[i]
    z[n - 1] /= dd[n - 1]
    if n > 1:
        z[n - 2] = (z[n - 2] - du[n - 2] * z[n - 1]) / dd[n - 2]
    for i in range(n - 3, -1, -1):
        z[i] = (z[i] - du[i] * z[i + 1] - du2[i] * z[i + 2]) / dd[i]
    return z


@njit(cache=True, nogil=True)
def _newton_top(alpha, beta, x, floor):
    """Newton's method on ``det(T − xI)`` from ``x`` ≥ λ_max(T) down to λ_max(T).

    With the LDLᵀ pivots ``q_i`` of ``T − xI`` (all negative above λ_max) the Newton step is
    ``1/Σ_k 1/(x − λ_k) = 1/Σ_i q_i′/q_i``; it never crosses λ_max (each term is positive
    and the k = 1 term alone gives the step x − λ_max), so the iterates decrease
    monotonically to λ_max, quadratically once ``x − λ_max`` is small against the gap.
    Stops when a step is below ``2ε|x| + floor``."""
    n = alpha.size
    for _ in range(200):
        q = alpha[0] - x
        dq = -1.0
        if q == 0.0:
            return x
        acc = dq / q
        for i in range(1, n):
            b2 = beta[i - 1] * beta[i - 1]
            dq = -1.0 + b2 * dq / (q * q)
            q = alpha[i] - x - b2 / q
            if q == 0.0:
                return x
            acc += dq / q
        if not acc > 0.0:  # rounding at the root
            return x
        step = 1.0 / acc
        x -= step
        if step <= 2.0 * _EPS * abs(x) + floor:
            return x
    return x


@njit(cache=True, nogil=True)
def top_ritz(alpha, beta, guess, slack):
    """Largest eigenvalue θ of the symmetric tridiagonal T and its unit eigenvector.

    An upper bound of θ is found by Sturm counts (``guess + slack``, the slack quadrupled
    until no eigenvalue lies above, capped by Gershgorin's bound); Newton's method on the
    characteristic polynomial (:func:`_newton_top`) descends from it to θ, to rounding;
    two steps of inverse iteration with ``T − θI`` give the eigenvector (as LAPACK's
    dstein).

    Args:
        alpha: (j,) diagonal. beta: (j−1,) off-diagonal.
        guess: an estimate of θ (the previous Lanczos step's θ, or −inf for none).
        slack: the expected ``θ − guess`` scale (the previous residual β|y_j|).

    Returns:
        ``(θ, y)``.
    """
    n = alpha.size
    if n == 1:
        return alpha[0], np.ones(1)
    ghi, tnorm = -np.inf, 0.0
    for i in range(n):
        rad = (abs(beta[i - 1]) if i > 0 else 0.0) + (abs(beta[i]) if i < n - 1 else 0.0)
        ghi = max(ghi, alpha[i] + rad)
        tnorm = max(tnorm, abs(alpha[i]) + rad)
    pad = 4.0 * _EPS * tnorm + 1e-300
    hi = ghi + pad
    if np.isfinite(guess):
        delta = max(slack, pad)
        while guess + delta < hi:
            if _sturm_below(alpha, beta, guess + delta) >= n:
                hi = guess + delta
                break
            delta *= 4.0
    tiny = _EPS * tnorm + 1e-300
    theta = _newton_top(alpha, beta, hi, tiny)
    y = np.ones(n)
    for _ in range(2):
        y = _tridiag_solve(alpha, beta, theta, y, tiny)
        y /= np.linalg.norm(y)
    return theta, y


@njit(cache=True, nogil=True)
def lanczos_max(v0, tol, kmax, max_restarts, s, A, B, U, Sg, VtS, lam, scale_vec,
                code, pairs, cs, Q):
    """λ_max of ``M = S H S`` (:func:`hessian_matvec`) by Lanczos with full reorthogonalisation.

    Each step ``w = M v_j`` is orthogonalised by the three-term recurrence
    ``w −= α_j v_j + β_{j−1} v_{j−1}`` and then against every basis vector (classical
    Gram–Schmidt, repeated once when it removes more than 1 − 1/√2 of ‖w‖:
    the DGKS criterion), so ``V_jᵀV_j = I`` to rounding and no ghost eigenvalues appear.
    The Krylov space grows to ``kmax`` vectors; if θ has not converged there, Lanczos
    restarts from the Ritz vector (at most ``max_restarts`` times). The vector updates run
    in place, element by element (the operations of ``w −= a·v``, each product rounded
    before the subtraction, without an n-vector temporary), and ``h V_j`` is one BLAS call
    into a reused buffer.

    At B = 0 (every entry zero, −0.0 included: initialisation) the products are
    :func:`hessian_matvec_b0` (THEORY §4), decided once per call; the result is the one of
    the general products, bit for bit (the module docstring). A NaN in B takes the general
    path.

    Args:
        v0: (n,) start vector (non-zero). tol: relative residual tolerance
            (``β_j|y_j| ≤ tol·|θ|``). kmax: the largest Krylov dimension.
        max_restarts: restarts allowed after the first ``kmax`` steps.
        s, A, B, U, Sg, VtS, lam, scale_vec, code, pairs, cs, Q: the operator, as in
            :func:`hessian_matvec` (AS, AΣAᵀ and BᵀB are formed here).

    Returns:
        ``(θ, residual, matvecs, converged)``; not converged also when θ is not finite
        (NaN or overflow in the factors), which the caller's ARPACK fallback reports.
    """
    return _lanczos_max(v0, tol, kmax, max_restarts, s, A, B, U, Sg, VtS, lam, scale_vec,
                        code, pairs, cs, Q, not np.any(B))


@njit(cache=True, nogil=True, inline="always")
def _lanczos_max(v0, tol, kmax, max_restarts, s, A, B, U, Sg, VtS, lam, scale_vec,
                 code, pairs, cs, Q, b0):
    """:func:`lanczos_max` with the choice of products given (THEORY §4).

    Args:
        v0, tol, kmax, max_restarts, s, A, B, U, Sg, VtS, lam, scale_vec, code, pairs, cs,
            Q: as in :func:`lanczos_max`.
        b0: products by :func:`hessian_matvec_b0` (B must then be zero) if true, by
            :func:`hessian_matvec` otherwise.

    Returns:
        ``(θ, residual, matvecs, converged)``, as :func:`lanczos_max`.
    """
    n = v0.size
    m = B.shape[0]
    AS = A * lam
    ASAt = AS @ A.T
    BtB = np.empty((0, 0)) if b0 else B.T @ B
    k = min(kmax, n)
    V = np.empty((k, n))
    alpha = np.empty(k)
    beta = np.empty(k)
    hV = np.empty(n)  # h @ V_j, reused
    x = v0 / np.linalg.norm(v0)
    theta, resid, nmv = np.nan, np.inf, 0
    for _ in range(max_restarts + 1):
        V[0] = x
        guess, slack = -np.inf, 0.0
        y = np.ones(1)
        for j in range(k):
            vj = V[j]
            if b0:
                w = hessian_matvec_b0(vj, s, A, m, U, Sg, VtS, lam, ASAt, scale_vec,
                                      code, pairs, cs, Q)
            else:
                w = hessian_matvec(vj, s, A, B, U, Sg, VtS, lam, AS, ASAt, BtB, scale_vec,
                                   code, pairs, cs, Q)
            nmv += 1
            a = np.dot(vj, w)
            # In place, element by element: the operations of ``w -= a * vj``,
            # ``w -= beta[j - 1] * V[j - 1]``, ``w -= h @ Vj`` and ``V[j + 1] = w / b``
            # (each product rounded before the subtraction), without their temporaries.
            for i in range(n):
                w[i] -= a * vj[i]
            if j > 0:
                bp, vp = beta[j - 1], V[j - 1]
                for i in range(n):
                    w[i] -= bp * vp[i]
            Vj = V[: j + 1]
            for _pass in range(2):
                before = np.linalg.norm(w)
                h = Vj @ w
                np.dot(h, Vj, hV)  # the BLAS call of ``h @ Vj``, into hV
                for i in range(n):
                    w[i] -= hV[i]
                a += h[j]
                b = np.linalg.norm(w)
                if b >= 0.7071067811865476 * before:
                    break
            alpha[j] = a
            theta, y = top_ritz(alpha[: j + 1], beta[:j], guess, slack)
            resid = b * abs(y[j])
            if not np.isfinite(theta):
                return theta, resid, nmv, False
            guess, slack = theta, resid
            if resid <= tol * abs(theta):
                return theta, resid, nmv, True
            beta[j] = b
            if j + 1 < k:
                vn = V[j + 1]
                for i in range(n):
                    vn[i] = w[i] / b
        x = y @ V
        x /= np.linalg.norm(x)
    return theta, resid, nmv, False
