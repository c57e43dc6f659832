"""F5: rank stability (THEORY §5, P5): first-step progress and update norm, and the loss after
the budget, against r for ``lora`` (α = 16), ``rslora`` (α = 16) and ``lora-alpha`` (c = 64)
under SGD (η_std) and Adam (1e-3).

First step: population gradient, d = m = ``d_first`` ≫ r, averaged over seeds, against the §5
exponents (:func:`signaldrift._analysis.predicted_first_step_slopes`). Budget: the common
minibatch setting.

Under SGD a rule whose scale makes ``η_std·λ_max(H₀) > 2`` is unstable at initialisation:
λ_max(H₀) = (s²μ + √(s⁴μ² + 4s²g²))/2 with the derived μ (F1), so for a large s (LoRA-α's
c = 64 gives s = 64/√r) plain GD at η_std leaves the saddle on an unstable mode, for a reason
F1 derives. The budget panel marks these (rule, rank) cells as predicted unstable instead
of presenting their divergence as a measured contest.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .._analysis import predicted_first_step_slopes
from .._derivations.init_sharpness import expected_lambda_max, in_domain
from .._task import make_task
from ._common import (draw_and_write, finish, ADAM_LR_STD, ALPHA_STD, CI_METHOD, FONT, LOG_CI_METHOD, RULE_COLORS, Ctx,
                      attr, base_config, check_mode, diverged_strip, final, geo_center,
                      jsonable, legend_outside, lr_std, mark_diverged, gmean_ci, new_figure, pmap,
                      rank_ticks, rec, ref_line, rule_changes, save_figure, seed_loss,
                      set_axes, sgd_lr_std, slope_boot, write)
from .f1_spectral_suppression import closed_form, g_task

ID, STEM = "F5", "rank_stability"
TITLE = "rank stability: first-step slopes in r, and loss after the budget"
OPTIMIZERS = ("sgd", "adam")


def settings(mode: str) -> dict[str, Any]:
    """F5's settings in ``mode`` (fixed a priori). LoRA-α's c = 64 (4× rsLoRA's default α)
    is our a priori reading of "the √r law with a large coefficient"."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"ranks": [1, 2, 4] if test else ([1, 2, 4, 8, 16, 32, 64, 128] if full else [1, 2, 4, 8, 16, 32, 64]),
            "d_first": 64 if test else (1024 if full else 512),
            "rules": {"lora": {"alpha": ALPHA_STD}, "rslora": {"alpha": ALPHA_STD},
                      "lora-alpha": {"coef": 64.0}},
            "seeds_first": [0, 1] if test else (list(range(16)) if full else list(range(8))),
            "seeds_budget": [0, 1] if test else (list(range(8)) if full else [0, 1, 2, 3])}


def scale_of(rule: str, spec: dict, r: int) -> float:
    """s of a rule at rank r (THEORY §2)."""
    if rule == "lora":
        return spec["alpha"] / r
    if rule == "rslora":
        return spec["alpha"] / math.sqrt(r)
    if rule == "lora-alpha":
        return spec["coef"] / math.sqrt(r)
    return float(spec["scale"])


def _expected_lambda_max(item) -> float:
    lam, r, var = item
    return expected_lambda_max(lam, r, var)


def predicted_stability(mode: str, rules: dict, ranks, *, workers: int = 1) -> np.ndarray:
    """η_std·λ_max(H₀)/2 under SGD at the common task for each (rule, rank), with the derived
    μ of F1 (NaN outside its domain). Above 1: GD at η_std is unstable at initialisation.

    μ takes 0.2–0.3 s per rank (a Newton continuation over 6000 points), so the ranks are
    shared among ``workers`` forked processes (:func:`~._common.pmap`; the same numbers)."""
    cfg = base_config(mode, task_seed=0, optimizer="sgd")
    task = make_task(cfg)
    g = g_task(task)
    eta = sgd_lr_std(task)
    var = 1.0 / (3.0 * cfg.d)
    out = np.full((len(rules), len(ranks)), np.nan)
    ks = [k for k, r in enumerate(ranks) if in_domain(d=cfg.d, rank=r, beta=cfg.spectrum)]
    mus = pmap(_expected_lambda_max, [(task.lam, ranks[k], var) for k in ks], workers)
    for k, mu in zip(ks, mus):
        r = ranks[k]
        for j, (rule, spec) in enumerate(rules.items()):
            out[j, k] = 0.5 * eta * float(closed_form(scale_of(rule, spec, r), mu, g))
    return out


def figure_F5(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F5: rank stability (THEORY §5, P5); see the module docstring. **Returns:** the summary."""
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    F = settings(mode)
    rules, ranks = list(F["rules"]), F["ranks"]
    ref = {o: lr_std(mode, o) for o in OPTIMIZERS}
    dfirst = F["d_first"]
    first_base = base_config(mode, population=True, d=dfirst, m=dfirst, steps=1, record_every=1)
    lr_first = {"sgd": sgd_lr_std(make_task(first_base)), "adam": ADAM_LR_STD}
    sf, sb = F["seeds_first"], F["seeds_budget"]
    f_cfgs = [first_base.replace(optimizer=o, lr=float(lr_first[o]), rank=r, seed=sd,
                                 **rule_changes(rule, F["rules"][rule]))
              for o in OPTIMIZERS for rule in rules for r in ranks for sd in sf]
    b_cfgs = [base_config(mode, optimizer=o, lr=float(ref[o]), rank=r, seed=sd,
                          **rule_changes(rule, F["rules"][rule]))
              for o in OPTIMIZERS for rule in rules for r in ranks for sd in sb]
    res = ctx.run(f_cfgs + b_cfgs)
    fr, br = res[:len(f_cfgs)], res[len(f_cfgs):]
    shp = (len(OPTIMIZERS), len(rules), len(ranks))
    prog = np.array([rec(x, "progress", 0) for x in fr]).reshape(*shp, len(sf))
    sig = np.array([rec(x, "signal_norm", 0) for x in fr]).reshape(*shp, len(sf))
    fl = np.array([final(x)[0] for x in br]).reshape(*shp, len(sb))
    dv = np.array([final(x)[1] for x in br], np.int8).reshape(*shp, len(sb))
    th = np.array([[[predicted_first_step_slopes(o, rule)[k] for k in ("progress", "update_norm")]
                    for rule in rules] for o in OPTIMIZERS])
    stab = predicted_stability(mode, F["rules"], ranks, workers=ctx.workers)
    ds = xr.Dataset(
        {"progress1": (("optimizer", "rule", "rank", "seed"), prog),
         "signal1": (("optimizer", "rule", "rank", "seed"), sig),
         "final_loss": (("optimizer", "rule", "rank", "seed_budget"), fl),
         "diverged": (("optimizer", "rule", "rank", "seed_budget"), dv),
         "slope_theory": (("optimizer", "rule", "quantity"), th),
         "sgd_stability_ratio": (("rule", "rank"), stab)},
        coords={"optimizer": list(OPTIMIZERS), "rule": rules, "rank": np.array(ranks, np.int32),
                "seed": np.array(sf, np.int32), "seed_budget": np.array(sb, np.int32),
                "quantity": ["progress", "signal"]},
        attrs={"figure": "F5 rank stability (THEORY §5, P5)", "run_mode": mode,
               "steps": base_config(mode).steps, "d_first": dfirst,
               "rules": json.dumps(F["rules"]), "lr_sgd_first": lr_first["sgd"],
               "lr_sgd_budget": ref["sgd"], "lr_adam": ADAM_LR_STD, "ci_method": LOG_CI_METHOD},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    tol = 0.1
    slopes: dict[str, Any] = {}
    for i, o in enumerate(OPTIMIZERS):
        slopes[o] = {}
        for j, rule in enumerate(rules):
            pr = predicted_first_step_slopes(o, rule)
            gm, lo, hi, anydiv = seed_loss(fl[i, j], dv[i, j])
            slopes[o][rule] = {
                "progress": slope_boot(ranks, prog[i, j], pr["progress"], tol),
                "update_norm": slope_boot(ranks, sig[i, j], pr["update_norm"], tol),
                "loss_after_budget": {f"r={r}": {"geo_mean": gm[k], "ci": [lo[k], hi[k]],
                                                 "diverged_seeds": int(dv[i, j, k].sum())}
                                      for k, r in enumerate(ranks)},
                "diverged_runs": int(dv[i, j].sum()),
            }
    j_sgd = 0
    pred_unstable = {rule: {f"r={r}": {"eta_std_lambda_H0_over_2": stab[j, k],
                                       "predicted_unstable_at_init": bool(stab[j, k] > 1.0),
                                       "diverged_seeds": int(dv[j_sgd, j, k].sum()),
                                       "seeds": len(sb)}
                            for k, r in enumerate(ranks)} for j, rule in enumerate(rules)}
    out = {"settings": {"ranks": ranks, "rules": F["rules"], "d_first": dfirst,
                        "seeds_first": len(sf), "seeds_budget": len(sb), "lr_first": lr_first,
                        "lr_budget": ref},
           "tolerance_note": ("|measured − §5| ≤ 0.1: the §5 table is leading order in r/d "
                              "(AAᵀ ≈ I/3 up to O(√(r/d)) fluctuations)"),
           "loss_ci_method": LOG_CI_METHOD,
           "slopes": slopes,
           "sgd_stability_at_init": pred_unstable,
           "sgd_stability_note": ("η_std·λ_max(H₀)/2 with λ_max(H₀) from F1's closed form and the "
                                  "derived μ; > 1: GD at η_std is unstable at init, so a diverged "
                                  "run there is predicted, not a measured contest"),
           "files": files, "seconds": time.time() - t0}
    return jsonable(out)


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F5: rows = optimisers; columns: π₁, ‖S₁‖, loss after the budget (with SGD's
    predicted-unstable cells marked). **Returns:** the Figure."""
    opts = [str(o) for o in ds["optimizer"].values]
    rules = [str(r) for r in ds["rule"].values]
    ranks = np.asarray(ds["rank"].values, float)
    fig, axes = new_figure(len(opts), 3, width=4.2, height=3.6)
    stab = (np.asarray(ds["sgd_stability_ratio"].values, float) if "sgd_stability_ratio" in ds
            else np.full((len(rules), ranks.size), np.nan))
    for i, opt in enumerate(opts):
        for j, (q, lab) in enumerate((("progress1", "first-step progress π₁"),
                                      ("signal1", "first-step update ‖S₁‖"),
                                      ("final_loss", f"loss after {attr(ds, 'steps', '?')} steps"))):
            ax = axes[i, j]
            for rr, rule in enumerate(rules):
                c = RULE_COLORS.get(rule, "k")
                sub = ds.sel(optimizer=opt, rule=rule)
                y = np.asarray(sub[q].values, float)
                if q == "final_loss":
                    gm, lo, hi, anydiv = seed_loss(y, sub["diverged"].values)
                    ok = np.isfinite(gm)
                    ax.errorbar(ranks[ok], gm[ok], yerr=[(gm - lo)[ok], (hi - gm)[ok]], fmt="o-",
                                ms=4, capsize=2, color=c, label=rule)
                    mark_diverged(ax, ranks, anydiv, color=c, row=rr)
                    if opt == "sgd":
                        unst = stab[rr] > 1.0
                        if unst.any():
                            ax.plot(ranks[unst], np.full(unst.sum(), 1.0 + 0.045 * (len(rules) + rr + 0.6)),
                                    "o", mfc="none", mec=c, ms=6, clip_on=False,
                                    transform=ax.get_xaxis_transform())
                    continue
                mean, lo, hi = gmean_ci(y)
                ax.errorbar(ranks, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4, color=c,
                            capsize=2, label=rule)
                k = float(ds["slope_theory"].sel(optimizer=opt, rule=rule, quantity=q[:-1]))
                if np.isfinite(k):
                    x0, y0 = geo_center(ranks, mean)
                    ref_line(ax, ranks, k, x0, y0, color=c, label=f"{rule}: §5 r^{k:g}")
            title = f"({'abcdef'[3 * i + j]}) {opt}: {lab.split(' ')[0] if q != 'final_loss' else 'budget'}"
            set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel=lab)
            rank_ticks(ax, ranks)
            if q == "final_loss":
                ax.plot([], [], label="diverged (×, any seed)", **{**_div(), "color": "k"})
                if opt == "sgd":
                    ax.plot([], [], "o", mfc="none", mec="k", label="predicted unstable at init:\n"
                            "η_std·λ_max(H₀) > 2 (F1)")
                diverged_strip(ax, 2 * len(rules) if opt == "sgd" else len(rules), title)
            else:
                ax.set_title(title)
            legend_outside(ax, where="below", ncol=2)
    fig.suptitle("F5 rank stability; geometric means over seeds ± 95% t on logs",
                 fontsize=FONT + 1)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig


def _div():
    from ._common import DIVERGED_STYLE

    return dict(DIVERGED_STYLE)
