"""F7: LoRA-α (c = 64) against LoRA (α = 16) and rsLoRA (α = 16), over a learning-rate axis.

The seed paper sells LoRA-α as working at standard, small learning rates; a comparison at a
single lr cannot separate "a better rule" from "a better effective lr". So every rule is run
over the same log grid of lr multiples of the standard lr (Adam 1e-3, SGD η_std) at each
rank, in the common minibatch setting (random basis), and compared both at the standard lr
and at its own best lr on the grid (same budget for every rule). Losses are geometric means
over seeds with a 95% Student-t interval on log values; diverged runs are drawn above the
axis.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ._common import (draw_and_write, finish, ALPHA_STD, FONT, LOG_CI_METHOD, RULE_COLORS, Ctx, attr, base_config,
                      check_mode, diverged_strip, jsonable, legend_outside, lr_std,
                      mark_diverged, new_figure, pow2, rank_ticks, rule_changes, save_figure,
                      seed_loss, set_axes, write)

ID, STEM = "F7", "rule_comparison"
TITLE = "LoRA-α against LoRA and rsLoRA across ranks and learning rates"
OPTIMIZERS = ("sgd", "adam")


def settings(mode: str) -> dict[str, Any]:
    """F7's settings in ``mode`` (fixed a priori)."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"ranks": [2, 4] if test else ([2, 8, 32, 128] if full else [4, 16, 64]),
            "rules": {"lora": {"alpha": ALPHA_STD}, "rslora": {"alpha": ALPHA_STD},
                      "lora-alpha": {"coef": 64.0}},
            "lr_factors": pow2(-2, 2, 2) if test else (pow2(-6, 6, 0.5) if full else pow2(-4, 4)),
            "seeds": [0, 1] if test else (list(range(8)) if full else [0, 1, 2, 3])}


def figure_F7(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F7: the three rules over ranks and an lr axis; see the module docstring.

    **Returns:** the summary: per optimiser and rank, each rule's loss at the standard lr and
    at its best lr on the grid (with intervals), and the winner in each comparison.
    """
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    F = settings(mode)
    rules, ranks, facs, seeds = list(F["rules"]), F["ranks"], F["lr_factors"], F["seeds"]
    ref = {o: lr_std(mode, o) for o in OPTIMIZERS}
    cfgs = [base_config(mode, optimizer=o, lr=float(ref[o] * f), rank=r, seed=sd,
                        **rule_changes(rule, F["rules"][rule]))
            for o in OPTIMIZERS for rule in rules for r in ranks for f in facs for sd in seeds]
    fin = ctx.finals(cfgs)  # some are landscape cells and F5's budget runs, already run
    shp = (len(OPTIMIZERS), len(rules), len(ranks), len(facs), len(seeds))
    fl = np.array([f[0] for f in fin]).reshape(shp)
    dv = np.array([f[1] for f in fin], np.int8).reshape(shp)
    rs = "; ".join(f"{k}: " + ", ".join(f"{a}={v:g}" for a, v in F["rules"][k].items()) for k in rules)
    ds = xr.Dataset(
        {"final_loss": (("optimizer", "rule", "rank", "lr_factor", "seed"), fl),
         "diverged": (("optimizer", "rule", "rank", "lr_factor", "seed"), dv),
         "lr": (("optimizer", "lr_factor"), np.array([[ref[o] * f for f in facs] for o in OPTIMIZERS]))},
        coords={"optimizer": list(OPTIMIZERS), "rule": rules, "rank": np.array(ranks, np.int32),
                "lr_factor": np.array(facs), "seed": np.array(seeds, np.int32)},
        attrs={"figure": "F7 LoRA-alpha vs LoRA vs rsLoRA over lr", "run_mode": mode,
               "steps": base_config(mode).steps, "rule_settings": rs,
               "basis": base_config(mode).basis, "ci_method": LOG_CI_METHOD,
               "lr_sgd": float(f"{ref['sgd']:.4g}"), "lr_adam": ref["adam"]},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    j1 = int(np.argmin(np.abs(np.log(np.array(facs)))))
    table: dict[str, Any] = {}
    for i, o in enumerate(OPTIMIZERS):
        table[o] = {}
        for k, r in enumerate(ranks):
            row: dict[str, Any] = {}
            std_best, tuned_best = {}, {}
            for j, rule in enumerate(rules):
                gm, lo, hi, anydiv = seed_loss(fl[i, j, k], dv[i, j, k])
                e: dict[str, Any] = {}
                if anydiv[j1]:
                    e["at_standard_lr"] = {"diverged_seeds": int(dv[i, j, k, j1].sum())}
                else:
                    e["at_standard_lr"] = {"loss": gm[j1], "ci": [lo[j1], hi[j1]]}
                    std_best[rule] = gm[j1]
                if np.isfinite(gm).any():
                    b = int(np.nanargmin(np.where(np.isfinite(gm), gm, np.inf)))
                    e["at_best_lr"] = {"lr_factor": facs[b], "loss": gm[b], "ci": [lo[b], hi[b]],
                                       "at_grid_edge": bool(b in (0, len(facs) - 1))}
                    tuned_best[rule] = gm[b]
                e["diverged_lr_factors"] = [facs[q] for q in np.flatnonzero(anydiv)]
                row[rule] = e
            row["best_at_standard_lr"] = min(std_best, key=std_best.get) if std_best else None
            row["best_when_each_rule_tunes_its_lr"] = (min(tuned_best, key=tuned_best.get)
                                                      if tuned_best else None)
            table[o][f"r={r}"] = row
    out = {"settings": {"rules": F["rules"], "ranks": ranks, "seeds": seeds, "lr_std": ref,
                        "lr_factors": facs, "steps": base_config(mode).steps,
                        "batch": base_config(mode).batch},
           "ci_method": LOG_CI_METHOD, "final_loss": table, "files": files,
           "seconds": time.time() - t0}
    return jsonable(out)


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F7: rows = optimisers; one panel per rank (loss against lr per rule), and a last
    panel of loss against rank at the standard lr (solid) and at each rule's best lr
    (dashed). **Returns:** the Figure."""
    opts = [str(o) for o in ds["optimizer"].values]
    rules = [str(r) for r in ds["rule"].values]
    ranks = np.asarray(ds["rank"].values, float)
    facs = np.asarray(ds["lr_factor"].values, float)
    j1 = int(np.argmin(np.abs(np.log(facs))))
    fig, axes = new_figure(len(opts), ranks.size + 1, width=3.7, height=3.7)
    letters = iter("abcdefghijklmnop")
    for i, opt in enumerate(opts):
        lr = np.asarray(ds["lr"].sel(optimizer=opt).values, float)
        best = {rule: np.full(ranks.size, np.nan) for rule in rules}
        at_std = {rule: np.full(ranks.size, np.nan) for rule in rules}
        for k, r in enumerate(ranks):
            ax = axes[i, k]
            for q, rule in enumerate(rules):
                c = RULE_COLORS.get(rule, "k")
                sub = ds.sel(optimizer=opt, rule=rule).isel(rank=k)
                gm, lo, hi, anydiv = seed_loss(sub["final_loss"].values, sub["diverged"].values)
                ok = np.isfinite(gm)
                ax.errorbar(lr[ok], gm[ok], yerr=[(gm - lo)[ok], (hi - gm)[ok]], fmt="o-", ms=3,
                            capsize=2, color=c, label=rule)
                mark_diverged(ax, lr, anydiv, color=c, row=q)
                if ok.any():
                    best[rule][k] = np.nanmin(gm)
                at_std[rule][k] = gm[j1]
            ax.axvline(lr[j1], color="k", ls=":", lw=1)
            set_axes(ax, xscale="log", yscale="log", xlabel="learning rate η",
                     ylabel="final loss (geo. mean ± 95% t)" if k == 0 else None)
            diverged_strip(ax, len(rules), f"({next(letters)}) {opt}, r = {int(r)}")
        ax = axes[i, -1]
        for rule in rules:
            c = RULE_COLORS.get(rule, "k")
            ok = np.isfinite(at_std[rule])
            ax.plot(ranks[ok], at_std[rule][ok], "o-", color=c, label=f"{rule}, standard lr")
            ok = np.isfinite(best[rule])
            ax.plot(ranks[ok], best[rule][ok], "s--", mfc="none", color=c,
                    label=f"{rule}, its best lr")
        set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel="final loss")
        rank_ticks(ax, ranks)
        ax.set_title(f"({next(letters)}) {opt}: standard vs tuned lr")
        legend_outside(ax, where="right")
    axes[0, 0].plot([], [], label="diverged (× above the axis)", **{**_div(), "color": "k"})
    legend_outside(axes[-1, 0], where="below", ncol=2, handles=axes[0, 0].get_legend_handles_labels()[0],
                   labels=axes[0, 0].get_legend_handles_labels()[1])
    fig.suptitle(f"F7 rules over lr ({attr(ds, 'rule_settings', '')}); dotted: standard lr; "
                 f"{attr(ds, 'steps', '?')} steps, {attr(ds, 'basis', '')} basis", fontsize=FONT + 1)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig


def _div():
    from ._common import DIVERGED_STYLE

    return dict(DIVERGED_STYLE)
