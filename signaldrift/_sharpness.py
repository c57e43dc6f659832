"""Sharpness λ_max of the Hessian of L(A, B) (THEORY.md §4).

``L(A, B) = ½tr(EΣEᵀ)``, ``E = sBA − Δ⋆``, is a quartic in θ = (A, B); its Hessian acts on a
direction ``(T_A, T_B)`` through the generated Hessian-vector product
(:func:`signaldrift._generated.factorised.hvp_A`, ``hvp_B``), which needs only r×r, k×r
Gram matrices and thin products: one product costs ``O((m + d)·r·(r + k))`` and no m×d
matrix is formed. θ is flattened as ``(A.ravel(), B.ravel())`` (row-major), n = r·d + m·r.

A is in the feature basis (THEORY §1); the products rotate it to Σ's eigen-coordinates and
back (:mod:`signaldrift._basis`). λ_max(H) does not depend on the basis (the change of
variables is orthogonal); Adam's preconditioned sharpness does, through P.

:func:`sharpness` runs Lanczos entirely in Numba (:mod:`signaldrift._lanczos`: products,
full reorthogonalisation and the tridiagonal eigenproblem in one GIL-free call), with
ARPACK on :func:`hessian_operator` as the fallback. At B = 0 (initialisation, figure F1)
Lanczos applies the generated B = 0 products (``hvp_A_b0``, ``hvp_B_b0``), which skip every
term with a factor B and give the same λ_max bit for bit.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse.linalg import LinearOperator, eigsh

from ._basis import Basis
from ._lanczos import hessian_matvec, lanczos_max
from ._task import Task

__all__ = ["sharpness", "sharpness_at_init", "dense_hessian", "hessian_operator"]

#: Up to this many parameters the operator is materialised and diagonalised densely
#: (ARPACK needs k < n and is slower than ``eigvalsh`` on small problems).
_DENSE_MAX = 64
#: Lanczos stops when the Ritz residual ‖Hx − θx‖ ≤ tol·|θ|. The eigenvalue error is then at
#: most tol·|θ| and, for a separated λ_max, (tol·θ)²/gap: far below rounding in practice.
_LANCZOS_TOL = 1e-10
#: Largest Krylov dimension before a restart (measured: 22–37 steps at d = m = 128,
#: r = 2–32, with and without P), and restarts before falling back to ARPACK.
_LANCZOS_KMAX = 120
_LANCZOS_RESTARTS = 3


def _operator_arrays(task: Task, scale: float, A: np.ndarray, B: np.ndarray,
                     precond_A: np.ndarray | None, precond_B: np.ndarray | None) -> tuple:
    """The arrays of the Hessian-vector product at (A, B), all float64 and C-contiguous
    (an F-ordered argument would compile the Numba kernels a second time):
    ``(s, Ã, B, U, diag(σ⋆), (ΣV)ᵀ, λ, P^{-½} or (0,))`` with ``Ã = A Q`` in Σ's
    eigen-coordinates."""
    c = np.ascontiguousarray
    A = c(task.basis.to_eigen(c(A, dtype=np.float64)))
    B = c(B, dtype=np.float64)
    lam = c(task.lam, dtype=np.float64)
    U = c(task.U, dtype=np.float64)
    Sg = c(np.diag(np.asarray(task.sigma_star, dtype=np.float64)))
    VtS = c((task.V * lam[:, None]).T, dtype=np.float64)
    if precond_A is None and precond_B is None:
        scale_vec = np.empty(0)
    else:
        pa = np.ones(A.shape) if precond_A is None else np.asarray(precond_A, dtype=np.float64)
        pb = np.ones(B.shape) if precond_B is None else np.asarray(precond_B, dtype=np.float64)
        scale_vec = 1.0 / np.sqrt(np.concatenate([pa.ravel(), pb.ravel()]))
    return float(scale), A, B, U, Sg, VtS, lam, scale_vec


def hessian_operator(task: Task, scale: float, A: np.ndarray, B: np.ndarray, *,
                     precond_A: np.ndarray | None = None,
                     precond_B: np.ndarray | None = None) -> LinearOperator:
    """The Hessian of L at (A, B) as a symmetric operator on flattened θ (THEORY §4).

    ``H[T_A, T_B] = s²‖(T_B A + B T_A)Σ^½‖² + 2s⟨T_B T_A, G⟩``, G = EΣ, applied by
    :func:`signaldrift._lanczos.hessian_matvec`. With preconditioners ``P_A`` (r, d),
    ``P_B`` (m, r) (``P = √v̂ + ε``, in the feature basis) the operator is
    ``P^{-½} H P^{-½}``, whose spectrum is that of ``P⁻¹H``.

    Args:
        task: the task (Σ = diag(λ), Δ⋆ = U diag(σ⋆) Vᵀ).
        scale: the LoRA scaling factor s.
        A: (r, d) factor. B: (m, r) factor.
        precond_A: optional (r, d) positive preconditioner of A.
        precond_B: optional (m, r) positive preconditioner of B.

    Returns:
        A ``scipy.sparse.linalg.LinearOperator`` of shape (n, n), n = r·d + m·r.
    """
    s, A, B, U, Sg, VtS, lam, scale_vec = _operator_arrays(task, scale, A, B,
                                                          precond_A, precond_B)
    AS = A * lam
    ASAt = AS @ A.T
    BtB = B.T @ B
    basis_args = task.basis.kernel_args()
    n = A.size + B.size

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float64).ravel()
        return hessian_matvec(x, s, A, B, U, Sg, VtS, lam, AS, ASAt, BtB, scale_vec,
                              *basis_args)

    return LinearOperator((n, n), matvec=matvec, rmatvec=matvec, dtype=np.float64)


def sharpness(task: Task, scale: float, A: np.ndarray, B: np.ndarray, *,
              precond_A: np.ndarray | None = None, precond_B: np.ndarray | None = None,
              seed: int = 0) -> float:
    """λ_max, the largest algebraic eigenvalue of the Hessian of L at (A, B) (THEORY §4).

    ``λ_max = max_{‖T‖=1} H[T_A, T_B]``, ``H[T_A, T_B] = s²‖(T_B A + B T_A)Σ^½‖² +
    2s⟨T_B T_A, G⟩`` (G = EΣ). Lanczos with full reorthogonalisation in one compiled call
    (:func:`signaldrift._lanczos.lanczos_max`) from the seeded start vector
    ``default_rng(seed).standard_normal(n)``, stopped when the Ritz pair's residual
    ``‖Hx − θx‖ = β_j|y_j| ≤ 10⁻¹⁰·|θ|`` (then |θ − λ| ≤ 10⁻¹⁰|θ| for an eigenvalue λ, and
    ≤ (10⁻¹⁰θ)²/gap when λ_max is separated by ``gap``); if that fails within
    ``_LANCZOS_KMAX`` steps and ``_LANCZOS_RESTARTS`` restarts, ARPACK
    (``eigsh(which="LA")``) on :func:`hessian_operator` from the same start vector.
    At B = 0 (every entry zero) Lanczos uses the B = 0 Hessian-vector products
    (:func:`signaldrift._lanczos.hessian_matvec_b0`, THEORY §4), about three times cheaper
    at r = 32, with the same result bit for bit.
    For n ≤ 64 parameters the operator is applied to the identity and diagonalised.
    With ``precond_A``, ``precond_B`` (P = √v̂ + ε) returns ``λ_max(P^{-½}HP^{-½})``
    = ``λ_max(P⁻¹H)``, Adam's preconditioned sharpness.

    Args:
        task: the task. scale: s. A: (r, d). B: (m, r).
        precond_A: optional (r, d) preconditioner. precond_B: optional (m, r) preconditioner.
        seed: seed of the Lanczos start vector.

    Returns:
        λ_max as a float.
    """
    n = np.size(A) + np.size(B)
    if n <= _DENSE_MAX:
        op = hessian_operator(task, scale, A, B, precond_A=precond_A, precond_B=precond_B)
        H = op.matmat(np.eye(n))
        return float(np.linalg.eigvalsh(0.5 * (H + H.T))[-1])
    v0 = np.random.default_rng(seed).standard_normal(n)
    arrays = _operator_arrays(task, scale, A, B, precond_A, precond_B)
    basis_args, start = task.basis.kernel_args(), v0
    if arrays[-1].size == 0 and task.basis.kind != "eigen":
        # Without P the Hessian in features is M H_eig Mᵀ, M = blockdiag(I_r ⊗ Q, I): Lanczos
        # on H_eig from Mᵀv0 builds the same Krylov space rotated, so the same Ritz values
        # (to rounding), and skips the two rotations per product.
        r, d = np.shape(A)
        start = v0.copy()
        start[: r * d] = task.basis.to_eigen(v0[: r * d].reshape(r, d)).ravel()
        basis_args = Basis.eigen(d).kernel_args()
    theta, _, _, converged = lanczos_max(start, _LANCZOS_TOL, _LANCZOS_KMAX,
                                         _LANCZOS_RESTARTS, *arrays, *basis_args)
    if converged:
        return float(theta)
    op = hessian_operator(task, scale, A, B, precond_A=precond_A, precond_B=precond_B)
    return float(eigsh(op, k=1, which="LA", v0=v0, return_eigenvectors=False)[0])


def sharpness_at_init(task: Task, scale: float, A: np.ndarray) -> float:
    """Exact λ_max of the Hessian at B = 0 (THEORY §4; ``signaldrift derive hessian``).

    At B = 0 the Hessian couples ``T_B = u wᵀ`` and ``T_A = w vᵀ`` (u, v singular vectors
    of G = −Δ⋆Σ with value g, w an eigenvector of AΣAᵀ with value μ) in 2×2 blocks
    ``[[s²μ, s·g], [s·g, 0]]``, so

        λ_max = (s²μ + √(s⁴μ² + 4s²g²)) / 2,  μ = λ_max(AΣAᵀ),  g = σ_max(Δ⋆Σ).

    Args:
        task: the task. scale: s. A: (r, d) factor (feature basis).

    Returns:
        λ_max as a float.
    """
    s = float(scale)
    A = task.basis.to_eigen(A)
    mu = np.linalg.eigvalsh((A * task.lam) @ A.T)[-1]
    # σ(U diag(σ⋆) VᵀΣ) = σ(R diag(σ⋆) VᵀΣ) with U = QR; its k×k Gram holds VᵀΣ²V.
    R = np.linalg.qr(task.U, mode="r")
    VS2V = (task.V * task.lam[:, None] ** 2).T @ task.V
    C = (R * task.sigma_star) @ VS2V @ (R * task.sigma_star).T
    g2 = max(np.linalg.eigvalsh(0.5 * (C + C.T))[-1], 0.0)
    return float(0.5 * (s**2 * mu + np.sqrt(s**4 * mu**2 + 4.0 * s**2 * g2)))


def dense_hessian(task: Task, scale: float, A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """The explicit (n, n) Hessian, n = r·d + m·r, from THEORY §4's quadratic form.

    ``H[T_A, T_B] = s²‖(T_B A + B T_A)Σ^½‖² + 2s⟨T_B T_A, G⟩``, G = EΣ: ``s²JᵀJ`` with J the
    Jacobian of ``θ ↦ (T_B A + B T_A)Σ^½``, plus the cross block ``H[A_aj, B_ia] = s·G_ij``.
    Forms m×d and (m·d)×n matrices: for tests on tiny sizes only. A is in the feature
    basis and so is the A-block of the returned matrix.
    """
    s = float(scale)
    r, d = A.shape
    m = B.shape[0]
    if task.basis.kind != "eigen":
        # H in features = M H_eig Mᵀ, M = blockdiag(I_r ⊗ Q, I): vec(A) = (I_r ⊗ Q) vec(Ã).
        Q = task.basis.matrix()
        H_eig = dense_hessian(Task(lam=task.lam, U=task.U, sigma_star=task.sigma_star,
                                   V=task.V, noise=task.noise), s, task.basis.to_eigen(A), B)
        M = np.eye(r * d + m * r)
        M[: r * d, : r * d] = np.kron(np.eye(r), Q)
        return M @ H_eig @ M.T
    root = np.sqrt(task.lam)
    JA = np.einsum("ia,jk,j->ijak", B, np.eye(d), root).reshape(m * d, r * d)
    JB = np.einsum("ik,aj,j->ijka", np.eye(m), A, root).reshape(m * d, m * r)
    J = np.hstack([JA, JB])
    H = s**2 * (J.T @ J)
    G = (s * B @ A - task.delta_star(features=False)) * task.lam
    cross = s * np.einsum("ij,ab->ajib", G, np.eye(r)).reshape(r * d, m * r)
    H[: r * d, r * d:] += cross
    H[r * d:, : r * d] += cross.T
    return H
