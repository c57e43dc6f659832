"""A dense, plain-NumPy reference of the simulator, written for clarity, not speed.

It forms every m×d matrix the factorised kernels avoid (W = sBA, E, G, ΔW, S, D) and
computes each record straight from its definition in THEORY.md §2–§3, with its own
optimiser code. The tests use it as the independent check of the Numba kernels; it shares
only the inputs (task, initialisation, learning rates, sample stream) with them.
"""

from __future__ import annotations

import numpy as np

from ._config import SimConfig
from ._init import init_adapter
from ._kernels import RECORD_NAMES
from ._result import SimulationResult
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._simulate import record_grid
from ._task import make_task

__all__ = ["simulate_reference"]


class _TorchLikeOptimizer:
    """SGD / Adam / AdamW for one parameter array, following torch.optim's update rules."""

    def __init__(self, config: SimConfig) -> None:
        self.c = config
        self.buf = None  # momentum buffer or first moment
        self.sq = None  # second moment
        self.count = 0

    def step(self, p: np.ndarray, grad: np.ndarray, lr: float) -> np.ndarray:
        c = self.c
        self.count += 1
        if c.optimizer == "sgd":
            d_p = grad + c.weight_decay * p if c.weight_decay else grad
            if c.momentum:
                self.buf = d_p.copy() if self.buf is None else c.momentum * self.buf + d_p
                d_p = d_p + c.momentum * self.buf if c.nesterov else self.buf
            return p - lr * d_p
        if self.buf is None:
            self.buf, self.sq = np.zeros_like(p), np.zeros_like(p)
        if c.optimizer == "adamw":
            p = p * (1.0 - lr * c.weight_decay)
        elif c.weight_decay:
            grad = grad + c.weight_decay * p
        self.buf = c.beta1 * self.buf + (1.0 - c.beta1) * grad
        self.sq = c.beta2 * self.sq + (1.0 - c.beta2) * grad**2
        m_hat = self.buf / (1.0 - c.beta1**self.count)
        v_hat = self.sq / (1.0 - c.beta2**self.count)
        return p - lr * m_hat / (np.sqrt(v_hat) + c.eps)


def simulate_reference(config: SimConfig) -> SimulationResult:
    """The same dynamics as :func:`signaldrift.simulate`, densely in NumPy.

    Records (THEORY §3), for the step t → t+1 with ΔW = W_{t+1} − W_t:
    ``S = s(ΔB A + B ΔA)``, ``D = s ΔB ΔA``, ρ = ‖D‖/‖S‖, π = −⟨ΔW, G⟩/‖G‖,
    κ = ½ tr(ΔW Σ ΔWᵀ), with G = (W − W⋆)Σ the population gradient in W.
    Sharpness is not measured here (``sharpness`` holds NaN).

    Returns:
        A :class:`SimulationResult` comparable with :func:`signaldrift.simulate`'s.
    """
    task = make_task(config)
    lam = task.lam
    Dstar = task.delta_star()
    full = config.model == "full"
    s = scale_factor(config)
    A0, B0 = init_adapter(config)
    A, B = A0.copy(), B0.copy()
    Delta = np.zeros((config.m, config.d))
    opt_A, opt_B, opt_D = (_TorchLikeOptimizer(config) for _ in range(3))
    lrs = learning_rates(config)
    stream = SampleStream(config, lam) if config.batch > 0 else None
    step, loss_step = record_grid(config)
    loss = np.full(loss_step.size, np.nan)
    rec = {name: np.full(step.size, np.nan) for name in RECORD_NAMES}

    def weight() -> np.ndarray:
        return Delta if full else s * B @ A

    def excess_loss(W: np.ndarray) -> float:
        E = W - Dstar
        return 0.5 * float(np.sum((E * lam) * E))

    diverged, diverged_step, diverged_loss = False, -1, float("nan")
    for t in range(config.steps):
        W = weight()
        L = excess_loss(W)
        i, record = t // config.record_every, t % config.record_every == 0
        if record:
            loss[i] = L
        if not (np.isfinite(L) and L <= config.divergence_bound):
            diverged, diverged_step, diverged_loss = True, t, L
            break
        G = (W - Dstar) * lam  # population gradient in W
        if stream is None:
            G_hat = G
        else:
            X, N = stream.draw(1)
            X, N = X[0], N[0]
            resid = X @ (W - Dstar).T - N  # (n, m): E xᵢ − εᵢ as rows
            G_hat = resid.T @ X / config.batch
        lr = lrs[t]
        if full:
            Delta = opt_D.step(Delta, G_hat, lr)
            dW = Delta - W
            S, D = dW, np.zeros_like(dW)
        else:
            grad_B = s * G_hat @ A.T
            grad_A = s * B.T @ G_hat
            A_new = opt_A.step(A, grad_A, lr)
            B_new = opt_B.step(B, grad_B, lr)
            dA, dB = A_new - A, B_new - B
            S = s * (dB @ A + B @ dA)
            D = s * dB @ dA
            dW = s * B_new @ A_new - W
        if record:
            g_norm = np.linalg.norm(G)
            s_norm, d_norm = np.linalg.norm(S), np.linalg.norm(D)
            inner = float(np.sum(dW * G))
            rec["grad_norm"][i] = g_norm
            rec["signal_norm"][i] = s_norm
            rec["drift_norm"][i] = d_norm
            rec["drift_ratio"][i] = d_norm / s_norm if s_norm > 0 else (0.0 if d_norm == 0 else np.inf)
            rec["progress"][i] = -inner / g_norm if g_norm > 0 else 0.0
            rec["descent"][i] = inner
            rec["curvature"][i] = 0.5 * float(np.sum((dW * lam) * dW))
            rec["update_norm"][i] = np.linalg.norm(dW)
            if full:
                rec["adapter_norm"][i] = np.linalg.norm(Delta - dW)
            else:
                rec["adapter_norm"][i] = np.linalg.norm(W)
                rec["A_norm"][i] = np.linalg.norm(A)
                rec["B_norm"][i] = np.linalg.norm(B)
                # Mean cos² of the principal angles between A's row space and V.
                Q, _ = np.linalg.qr(A.T)
                rec["subspace_overlap"][i] = np.sum((Q.T @ task.V) ** 2) / min(
                    config.rank, config.task_rank)
        if not full:
            A, B = A_new, B_new

    final = excess_loss(weight())
    if diverged:
        loss[loss_step >= diverged_step] = np.nan
        for v in rec.values():
            v[step >= diverged_step] = np.nan
    elif not (np.isfinite(final) and final <= config.divergence_bound):
        diverged, diverged_step, diverged_loss = True, config.steps, final
    else:
        loss[-1] = final
    n_sharp = len(config.sharpness_steps)
    return SimulationResult(
        config=config, task=task, scale=s, A0=A0,
        A=np.zeros((0, config.d)) if full else A, B=np.zeros((config.m, 0)) if full else B,
        step=step, loss_step=loss_step, records={"loss": loss, **rec}, diverged=diverged,
        diverged_step=diverged_step, diverged_loss=diverged_loss,
        sharpness={"step": np.array(config.sharpness_steps, dtype=np.int64),
                   "lambda_max": np.full(n_sharp, np.nan),
                   "precond_lambda_max": np.full(n_sharp, np.nan)},
        Delta=Delta if full else None,
    )
