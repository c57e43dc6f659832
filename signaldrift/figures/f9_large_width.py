"""F9: the large-width limit of LoRA with the reduced engine (THEORY.md §4, §7).

Settings, experiment, analysis and drawing of figure F9 in one module. Every run uses
isotropic Σ (spectrum 0), the population gradient, SGD, rule ``lora`` (s = α/r), PEFT's init,
r = k = 8, equal σ⋆ and noise-free labels; the task and the initial overlaps are drawn per
seed. Panels:

- (a) the reduced engine against the full engine at d = m = 256 (the same task and A₀):
  loss curves overlaid for plain SGD, SGD with momentum 0.9 and LoRA+ (λ_r = 4).
- (b) the plateau length — the first step with L_t < 0.9·L₀ — against d from 10² to 10⁸
  (sampled overlaps), with the derived prediction of :mod:`signaldrift._escape` (THEORY
  §4's negative root and the expected initial overlap ‖n_j‖² = r/(3d), Pp ≈ (d − k)/(3d)·I),
  which grows like ln d / (2 ln ρ).
- (c) the loss after a fixed budget against α for several d up to 10⁸ (α*(d) in the
  large-width limit), with two derived markers: the α whose predicted escape step equals the
  budget (per d) and the GD stability limit at init, η·λ_max(H₀) = 2 (THEORY §4; above it
  GD may still converge after a catapult, P1).
- (d) the balancedness ``C = λ_r·AAᵀ − BᵀB`` (λ_r = 2) along gradient flow and along GD for
  several η, as ‖C(τ) − C(0)‖/‖C(0)‖ against the flow time τ = Σ lr (THEORY §7): the flow
  conserves C to the solver's tolerance, GD drifts by O(η²) per step, O(η) at a fixed τ.

Modes: ``test`` (smoke size, numbers mean nothing), ``quick`` (seconds), ``full``.
Every setting is fixed here before looking at the results; nothing is fitted to the data a
line is compared with (the overlays are derived; the fitted slope of (b) is reported with its
lack of fit, never drawn as theory).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._config import ConfigError, SimConfig
from ._common import DPI, jsonable
from .._escape import (escape_step, expected_init_overlaps, growth_factor,
                      plateau_coefficient, predict_escape_step)
from .._scaling import scale_factor

__all__ = ["MODES", "settings", "figure_F9", "plot_large_width", "main"]

MODES = ("test", "quick", "full")
STEM = "F9_large_width"
THRESHOLD = 0.9


def settings(mode: str) -> dict[str, Any]:
    """Every setting of F9 in ``mode`` (a plain dict, for the docs and the summary)."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    test, full = mode == "test", mode == "full"
    return {
        "common": {"rank": 8, "task_rank": 8, "spectrum": 0.0, "optimizer": "sgd",
                   "rule": "lora", "init": "peft", "noise": 0.0, "decay": 0.0},
        "a": {"d": 64 if test else 256, "steps": 60 if test else 400, "alpha": 16.0,
              "cases": {"sgd": {"lr": 0.25}, "momentum 0.9": {"lr": 0.025, "momentum": 0.9},
                        "LoRA+ λ_r = 4": {"lr": 0.1, "loraplus_lr_ratio": 4.0}},
              "seed": 0},
        "b": {"lr": 0.25, "alphas": [8.0, 16.0],
              "log10_d": [2.0, 4.0, 8.0] if test else (
                  [2.0 + 0.5 * i for i in range(13)] if full else [2.0, 3.0, 4.0, 5.0, 6.0,
                                                                   7.0, 8.0]),
              "seeds": [0, 1] if test else (list(range(12)) if full else list(range(4))),
              "steps": 600, "fit_from_log10_d": 4.0},
        "c": {"lr": 0.25, "budget": 100,
              "log10_d": [2.0, 8.0] if test else [2.0, 4.0, 6.0, 8.0],
              "alphas": [2.0**e for e in np.arange(0.0, 7.01, 1.0 if test else (
                  0.25 if full else 0.5))],
              "seeds": [0] if test else (list(range(6)) if full else list(range(3)))},
        "d": {"d": 10**4, "alpha": 16.0, "loraplus_lr_ratio": 2.0, "tau": 10.0 if test else 20.0,
              "lrs": [0.1, 0.05] if test else [0.2, 0.1, 0.05, 0.025],
              "flow_rtol": 1e-10, "flow_atol": 1e-12, "seed": 0, "record_points": 100},
        "dpi": 150,
    }


def _base(S: dict, **changes: Any) -> SimConfig:
    kw = dict(S["common"])
    kw.update(changes)
    return SimConfig(**kw)


def _simulate(cfg: SimConfig):
    if cfg.engine == "full":
        from .._simulate import simulate

        return simulate(cfg)
    from .._reduced import simulate_reduced

    return simulate_reduced(cfg)


# =========================================================================== experiments
def _panel_a(S: dict) -> tuple[xr.Dataset, dict]:
    A = S["a"]
    names = list(A["cases"])
    steps = A["steps"]
    full = np.full((len(names), steps + 1), np.nan)
    red = np.full_like(full, np.nan)
    out = {}
    for i, name in enumerate(names):
        # basis "eigen": SGD is the same in every basis (THEORY §1); the eigenbasis spares
        # the full engine the rotations.
        cfg = _base(S, d=A["d"], m=A["d"], alpha=A["alpha"], steps=steps, record_every=1,
                    seed=A["seed"], basis="eigen", **A["cases"][name])
        f = _simulate(cfg)
        r = _simulate(cfg.replace(engine="reduced"))
        full[i], red[i] = f.loss, r.loss
        ok = np.isfinite(f.loss) & (f.loss > 1e-8)
        rel = np.abs(r.loss[ok] - f.loss[ok]) / f.loss[ok]
        out[name] = {"max_rel_diff_loss_gt_1e-8": float(rel.max()) if rel.size else None,
                     "final_loss_full": float(f.final_loss),
                     "final_loss_reduced": float(r.final_loss),
                     "overlap_init": str(r.extras["overlap_init"])}
    ds = xr.Dataset({"a_loss_full": (("a_case", "a_step"), full),
                     "a_loss_reduced": (("a_case", "a_step"), red)},
                    coords={"a_case": names, "a_step": np.arange(steps + 1)})
    return ds, out


def _escape_runs(S: dict) -> dict:
    B = S["b"]
    dims = [10.0**x for x in B["log10_d"]]
    meas = np.full((len(B["alphas"]), len(dims), len(B["seeds"])), np.nan)
    pred_run = np.full_like(meas, np.nan)
    for a_i, alpha in enumerate(B["alphas"]):
        for d_i, d in enumerate(dims):
            di = int(round(d))
            cfg = _base(S, d=di, m=di, alpha=alpha, lr=B["lr"], steps=B["steps"],
                        record_every=1, engine="reduced", overlap_init="sampled")
            for s_i, seed in enumerate(B["seeds"]):
                res = _simulate(cfg.replace(seed=seed))
                meas[a_i, d_i, s_i] = escape_step(res, threshold=THRESHOLD)
                N0, Pp0 = res.extras["N0"], res.extras["Pp0"]
                pred_run[a_i, d_i, s_i] = predict_escape_step(
                    cfg, n_sq=np.sum(N0**2, axis=0), p=np.trace(Pp0) / cfg.rank,
                    threshold=THRESHOLD)
    return {"dims": np.array(dims), "meas": meas, "pred_run": pred_run}


def _panel_b(S: dict) -> tuple[xr.Dataset, dict]:
    B = S["b"]
    runs = _escape_runs(S)
    dims, meas = runs["dims"], runs["meas"]
    line_x = np.logspace(min(B["log10_d"]), max(B["log10_d"]), 61)
    lines = np.full((len(B["alphas"]), line_x.size), np.nan)
    out = {}
    rng = np.random.default_rng(0)
    for a_i, alpha in enumerate(B["alphas"]):
        for j, d in enumerate(line_x):
            di = int(round(d))
            cfg = _base(S, d=di, m=di, alpha=alpha, lr=B["lr"], steps=B["steps"],
                        engine="reduced")
            lines[a_i, j] = predict_escape_step(cfg, threshold=THRESHOLD)
        big = _base(S, d=10**8, m=10**8, alpha=alpha, lr=B["lr"], engine="reduced")
        coef = plateau_coefficient(big, p=1.0 / 3.0)
        # Measured slope of the seed-mean escape step against ln d over the large widths,
        # least squares; 95% CI: percentile bootstrap over seeds; lack of fit: residuals.
        sel = np.log10(dims) >= B["fit_from_log10_d"] - 1e-9
        x = np.log(dims[sel])
        Y = meas[a_i][sel]
        mean = np.nanmean(Y, axis=1)
        fit = np.polyfit(x, mean, 1)
        resid = mean - np.polyval(fit, x)
        boots = []
        n_s = Y.shape[1]
        for _ in range(1000 if n_s > 1 else 0):
            pick = rng.integers(0, n_s, n_s)
            boots.append(np.polyfit(x, np.nanmean(Y[:, pick], axis=1), 1)[0])
        ci = np.percentile(boots, [2.5, 97.5]).tolist() if boots else [None, None]
        diff = meas[a_i] - runs["pred_run"][a_i]
        out[f"alpha_{alpha:g}"] = {
            "scale": scale_factor(big),
            "growth_factor_rho": growth_factor(big, p=1.0 / 3.0),
            "plateau_coefficient_derived": coef,
            "plateau_coefficient_measured": {
                "value": float(fit[0]), "ci95": ci, "fit_over_d": [float(d) for d in dims[sel]],
                "method": "least squares of the seed-mean escape step on ln d; bootstrap "
                          "over seeds",
                "lack_of_fit": {"rms_residual_steps": float(np.sqrt(np.mean(resid**2))),
                                "max_abs_residual_steps": float(np.max(np.abs(resid)))}},
            "escape_mean_by_d": {f"{d:.0e}": float(v) for d, v in
                                 zip(dims, np.nanmean(meas[a_i], axis=1))},
            "measured_minus_predicted_per_run": {
                "mean": float(np.nanmean(diff)), "max_abs": float(np.nanmax(np.abs(diff)))},
        }
    ds = xr.Dataset(
        {"b_escape": (("b_alpha", "b_d", "b_seed"), meas),
         "b_escape_predicted_run": (("b_alpha", "b_d", "b_seed"), runs["pred_run"]),
         "b_escape_predicted_line": (("b_alpha", "b_line_d"), lines)},
        coords={"b_alpha": np.array(B["alphas"]), "b_d": dims,
                "b_seed": np.array(B["seeds"], np.int32), "b_line_d": line_x})
    return ds, out


def _stability_alpha(S: dict, lr: float, d: int) -> float:
    """α with lr·λ_max(H₀) = 2 at init (THEORY §4, μ = p = (d − k)/(3d), g = σ⋆ = 1/√k):
    s solves s²μ + √(s⁴μ² + 4s²g²) = 4/lr; α = r·s (rule lora)."""
    cfg = _base(S, d=d, m=d, engine="reduced")
    mu = expected_init_overlaps(cfg)["p"]
    g = 1.0 / math.sqrt(cfg.task_rank)
    # λ_max(s) = target, λ_max·λ_min = −s²g², λ_max + λ_min = s²μ ⇒ s² = t²/(tμ + g²).
    t = 2.0 / lr
    return cfg.rank * math.sqrt(t * t / (t * mu + g * g))


def _escape_alpha(S: dict, lr: float, budget: int, d: int, alphas, top: float) -> float:
    """Smallest α whose predicted escape step (expected overlaps) is at most the budget,
    by bisection on ln α below ``top`` (the stability α; the predicted escape step falls as
    α grows there, since |λ₋| grows with s); NaN if even ``top`` does not escape."""
    def escapes(a: float) -> bool:
        cfg = _base(S, d=d, m=d, alpha=float(a), lr=lr, steps=budget, engine="reduced")
        t = predict_escape_step(cfg, threshold=THRESHOLD)
        return math.isfinite(t) and t <= budget

    lo, hi = math.log(min(alphas)), math.log(top)
    if escapes(math.exp(lo)):
        return float(min(alphas))
    if not escapes(math.exp(hi)):
        return float("nan")
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if escapes(math.exp(mid)) else (mid, hi)
    return float(math.exp(hi))


def _seed_mean(loss: np.ndarray, div: np.ndarray) -> np.ndarray:
    """Mean over the last axis (seeds); NaN where any seed diverged (a divergence is never
    averaged away)."""
    anyd = div.any(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN cells: every seed diverged
        return np.where(anyd, np.nan, np.nanmean(np.where(div, np.nan, loss), axis=-1))


def _panel_c(S: dict) -> tuple[xr.Dataset, dict]:
    C = S["c"]
    dims = [int(round(10.0**x)) for x in C["log10_d"]]
    alphas = C["alphas"]
    loss = np.full((len(dims), len(alphas), len(C["seeds"])), np.nan)
    div = np.zeros(loss.shape, dtype=np.int8)
    for d_i, d in enumerate(dims):
        for a_i, alpha in enumerate(alphas):
            cfg = _base(S, d=d, m=d, alpha=alpha, lr=C["lr"], steps=C["budget"],
                        record_every=C["budget"], engine="reduced", overlap_init="sampled")
            for s_i, seed in enumerate(C["seeds"]):
                res = _simulate(cfg.replace(seed=seed))
                div[d_i, a_i, s_i] = int(res.diverged)
                loss[d_i, a_i, s_i] = res.final_loss if not res.diverged else np.nan
    mean = _seed_mean(loss, div.astype(bool))
    stab = np.array([_stability_alpha(S, C["lr"], d) for d in dims])
    esc_alpha = np.array([_escape_alpha(S, C["lr"], C["budget"], d, alphas, top)
                          for d, top in zip(dims, stab)])
    out = {}
    for d_i, d in enumerate(dims):
        row = mean[d_i]
        best = int(np.nanargmin(row)) if np.isfinite(row).any() else None
        stable = np.array(alphas) <= stab[d_i]
        row_s = np.where(stable, row, np.nan)
        best_s = int(np.nanargmin(row_s)) if np.isfinite(row_s).any() else None
        out[f"{d:.0e}"] = {
            "alpha_star_grid": alphas[best] if best is not None else None,
            "loss_at_alpha_star": float(row[best]) if best is not None else None,
            "alpha_star_below_init_stability": alphas[best_s] if best_s is not None else None,
            "loss_at_alpha_star_below_init_stability": (float(row_s[best_s])
                                                        if best_s is not None else None),
            "alpha_escape_predicted": float(esc_alpha[d_i]),
            "alpha_stability_init": float(stab[d_i]),
            "diverged_alphas": [a for a, dv in zip(alphas, div[d_i].any(axis=1)) if dv],
        }
    ds = xr.Dataset(
        {"c_loss": (("c_d", "c_alpha", "c_seed"), loss),
         "c_diverged": (("c_d", "c_alpha", "c_seed"), div),
         "c_alpha_escape_predicted": (("c_d",), esc_alpha),
         "c_alpha_stability_init": (("c_d",), stab)},
        coords={"c_d": np.array(dims, float), "c_alpha": np.array(alphas),
                "c_seed": np.array(C["seeds"], np.int32)})
    return ds, out


def _panel_d(S: dict) -> tuple[xr.Dataset, dict]:
    D = S["d"]
    lrs = D["lrs"]
    n_pts = D["record_points"]
    grid = np.linspace(0.0, D["tau"], n_pts + 1)
    drift = np.full((len(lrs) + 1, grid.size), np.nan)
    base = _base(S, d=D["d"], m=D["d"], alpha=D["alpha"],
                 loraplus_lr_ratio=D["loraplus_lr_ratio"], seed=D["seed"], engine="reduced",
                 overlap_init="sampled")
    c0_norm = None
    finals = []
    for i, lr in enumerate(lrs):
        steps = int(round(D["tau"] / lr))
        every = max(1, steps // n_pts)
        res = _simulate(base.replace(lr=lr, steps=steps, record_every=every))
        C0 = D["loraplus_lr_ratio"] * res.extras["P0"] - res.extras["Q0"]
        c0_norm = float(np.linalg.norm(C0))
        tau = res.step * lr
        drift[i] = np.interp(grid, tau, res.extras["balance_drift"] / c0_norm)
        C1 = D["loraplus_lr_ratio"] * res.extras["P"] - res.extras["Q"]
        finals.append(float(np.linalg.norm(C1 - C0)) / c0_norm)
    flow = _simulate(base.replace(engine="flow", lr=lrs[-1], steps=int(round(D["tau"] / lrs[-1])),
                                  record_every=max(1, int(round(D["tau"] / lrs[-1])) // n_pts),
                                  flow_rtol=D["flow_rtol"], flow_atol=D["flow_atol"]))
    tau_f = flow.extras["tau"]
    drift[-1] = np.interp(grid, tau_f, flow.extras["balance_drift"] / c0_norm)
    slope = float(np.polyfit(np.log(lrs), np.log(finals), 1)[0])
    per_step = _one_step_slope(S)
    out = {"drift_at_tau_by_lr": {f"{lr:g}": v for lr, v in zip(lrs, finals)},
           "slope_drift_at_fixed_tau_vs_lr": {"value": slope, "theory": 1.0},
           "slope_drift_per_step_vs_lr": {"value": per_step, "theory": 2.0},
           "flow_max_relative_drift": float(np.nanmax(flow.extras["balance_drift"]) / c0_norm),
           "flow_rtol": D["flow_rtol"], "tau": D["tau"]}
    ds = xr.Dataset({"d_balance_drift": (("d_series", "d_tau"), drift)},
                    coords={"d_series": [f"GD η = {lr:g}" for lr in lrs] + ["gradient flow"],
                            "d_tau": grid})
    return ds, out


def _one_step_slope(S: dict) -> float:
    """Log-log slope of ‖C₁ − C₀‖ (one GD step from a generic state A₀, B₀ ≠ 0) against η."""
    from .._simulate import simulate

    D = S["d"]
    etas = np.array([1e-2, 5e-3, 2.5e-3, 1.25e-3])
    out = []
    for eta in etas:
        cfg = _base(S, d=32, m=32, alpha=D["alpha"], loraplus_lr_ratio=D["loraplus_lr_ratio"],
                    lr=float(eta), steps=1, engine="reduced")
        rng = np.random.default_rng(0)
        A0 = 0.3 * rng.standard_normal((cfg.rank, cfg.d))
        B0 = 0.3 * rng.standard_normal((cfg.m, cfg.rank))
        res = simulate(cfg, A0=A0, B0=B0)
        lr_ = D["loraplus_lr_ratio"]
        dC = (lr_ * res.extras["P"] - res.extras["Q"]) - (lr_ * res.extras["P0"]
                                                          - res.extras["Q0"])
        out.append(np.linalg.norm(dC))
    return float(np.polyfit(np.log(etas), np.log(out), 1)[0])


# =========================================================================== plotting
_D_COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
             "tab:pink", "tab:gray", "tab:olive", "tab:cyan", "navy", "maroon", "teal"]


def plot_large_width(ds: xr.Dataset, *, save_to: str | Path | None = None,
                     dpi: int = 150) -> Figure:
    """Draw F9 from its dataset (module docstring); returns the Figure, saves with
    ``save_to`` (``x.png``/``x.pdf``, or both for a path without suffix)."""
    from .._plotting import save_figure

    fig = Figure(figsize=(12.0, 9.0), dpi=DPI, layout="constrained")  # layout at the PNG dpi
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    fs = 9

    # (a) reduced vs full
    ax = axes[0, 0]
    steps = ds["a_step"].values
    for i, name in enumerate(ds["a_case"].values):
        c = _D_COLORS[i]
        ax.plot(steps, ds["a_loss_full"].values[i], color=c, lw=2.2, alpha=0.45,
                label=f"{name}: full engine")
        every = max(1, steps.size // 25)
        ax.plot(steps[::every], ds["a_loss_reduced"].values[i][::every], "o", color=c, ms=3.5,
                mfc="none", label=f"{name}: reduced engine")
    ax.set_yscale("log")
    ax.set_xlabel("step t", fontsize=fs)
    ax.set_ylabel("excess loss L_t", fontsize=fs)
    ax.set_title(f"(a) reduced vs full engine, d = m = {int(ds.attrs['a_d'])}, r = k = 8",
                 fontsize=fs + 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    # (b) plateau length against d
    ax = axes[0, 1]
    dims = ds["b_d"].values
    for a_i, alpha in enumerate(ds["b_alpha"].values):
        c = _D_COLORS[a_i]
        m = ds["b_escape"].values[a_i]
        mean = np.nanmean(m, axis=1)
        lo, hi = np.nanmin(m, axis=1), np.nanmax(m, axis=1)
        ax.errorbar(dims, mean, yerr=[mean - lo, hi - mean], fmt="o", color=c, ms=4,
                    capsize=2, label=f"reduced engine, α = {alpha:g} (mean, min–max)")
        ax.plot(ds["b_line_d"].values, ds["b_escape_predicted_line"].values[a_i], "-",
                color="k" if a_i == 0 else "0.45", lw=1.0,
                label=f"derived (THEORY §4 root, E‖n‖² = r/3d), α = {alpha:g}")
    ax.set_xscale("log")
    ax.set_xlabel("width d = m", fontsize=fs)
    ax.set_ylabel("plateau: first t with L_t < 0.9 L₀", fontsize=fs)
    ax.set_title(f"(b) saddle escape, SGD η = {ds.attrs['b_lr']:g}", fontsize=fs + 1)
    ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.set_ylim(0, np.nanmax(ds["b_escape"].values) * 1.35)

    # (c) loss at a fixed budget against α
    ax = axes[1, 0]
    alphas = ds["c_alpha"].values
    top = 0.0
    for d_i, d in enumerate(ds["c_d"].values):
        c = _D_COLORS[d_i]
        L = ds["c_loss"].values[d_i]
        dv = ds["c_diverged"].values[d_i].astype(bool)
        anyd = dv.any(axis=1)
        mean = _seed_mean(L, dv)
        ax.plot(alphas, mean, "o-", color=c, ms=3.5, lw=1.2, label=f"d = 10^{np.log10(d):.0f}")
        xd = alphas[anyd]
        if xd.size:
            ax.plot(xd, np.full(xd.size, 0.97 - 0.035 * d_i), "x", color=c, ms=6,
                    transform=ax.get_xaxis_transform(), clip_on=False)
        ea = ds["c_alpha_escape_predicted"].values[d_i]
        if np.isfinite(ea):
            ax.axvline(ea, color=c, ls=":", lw=1.2)
        top = max(top, float(np.nanmax(mean)) if np.isfinite(mean).any() else 0.0)
    ax.axvline(float(ds["c_alpha_stability_init"].values[-1]), color="k", ls="--", lw=1.0,
               label="η·λ_max(H₀) = 2 (THEORY §4)")
    ax.plot([], [], ":", color="0.3", label="predicted escape at the budget (per d)")
    ax.plot([], [], "x", color="0.3", label="diverged")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("α (s = α/r)", fontsize=fs)
    ax.set_ylabel(f"excess loss after {int(ds.attrs['c_budget'])} steps", fontsize=fs)
    ax.set_title(f"(c) loss at a fixed budget, SGD η = {ds.attrs['c_lr']:g}", fontsize=fs + 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)

    # (d) balancedness
    ax = axes[1, 1]
    tau = ds["d_tau"].values
    for i, name in enumerate(ds["d_series"].values):
        y = ds["d_balance_drift"].values[i]
        style = dict(color="k", lw=2.0) if "flow" in str(name) else dict(color=_D_COLORS[i],
                                                                           lw=1.2)
        ax.plot(tau[1:], y[1:], label=str(name), **style)
    ax.set_yscale("log")
    ax.set_xlabel("flow time τ = Σ η_t", fontsize=fs)
    ax.set_ylabel("‖C(τ) − C(0)‖ / ‖C(0)‖,  C = λ_r AAᵀ − BᵀB", fontsize=fs)
    ax.set_title(f"(d) balancedness, λ_r = {ds.attrs['d_ratio']:g}, d = m = "
                 f"{int(ds.attrs['d_d'])}", fontsize=fs + 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for a in axes.ravel():
        a.tick_params(labelsize=8)
    save_figure(fig, save_to, dpi=dpi)
    return fig


# =========================================================================== figure
def _write(ds: xr.Dataset, fig: Figure, out: Path, dpi: int) -> list[str]:
    """``F9_large_width.png`` (dpi ≥ 150), ``.pdf`` and ``.nc`` (netCDF3, atomically)."""
    from .._plotting import save_figure

    save_figure(fig, out / STEM, dpi=dpi)
    ds = ds.copy()
    for k, v in list(ds.attrs.items()):
        if isinstance(v, (dict, list, tuple)):
            ds.attrs[k] = json.dumps(jsonable(v))
    tmp = out / f".{STEM}.nc.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine="scipy")
    os.replace(tmp, out / f"{STEM}.nc")
    return [f"{STEM}.png", f"{STEM}.pdf", f"{STEM}.nc"]


def figure_F9(mode: str, out_dir, *, workers: int | None = None,
              progress: bool = False) -> dict:
    """F9: the large-width limit with the reduced engine (module docstring).

    Runs in-process (the reduced runs take milliseconds; ``workers`` is accepted for the
    common signature and unused). Writes ``F9_large_width.png``, ``.pdf`` and ``.nc`` in
    ``out_dir`` and returns a JSON-serialisable summary: per panel the measured numbers
    (reduced − full differences, plateau coefficients derived and measured with their CI and
    lack of fit, α*(d), the balancedness slopes), the settings, the files and the seconds.
    """
    del workers
    t0 = time.time()
    S = settings(mode)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts, summary = [], {}
    for key, fn in (("a", _panel_a), ("b", _panel_b), ("c", _panel_c), ("d", _panel_d)):
        t = time.time()
        ds_, summ = fn(S)
        parts.append(ds_)
        summary[key] = summ
        if progress:
            print(f"[F9] panel ({key}) {time.time() - t:.1f} s", flush=True)
    ds = xr.merge(parts)
    ds.attrs.update({"figure": "F9 large-width limit (THEORY §4, §7)", "run_mode": mode,
                     "a_d": S["a"]["d"], "b_lr": S["b"]["lr"], "c_lr": S["c"]["lr"],
                     "c_budget": S["c"]["budget"], "d_ratio": S["d"]["loraplus_lr_ratio"],
                     "d_d": S["d"]["d"], "threshold": THRESHOLD,
                     "settings": S})
    fig = plot_large_width(ds, dpi=S["dpi"])
    files = _write(ds, fig, out, S["dpi"])
    return jsonable({"panels": summary, "settings": S, "files": files,
                      "seconds": time.time() - t0})


def main(argv=None) -> int:
    """Entry point of ``figures/f9_large_width.py``: ``--quick``/``--full``/``--test``,
    ``--out``. Prints the summary as JSON."""
    import argparse

    p = argparse.ArgumentParser(description="F9: the large-width limit (reduced engine)")
    g = p.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m)
    p.set_defaults(mode="quick")
    p.add_argument("--out", default="figures/out")
    a = p.parse_args(argv)
    print(json.dumps(figure_F9(a.mode, a.out, progress=True), indent=1))
    return 0
