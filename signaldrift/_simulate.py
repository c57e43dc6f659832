"""The simulation driver: settings in, :class:`SimulationResult` out (THEORY.md §1–§4).

One kernel design serves single runs and sweeps: :func:`simulate_block` advances a block
of configurations that share shapes, optimiser, basis kind and record layout
(:func:`block_key`) in one call of the block kernels of :mod:`signaldrift._kernels`
(``lora_block``/``full_block``, which release the GIL, so the configurations of a block
run in parallel threads), and :func:`simulate` is a block of one. Per-configuration
settings (scale, learning-rate schedule, optimiser constants, seeds, tasks) are arrays.
Minibatches and epochs are drawn inside the kernel from counter-based streams
(:mod:`signaldrift._rng`), so there is no Python work per step; the driver pauses only at the steps where the Hessian's sharpness is measured or a
snapshot is stored.

BLAS runs single-threaded in the process from the first simulation on: the kernels multiply
r×r, k×r and thin matrices, where BLAS threads cost more than they give; parallelism comes
from the configurations of a block (threads) or from separate processes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._config import ConfigError, SimConfig
from ._init import init_adapter
from ._kernels import (
    OPT_ADAM,
    OPT_ADAMW,
    OPT_SGD,
    RECORD_NAMES,
    STATUS_DIVERGED,
    STATUS_OK,
    full_block,
    full_loss,
    full_train_loss,
    lora_block,
    lora_train_loss,
)
from ._result import SimulationResult
from ._rng import stream_key
from ._sampling import draw_training_set
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._task import Task, make_task

__all__ = ["simulate", "simulate_block", "block_key", "record_grid"]

_OPT_CODES = {"sgd": OPT_SGD, "adam": OPT_ADAM, "adamw": OPT_ADAMW}

_BLAS_LIMITED = []


def _single_threaded_blas() -> None:
    """Limit BLAS to one thread in this process, once (not per run: entering and leaving
    threadpoolctl costs milliseconds, a fifth of a small run)."""
    if not _BLAS_LIMITED:
        from threadpoolctl import threadpool_limits

        _BLAS_LIMITED.append(threadpool_limits(limits=1, user_api="blas"))


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


def block_key(config: SimConfig) -> tuple:
    """What configurations of one block must share: shapes, model, optimiser kind, basis
    kind, data mode and the record layout. Everything else may differ."""
    return (config.model, config.d, config.m, config.rank, config.task_rank,
            config.optimizer, config.nesterov, config.basis, config.batch,
            config.train_size, config.steps, config.record_every, config.sharpness_steps,
            tuple(sorted(config.snapshot_steps)), config.engine)


def _segments(config: SimConfig) -> list[tuple[int, int]]:
    """Step ranges [a, b) covering [0, steps), split at sharpness and snapshot steps."""
    cuts = {0, config.steps}
    for t in config.sharpness_steps:
        cuts.update((t, t + 1))
    cuts.update(t for t in config.snapshot_steps if t < config.steps)
    bounds = sorted(cuts)
    return list(zip(bounds[:-1], bounds[1:]))


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
    """Run one simulation with the factorised Numba kernels (a block of one).

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

    Raises:
        ConfigError: ``config`` is not a SimConfig, or the task or the factors do not fit it.

    Example:
        >>> import signaldrift as sd
        >>> res = sd.simulate(sd.SimConfig(d=64, m=64, rank=4, steps=50, lr=1e-2))
        >>> res.final_loss < res.loss[0]
        True
    """
    if not isinstance(config, SimConfig):
        raise ConfigError(f"config: must be a SimConfig (signaldrift.SimConfig(...)), got "
                          f"{type(config).__name__}")
    from ._memory import check_memory

    check_memory(config)
    if config.engine in ("reduced", "flow"):
        from ._reduced import simulate_reduced

        return simulate_reduced(config, task=task, A0=A0, B0=B0)
    return simulate_block([config], tasks=[task], A0s=[A0], B0s=[B0])[0]


def _prepare(config: SimConfig, task: Task | None, A0, B0) -> dict:
    """One configuration's inputs: task, initial factors, training set, constants."""
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
    train = draw_training_set(config, task.lam) if config.train_size > 0 else None
    if A0 is None or B0 is None:
        A_init, B_init = init_adapter(config, task, train)
        A0 = A_init if A0 is None else A0
        B0 = B_init if B0 is None else B0
    r = config.rank if not full else 0
    A0 = _user_factor("A0", A0, (r, config.d))
    B0 = _user_factor("B0", B0, (config.m, r))
    if train is None:
        train = {"X": np.zeros((0, config.d)), "noise": np.zeros((0, config.m))}
    return {"config": config, "task": task, "task_source": task_source, "A0": A0, "B0": B0,
            "train": train, "s": scale_factor(config), "lrs": learning_rates(config)}


def simulate_block(configs: Sequence[SimConfig], *, tasks=None, A0s=None, B0s=None,
                   threads: int = 1) -> list[SimulationResult]:
    """Run a block of configurations in one call of the parallel kernels.

    Args:
        configs: configurations that share :func:`block_key` (shapes, model, optimiser
            kind, basis kind, data mode, record layout); the rest may differ.
        tasks, A0s, B0s: optional per-configuration tasks and factors (lists of the same
            length, entries ``None`` for the defaults), as in :func:`simulate`.
        threads: threads over the configurations (results never depend on it).

    Returns:
        One :class:`SimulationResult` per configuration, in order, each bit-identical to
        ``simulate`` of that configuration alone.
    """
    configs = list(configs)
    if not configs:
        return []
    C = len(configs)
    keys = {block_key(c) for c in configs}
    if len(keys) != 1:
        raise ConfigError("configs: a block needs configurations with the same shapes, "
                          "model, optimizer, basis, data mode and record layout "
                          "(signaldrift._simulate.block_key)")
    tasks = [None] * C if tasks is None else list(tasks)
    A0s = [None] * C if A0s is None else list(A0s)
    B0s = [None] * C if B0s is None else list(B0s)
    prep = [_prepare(c, t, a, b) for c, t, a, b in zip(configs, tasks, A0s, B0s)]
    _single_threaded_blas()
    c0 = configs[0]
    full = c0.model == "full"
    codes = {p["task"].basis.code for p in prep}
    if len(codes) != 1:
        raise ConfigError("tasks: a block needs tasks with the same kind of feature basis")
    code = codes.pop()
    step, loss_step = record_grid(c0)
    loss = np.full((C, loss_step.size), np.nan)
    has_train = c0.train_size > 0
    train_loss = np.full((C, loss_step.size if has_train else 0), np.nan)
    rec = np.full((C, len(RECORD_NAMES), step.size), np.nan)
    status = np.full(C, STATUS_OK, dtype=np.int64)
    stop = np.full(C, c0.steps, dtype=np.int64)

    def stack(fn, dtype=np.float64):
        return np.ascontiguousarray(np.stack([fn(p) for p in prep]), dtype=dtype)

    # A sweep's block shares a few tasks: stack each task's arrays once and index.
    task_of: dict[int, int] = {}
    task_index = np.array([task_of.setdefault(id(p["task"]), len(task_of)) for p in prep],
                          dtype=np.int64)
    tasks_once = list({id(p["task"]): p["task"] for p in prep}.values())

    def stack_task(fn, dtype=np.float64):
        return np.ascontiguousarray(np.stack([fn(t) for t in tasks_once]),
                                    dtype=dtype)[task_index]

    def col(name, fn=None):
        return np.array([getattr(p["config"], name) if fn is None else fn(p["config"])
                         for p in prep], dtype=np.float64)

    lam = stack_task(lambda t: t.lam)
    lrs = stack(lambda p: p["lrs"])
    key_x = np.array([stream_key(c.seed, "inputs") for c in configs], dtype=np.uint64)
    key_e = np.array([stream_key(c.seed, "noise") for c in configs], dtype=np.uint64)
    key_ep = np.array([stream_key(c.seed, "epochs") for c in configs], dtype=np.uint64)
    noise = col("noise")
    Xtr = stack(lambda p: p["train"]["X"])
    Ntr = stack(lambda p: p["train"]["noise"])
    pairs = stack_task(lambda t: t.basis.pairs, np.int64)
    cs = stack_task(lambda t: t.basis.cs)
    Q = stack_task(lambda t: t.basis.Q)
    opt = _OPT_CODES[c0.optimizer]
    momentum, beta1, beta2 = col("momentum"), col("beta1"), col("beta2")
    eps, wd, bound = col("eps"), col("weight_decay"), col("divergence_bound")
    tail = (code, pairs, cs, Q, int(c0.record_every), bound, loss, train_loss, rec, status,
            stop)
    if full:
        state = (np.zeros((C, c0.m, c0.d)),)
        Dstar = stack_task(lambda t: t.delta_star(features=False))
    else:
        consts = [_task_constants(t) for t in tasks_once]
        Sg = np.ascontiguousarray(np.stack([k[0] for k in consts]))[task_index]
        VtS = np.ascontiguousarray(np.stack([k[1] for k in consts]))[task_index]
        c_loss = np.array([k[2] for k in consts])[task_index]
        U, V = stack_task(lambda t: t.U), stack_task(lambda t: t.V)
        sig = stack_task(lambda t: t.sigma_star)
        XVtr = np.ascontiguousarray(np.einsum("cnd,cdk->cnk", Xtr, V))
        s_arr = np.array([p["s"] for p in prep])
        state = (stack(lambda p: p["task"].basis.to_eigen(p["A0"])),
                 stack(lambda p: p["B0"]))
    bufs = tuple(np.zeros_like(x) for x in state)
    sqs = tuple(np.zeros_like(x) for x in state)

    # The LoRA kernel draws fresh minibatches once for the configurations of one stream
    # (seed) that a thread runs together: give each thread's chunk configurations of
    # the same seed (a stable sort keeps the caller's order otherwise).
    order = None
    if not full and c0.batch > 0 and not has_train:
        order = np.argsort(key_x, kind="stable")

    snap_steps = np.array(sorted(c0.snapshot_steps), dtype=np.int64)
    r = 0 if full else c0.rank
    snaps = [{"step": snap_steps, "A": np.full((snap_steps.size, r, c0.d), np.nan),
              "B": np.full((snap_steps.size, c0.m, r), np.nan)} for _ in prep]
    final_loss = np.full(C, np.nan)  # LoRA: lora_loss where each run ends (the kernel)
    sharp_steps = np.array(c0.sharpness_steps, dtype=np.int64)
    sharp = [{"step": sharp_steps, "lambda_max": np.full(sharp_steps.size, np.nan),
              "precond_lambda_max": np.full(sharp_steps.size, np.nan)} for _ in prep]

    def snapshot(t: int) -> None:
        j = np.flatnonzero(snap_steps == t)
        if not j.size or full:
            return
        for c, p in enumerate(prep):
            if status[c] == STATUS_OK:
                snaps[c]["A"][j[0]] = p["task"].basis.to_features(state[0][c])
                snaps[c]["B"][j[0]] = state[1][c]

    for a, b in _segments(c0):
        snapshot(a)
        measure = a in c0.sharpness_steps
        before = tuple(x.copy() for x in state) if measure else None
        if full:
            args = (a, b, state[0], bufs[0], sqs[0], Dstar, lam, lrs, int(c0.batch), key_x,
                    key_e, noise, Xtr, Ntr, key_ep, opt, momentum, bool(c0.nesterov), beta1,
                    beta2, eps, wd, *tail)
        else:
            full_eps_b = np.array([c.effective_eps_b for c in configs])
            args = (a, b, state[0], state[1], bufs[0], bufs[1], sqs[0], sqs[1], s_arr, lam, U,
                    V, sig, Sg, VtS, c_loss, lrs, col("loraplus_lr_ratio"), int(c0.batch),
                    key_x, key_e, noise, Xtr, XVtr, Ntr, key_ep, opt, momentum,
                    bool(c0.nesterov), beta1, beta2, eps, full_eps_b, wd, *tail,
                    b == c0.steps, final_loss)
        _advance(full_block if full else lora_block, args, C, threads, order)
        if measure:
            j = int(np.flatnonzero(sharp_steps == a)[0])
            for c, p in enumerate(prep):
                if status[c] == STATUS_OK:
                    lm, plm = _measure_sharpness(
                        p["config"], p["task"], p["s"], tuple(x[c] for x in before),
                        tuple(x[c] for x in sqs), a)
                    sharp[c]["lambda_max"][j], sharp[c]["precond_lambda_max"][j] = lm, plm
        if np.all(status != STATUS_OK):
            break

    results = []
    for c, p in enumerate(prep):
        cfg, task, basis = p["config"], p["task"], p["task"].basis
        diverged = status[c] == STATUS_DIVERGED
        diverged_step = int(stop[c]) if diverged else -1
        X_c, N_c = p["train"]["X"], p["train"]["noise"]
        if full:
            final = float(full_loss(state[0][c], Dstar[c], task.lam))
        else:
            final = float(final_loss[c])
        diverged_loss = float("nan")
        if diverged:
            diverged_loss = final
        elif not (np.isfinite(final) and final <= cfg.divergence_bound):
            diverged, diverged_step, diverged_loss = True, cfg.steps, final
        else:
            loss[c, -1] = final
            if has_train:
                train_loss[c, -1] = float(
                    full_train_loss(state[0][c], Dstar[c], X_c, N_c) if full else
                    lora_train_loss(p["s"], state[0][c], state[1][c], task.U, Sg[c], X_c,
                                    XVtr[c], N_c))
        if not diverged:
            j = np.flatnonzero(snap_steps == cfg.steps)
            if j.size and not full:
                snaps[c]["A"][j[0]] = basis.to_features(state[0][c])
                snaps[c]["B"][j[0]] = state[1][c]
        if diverged:
            # Nothing recorded at or after the diverged step is a valid record.
            loss[c, loss_step >= diverged_step] = np.nan
            if has_train:
                train_loss[c, loss_step >= diverged_step] = np.nan
            rec[c][:, step >= diverged_step] = np.nan
        records = {"loss": loss[c]}
        if has_train:
            records["train_loss"] = train_loss[c]
        records.update({name: rec[c, q] for q, name in enumerate(RECORD_NAMES)})
        if full:
            A_fin, B_fin = np.zeros((0, cfg.d)), np.zeros((cfg.m, 0))
            Delta = basis.to_features(state[0][c])
        else:
            A_fin, B_fin, Delta = basis.to_features(state[0][c]), state[1][c].copy(), None
        train_arrays = {}
        if has_train:
            train_arrays = {"X_train": basis.to_features(X_c), "noise_train": N_c}
        results.append(SimulationResult(
            config=cfg, task=task, scale=p["s"], A0=p["A0"], A=A_fin, B=B_fin, step=step,
            loss_step=loss_step, records=records, diverged=bool(diverged),
            diverged_step=diverged_step, diverged_loss=diverged_loss, sharpness=sharp[c],
            Delta=Delta, B0=p["B0"], task_source=p["task_source"],
            snapshots=snaps[c] if snap_steps.size else {}, train=train_arrays,
            noise_floor=0.5 * cfg.m * float(task.noise) ** 2))
    return results


def _advance(kernel, args: tuple, C: int, threads: int,
             order: np.ndarray | None = None) -> None:
    """One segment of the block kernel for all C configurations: in this thread, or
    spread over ``threads`` threads in chunks of a few consecutive configurations of
    ``order`` (default: 0…C−1) taken in turn (the kernels release the GIL; each
    configuration's arithmetic is the same either way, so the results do not depend on
    the chunks)."""
    threads = max(1, min(int(threads), C))
    order = np.arange(C, dtype=np.int64) if order is None else np.asarray(order, np.int64)
    if threads == 1:
        kernel(order, *args)
        return
    # Chunks of ~C/(4·threads) configurations: few kernel calls (each call types ~50
    # arguments), yet runs that diverge early still balance over the threads.
    size = max(1, C // (4 * threads))
    chunks = [np.ascontiguousarray(order[a:a + size]) for a in range(0, C, size)]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        for _ in pool.map(lambda which: kernel(which, *args), chunks):
            pass


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
