"""The synthetic linear-regression task (THEORY.md §1)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._config import SimConfig
from ._seeding import rng_for

__all__ = ["Task", "make_task"]


@dataclass(frozen=True)
class Task:
    """A synthetic regression task ``y = W⋆ x + ε`` with ``W⋆ = W₀ + Δ⋆`` (THEORY §1).

    Attributes:
        lam: (d,) eigenvalues λ of Σ = diag(λ), decreasing, mean 1.
        U: (m, k) orthonormal left factor of Δ⋆.
        sigma_star: (k,) singular values σ⋆ of Δ⋆.
        V: (d, k) orthonormal right factor of Δ⋆.
        noise: label-noise standard deviation σ.

    ``Δ⋆ = U diag(σ⋆) Vᵀ`` is never formed by the simulator (use :meth:`delta_star`).
    W₀ cancels from every residual, so it is not stored.
    """

    lam: np.ndarray
    U: np.ndarray
    sigma_star: np.ndarray
    V: np.ndarray
    noise: float

    @property
    def d(self) -> int:
        return self.lam.shape[0]

    @property
    def m(self) -> int:
        return self.U.shape[0]

    @property
    def k(self) -> int:
        return self.sigma_star.shape[0]

    def delta_star(self) -> np.ndarray:
        """The dense (m, d) task update Δ⋆ = U diag(σ⋆) Vᵀ (for references and tests)."""
        return (self.U * self.sigma_star) @ self.V.T

    def initial_loss(self) -> float:
        """½‖Δ⋆Σ^½‖² = ½ tr(diag(σ⋆) VᵀΣV diag(σ⋆) UᵀU), without forming Δ⋆."""
        vsv = (self.V * self.lam[:, None]).T @ self.V
        utu = self.U.T @ self.U
        sg = np.diag(self.sigma_star)
        return 0.5 * float(np.trace(sg @ vsv @ sg @ utu))


def _haar_orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n×k matrix with Haar-distributed orthonormal columns (QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))[None, :]


def make_task(config: SimConfig) -> Task:
    """Build the task of THEORY §1 from ``config`` (seeded by ``config.effective_task_seed``).

    - Spectrum ``λ_i ∝ i^(−β)``, i = 1..d, normalised to mean 1.
    - ``σ⋆_j ∝ j^(−δ)``, j = 1..k, scaled so that the initial excess loss
      ``½‖Δ⋆Σ^½‖² = ½``.
    - ``U`` Haar on the Stiefel manifold; ``V`` Haar (``align="random"``) or the top-k
      eigen-directions of Σ (``align="aligned"``: the first k coordinate vectors).

    Args:
        config: the simulation settings.

    Returns:
        The :class:`Task`.
    """
    d, m, k = config.d, config.m, config.task_rank
    rng = rng_for(config.effective_task_seed, "task")
    i = np.arange(1, d + 1, dtype=np.float64)
    lam = i ** (-float(config.spectrum))
    lam = lam / lam.mean()
    U = _haar_orthonormal(rng, m, k)
    if config.align == "aligned":
        V = np.eye(d, k)
    else:
        V = _haar_orthonormal(rng, d, k)
    j = np.arange(1, k + 1, dtype=np.float64)
    sig = j ** (-float(config.decay))
    # ½‖Δ⋆Σ^½‖² = ½ Σ_j σ_j² (VᵀΣV)_jj because UᵀU = I.
    vsv_diag = np.einsum("ij,i,ij->j", V, lam, V)
    sig = sig / np.sqrt(np.sum(sig**2 * vsv_diag))
    return Task(lam=lam, U=np.ascontiguousarray(U), sigma_star=sig,
                V=np.ascontiguousarray(V), noise=float(config.noise))
