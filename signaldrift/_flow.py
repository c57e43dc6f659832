"""Gradient flow on the overlaps: the η → 0 limit of the reduced engine (THEORY.md §7).

With flow time ``τ = Σ_{i<t} lr_i / (1 − μ)`` (η_A's time; heavy-ball momentum μ at a
fixed μ and η → 0 moves like plain descent with learning rate η/(1 − μ), Nesterov too), the
reduced step of :mod:`signaldrift._reduced` becomes the ODE (``flow_field`` of
:mod:`signaldrift._generated.reduced`, derived as the O(η) term of the step in
``signaldrift derive reduced``)

    dN/dτ  = −(sλ(MᵀEc + s·Qp·N) + wd·N),        dPp/dτ = −(DA·Pp + Pp·DA),
    dM/dτ  = −λ_r(sλ(Ec·Nᵀ + s·M·Pp) + wd·M),    dQp/dτ = −λ_r(DB·Qp + Qp·DB),

``Ec = s·M·N − diag(σ⋆)``, ``DA = s²λQ + wd·I``, ``DB = s²λP + wd·I``, λ_r =
``loraplus_lr_ratio``. With wd = 0 it conserves ``C = λ_r·AAᵀ − BᵀB = λ_r(NNᵀ + Pp) −
(MᵀM + Qp)`` (balancedness, for any Σ; here checked along the solution). A GD step changes C
by exactly ``λ_r·ΔAΔAᵀ − ΔBᵀΔB = O(η²)`` (no momentum, wd = 0), so after a flow time τ GD
has drifted by O(η·τ).

The ODE is integrated by ``scipy.integrate.solve_ivp`` (DOP853, ``flow_rtol``,
``flow_atol`` of the settings) and read at the flow times of the recorded steps, so a flow
result overlays GD results step for step.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from ._config import ConfigError, SimConfig
from ._generated.reduced import flow_field, residual_norm_sq
from ._result import SimulationResult
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._task import Task

__all__ = ["simulate_flow", "flow_times", "FLOW_RECORDS"]

#: Records defined along the flow (state quantities); the step quantities of THEORY §3
#: (signal, drift, descent, curvature, …) need a finite step and are NaN.
FLOW_RECORDS = ("grad_norm", "adapter_norm", "A_norm", "B_norm", "subspace_overlap")

#: Integrator of solve_ivp (explicit, 8th order: the field is smooth and not stiff for the
#: step sizes GD itself can take).
FLOW_METHOD = "DOP853"


def flow_times(config: SimConfig) -> np.ndarray:
    """Flow time τ_t of step t = 0..steps: ``τ_t = Σ_{i<t} lr_i / (1 − μ)``."""
    lrs = learning_rates(config)
    return np.concatenate([[0.0], np.cumsum(lrs)]) / (1.0 - float(config.momentum))


def _unpack(y: np.ndarray, r: int, k: int):
    a, b, c = r * k, r * k + r * r, 2 * r * k + r * r
    return (y[:a].reshape(r, k), y[a:b].reshape(r, r), y[b:c].reshape(k, r),
            y[c:].reshape(r, r))


def simulate_flow(config: SimConfig, *, task: Task | None = None,
                  A0: np.ndarray | None = None, B0: np.ndarray | None = None
                  ) -> SimulationResult:
    """Integrate the gradient flow on the overlaps (``engine="flow"``; module docstring).

    The initial overlaps, settings and refusals are those of the reduced engine
    (:func:`signaldrift.simulate_reduced`); the learning rate and schedule only set the
    clock τ_t (:func:`flow_times`).

    Records at the flow time of each recorded step: ``loss`` (also at t = steps) and the
    state quantities ``grad_norm``, ``adapter_norm``, ``A_norm``, ``B_norm``,
    ``subspace_overlap``; the step quantities are NaN. ``extras``: ``tau`` (τ at
    ``loss_step``), ``balance`` (C(τ) at ``loss_step``, (n, r, r)), ``balance_drift``
    ‖C(τ) − C(0)‖_F at ``loss_step``, ``nfev``, the initial and final overlaps as in the
    reduced engine. A flow never diverges (L decreases along it).

    Args:
        config: the settings (``engine="flow"``; ``flow_rtol``, ``flow_atol``).
        task, A0, B0: as for :func:`signaldrift.simulate_reduced`.

    Returns:
        The :class:`SimulationResult`.

    Raises:
        ConfigError: as the reduced engine; RuntimeError if the integrator fails.
    """
    from ._reduced import Overlaps, _empty_sharpness, _records_dict, _record_grid, initial_overlaps

    if not isinstance(config, SimConfig) or config.engine != "flow":
        raise ConfigError("engine: simulate_flow needs a SimConfig with engine 'flow'")
    ov, info = initial_overlaps(config, task=task, A0=A0, B0=B0)
    s = scale_factor(config)
    r, k = config.rank, config.task_rank
    ratio = float(config.loraplus_lr_ratio)
    # τ already counts lr/(1 − μ) (flow_times), so the field runs at rates 1 and λ_r.
    c_A, c_B = 1.0, ratio
    wd, lam = float(config.weight_decay), ov.lam
    Sg = np.diag(ov.sigma_star)
    step, loss_step = _record_grid(config)
    tau_all = flow_times(config)
    t_eval = tau_all[loss_step]

    def rhs(_t, y):
        N, Pp, M, Qp = _unpack(y, r, k)
        dN, dPp, dM, dQp = flow_field(s, lam, wd, c_A, c_B, np.ascontiguousarray(N),
                                      np.ascontiguousarray(Pp), np.ascontiguousarray(M),
                                      np.ascontiguousarray(Qp), Sg)
        return np.concatenate([dN.ravel(), dPp.ravel(), dM.ravel(), dQp.ravel()])

    y0 = np.concatenate([ov.N.ravel(), ov.Pp.ravel(), ov.M.ravel(), ov.Qp.ravel()])
    sol = solve_ivp(rhs, (0.0, float(t_eval[-1])), y0, method=FLOW_METHOD, t_eval=t_eval,
                    rtol=float(config.flow_rtol), atol=float(config.flow_atol))
    if not sol.success:
        raise RuntimeError(f"simulate_flow: solve_ivp failed: {sol.message}")
    n = loss_step.size
    loss = np.full(n, np.nan)
    bal = np.full((n, r, r), np.nan)
    states = []
    C0 = ratio * ov.P - ov.Q
    for j in range(n):
        N, Pp, M, Qp = (np.ascontiguousarray(x) for x in _unpack(sol.y[:, j], r, k))
        o = Overlaps(N, Pp, M, Qp, ov.sigma_star, lam)
        Ec = s * M @ N - Sg
        loss[j] = 0.5 * lam * residual_norm_sq(s, Ec, M, Pp, N, Qp)
        bal[j] = ratio * o.P - o.Q
        states.append(o)
    from ._reduced import REDUCED_RECORDS

    rec = np.full((len(REDUCED_RECORDS), step.size), np.nan)
    row = {name: q for q, name in enumerate(REDUCED_RECORDS)}
    for i in range(step.size):
        o = states[i]  # loss_step[i] == step[i] for i < step.size
        P, Q = o.P, o.Q
        rec[row["grad_norm"], i] = lam * np.sqrt(2.0 * loss[i] / lam)
        rec[row["adapter_norm"], i] = s * np.sqrt(max(np.trace(Q @ P), 0.0))
        rec[row["A_norm"], i] = np.sqrt(max(np.trace(P), 0.0))
        rec[row["B_norm"], i] = np.sqrt(max(np.trace(Q), 0.0))
        rec[row["subspace_overlap"], i] = (np.trace(np.linalg.pinv(P) @ (o.N @ o.N.T))
                                           / min(r, k))
    fin = states[-1]
    extras = {
        "overlap_init": np.array(info["mode"]), "lam": np.array(lam),
        "sigma_star": ov.sigma_star, "tau": t_eval, "balance": bal,
        "balance_drift": np.sqrt(np.sum((bal - C0) ** 2, axis=(1, 2))),
        "nfev": np.array(int(sol.nfev)),
        "N0": ov.N, "M0": ov.M, "Pp0": ov.Pp, "Qp0": ov.Qp, "P0": ov.P, "Q0": ov.Q,
        "N": fin.N, "M": fin.M, "Pp": fin.Pp, "Qp": fin.Qp, "P": fin.P, "Q": fin.Q,
    }
    noise = float(info["task"].noise) if info["task"] is not None else float(config.noise)
    return SimulationResult(
        config=config, task=info["task"], scale=s, A0=info["A0"], A=None, B=None, step=step,
        loss_step=loss_step, records=_records_dict(loss, rec), diverged=False,
        diverged_step=-1, diverged_loss=float("nan"), sharpness=_empty_sharpness(),
        Delta=None, B0=info["B0"], task_source=info["task_source"],
        noise_floor=0.5 * config.m * noise**2, extras=extras,
    )
