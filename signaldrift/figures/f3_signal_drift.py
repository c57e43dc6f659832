"""F3: signal and drift (THEORY §3, P3), at the first steps and along the whole run.

(a–d) First steps, population gradient, PEFT init, records at steps 0–2, plotted at step 1
(ρ₀ = 0 because B₀ = 0 makes ΔA₀ = 0): ‖S‖ and ρ = ‖D‖/‖S‖ against η and against s, SGD
and Adam, with derived exponents as reference lines:

- THEORY §3, at a given state (A, B): SGD ρ = η s ‖ĜAᵀBᵀĜ‖/‖ĜAᵀA + BBᵀĜ‖ ∝ η s; Adam ρ ∝ η s⁰.
- Along the trajectory from B₀ = 0 the state itself depends on η and s: SGD's
  B₁ = −η s G₀A₀ᵀ, so ρ₁ ∝ (η s)·‖B₁‖ ∝ η² s² and ‖S₁‖ ∝ η s²; Adam's first steps are sign
  steps of size O(η) whatever s, so ρ₁ ∝ η s⁰ and ‖S₁‖ ∝ η s. SGD's given-state law is
  measured as ρ₁/‖B₁‖ (B₁ has a fixed direction): exponents 1 and 1.

(e–f) The whole run (THEORY §3: ρ_t ∝ η holds for a few steps only; B grows with η·t, so
ρ_t falls like 1/t): ρ_t and the drift's share of the loss change at every step, in the
common training setting (r and α = 16 of the landscape, minibatches, random basis), at the
standard lr and at the best lr for α = 16 on F4's landscape grid, SGD and Adam.

The exact split of the loss change (THEORY §3), recorded by the simulator:
``L_{t+1} − L_t = ⟨G,S⟩ + ⟨G,D⟩ + ½‖S‖²_Σ + ⟨S,D⟩_Σ + ½‖D‖²_Σ``. The drift's part is
``δ_D = ⟨G,D⟩ + ⟨S,D⟩_Σ + ½‖D‖²_Σ`` (every term that involves D), the signal's
``δ_S = ⟨G,S⟩ + ½‖S‖²_Σ``. Drawn: the per-step share ``|δ_D| / (|δ_S| + |δ_D|)`` ∈ [0, 1]
and the cumulative share ``Σ_{τ≤t} δ_D / (L_{t+1} − L_0)`` (the fraction of the loss change
so far that the drift made; negative: the drift raised the loss).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ._common import (draw_and_write, finish, ALPHA_STD, FONT, LOG_CI_METHOD, OPT_COLORS, Ctx, attr,
                      base_config, check_mode, geo_center, gmean_ci, jsonable, legend_outside,
                      lr_std, new_figure, pow2, rec, ref_line, save_figure, set_axes,
                      slope_boot, write)
from .f4_landscape import cell_means, landscape
from .f4_landscape import settings as landscape_settings

ID, STEM = "F3", "signal_drift"
TITLE = "signal and drift: first-step slopes, and ρ_t and the drift's share over the run"
OPTIMIZERS = ("sgd", "adam")
SPLIT = ("descent_signal", "descent_drift", "curvature_signal", "curvature_cross",
         "curvature_drift")


def settings(mode: str) -> dict[str, Any]:
    """F3's settings in ``mode`` (fixed a priori).

    lr multiples of each optimiser's standard lr at the first steps: SGD's keep η·s² ≤ 0.005
    so the higher-order terms are negligible; Adam's keep the gradients ≫ ε = 1e-8 (the
    ε → 0 limit of §3: with lr ~1e-6, ∇A = s·BᵀG ~ ε at small s breaks scale invariance).
    """
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"rank": 4 if test else 8,
            "lr_factors": {"sgd": pow2(-10, -6, 2) if test else pow2(-10, -5, 0.5 if full else 1),
                           "adam": pow2(-6, -2, 2) if test else pow2(-6, -1, 0.5 if full else 1)},
            "alphas": [2.0, 8.0, 32.0] if test else pow2(0, 6, 0.5 if full else 1),
            "alpha_lr_factor": {"sgd": 2.0**-10, "adam": 2.0**-4}, "steps": 3, "plot_step": 1,
            "seeds": [0, 1] if test else ([0, 1, 2, 3, 4, 5] if full else [0, 1, 2]),
            "trajectory": {"rank": landscape_settings(mode)["rank"], "alpha": ALPHA_STD,
                           "seeds": [0] if test else (list(range(6)) if full else [0, 1, 2]),
                           "lrs": "standard and best at alpha = 16 on F4's grid"}}


_THEORY = {  # (optimizer, quantity, variable) -> exponent, along the trajectory (docstring)
    ("sgd", "rho", "eta"): 2.0, ("sgd", "rho", "s"): 2.0,
    ("sgd", "rhoB", "eta"): 1.0, ("sgd", "rhoB", "s"): 1.0,
    ("sgd", "signal", "eta"): 1.0, ("sgd", "signal", "s"): 2.0,
    ("adam", "rho", "eta"): 1.0, ("adam", "rho", "s"): 0.0,
    ("adam", "rhoB", "eta"): math.nan, ("adam", "rhoB", "s"): math.nan,
    ("adam", "signal", "eta"): 1.0, ("adam", "signal", "s"): 1.0,
}


def drift_split(res) -> dict[str, np.ndarray]:
    """Per-step δ_S, δ_D, ΔL and the recorded sum of the five terms of a result recorded at
    every step (NaN where the simulator has not computed the split)."""
    step = np.asarray(res.step)
    loss = np.asarray(res.records["loss"], float)
    ls = np.asarray(res.loss_step)
    n = step.size
    terms = {k: np.asarray(res.records.get(k, np.full(n, np.nan)), float) for k in SPLIT}
    dS = terms["descent_signal"] + terms["curvature_signal"]
    dD = terms["descent_drift"] + terms["curvature_cross"] + terms["curvature_drift"]
    pos = {int(t): i for i, t in enumerate(ls)}
    dL = np.array([loss[pos[t + 1]] - loss[pos[t]] if (t + 1) in pos and t in pos else np.nan
                   for t in step])
    return {"dS": dS, "dD": dD, "dL": dL, "sum": dS + dD, "loss0": float(loss[0])}


def _trajectory(mode: str, ctx: Ctx):
    """ρ_t and the drift split along the whole run at the standard and best lr."""
    T = settings(mode)["trajectory"]
    land = landscape(mode, ctx)
    lrs = {}
    for o in OPTIMIZERS:
        sub = land.sel(optimizer=o)
        mean, _, _ = cell_means(sub)
        ja = int(np.argmin(np.abs(np.log(land.alpha.values / T["alpha"]))))
        col = mean[ja]
        jl = int(np.nanargmin(np.where(np.isfinite(col), col, np.inf))) if np.isfinite(col).any() else 0
        lrs[o] = {"standard": lr_std(mode, o), "best": float(sub["lr"].values[jl])}
    kinds = ("standard", "best")
    cfgs = [base_config(mode, rank=T["rank"], alpha=T["alpha"], optimizer=o, lr=float(lrs[o][k]),
                        seed=sd, record_every=1)
            for o in OPTIMIZERS for k in kinds for sd in T["seeds"]]
    res = ctx.run(cfgs)
    steps = base_config(mode).steps
    shape = (len(OPTIMIZERS), len(kinds), len(T["seeds"]), steps)
    rho = np.full(shape, np.nan)
    share = np.full(shape, np.nan)
    cum = np.full(shape, np.nan)
    check = np.full(shape[:3], np.nan)
    it = iter(res)
    for i in range(len(OPTIMIZERS)):
        for k in range(len(kinds)):
            for j in range(len(T["seeds"])):
                r = next(it)
                if getattr(r, "failed", False):
                    continue
                st = np.asarray(r.step)
                rho[i, k, j, st] = np.asarray(r.records["drift_ratio"], float)
                sp = drift_split(r)
                with np.errstate(invalid="ignore", divide="ignore"):
                    share[i, k, j, st] = np.abs(sp["dD"]) / (np.abs(sp["dS"]) + np.abs(sp["dD"]))
                    cum[i, k, j, st] = np.cumsum(sp["dD"]) / np.cumsum(sp["dL"])
                ok = np.isfinite(sp["sum"]) & np.isfinite(sp["dL"])
                if ok.any():
                    check[i, k, j] = float(np.max(np.abs(sp["sum"][ok] - sp["dL"][ok]))
                                           / max(abs(sp["loss0"]), 1e-300))
    return lrs, kinds, rho, share, cum, check


def figure_F3(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F3: signal and drift (THEORY §3, P3); see the module docstring.

    **Returns:** the summary dict (first-step slopes with bootstrap CIs; ρ_t and the drift's
    share along the run; the exactness of the recorded split).
    """
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    F = settings(mode)
    base = base_config(mode, population=True, rank=F["rank"], steps=F["steps"], record_every=1)
    ref = {o: lr_std(mode, o) for o in OPTIMIZERS}
    facs, alphas, seeds, t = F["lr_factors"], F["alphas"], F["seeds"], F["plot_step"]
    n_lr = len(facs["sgd"])
    eta_cfgs = [base.replace(optimizer=o, lr=float(ref[o] * f), alpha=ALPHA_STD, seed=sd)
                for o in OPTIMIZERS for f in facs[o] for sd in seeds]
    al_cfgs = [base.replace(optimizer=o, lr=float(ref[o] * F["alpha_lr_factor"][o]), alpha=a, seed=sd)
               for o in OPTIMIZERS for a in alphas for sd in seeds]
    res = ctx.run(eta_cfgs + al_cfgs)
    re_, ra_ = res[:len(eta_cfgs)], res[len(eta_cfgs):]

    def grab(rs, n, name, step):
        return np.array([rec(x, name, step) for x in rs]).reshape(len(OPTIMIZERS), n, len(seeds))

    data = {}
    for tt in range(1, F["steps"]):
        for tag, rs, n in (("eta", re_, n_lr), ("alpha", ra_, len(alphas))):
            rho = grab(rs, n, "drift_ratio", tt)
            data[(tt, tag)] = (rho, grab(rs, n, "signal_norm", tt), rho / grab(rs, n, "B_norm", tt))
    quants, variables = ["rho", "rhoB", "signal"], ["eta", "s"]
    slope_th = np.array([[[_THEORY[(o, q, v)] for v in variables] for q in quants] for o in OPTIMIZERS])
    rho_e, sig_e, rb_e = data[(t, "eta")]
    rho_a, sig_a, rb_a = data[(t, "alpha")]
    scale = np.array([a / F["rank"] for a in alphas])
    lrs = np.array([[ref[o] * f for f in facs[o]] for o in OPTIMIZERS])

    tlr, kinds, trho, tshare, tcum, tcheck = _trajectory(mode, ctx)
    T = F["trajectory"]
    nsteps = trho.shape[-1]
    ds = xr.Dataset(
        {"rho_eta": (("optimizer", "lr_index", "seed"), rho_e),
         "signal_eta": (("optimizer", "lr_index", "seed"), sig_e),
         "rhoB_eta": (("optimizer", "lr_index", "seed"), rb_e),
         "rho_alpha": (("optimizer", "alpha", "seed"), rho_a),
         "signal_alpha": (("optimizer", "alpha", "seed"), sig_a),
         "rhoB_alpha": (("optimizer", "alpha", "seed"), rb_a),
         "lr": (("optimizer", "lr_index"), lrs),
         "scale": (("alpha",), scale),
         "slope_theory": (("optimizer", "quantity", "variable"), slope_th),
         "traj_rho": (("optimizer", "lr_kind", "traj_seed", "step"), trho),
         "traj_drift_share": (("optimizer", "lr_kind", "traj_seed", "step"), tshare),
         "traj_drift_cumulative": (("optimizer", "lr_kind", "traj_seed", "step"), tcum),
         "traj_lr": (("optimizer", "lr_kind"), np.array([[tlr[o][k] for k in kinds] for o in OPTIMIZERS])),
         "split_sum_error": (("optimizer", "lr_kind", "traj_seed"), tcheck)},
        coords={"optimizer": list(OPTIMIZERS), "lr_index": np.arange(n_lr, dtype=np.int32),
                "alpha": np.array(alphas), "seed": np.array(seeds, np.int32), "quantity": quants,
                "variable": variables, "lr_kind": list(kinds),
                "traj_seed": np.array(T["seeds"], np.int32), "step": np.arange(nsteps, dtype=np.int32)},
        attrs={"figure": "F3 signal and drift (THEORY §3, P3)", "run_mode": mode, "plot_step": t,
               "rank": F["rank"], "alpha_fixed": ALPHA_STD, "ci_method": LOG_CI_METHOD,
               "lr_fixed_sgd": ref["sgd"] * F["alpha_lr_factor"]["sgd"],
               "lr_fixed_adam": ref["adam"] * F["alpha_lr_factor"]["adam"],
               "state": "trajectory from B0 = 0, population gradient",
               "traj_rank": T["rank"], "traj_alpha": T["alpha"],
               "traj_setting": (f"r = {T['rank']}, α = {T['alpha']:g}, minibatch "
                                f"{base_config(mode).batch}, {base_config(mode).basis} basis")},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    tol = 0.05
    summary_steps = {}
    for tt in range(1, F["steps"]):
        rho_e, sig_e, rb_e = data[(tt, "eta")]
        rho_a, sig_a, rb_a = data[(tt, "alpha")]
        block = {}
        for k, o in enumerate(OPTIMIZERS):
            block[o] = {}
            for q, ye, ya in (("rho", rho_e, rho_a), ("rhoB", rb_e, rb_a), ("signal", sig_e, sig_a)):
                the, ths = _THEORY[(o, q, "eta")], _THEORY[(o, q, "s")]
                if not np.isfinite(the):
                    continue
                block[o][q] = {"eta": slope_boot(lrs[k], ye[k], the, tol),
                               "s": slope_boot(scale, ya[k], ths, tol)}
        summary_steps[f"step_{tt}"] = block
    traj: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i, o in enumerate(OPTIMIZERS):
            traj[o] = {}
            for k, kind in enumerate(kinds):
                r = np.nanmean(trho[i, k], axis=0)
                sh = np.nanmean(tshare[i, k], axis=0)
                cu = np.nanmean(tcum[i, k], axis=0)
                tt = np.arange(nsteps)
                late = (tt >= 10) & np.isfinite(r) & (r > 0)
                slope = (float(np.polyfit(np.log(tt[late]), np.log(r[late]), 1)[0])
                         if late.sum() >= 3 else None)
                traj[o][kind] = {"lr": tlr[o][kind],
                                 "rho_at_steps": {str(s): r[s] for s in (1, 2, 10, nsteps - 1) if s < nsteps},
                                 "rho_loglog_slope_in_t_from_step_10": slope,
                                 "drift_share_mean_over_run": float(np.nanmean(sh)) if np.isfinite(sh).any() else None,
                                 "drift_cumulative_share_at_end": cu[-1] if np.isfinite(cu[-1]) else None}
    out = {"settings": {"rank": F["rank"], "lr_factors": facs, "alphas": alphas, "seeds": seeds,
                        "lr_ref": ref, "alpha_lr_factor": F["alpha_lr_factor"],
                        "trajectory": {**T, "lrs": tlr}},
           "note": ("rho: drift ratio along the trajectory from B0 = 0; rhoB = rho/||B||: THEORY §3's "
                    "given-state law (SGD rho ∝ eta·s); signal = ||S||. Exponents: 'theory'."),
           "slopes": summary_steps,
           "trajectory": traj,
           "split_sum_max_rel_error": (float(np.nanmax(tcheck)) if np.isfinite(tcheck).any() else None),
           "split_note": ("max over runs and steps of |sum of the five recorded terms − (L_{t+1} − L_t)| / L_0; "
                          "None: the simulator has not recorded the split (needs the kernel of the "
                          "model-generality issue)"),
           "files": files, "seconds": time.time() - t0}
    return jsonable(out)


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F3: (a–d) ρ and ‖S‖ at step 1 against η and s; (e) ρ_t along the run; (f) the
    drift's share of the loss change along the run. **Returns:** the Figure (3×2 panels)."""
    opts = [str(o) for o in ds["optimizer"].values]
    fig, axes = new_figure(3, 2, width=5.4, height=3.4)
    step = attr(ds, "plot_step", 1)
    letters = iter("abcd")
    for row, q in enumerate(("rho", "signal")):
        for col, var in enumerate(("eta", "s")):
            ax = axes[row, col]
            for opt in opts:
                c = OPT_COLORS.get(opt, "k")
                if var == "eta":
                    x = np.asarray(ds["lr"].sel(optimizer=opt).values, float)
                    y = np.asarray(ds[f"{q}_eta"].sel(optimizer=opt).values, float)
                else:
                    x = np.asarray(ds["scale"].values, float)
                    y = np.asarray(ds[f"{q}_alpha"].sel(optimizer=opt).values, float)
                mean, lo, hi = gmean_ci(y)
                ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4, color=c,
                            capsize=2, label=f"{opt}, measured")
                k = float(ds["slope_theory"].sel(optimizer=opt, quantity=q, variable=var))
                if np.isfinite(k):
                    x0, y0 = geo_center(x, mean)
                    ref_line(ax, x, k, x0, y0, color=c, label=f"{opt}, derived ∝ {var}^{k:g}")
                if q == "rho" and "rhoB" in ds["quantity"].values:
                    kb = float(ds["slope_theory"].sel(optimizer=opt, quantity="rhoB", variable=var))
                    if np.isfinite(kb):
                        yb = np.asarray(ds["rhoB_eta" if var == "eta" else "rhoB_alpha"]
                                        .sel(optimizer=opt).values, float)
                        mb, lb, hb = gmean_ci(yb)
                        ax.errorbar(x, mb, yerr=[mb - lb, hb - mb], fmt="s", mfc="none", ms=5,
                                    color=c, capsize=2, label=f"{opt}, ρ/‖B‖ (given-state law)")
                        x0, y0 = geo_center(x, mb)
                        ref_line(ax, x, kb, x0, y0, color=c, linestyle=":",
                                 label=f"{opt}, §3: ρ/‖B‖ ∝ {var}^{kb:g}")
            ylab = "drift ratio ρ = ‖D‖/‖S‖" if q == "rho" else "signal ‖S‖"
            xlab = "learning rate η" if var == "eta" else "scale s = α/r"
            set_axes(ax, xscale="log", yscale="log", xlabel=xlab, ylabel=ylab,
                     title=f"({next(letters)}) step {step}: {q} against {'η' if var == 'eta' else 's'}")
            legend_outside(ax, where="right")
    # (e), (f): along the whole run.
    axr, axs = axes[2]
    styles = {"standard": "-", "best": "--"}
    has_split = False
    if "traj_rho" in ds:
        steps = np.asarray(ds["step"].values, float)
        for opt in opts:
            c = OPT_COLORS.get(opt, "k")
            for kind in [str(k) for k in ds["lr_kind"].values]:
                lr = float(ds["traj_lr"].sel(optimizer=opt, lr_kind=kind))
                r = np.asarray(ds["traj_rho"].sel(optimizer=opt, lr_kind=kind).values, float)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rm = np.nanmean(r, axis=0)
                ok = np.isfinite(rm) & (rm > 0) & (steps > 0)
                axr.plot(steps[ok], rm[ok], styles.get(kind, "-"), color=c,
                         label=f"{opt}, {kind} lr {lr:.2g}")
                sh = np.asarray(ds["traj_drift_share"].sel(optimizer=opt, lr_kind=kind).values, float)
                cu = np.asarray(ds["traj_drift_cumulative"].sel(optimizer=opt, lr_kind=kind).values, float)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    shm, cum = np.nanmean(sh, axis=0), np.nanmean(cu, axis=0)
                if np.isfinite(shm).any():
                    has_split = True
                    oks = np.isfinite(shm) & (steps > 0)
                    axs.plot(steps[oks], shm[oks], styles.get(kind, "-"), color=c, lw=0.8,
                             label=f"{opt}, {kind}: per step |δ_D|/(|δ_S|+|δ_D|)")
                    okc = np.isfinite(cum) & (steps > 0)
                    axs.plot(steps[okc], cum[okc], styles.get(kind, "-"), color=c, lw=2.2,
                             alpha=0.6, label=f"{opt}, {kind}: cumulative Σδ_D / ΔL")
        if axr.get_lines():
            x = steps[steps > 0]
            y0 = [ln.get_ydata()[0] for ln in axr.get_lines() if len(ln.get_ydata())]
            ref_line(axr, x, -1.0, 1.0, float(np.exp(np.mean(np.log(y0)))) if y0 else 1.0,
                     color="grey", label="∝ 1/t")
        set_axes(axr, xscale="log", yscale="log", xlabel="step t", ylabel="ρ_t = ‖D_t‖/‖S_t‖",
                 title="(e) ρ_t along the whole run")
        legend_outside(axr, where="right")
    if not has_split:
        axs.text(0.5, 0.5, "the simulator has not recorded the exact split\n"
                 "(descent_/curvature_ records are NaN)", ha="center", va="center",
                 transform=axs.transAxes, fontsize=FONT, color="tab:red")
    axs.axhline(0.0, color="grey", lw=0.6)
    if has_split:
        set_axes(axs, xscale="log", xlabel="step t", ylabel="drift's share of the loss change",
                 title="(f) drift's share: exact split of L_{t+1} − L_t")
        legend_outside(axs, where="right")
    else:
        axs.set(xlabel="step t", ylabel="drift's share of the loss change",
                title="(f) drift's share: exact split of L_{t+1} − L_t")
    fig.suptitle(f"F3 signal and drift; (a–d) geometric mean ± 95% t on logs over seeds; "
                 f"(e, f) {attr(ds, 'traj_setting', '')}, mean over seeds", fontsize=FONT + 1)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig
