"""The simulation driver: settings in, :class:`SimulationResult` out (THEORY.md §1–§4).

The driver owns the state and optimiser arrays and calls the Numba kernels of
:mod:`signaldrift._kernels` on segments of steps. Segments end where the driver must act:
at the boundaries of minibatch chunks (the sample stream is drawn chunk by chunk, which does
not change the samples) and around the steps where the Hessian's sharpness is measured.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ._config import ConfigError, SimConfig
from ._init import init_adapter
from ._kernels import (
    OPT_ADAM,
    OPT_ADAMW,
    OPT_SGD,
    RECORD_NAMES,
    STATUS_DIVERGED,
    full_loss,
    full_segment,
    lora_loss,
    lora_segment,
)
from ._result import SimulationResult
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._task import Task, make_task

__all__ = ["simulate", "record_grid"]

_OPT_CODES = {"sgd": OPT_SGD, "adam": OPT_ADAM, "adamw": OPT_ADAMW}

# Floats of minibatch samples drawn per chunk (32 MB); the chunking never changes results.
_CHUNK_FLOATS = 4_000_000


def record_grid(config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """The recorded steps: per-step terms at t = 0, e, 2e, … < steps (e = record_every);
    the loss at the same t and at t = steps."""
    step = np.arange(0, config.steps, config.record_every, dtype=np.int64)
    loss_step = np.arange(0, config.steps + 1, config.record_every, dtype=np.int64)
    if loss_step[-1] != config.steps:
        loss_step = np.append(loss_step, config.steps)
    return step, loss_step


def _task_constants(task: Task) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Sg = diag(σ⋆), VᵀΣ, ‖Δ⋆Σ^½‖² and ‖Δ⋆Σ‖² from the k-dimensional factors only."""
    Sg = np.diag(task.sigma_star)
    VtS = np.ascontiguousarray((task.V * task.lam[:, None]).T)
    utu = task.U.T @ task.U
    vsv = VtS @ task.V
    vs2v = VtS @ VtS.T
    c_loss = float(np.trace(Sg @ vsv @ Sg @ utu))
    c_grad = float(np.trace(Sg @ vs2v @ Sg @ utu))
    return Sg, VtS, c_loss, c_grad


def _segments(config: SimConfig) -> list[tuple[int, int]]:
    """Step ranges [a, b) covering [0, steps), split at sharpness steps and sample chunks."""
    cuts = {0, config.steps}
    for t in config.sharpness_steps:
        cuts.update((t, t + 1))
    bounds = sorted(cuts)
    chunk = config.steps
    if config.batch > 0:
        chunk = max(1, _CHUNK_FLOATS // (config.batch * (config.d + config.m)))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for c in range(a, b, chunk):
            out.append((c, min(b, c + chunk)))
    return out


def simulate(config: SimConfig, *, task: Task | None = None, A0: np.ndarray | None = None,
             B0: np.ndarray | None = None) -> SimulationResult:
    """Run one simulation with the factorised Numba kernels.

    BLAS runs single-threaded during the run: the kernels multiply r×r, k×r and thin
    matrices, where BLAS threads cost more than they give (10× slower on a loaded 2-core
    machine); parallelism comes from running configurations side by side (sweeps).

    The task (THEORY §1), the student and its scaling rule (§2), the optimiser with
    torch.optim's semantics, and per-step records of the Signal-Drift decomposition (§3):
    ‖S_t‖, ‖D_t‖, ρ_t, π_t, κ_t and more (see :class:`SimulationResult`). A run whose loss
    becomes non-finite or exceeds ``config.divergence_bound`` stops there and is flagged
    ``diverged``; it never raises.

    Args:
        config: the settings.

    Returns:
        The :class:`SimulationResult`; the same settings give bit-identical results.

    Example:
        >>> import signaldrift as sd
        >>> res = sd.simulate(sd.SimConfig(d=64, m=64, rank=4, steps=50, lr=1e-2))
        >>> res.final_loss < res.loss[0]
        True
    """
    if not isinstance(config, SimConfig):
        raise ConfigError(f"config: must be a SimConfig (signaldrift.SimConfig(...)), got "
                          f"{type(config).__name__}")
    if config.engine == "reduced":
        from ._reduced import simulate_reduced

        return simulate_reduced(config, task=task, A0=A0, B0=B0)
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(config)


def _simulate(config: SimConfig) -> SimulationResult:
    task = make_task(config)
    s = scale_factor(config)
    A0, B0 = init_adapter(config)
    lrs = learning_rates(config)
    step, loss_step = record_grid(config)
    loss = np.full(loss_step.size, np.nan)
    rec = np.full((len(RECORD_NAMES), step.size), np.nan)
    opt = _OPT_CODES[config.optimizer]
    hyper = (opt, float(config.momentum), bool(config.nesterov), float(config.beta1),
             float(config.beta2), float(config.eps), float(config.weight_decay),
             int(config.record_every), float(config.divergence_bound))
    stream = SampleStream(config, task.lam) if config.batch > 0 else None
    no_samples = np.zeros((0, 0, 0))
    sharp_steps = np.array(config.sharpness_steps, dtype=np.int64)
    sharp = {
        "step": sharp_steps,
        "lambda_max": np.full(sharp_steps.size, np.nan),
        "precond_lambda_max": np.full(sharp_steps.size, np.nan),
    }

    full = config.model == "full"
    if full:
        Dstar = task.delta_star()
        state = (np.zeros((config.m, config.d)),)
    else:
        Sg, VtS, c_loss, c_grad = _task_constants(task)
        state = (A0.copy(), B0.copy())
    bufs = tuple(np.zeros_like(p) for p in state)
    sqs = tuple(np.zeros_like(p) for p in state)

    diverged, diverged_step = False, -1
    for a, b in _segments(config):
        X, N = stream.draw(b - a) if stream is not None else (no_samples, no_samples)
        measure = a in config.sharpness_steps
        before = tuple(p.copy() for p in state) if measure else None
        if full:
            status, t = full_segment(a, b, state[0], bufs[0], sqs[0], Dstar, task.lam,
                                     task.V, lrs, X, N, *hyper, loss, rec)
        else:
            status, t = lora_segment(a, b, state[0], state[1], bufs[0], bufs[1], sqs[0],
                                     sqs[1], s, task.lam, task.U, task.V, Sg, VtS, c_loss,
                                     c_grad, lrs, X, N, *hyper, loss, rec)
        if status == STATUS_DIVERGED:
            diverged, diverged_step = True, int(t)
            break
        if measure:
            j = int(np.flatnonzero(sharp_steps == a)[0])
            lm, plm = _measure_sharpness(config, task, s, before, sqs, a)
            sharp["lambda_max"][j], sharp["precond_lambda_max"][j] = lm, plm

    # The state is at step `steps`, or at the diverged step where the kernel stopped.
    if full:
        final = float(full_loss(state[0], Dstar, task.lam))
    else:
        final = float(lora_loss(s, state[0], state[1], task.lam, task.U, Sg, VtS, c_loss))
    diverged_loss = float("nan")
    if diverged:
        diverged_loss = final
    elif not (np.isfinite(final) and final <= config.divergence_bound):
        diverged, diverged_step, diverged_loss = True, config.steps, final
    else:
        loss[-1] = final
    if diverged:
        # Nothing recorded at or after the diverged step is a valid record.
        loss[loss_step >= diverged_step] = np.nan
        rec[:, step >= diverged_step] = np.nan

    records = {"loss": loss}
    records.update({name: rec[q] for q, name in enumerate(RECORD_NAMES)})
    if full:
        A_fin = np.zeros((0, config.d))
        B_fin = np.zeros((config.m, 0))
    else:
        A_fin, B_fin = state
    return SimulationResult(
        config=config, task=task, scale=s, A0=A0, A=A_fin, B=B_fin, step=step,
        loss_step=loss_step, records=records, diverged=diverged,
        diverged_step=diverged_step, diverged_loss=diverged_loss, sharpness=sharp,
        Delta=state[0] if full else None,
    )


def _measure_sharpness(config: SimConfig, task: Task, s: float, before, sqs, t: int):
    """λ_max(H) at the state before step t and, for Adam/AdamW, λ_max(P⁻¹H) with the
    preconditioner P = √v̂ + ε that step t applied (THEORY §4)."""
    if config.model == "full":
        # H = Σ ⊗ I_m for full fine-tuning: λ_max(H) = λ_max(Σ) exactly.
        return float(task.lam.max()), float("nan")
    from ._sharpness import sharpness

    A_t, B_t = before
    lam_max = sharpness(task, s, A_t, B_t, seed=config.seed)
    if config.optimizer == "sgd":
        return lam_max, float("nan")
    bc2 = 1.0 - config.beta2 ** (t + 1)
    PA = np.sqrt(sqs[0] / bc2) + config.eps
    PB = np.sqrt(sqs[1] / bc2) + config.eps
    return lam_max, sharpness(task, s, A_t, B_t, precond_A=PA, precond_B=PB, seed=config.seed)
