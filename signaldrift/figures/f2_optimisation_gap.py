"""F2: the optimisation gap (THEORY §4, P2) and the LoRA+ question (THEORY §3).

Top row: final loss against the lr for several α (rule ``lora``, r = 16), SGD and Adam, from
F4's landscape grid (:func:`signaldrift.figures.f4_landscape.landscape`, widened until its
best cell is interior). Gap numbers: :func:`signaldrift._analysis.optimisation_gap` at
(η_std, α = 16).

Bottom row: the seed paper's second finding is, by THEORY §3's exact equivalence, the LoRA+
question: at a fixed lr, raising α is raising B's learning rate alone (Adam: η_B = c·η with
ε_B = ε/c; SGD: η_B = c²·η). Three ways to tune from the standard point (η_std, α = 16,
η_B = η_A), each over the **same budget** (the same number of trials, on a log₂ grid of
multipliers f of the same span, the same steps and seeds):

- ``alpha``: α = 16·f at η_std (what the paper tunes);
- ``eta_B``: η_B = f·η_std (PEFT's ``loraplus_lr_ratio`` = f) at α = 16, η_A = η_std;
- ``joint``: η_A = η_B = f·η_std at α = 16 (ordinary lr tuning).

Adam in the random feature basis (the headline, THEORY §1) and in the eigenbasis (a diagonal
Σ flatters Adam), and SGD (basis-equivariant, so one basis). ``alpha`` and ``eta_B`` differ
only through ε (Adam, ε_B is not rescaled here, as in PEFT) or by the squaring of the
multiplier (SGD).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .._analysis import log_t_interval, optimisation_gap
from ._common import (draw_and_write, finish, ALPHA_STD, FONT, LOG_CI_METHOD, Ctx, attr, base_config, check_mode,
                      colors, diverged_strip, jsonable, legend_outside, lr_std,
                      mark_diverged, new_figure, pow2, save_figure, seed_loss, set_axes, write)
from .f4_landscape import landscape
from .f4_landscape import settings as landscape_settings

ID, STEM = "F2", "optimisation_gap"
TITLE = "optimisation gap, and α tuning against η_B (LoRA+) and joint lr tuning"
PROTOCOLS = ("alpha", "eta_B", "joint")
CASES = (("adam", "random"), ("adam", "eigen"), ("sgd", "random"))


def settings(mode: str) -> dict[str, Any]:
    """F2's settings in ``mode`` (fixed a priori); the lr × α grid is F4's."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"alphas_shown": [1.0, 4.0, 16.0] if test else [1.0, 4.0, 16.0, 32.0, 64.0, 256.0, 1024.0],
            "tuning": {"rank": landscape_settings(mode)["rank"],
                       "factors": pow2(-2, 2, 2) if test else (pow2(-6, 6, 0.5) if full else pow2(-6, 6)),
                       "seeds": [0, 1] if test else (list(range(8)) if full else [0, 1, 2, 3]),
                       "cases": [list(c) for c in CASES], "protocols": list(PROTOCOLS)}}


def _protocol_config(mode: str, opt: str, basis: str, protocol: str, f: float, rank: int,
                     seed: int):
    eta = lr_std(mode, opt)
    kw = dict(rank=rank, optimizer=opt, basis=basis, seed=seed, lr=eta, alpha=ALPHA_STD)
    if protocol == "alpha":
        kw["alpha"] = ALPHA_STD * f
    elif protocol == "eta_B":
        kw["loraplus_lr_ratio"] = float(f)
    elif protocol == "joint":
        kw["lr"] = eta * f
    else:
        raise ValueError(protocol)
    return base_config(mode, **kw)


def tuning(mode: str, ctx: Ctx) -> xr.Dataset:
    """The three tuning protocols over the same budget (module docstring)."""
    T = settings(mode)["tuning"]
    facs, seeds, r = T["factors"], T["seeds"], T["rank"]
    cfgs = [_protocol_config(mode, o, b, p, f, r, sd)
            for (o, b) in CASES for p in PROTOCOLS for f in facs for sd in seeds]
    fin = ctx.finals(cfgs)  # half of them are landscape cells, already run
    shape = (len(CASES), len(PROTOCOLS), len(facs), len(seeds))
    fl = np.array([f[0] for f in fin]).reshape(shape)
    dv = np.array([f[1] for f in fin], np.int8).reshape(shape)
    return xr.Dataset(
        {"tuning_loss": (("case", "protocol", "factor", "seed_t"), fl),
         "tuning_diverged": (("case", "protocol", "factor", "seed_t"), dv)},
        coords={"case": [f"{o}, {b} basis" for o, b in CASES], "protocol": list(PROTOCOLS),
                "factor": np.array(facs), "seed_t": np.array(seeds, np.int32)},
        attrs={"tuning_rank": r, "tuning_steps": base_config(mode).steps})


def figure_F2(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F2: the optimisation gap (P2) and the LoRA+ comparison (THEORY §3); see the module
    docstring. **Returns:** the summary dict."""
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    S = settings(mode)
    land = landscape(mode, ctx)
    shown = [a for a in S["alphas_shown"] if np.any(np.isclose(land.alpha.values, a))]
    sub = land.sel(alpha=shown)
    tun = tuning(mode, ctx)
    ds = xr.merge([sub, tun])
    ds.attrs.update(land.attrs)
    ds.attrs.update(tun.attrs)
    ds.attrs.update(figure="F2 optimisation gap (THEORY §4, P2) and LoRA+ (THEORY §3)",
                    ci_method=LOG_CI_METHOD)
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")

    out: dict[str, Any] = {"rank": int(land.attrs["rank"]), "alpha_std": ALPHA_STD,
                           "steps": int(land.attrs["steps"]), "batch": int(land.attrs["batch"]),
                           "basis": land.attrs["basis"], "seeds": int(land.sizes["seed"]),
                           "aggregate": "geometric mean over seeds (a diverged seed: cell diverged)"}
    r = int(land.attrs["rank"])
    for o in land.optimizer.values:
        o = str(o)
        x = land.sel(optimizer=o)
        ran = np.isfinite(x["diverged"].values).all(axis=-1)  # (alpha, lr)
        ra, rl = ran.any(axis=1), ran.any(axis=0)
        alphas, lrs = land.alpha.values[ra], x["lr"].values[rl]
        loss = np.transpose(x["final_loss"].values[ra][:, rl], (1, 0, 2))  # (lr, alpha, seed)
        loss = np.where(np.isnan(loss), np.inf, loss)  # cells not run on this grid: never best
        lstd = float(land.attrs[f"lr_std_{o}"])
        gap = optimisation_gap(lrs, alphas, loss, lr_std=lstd, alpha_std=ALPHA_STD, seed_axis=2)
        g, _, _, _ = log_t_interval(np.where(np.isfinite(loss), loss, np.nan), axis=2)
        g = np.where(np.isfinite(loss).all(axis=2), g, np.inf)
        i_std = int(np.argmin(np.abs(np.log(lrs / lstd))))
        ja = int(np.argmin(g[i_std]))
        j2r = np.flatnonzero(np.isclose(alphas, 2 * r))
        j16 = int(np.argmin(np.abs(np.log(alphas / ALPHA_STD))))
        out[o] = {
            "lr_std": lstd, "best_lr_at_alpha16": gap.best_lr, "lr_ratio_best_over_std": gap.lr_ratio,
            "best_lr_at_edge": gap.best_lr_at_edge, "loss_std": gap.loss_std, "loss_min": gap.loss_min,
            "loss_gap": gap.loss_gap,
            "loss_ratio_std_over_min": gap.loss_std / gap.loss_min if gap.loss_min > 0 else None,
            "argmin_lr": gap.argmin_lr, "argmin_alpha": gap.argmin_alpha,
            "argmin_at_edge": gap.argmin_at_edge,
            "argmin_is_bound": (("the best cell is on the grid's edge after widening: the grid "
                                 "minimum is an upper bound on the loss and the optimum lies "
                                 "beyond " + str(x["best_at_edge"].values))
                                if str(x["best_at_edge"].values) else None),
            "best_alpha_at_lr_std": float(alphas[ja]), "loss_best_alpha_at_lr_std": float(g[i_std, ja]),
            "loss_alpha_2r_at_lr_std": float(g[i_std, j2r[0]]) if j2r.size else None,
            "loss_best_lr_at_alpha_std": float(g[:, j16].min()),
        }
    # The LoRA+ comparison: best per protocol, over the same budget.
    tab: dict[str, Any] = {}
    for c, case in enumerate(tun.case.values):
        row = {}
        for p, prot in enumerate(PROTOCOLS):
            L = tun["tuning_loss"].values[c, p]
            D = tun["tuning_diverged"].values[c, p]
            gm, lo, hi, anydiv = seed_loss(L, D)
            k = int(np.nanargmin(np.where(np.isfinite(gm), gm, np.inf))) if np.isfinite(gm).any() else -1
            facs = tun.factor.values
            row[prot] = ({"best_factor": float(facs[k]), "best_loss": gm[k], "ci": [lo[k], hi[k]],
                          "best_at_edge": bool(k in (0, facs.size - 1)),
                          "diverged_factors": [float(f) for f in facs[anydiv]]}
                         if k >= 0 else {"note": "every setting diverged"})
        best = {p: v["best_loss"] for p, v in row.items() if "best_loss" in v}
        row["winner"] = min(best, key=best.get) if best else None
        if "alpha" in best and "joint" in best:
            row["loss_ratio_alpha_over_joint"] = best["alpha"] / best["joint"]
        if "eta_B" in best and "joint" in best:
            row["loss_ratio_eta_B_over_joint"] = best["eta_B"] / best["joint"]
        tab[str(case)] = row
    out["loraplus"] = {"protocols": {"alpha": "alpha = 16·f at eta_std",
                                     "eta_B": "loraplus_lr_ratio = f at alpha = 16, eta_A = eta_std",
                                     "joint": "eta_A = eta_B = f·eta_std at alpha = 16"},
                       "factors": [float(f) for f in tun.factor.values],
                       "seeds": int(tun.sizes["seed_t"]), "rank": int(tun.attrs["tuning_rank"]),
                       "ci_method": LOG_CI_METHOD, "results": tab,
                       "needs_kernel": ("eta_B runs use loraplus_lr_ratio and the eigen/random "
                                        "bases differ only once the simulator applies them")}
    out["files"] = files
    out["seconds"] = time.time() - t0
    return jsonable(out)


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F2 (top: loss against lr per α; bottom: the three tuning protocols per case).

    **Arguments:** `ds` with `final_loss`, `diverged` (optimizer, alpha, lr_factor, seed),
    `lr(optimizer, lr_factor)`, and `tuning_loss`, `tuning_diverged` (case, protocol,
    factor, seed_t); attrs `rank`, `alpha_std`, `lr_std_<opt>`. **Returns:** the Figure.
    """
    opts = [str(o) for o in ds["optimizer"].values]
    cases = [str(c) for c in ds["case"].values] if "case" in ds.coords else []
    ncol = max(len(opts) + 1, len(cases), 1)
    fig, axes = new_figure(2, ncol, width=4.3, height=3.9)
    rank = int(attr(ds, "rank", 0))
    a_std = float(attr(ds, "alpha_std", ALPHA_STD))
    alphas = np.asarray(ds["alpha"].values, float)
    cols = colors(len(alphas))
    for k, opt in enumerate(opts):
        ax = axes[0, k]
        lr = np.asarray(ds["lr"].sel(optimizer=opt).values, float)
        for j, a in enumerate(alphas):
            sub = ds.sel(optimizer=opt).isel(alpha=j)
            dv = np.asarray(sub["diverged"].values, float)
            ran = np.isfinite(dv).all(axis=-1)
            gm, _, _, anydiv = seed_loss(sub["final_loss"].values, np.nan_to_num(dv, nan=0))
            special = [t for t, c in (("standard", math.isclose(a, a_std)),
                                      ("2r", math.isclose(a, 2 * rank))) if c]
            lab = f"α = {a:g}" + (f" ({', '.join(special)})" if special else "")
            ok = ran & np.isfinite(gm)
            ax.plot(lr[ok], gm[ok], "o-", ms=3, lw=2.4 if special else 1.0, color=cols[j], label=lab)
            mark_diverged(ax, lr, anydiv & ran, color=cols[j], row=j)
        lstd = float(attr(ds, f"lr_std_{opt}", np.nan))
        if np.isfinite(lstd):
            ax.axvline(lstd, color="k", ls=":", lw=1, label=f"standard lr {lstd:.2g}")
        ax.plot([], [], label="diverged (× above the axis, one row per α)", **{**_div_style(), "color": "k"})
        set_axes(ax, xscale="log", yscale="log", xlabel="learning rate η",
                 ylabel="final excess loss (geo. mean)")
        diverged_strip(ax, len(alphas), f"({'ab'[k]}) {opt}, {attr(ds, 'basis', '')} basis",
                       fontsize=FONT + 1)
    legend_outside(axes[0, len(opts)], where="here", source=axes[0, len(opts) - 1])
    for k in range(len(opts) + 1, ncol):
        axes[0, k].axis("off")
    pcol = {"alpha": "tab:blue", "eta_B": "tab:green", "joint": "tab:orange"}
    plab = {"alpha": "α = 16·f at η_std", "eta_B": "η_B = f·η_std (LoRA+)",
            "joint": "η_A = η_B = f·η_std"}
    for c, case in enumerate(cases):
        ax = axes[1, c]
        f = np.asarray(ds["factor"].values, float)
        prots = [str(p) for p in ds["protocol"].values]
        for p, prot in enumerate(prots):
            L = ds["tuning_loss"].values[c, p]
            D = ds["tuning_diverged"].values[c, p]
            gm, lo, hi, anydiv = seed_loss(L, D)
            ok = np.isfinite(gm)
            ax.errorbar(f[ok], gm[ok], yerr=[(gm - lo)[ok], (hi - gm)[ok]], fmt="o-", ms=3,
                        capsize=2, color=pcol.get(prot, "k"), label=plab.get(prot, prot))
            mark_diverged(ax, f, anydiv, color=pcol.get(prot, "k"), row=p)
            if ok.any():
                kb = int(np.nanargmin(np.where(ok, gm, np.inf)))
                ax.plot(f[kb], gm[kb], "*", ms=11, color=pcol.get(prot, "k"), mec="k")
        ax.axvline(1.0, color="k", ls=":", lw=1)
        set_axes(ax, xscale="log", yscale="log", xlabel="multiplier f (same budget per protocol)",
                 ylabel="final excess loss (geo. mean ± 95% t)")
        diverged_strip(ax, len(prots), f"({'cdefg'[c]}) tuning: {case}", fontsize=FONT + 1)
        if c == len(cases) // 2:
            ax.plot([], [], "*", color="grey", mec="k", ms=9, label="best of each protocol")
            ax.plot([], [], label="diverged (× above the axis)", **{**_div_style(), "color": "k"})
            legend_outside(ax, where="below", ncol=3)
    fig.suptitle(f"F2 optimisation gap and LoRA+ (r = {rank}, {attr(ds, 'steps', '?')} steps, "
                 f"minibatch {attr(ds, 'batch', '?')})", fontsize=FONT + 2)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig


def _div_style():
    from ._common import DIVERGED_STYLE

    return dict(DIVERGED_STYLE)
