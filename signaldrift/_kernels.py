"""Numba kernels of the simulator: factorised LoRA dynamics and dense full fine-tuning.

The LoRA kernel never forms an m×d matrix (THEORY.md §2 "Cost"): every quantity comes from
the generated factorised expressions in :mod:`signaldrift._generated.factorised`, evaluated
on r×r, k×r Gram matrices and thin products. A population step costs
O((m + d)·r·(r + k)); a minibatch step O(n·(m + d)·(r + k)).

Both kernels advance a *segment* of steps [t0, t1) in place, so the Python driver can pause
between segments (fresh minibatch chunks, sharpness measurements) without changing the
arithmetic: the optimiser state lives in arrays the driver owns.

Record layout: ``rec[q, i]`` is record ``q`` (see :data:`RECORD_NAMES`) at the i-th recorded
step (steps t with ``t % record_every == 0``); ``loss[i]`` is the excess loss at the i-th
recorded loss step (t % record_every == 0, and the final t = steps, written by the driver).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from ._generated.factorised import (
    batch_grad_A,
    batch_grad_B,
    batch_residual,
    curvature,
    descent,
    drift_norm_sq,
    excess_loss,
    grad_A,
    grad_B,
    grad_norm_sq,
    signal_drift_inner,
    signal_norm_sq,
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


@njit(cache=True)
def optimizer_update(p, g, buf, sq, t, lr, opt, momentum, nesterov, beta1, beta2, eps, wd):
    """New value of parameter ``p`` after one step, with torch.optim's exact semantics.

    ``buf`` (SGD momentum buffer / Adam first moment) and ``sq`` (Adam second moment) are
    updated in place; ``t`` is the 0-based step index (Adam's step count is t + 1).

    - SGD: ``g ← g + wd·p``; with momentum μ: ``buf ← g`` at the first step, else
      ``buf ← μ·buf + g`` (no dampening); ``g ← g + μ·buf`` (Nesterov) or ``g ← buf``;
      ``p ← p − lr·g``.
    - Adam: ``g ← g + wd·p``; AdamW: ``p ← p·(1 − lr·wd)``. Then
      ``m ← m + (1 − β₁)(g − m)``, ``v ← β₂v + (1 − β₂)g²``,
      ``p ← p − lr/(1 − β₁^{t+1}) · m / (√v / √(1 − β₂^{t+1}) + ε)``.
    """
    if opt == OPT_SGD:
        if wd != 0.0:
            g = g + wd * p
        if momentum != 0.0:
            if t == 0:
                buf[...] = g
            else:
                buf[...] = momentum * buf + g
            if nesterov:
                g = g + momentum * buf
            else:
                g = buf
        return p - lr * g
    if opt == OPT_ADAMW:
        p = p * (1.0 - lr * wd)
    elif wd != 0.0:
        g = g + wd * p
    buf[...] = buf + (1.0 - beta1) * (g - buf)
    sq[...] = beta2 * sq + (1.0 - beta2) * g * g
    bc1 = 1.0 - beta1 ** (t + 1)
    bc2 = 1.0 - beta2 ** (t + 1)
    step_size = lr / bc1
    denom = np.sqrt(sq) / np.sqrt(bc2) + eps
    return p - step_size * (buf / denom)


@njit(cache=True)
def _safe_sqrt(x):
    return np.sqrt(x) if x > 0.0 else 0.0


@njit(cache=True)
def _ratio(num, den):
    if den > 0.0:
        return num / den
    return 0.0 if num == 0.0 else np.inf


@njit(cache=True)
def lora_loss(s, A, B, lam, U, Sg, VtS, c_loss):
    """Population excess loss L = ½tr(EΣEᵀ) at (A, B), factorised (THEORY §2)."""
    ASAt = (A * lam) @ A.T
    VSAt = VtS @ A.T
    return excess_loss(s, B.T @ B, ASAt, U.T @ B, VSAt, Sg, c_loss)


@njit(cache=True)
def lora_segment(t0, t1, A, B, bufA, bufB, sqA, sqB,
                 s, lam, U, V, Sg, VtS, c_loss, c_grad,
                 lrs, X, N, opt, momentum, nesterov, beta1, beta2, eps, wd,
                 record_every, bound, loss, rec):
    """Advance LoRA (A, B) over steps [t0, t1) in place; record THEORY §3's terms.

    Args:
        t0, t1: global step range.
        A, B: (r, d), (m, r) factors, updated in place.
        bufA, bufB, sqA, sqB: optimiser state (see :func:`optimizer_update`).
        s: scaling factor. lam: (d,) Σ's eigenvalues. U (m, k), V (d, k), Sg = diag(σ⋆),
        VtS = VᵀΣ (k, d), c_loss = ‖Δ⋆Σ^½‖², c_grad = ‖Δ⋆Σ‖².
        lrs: (steps,) learning rates. X (T, n, d), N (T, n, m): the minibatches of this
        segment, X[t − t0] at step t; T = 0 for the population gradient.
        opt…wd: optimiser settings. record_every, bound: recording stride, divergence bound.
        loss, rec: output arrays (see module docstring).

    Returns:
        (status, t): ``STATUS_OK`` and t1, or ``STATUS_DIVERGED`` and the step at which the
        loss was non-finite or above ``bound`` (the state is left at that step).
    """
    population = X.shape[0] == 0
    r = A.shape[0]
    k = U.shape[1]
    for t in range(t0, t1):
        AS = A * lam
        ASAt = AS @ A.T
        VSAt = VtS @ A.T
        BtB = B.T @ B
        UtB = U.T @ B
        L = excess_loss(s, BtB, ASAt, UtB, VSAt, Sg, c_loss)
        record = t % record_every == 0
        i = t // record_every
        if record:
            loss[i] = L
        if not (np.isfinite(L) and L <= bound):
            return STATUS_DIVERGED, t
        if population:
            gB = grad_B(s, B, U, Sg, ASAt, VSAt)
            gA = grad_A(s, BtB, UtB, Sg, AS, VtS)
        else:
            Xb = X[t - t0]
            n = Xb.shape[0]
            XA = Xb @ A.T
            R = batch_residual(s, B, XA, U, Sg, Xb @ V, N[t - t0])
            gB = batch_grad_B(s, n, R, XA)
            gA = batch_grad_A(s, n, R, B, Xb)
        lr = lrs[t]
        A1 = optimizer_update(A, gA, bufA, sqA, t, lr, opt, momentum, nesterov,
                              beta1, beta2, eps, wd)
        B1 = optimizer_update(B, gB, bufB, sqB, t, lr, opt, momentum, nesterov,
                              beta1, beta2, eps, wd)
        if record:
            dA = A1 - A
            dB = B1 - B
            AAt = A @ A.T
            dAAt = dA @ A.T
            dAdAt = dA @ dA.T
            dBtdB = dB.T @ dB
            dBtB = dB.T @ B
            dBtU = dB.T @ U
            ASdAt = AS @ dA.T
            dASdAt = (dA * lam) @ dA.T
            VSdAt = VtS @ dA.T
            sig2 = signal_norm_sq(s, dBtdB, AAt, dBtB, dAAt, BtB, dAdAt)
            dr2 = drift_norm_sq(s, dBtdB, dAdAt)
            sd = signal_drift_inner(s, dBtdB, dAAt, dBtB, dAdAt)
            g2 = grad_norm_sq(s, BtB, AS @ AS.T, UtB, VtS @ AS.T, Sg, c_grad)
            des = descent(s, dBtB, dBtU, BtB, UtB, Sg, ASAt, VSAt, ASdAt, VSdAt)
            kap = curvature(s, dBtdB, dBtB, BtB, ASAt, ASdAt, dASdAt)
            sn = _safe_sqrt(sig2)
            dn = _safe_sqrt(dr2)
            gn = _safe_sqrt(g2)
            AV = A @ V
            overlap = np.trace(np.linalg.pinv(AAt) @ (AV @ AV.T)) / min(r, k)
            rec[0, i] = gn
            rec[1, i] = sn
            rec[2, i] = dn
            rec[3, i] = _ratio(dn, sn)
            rec[4, i] = -des / gn if gn > 0.0 else 0.0
            rec[5, i] = des
            rec[6, i] = kap
            rec[7, i] = _safe_sqrt(sig2 + 2.0 * sd + dr2)
            rec[8, i] = s * _safe_sqrt(np.trace(BtB @ AAt))
            rec[9, i] = _safe_sqrt(np.trace(AAt))
            rec[10, i] = _safe_sqrt(np.trace(BtB))
            rec[11, i] = overlap
        A[...] = A1
        B[...] = B1
    return STATUS_OK, t1


@njit(cache=True)
def full_loss(Delta, Dstar, lam):
    """Excess loss ½‖(Δ − Δ⋆)Σ^½‖² of full fine-tuning (dense)."""
    E = Delta - Dstar
    return 0.5 * np.sum(E * E * lam)


@njit(cache=True)
def full_segment(t0, t1, Delta, buf, sq, Dstar, lam, V,
                 lrs, X, N, opt, momentum, nesterov, beta1, beta2, eps, wd,
                 record_every, bound, loss, rec):
    """Advance full fine-tuning (W = W₀ + Δ, THEORY §2 baseline) over [t0, t1), dense.

    The update is all signal: S = ΔW, D = 0, ρ = 0. ``adapter_norm`` is ‖Δ‖; ``A_norm``,
    ``B_norm`` and ``subspace_overlap`` (adapter quantities) are NaN. Arguments and return
    value as :func:`lora_segment` (``Dstar`` is the dense Δ⋆, V is unused but kept for a
    uniform call).
    """
    population = X.shape[0] == 0
    for t in range(t0, t1):
        E = Delta - Dstar
        G = E * lam
        L = 0.5 * np.sum(E * G)
        record = t % record_every == 0
        i = t // record_every
        if record:
            loss[i] = L
        if not (np.isfinite(L) and L <= bound):
            return STATUS_DIVERGED, t
        if population:
            g = G
        else:
            Xb = X[t - t0]
            n = Xb.shape[0]
            R = Xb @ E.T - N[t - t0]
            g = (R.T @ Xb) / n
        D1 = optimizer_update(Delta, g, buf, sq, t, lrs[t], opt, momentum, nesterov,
                              beta1, beta2, eps, wd)
        if record:
            dW = D1 - Delta
            gn = np.sqrt(np.sum(G * G))
            des = np.sum(dW * G)
            un = np.sqrt(np.sum(dW * dW))
            rec[0, i] = gn
            rec[1, i] = un
            rec[2, i] = 0.0
            rec[3, i] = 0.0
            rec[4, i] = -des / gn if gn > 0.0 else 0.0
            rec[5, i] = des
            rec[6, i] = 0.5 * np.sum(dW * dW * lam)
            rec[7, i] = un
            rec[8, i] = np.sqrt(np.sum(Delta * Delta))
            rec[9, i] = np.nan
            rec[10, i] = np.nan
            rec[11, i] = np.nan
        Delta[...] = D1
    return STATUS_OK, t1
