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
    full_train_loss,
    lora_loss,
    lora_segment,
    lora_train_loss,
)
from ._result import SimulationResult
from ._sampling import EpochStream, SampleStream, draw_training_set
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


def _task_constants(task: Task) -> tuple[np.ndarray, np.ndarray, float]:
    """Sg = diag(σ⋆), VᵀΣ and ‖Δ⋆Σ^½‖² from the k-dimensional factors only."""
    Sg = np.diag(task.sigma_star)
    VtS = np.ascontiguousarray((task.V * task.lam[:, None]).T)
    utu = task.U.T @ task.U
    vsv = VtS @ task.V
    c_loss = float(np.trace(Sg @ vsv @ Sg @ utu))
    return Sg, VtS, c_loss


def _segments(config: SimConfig) -> list[tuple[int, int]]:
    """Step ranges [a, b) covering [0, steps), split at sharpness and snapshot steps and at
    sample chunks."""
    cuts = {0, config.steps}
    for t in config.sharpness_steps:
        cuts.update((t, t + 1))
    cuts.update(t for t in config.snapshot_steps if t < config.steps)
    bounds = sorted(cuts)
    chunk = config.steps
    if config.batch > 0:
        chunk = max(1, _CHUNK_FLOATS // (config.batch * (config.d + config.m)))
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        for c in range(a, b, chunk):
            out.append((c, min(b, c + chunk)))
    return out


def _user_factor(name: str, x, shape: tuple[int, int]) -> np.ndarray:
    try:
        a = np.array(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: must be a numeric array of shape {shape}") from None
    if a.shape != shape:
        raise ConfigError(f"{name}: must have shape {shape} (rank, d) / (m, rank), got "
                          f"{a.shape}")
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: must be finite (no NaN or inf)")
    return np.ascontiguousarray(a)


def simulate(config: SimConfig, *, task: Task | None = None, A0: np.ndarray | None = None,
             B0: np.ndarray | None = None) -> SimulationResult:
    """Run one simulation with the factorised Numba kernels.

    BLAS runs single-threaded during the run: the kernels multiply r×r, k×r and thin
    matrices, where BLAS threads cost more than they give (10× slower on a loaded 2-core
    machine); parallelism comes from running configurations side by side (sweeps).

    The task (THEORY §1), the student and its scaling rule (§2), the optimiser with
    torch.optim's semantics (per-factor learning rates η_A = lr, η_B = λ·lr with
    λ = ``loraplus_lr_ratio``), fresh samples or a fixed training set, and per-step
    records of the Signal-Drift decomposition (§3): ‖S_t‖, ‖D_t‖, ρ_t, π_t, κ_t, the
    exact split of the loss change and more (see :class:`SimulationResult`). A run whose
    loss becomes non-finite or exceeds ``config.divergence_bound`` stops there and is
    flagged ``diverged``; it never raises.

    Args:
        config: the settings.
        task: your own :class:`Task` (e.g. :meth:`Task.from_arrays`); its d, m, rank and
            noise must match the config's. Default: ``make_task(config)``.
        A0, B0: your own initial factors, (r, d) in the feature basis and (m, r);
            default: ``init_adapter(config, task)``. Giving only one takes the other from
            the config's init.

    Returns:
        The :class:`SimulationResult`; the same settings give bit-identical results.

    Example:
        >>> import signaldrift as sd
        >>> res = sd.simulate(sd.SimConfig(d=64, m=64, rank=4, steps=50, lr=1e-2))
        >>> res.final_loss < res.loss[0]
        True

    Raises:
        ConfigError: ``config`` is not a SimConfig, or the task or the factors do not fit it.
    """
    if not isinstance(config, SimConfig):
        raise ConfigError(f"config: must be a SimConfig (signaldrift.SimConfig(...)), got "
                          f"{type(config).__name__}")
    if config.engine == "reduced":
        from ._reduced import simulate_reduced

        return simulate_reduced(config, task=task, A0=A0, B0=B0)
    with threadpool_limits(limits=1, user_api="blas"):
        return _simulate(config, task, A0, B0)


def _simulate(config: SimConfig, task: Task | None, A0, B0) -> SimulationResult:
    task_source = "generated" if task is None and A0 is None and B0 is None else "user"
    if task is None:
        task = make_task(config)
    elif not isinstance(task, Task):
        raise ConfigError(f"task: must be a signaldrift.Task, got {type(task).__name__}")
    else:
        task.check_config(config)
    full = config.model == "full"
    if full and (A0 is not None or B0 is not None):
        raise ConfigError("A0: model 'full' has no adapter factors; give A0/B0 with model "
                          "'lora'")
    basis = task.basis
    rot = basis.kernel_args()
    train = draw_training_set(config, task.lam) if config.train_size > 0 else None
    if A0 is None or B0 is None:
        A_init, B_init = init_adapter(config, task, train)
        A0 = A_init if A0 is None else A0
        B0 = B_init if B0 is None else B0
    r = config.rank if not full else 0
    A0 = _user_factor("A0", A0, (r, config.d))
    B0 = _user_factor("B0", B0, (config.m, r))

    s = scale_factor(config)
    lrs = learning_rates(config)
    step, loss_step = record_grid(config)
    loss = np.full(loss_step.size, np.nan)
    train_loss = np.full(loss_step.size if train is not None else 0, np.nan)
    rec = np.full((len(RECORD_NAMES), step.size), np.nan)
    opt = _OPT_CODES[config.optimizer]
    optim = (opt, float(config.momentum), bool(config.nesterov), float(config.beta1),
             float(config.beta2), float(config.eps))
    tail = (*rot, int(config.record_every), float(config.divergence_bound), loss,
            train_loss, rec)
    no_samples = np.zeros((0, 0, 0))
    if train is not None:
        Xtr = train["X"]
        Ntr = train["noise"]
        stream = EpochStream(config) if config.batch > 0 else None
    else:
        Xtr, Ntr = np.zeros((0, config.d)), np.zeros((0, config.m))
        stream = SampleStream(config, task.lam) if config.batch > 0 else None
    sharp_steps = np.array(config.sharpness_steps, dtype=np.int64)
    sharp = {
        "step": sharp_steps,
        "lambda_max": np.full(sharp_steps.size, np.nan),
        "precond_lambda_max": np.full(sharp_steps.size, np.nan),
    }
    snap_steps = np.array(sorted(config.snapshot_steps), dtype=np.int64)
    snaps = {"step": snap_steps, "A": np.full((snap_steps.size, r, config.d), np.nan),
             "B": np.full((snap_steps.size, config.m, r), np.nan)}

    if full:
        Dstar = task.delta_star(features=False)
        state = (np.zeros((config.m, config.d)),)
    else:
        Sg, VtS, c_loss = _task_constants(task)
        XVtr = Xtr @ task.V
        state = (np.ascontiguousarray(basis.to_eigen(A0)), B0.copy())
    bufs = tuple(np.zeros_like(p) for p in state)
    sqs = tuple(np.zeros_like(p) for p in state)

    def snapshot(t: int) -> None:
        j = np.flatnonzero(snap_steps == t)
        if j.size and not full:
            snaps["A"][j[0]] = basis.to_features(state[0])
            snaps["B"][j[0]] = state[1]

    diverged, diverged_step = False, -1
    for a, b in _segments(config):
        snapshot(a)
        if stream is None:
            X, N = no_samples, no_samples
        elif train is not None:
            idx = stream.draw(b - a)
            X, N = Xtr[idx], Ntr[idx]
        else:
            X, N = stream.draw(b - a)
        measure = a in config.sharpness_steps
        before = tuple(p.copy() for p in state) if measure else None
        if full:
            status, t = full_segment(a, b, state[0], bufs[0], sqs[0], Dstar, task.lam, lrs,
                                     X, N, Xtr, Ntr, *optim, float(config.weight_decay),
                                     *tail)
        else:
            status, t = lora_segment(a, b, state[0], state[1], bufs[0], bufs[1], sqs[0],
                                     sqs[1], s, task.lam, task.U, task.V, task.sigma_star,
                                     Sg, VtS, c_loss, lrs, float(config.loraplus_lr_ratio),
                                     X, N, Xtr, XVtr, Ntr, *optim,
                                     float(config.effective_eps_b),
                                     float(config.weight_decay), *tail)
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
        final = float(lora_loss(s, state[0], state[1], task.lam, task.U, task.sigma_star,
                                task.V))
    diverged_loss = float("nan")
    if diverged:
        diverged_loss = final
    elif not (np.isfinite(final) and final <= config.divergence_bound):
        diverged, diverged_step, diverged_loss = True, config.steps, final
    else:
        loss[-1] = final
        snapshot(config.steps)
        if train is not None:
            train_loss[-1] = float(
                full_train_loss(state[0], Dstar, Xtr, Ntr) if full else
                lora_train_loss(s, state[0], state[1], task.U, Sg, Xtr, XVtr, Ntr))
    if diverged:
        # Nothing recorded at or after the diverged step is a valid record.
        loss[loss_step >= diverged_step] = np.nan
        train_loss[loss_step[:train_loss.size] >= diverged_step] = np.nan
        rec[:, step >= diverged_step] = np.nan

    records = {"loss": loss}
    if train is not None:
        records["train_loss"] = train_loss
    records.update({name: rec[q] for q, name in enumerate(RECORD_NAMES)})
    if full:
        A_fin = np.zeros((0, config.d))
        B_fin = np.zeros((config.m, 0))
        Delta = basis.to_features(state[0])
    else:
        A_fin, B_fin = basis.to_features(state[0]), state[1]
        Delta = None
    train_arrays = {}
    if train is not None:
        train_arrays = {"X_train": basis.to_features(Xtr), "noise_train": Ntr}
    return SimulationResult(
        config=config, task=task, scale=s, A0=A0, A=A_fin, B=B_fin, step=step,
        loss_step=loss_step, records=records, diverged=diverged,
        diverged_step=diverged_step, diverged_loss=diverged_loss, sharpness=sharp,
        Delta=Delta, B0=B0, task_source=task_source,
        snapshots=snaps if snap_steps.size else {}, train=train_arrays,
        noise_floor=0.5 * config.m * float(task.noise) ** 2,
    )


def _measure_sharpness(config: SimConfig, task: Task, s: float, before, sqs, t: int):
    """λ_max(H) at the state before step t and, for Adam/AdamW, λ_max(P⁻¹H) with the
    preconditioner P = √v̂ + ε that step t applied (THEORY §4)."""
    if config.model == "full":
        # H = Σ ⊗ I_m for full fine-tuning: λ_max(H) = λ_max(Σ) exactly.
        return float(task.lam.max()), float("nan")
    from ._sharpness import sharpness

    A_t, B_t = task.basis.to_features(before[0]), before[1]
    lam_max = sharpness(task, s, A_t, B_t, seed=config.seed)
    if config.optimizer == "sgd":
        return lam_max, float("nan")
    bc2 = 1.0 - config.beta2 ** (t + 1)
    PA = np.sqrt(sqs[0] / bc2) + config.eps
    PB = np.sqrt(sqs[1] / bc2) + config.effective_eps_b
    return lam_max, sharpness(task, s, A_t, B_t, precond_A=PA, precond_B=PB, seed=config.seed)
