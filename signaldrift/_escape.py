"""Saddle escape from B = 0 and the plateau length at large width (THEORY.md §4, §7).

From ``B₀ = 0`` the reduced dynamics start at the saddle M = 0 (B = U·M + Bp, Bp stays 0) with
a small alignment ``N₀ = A₀V`` (entries of variance σ_A² = 1/(3d) for PEFT's init) and
``Pp₀ ≈ p·I`` (p = σ_A²(d − k) → 1/3). Linearised there, every component (m, n) = (M_ji,
N_ij) of task direction j moves independently under GD on the quadratic
``L₂ = L₀ + ½·zᵀH_j z``, ``H_j = [[s²λp, −sλσ⋆_j], [−sλσ⋆_j, 0]]`` — THEORY §4's B-block
and cross term with μ = λp, g = λσ⋆_j, whose negative root ``λ₋ = (s²μ − √(s⁴μ² + 4s²g²))/2``
sets the escape (``signaldrift derive reduced`` checks the Jacobian). One step multiplies the
unstable component by ``ρ = 1 − η·ν₋`` (ν₋ the negative eigenvalue of diag(λ_r, 1)·H_j; with
momentum, the dominant root of the 4×4 step with buffers). Starting from (0, n₀):

    L₂(t) − L₀ = ½ Σ_j ‖n_j(0)‖²·q_j(t),   q_j(t) = z_j(t)ᵀ H_j z_j(t),  z_j(0) = (0, 1),

so the first step with ``L_t < θ·L₀`` (θ = 0.9 by default) is predicted by
:func:`predict_escape_step`, and since ‖N₀‖² ∝ 1/d while q(t) ∝ ρ^(2t) for large t, the
plateau grows like ``log d / (2 log ρ)``: coefficient ``1/(2 log ρ)`` steps per unit of
ln d (:func:`plateau_coefficient`). The prediction neglects the quartic term of the loss and
the second-order changes of P and Q, which act only once the loss has dropped by O(1 − θ),
so its error is a d-independent number of steps; its relative error vanishes as d → ∞.
"""

from __future__ import annotations

import math

import numpy as np

from ._config import SimConfig
from ._scaling import scale_factor
from ._schedules import learning_rates

__all__ = ["escape_step", "predict_escape_step", "plateau_coefficient", "growth_factor",
           "expected_init_overlaps", "negative_root"]


def negative_root(s: float, mu: float, g: float) -> float:
    """THEORY §4's negative root ``λ₋ = (s²μ − √(s⁴μ² + 4s²g²))/2`` of H₀."""
    return 0.5 * (s * s * mu - math.sqrt(s**4 * mu * mu + 4.0 * s * s * g * g))


def _step_matrix(s, lam, p, sig, eta_a, ratio, mu, nesterov, wd) -> np.ndarray:
    """The linearised step on (m, n) (2×2) or (m, n, buf_m, buf_n) (4×4 with momentum)."""
    H = np.array([[s * s * lam * p, -s * lam * sig], [-s * lam * sig, 0.0]])
    G = H + wd * np.eye(2)
    D = np.diag([ratio * eta_a, eta_a])
    if mu == 0.0:
        return np.eye(2) - D @ G
    cg = 1.0 + mu if nesterov else 1.0
    cf = mu * mu if nesterov else mu
    top = np.hstack([np.eye(2) - cg * D @ G, -cf * D])
    bot = np.hstack([G, mu * np.eye(2)])
    return np.vstack([top, bot])


def growth_factor(config: SimConfig, *, p: float | None = None, lam: float = 1.0) -> float:
    """Per-step growth ρ of the unstable component at B = 0 (largest over the task
    directions; constant ``lr``): the spectral radius of the linearised step. Without
    momentum and with λ_r = 1, wd = 0: ``ρ = 1 − lr·λ₋`` (THEORY §4)."""
    p = expected_init_overlaps(config)["p"] if p is None else p
    s = scale_factor(config)
    from ._reduced import _sigma_star

    best = 0.0
    for sig in np.unique(_sigma_star(config)):
        T = _step_matrix(s, lam, p, float(sig), float(config.lr),
                         float(config.loraplus_lr_ratio), float(config.momentum),
                         bool(config.nesterov), float(config.weight_decay))
        best = max(best, float(np.max(np.abs(np.linalg.eigvals(T)))))
    return best


def plateau_coefficient(config: SimConfig, *, p: float | None = None) -> float:
    """Steps of plateau per unit of ln d at large d: ``1/(2 ln ρ)`` (module docstring)."""
    return 1.0 / (2.0 * math.log(growth_factor(config, p=p)))


def expected_init_overlaps(config: SimConfig) -> dict:
    """E‖n_j(0)‖² (one task direction) and p = E[Pp₀]_ii/… at init: PEFT and ``gaussian``
    have iid entries of variance σ_A² (1/(3d) for PEFT), so E‖n_j‖² = r·σ_A² and
    E Pp₀ = σ_A²(d − k)·I."""
    var = (1.0 / (3.0 * config.d) if config.init == "peft"
           else config.effective_init_std ** 2)
    return {"n_sq": config.rank * var, "p": var * (config.d - config.task_rank)}


def predict_escape_step(config: SimConfig, *, n_sq=None, p: float | None = None,
                        lam: float = 1.0, threshold: float = 0.9,
                        max_steps: int | None = None) -> float:
    """The first step t with predicted ``L_t < threshold·L₀`` from B = 0 (module docstring).

    Args:
        config: the settings (isotropic Σ, SGD; lr schedule, momentum, λ_r, wd are used).
        n_sq: ‖n_j(0)‖² per task direction j (k values: column norms² of N₀ = A₀V), or one
            number for all; default :func:`expected_init_overlaps`.
        p: Pp₀ ≈ p·I (default the expected value; per run use tr(Pp₀)/r).
        threshold: θ. max_steps: search horizon (default ``config.steps``).

    Returns:
        The predicted step (a float, ``nan`` if not reached within ``max_steps``).
    """
    from ._reduced import _sigma_star

    exp = expected_init_overlaps(config)
    p = exp["p"] if p is None else float(p)
    sig = _sigma_star(config)
    k = sig.size
    w = np.broadcast_to(np.asarray(exp["n_sq"] if n_sq is None else n_sq, float), (k,))
    s = scale_factor(config)
    L0 = 0.5 * lam * float(np.sum(sig**2))
    lrs = learning_rates(config)
    horizon = config.steps if max_steps is None else int(max_steps)
    if horizon > lrs.size:
        lrs = np.concatenate([lrs, np.full(horizon - lrs.size, lrs[-1])])
    dim = 4 if float(config.momentum) != 0.0 else 2
    Z = np.zeros((k, dim))
    Z[:, 1] = 1.0
    H = np.array([[[s * s * lam * p, -s * lam * sj], [-s * lam * sj, 0.0]] for sj in sig])
    T, lr_T = None, None
    for t in range(horizon + 1):
        dL = 0.5 * float(np.einsum("j,ja,jab,jb->", w, Z[:, :2], H, Z[:, :2]))
        if L0 + dL < threshold * L0:
            return float(t)
        if t == horizon:
            break
        if lrs[t] != lr_T:  # the step matrices change only with the learning rate
            lr_T = lrs[t]
            T = np.array([_step_matrix(s, lam, p, float(sj), float(lr_T),
                                       float(config.loraplus_lr_ratio),
                                       float(config.momentum), bool(config.nesterov),
                                       float(config.weight_decay)) for sj in sig])
        Z = np.einsum("jab,jb->ja", T, Z)
    return float("nan")


def escape_step(result, *, threshold: float = 0.9) -> float:
    """Measured escape: the first recorded step t with ``loss_t < threshold·loss_0``
    (``nan`` if never, or if the run diverged first)."""
    loss = np.asarray(result.records["loss"])
    hit = np.flatnonzero(loss < threshold * loss[0])
    return float(result.loss_step[hit[0]]) if hit.size else float("nan")
