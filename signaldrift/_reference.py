"""A dense, plain-NumPy reference of the simulator, written for clarity, not speed.

It forms every m×d matrix the factorised kernels avoid (W = sBA, E, G, ΔW, S, D) and
computes each record straight from its definition in THEORY.md §2–§3, with its own
optimiser code. It works entirely in the feature basis with a dense Σ = Q diag(λ) Qᵀ
(THEORY §1), where the kernels keep A in Σ's eigen-coordinates and rotate only for Adam.
The tests use it as the independent check of the Numba kernels; it shares only the inputs
(task, initialisation, learning rates, sample streams, training set) with them.
"""

from __future__ import annotations

import numpy as np

from ._config import SimConfig
from ._init import init_adapter
from ._kernels import RECORD_NAMES
from ._result import SimulationResult
from ._sampling import EpochStream, SampleStream, draw_training_set
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._simulate import record_grid
from ._task import make_task

__all__ = ["simulate_reference"]


class _TorchLikeOptimizer:
    """SGD / Adam / AdamW for one parameter array, following torch.optim's update rules."""

    def __init__(self, config: SimConfig, eps: float | None = None) -> None:
        self.c = config
        self.eps = config.eps if eps is None else eps
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
        return p - lr * m_hat / (np.sqrt(v_hat) + self.eps)


def simulate_reference(config: SimConfig, *, task=None, A0=None, B0=None) -> SimulationResult:
    """The same dynamics as :func:`signaldrift.simulate`, densely in NumPy.

    Records (THEORY §3), for the step t → t+1 with ΔW = W_{t+1} − W_t:
    ``S = s(ΔB A + B ΔA)``, ``D = s ΔB ΔA``, ρ = ‖D‖/‖S‖, π = −⟨ΔW, G⟩/‖G‖,
    κ = ½ tr(ΔW Σ ΔWᵀ) and its split, with G = (W − W⋆)Σ the population gradient in W.
    Sharpness is not measured here (``sharpness`` holds NaN); snapshots are.

    Args:
        config, task, A0, B0: as :func:`signaldrift.simulate`.

    Returns:
        A :class:`SimulationResult` comparable with :func:`signaldrift.simulate`'s.
    """
    task = make_task(config) if task is None else task
    basis = task.basis
    Sigma = task.sigma_matrix()
    Dstar = task.delta_star()
    full = config.model == "full"
    s = scale_factor(config)
    train = draw_training_set(config, task.lam) if config.train_size > 0 else None
    if A0 is None or B0 is None:
        A_i, B_i = init_adapter(config, task, train)
        A0 = A_i if A0 is None else np.asarray(A0, dtype=np.float64)
        B0 = B_i if B0 is None else np.asarray(B0, dtype=np.float64)
    A, B = A0.copy(), B0.copy()
    Delta = np.zeros((config.m, config.d))
    opt_A, opt_D = _TorchLikeOptimizer(config), _TorchLikeOptimizer(config)
    opt_B = _TorchLikeOptimizer(config, eps=config.effective_eps_b)
    lrs = learning_rates(config)
    if train is not None:
        Xtr, Ntr = basis.to_features(train["X"]), train["noise"]
        epochs = EpochStream(config) if config.batch > 0 else None
        stream = None
    else:
        stream = SampleStream(config, task.lam) if config.batch > 0 else None
    step, loss_step = record_grid(config)
    loss = np.full(loss_step.size, np.nan)
    train_loss = np.full(loss_step.size, np.nan)
    rec = {name: np.full(step.size, np.nan) for name in RECORD_NAMES}
    snaps = {"step": np.array(sorted(config.snapshot_steps), dtype=np.int64)}
    snaps["A"] = np.full((snaps["step"].size, *A.shape), np.nan)
    snaps["B"] = np.full((snaps["step"].size, *B.shape), np.nan)

    def weight() -> np.ndarray:
        return Delta if full else s * B @ A

    def excess_loss(W: np.ndarray) -> float:
        E = W - Dstar
        return 0.5 * float(np.sum((E @ Sigma) * E))

    def empirical_loss(W: np.ndarray) -> float:
        resid = Xtr @ (W - Dstar).T - Ntr
        return 0.5 * float(np.sum(resid**2)) / config.train_size

    def snapshot(t: int) -> None:
        j = np.flatnonzero(snaps["step"] == t)
        if j.size and not full:
            snaps["A"][j[0]], snaps["B"][j[0]] = A, B

    def sigma_inner(X: np.ndarray, Y: np.ndarray) -> float:
        return float(np.sum((X @ Sigma) * Y))

    diverged, diverged_step, diverged_loss = False, -1, float("nan")
    for t in range(config.steps):
        snapshot(t)
        W = weight()
        L = excess_loss(W)
        i, record = t // config.record_every, t % config.record_every == 0
        if record:
            loss[i] = L
            if train is not None:
                train_loss[i] = empirical_loss(W)
        if not (np.isfinite(L) and L <= config.divergence_bound):
            diverged, diverged_step, diverged_loss = True, t, L
            break
        G = (W - Dstar) @ Sigma  # population gradient in W
        if train is not None:
            if epochs is None:
                X, N = Xtr, Ntr
            else:
                idx = epochs.draw(1)[0]
                X, N = Xtr[idx], Ntr[idx]
        elif stream is not None:
            X, N = stream.draw(1)
            X, N = basis.to_features(X[0]), N[0]
        if train is None and stream is None:
            G_hat = G
        else:
            resid = X @ (W - Dstar).T - N  # (n, m): E xᵢ − εᵢ as rows
            G_hat = resid.T @ X / X.shape[0]
        lr = lrs[t]
        if full:
            Delta = opt_D.step(Delta, G_hat, lr)
            dW = Delta - W
            S, D = dW, np.zeros_like(dW)
        else:
            grad_B = s * G_hat @ A.T
            grad_A = s * B.T @ G_hat
            A_new = opt_A.step(A, grad_A, lr)
            B_new = opt_B.step(B, grad_B, config.loraplus_lr_ratio * lr)
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
            rec["curvature"][i] = 0.5 * sigma_inner(dW, dW)
            rec["update_norm"][i] = np.linalg.norm(dW)
            rec["descent_signal"][i] = float(np.sum(G * S))
            rec["descent_drift"][i] = float(np.sum(G * D))
            rec["curvature_signal"][i] = 0.5 * sigma_inner(S, S)
            rec["curvature_cross"][i] = sigma_inner(S, D)
            rec["curvature_drift"][i] = 0.5 * sigma_inner(D, D)
            if full:
                rec["adapter_norm"][i] = np.linalg.norm(Delta - dW)
            else:
                rec["adapter_norm"][i] = np.linalg.norm(W)
                rec["A_norm"][i] = np.linalg.norm(A)
                rec["B_norm"][i] = np.linalg.norm(B)
                # Mean cos² of the principal angles between A's row space and V.
                # (an orthonormal basis of the row space from the SVD: A may be rank-deficient)
                Ua, sv, _ = np.linalg.svd(A.T, full_matrices=False)
                Q = Ua[:, sv > 1e-12 * max(sv.max(initial=0.0), 1e-300)]
                overlap = np.sum((Q.T @ task.V_features()) ** 2)
                rec["subspace_overlap"][i] = overlap / min(config.rank, config.task_rank)
        if not full:
            A, B = A_new, B_new

    final = excess_loss(weight())
    if diverged:
        loss[loss_step >= diverged_step] = np.nan
        train_loss[loss_step >= diverged_step] = np.nan
        for v in rec.values():
            v[step >= diverged_step] = np.nan
    elif not (np.isfinite(final) and final <= config.divergence_bound):
        diverged, diverged_step, diverged_loss = True, config.steps, final
    else:
        loss[-1] = final
        snapshot(config.steps)
        if train is not None:
            train_loss[-1] = empirical_loss(weight())
    records = {"loss": loss, **rec}
    if train is not None:
        records["train_loss"] = train_loss
    n_sharp = len(config.sharpness_steps)
    return SimulationResult(
        config=config, task=task, scale=s, A0=A0,
        A=np.zeros((0, config.d)) if full else A, B=np.zeros((config.m, 0)) if full else B,
        step=step, loss_step=loss_step, records=records, diverged=diverged,
        diverged_step=diverged_step, diverged_loss=diverged_loss,
        sharpness={"step": np.array(config.sharpness_steps, dtype=np.int64),
                   "lambda_max": np.full(n_sharp, np.nan),
                   "precond_lambda_max": np.full(n_sharp, np.nan)},
        Delta=Delta if full else None, B0=B0,
        snapshots=snaps if snaps["step"].size else {},
        train={} if train is None else {"X_train": Xtr, "noise_train": Ntr},
        noise_floor=0.5 * config.m * float(task.noise) ** 2,
    )
