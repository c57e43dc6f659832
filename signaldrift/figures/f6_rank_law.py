"""F6: the rank law α*(r) = c·r^γ against THEORY §5's derived brackets (P6).

Rule ``lora`` (s = α/r), the common minibatch setting, Adam at lr 1e-3 (random basis, the
headline) and SGD at η_std. Per rank, α* = argmin over a log grid of the seeds'
mean log final loss, refined by a parabola in log α fitted to log L
(:func:`signaldrift._analysis.optimal_alpha`). A minimum at a grid edge widens the grid by
``widen_octaves`` at that edge (at most ``max_widen`` times); a rank still at the edge is
flagged and its α* is a bound.

Statistics (:func:`signaldrift._analysis.fit_rank_law`): γ and c by OLS of log α* on log r
over ranks, with a Student-t CI from the rank-level residuals (so the power law's misfit
widens it); a χ² lack-of-fit test of the residuals against each α*'s seed noise (variance of
log α* over a bootstrap of seeds, floored at the grid's quantisation (Δ log α)²/12); a
curvature test (quadratic term in log r). Also reported: percentile bootstraps over seeds,
and over seeds and ranks together.

THEORY §5 brackets, from the first step (:func:`signaldrift._analysis.first_step_brackets`):
Adam γ ∈ [0, ½], SGD γ ∈ [½, ¾]; γ = 1 (s constant) is in neither. A measured γ outside its
bracket says the first-step theory does not set α*.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from .._analysis import (alpha_star_resamples, bracket_position, first_step_brackets,
                         fit_rank_law, optimal_alpha)
from ._common import (draw_and_write, finish, ALPHA_STD, FONT, LOG_CI_METHOD, OPT_COLORS, Ctx, attr, base_config,
                      check_mode, colors, diverged_strip, jsonable, legend_outside,
                      lr_std, mark_diverged, new_figure, pow2, rank_ticks, save_figure,
                      seed_loss, set_axes, write)

ID, STEM = "F6", "rank_law"
TITLE = "the rank law α*(r) = c·r^γ with lack of fit, against the derived brackets"
OPTIMIZERS = ("adam", "sgd")


def settings(mode: str) -> dict[str, Any]:
    """F6's settings in ``mode`` (fixed a priori)."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"ranks": [2, 4, 8] if test else ([8, 16, 32, 64, 128] if full else [8, 16, 32, 64]),
            "alphas": pow2(0, 8, 2) if test else (pow2(0, 12, 0.5) if full else pow2(0, 12)),
            "optimizers": list(OPTIMIZERS),
            "seeds": [0, 1, 2] if test else (list(range(16)) if full else list(range(6))),
            "widen_octaves": 2.0, "max_widen": 2, "n_boot": 200 if test else 1000}


def alpha_star_sweep(mode: str, ctx: Ctx, *, optimizer: str, ranks, alphas, seeds, lr: float,
                     widen_octaves: float = 2.0, max_widen: int = 2, **changes: Any):
    """Final losses over (rank, α, seed) on a log α grid, widened at an edge minimum.

    **Returns:** ``{rank: (grid, loss (n_alpha, seeds), diverged)}`` and ``{rank: widenings}``.
    Shared with F8 (``changes`` set d, m, task rank, steps, …).
    """
    grid0 = np.array(alphas, float)
    step = float(np.log2(grid0[1] / grid0[0]))
    grids = {r: grid0.copy() for r in ranks}
    widened = {r: 0 for r in ranks}
    per_rank: dict[int, tuple] = {}
    done: dict[tuple, tuple[float, int]] = {}
    pending = list(ranks)
    while pending:
        cfgs, index = [], []
        for r in pending:
            kr = changes.get("task_rank_of", lambda r_: None)(r)
            extra = {k: v for k, v in changes.items() if k != "task_rank_of"}
            if kr is not None:
                extra["task_rank"] = kr
            for a in grids[r]:
                for sd in seeds:
                    if (r, a, sd) in done:
                        continue
                    cfgs.append(base_config(mode, rank=r, alpha=float(a), optimizer=optimizer,
                                            lr=float(lr), seed=sd, **extra))
                    index.append((r, a, sd))
        for k, fin in zip(index, ctx.finals(cfgs)):
            done[k] = fin
        nxt = []
        for r in pending:
            g = grids[r]
            fl = np.array([[done[(r, a, sd)][0] for sd in seeds] for a in g])
            dv = np.array([[done[(r, a, sd)][1] for sd in seeds] for a in g])
            per_rank[r] = (g, fl, dv)
            oa = optimal_alpha(g, fl, seed_axis=1, n_boot=0)
            if oa.at_edge and widened[r] < max_widen:
                n_new = max(1, int(round(widen_octaves / step)))
                if oa.index == int(np.argmin(g)):
                    extra_a = g.min() * 2.0 ** (-step * np.arange(n_new, 0, -1))
                else:
                    extra_a = g.max() * 2.0 ** (step * np.arange(1, n_new + 1))
                grids[r] = np.sort(np.r_[g, extra_a])
                widened[r] += 1
                nxt.append(r)
        pending = nxt
    return per_rank, widened


def rank_law(per_rank: dict, ranks, *, n_boot: int, seed: int = 12345) -> dict[str, Any]:
    """α*(r) per rank and the rank-law statistics (module docstring) from a sweep."""
    nS = next(iter(per_rank.values()))[1].shape[1]
    rows = {r: optimal_alpha(per_rank[r][0], per_rank[r][1], seed_axis=1, n_boot=n_boot, seed=r)
            for r in ranks}
    ast = np.array([rows[r].alpha_star for r in ranks])
    edge = np.array([rows[r].at_edge for r in ranks])
    rng = np.random.default_rng(seed)
    boot = np.full((n_boot, len(ranks)), np.nan)
    # One draw of every resample (the same stream as n_boot draws of nS), shared by the ranks.
    picks = rng.integers(0, nS, size=(n_boot, nS))
    for k, r in enumerate(ranks):
        g, fl, _ = per_rank[r]
        boot[:, k] = alpha_star_resamples(g, fl, picks, seed_axis=1)
    with np.errstate(invalid="ignore"):
        lb = np.log(boot)
    var_log = np.nanvar(lb, axis=0, ddof=1) if nS > 1 else np.full(len(ranks), np.nan)
    step = min(float(np.min(np.diff(np.log(np.sort(per_rank[r][0]))))) for r in ranks)
    rr = np.array(ranks, float)
    out: dict[str, Any] = {"alpha_star": ast, "at_edge": edge, "rows": rows, "var_log": var_log}
    ok = np.isfinite(ast)
    if ok.sum() < 2:
        out["fit"] = None
        return out
    fit = fit_rank_law(rr, ast, var_log=var_log if nS > 1 else None, min_var=step**2 / 12.0)
    out["fit"] = fit
    # Percentile bootstraps: over seeds (α* noise only), and over seeds and ranks (misfit).
    g_s, g_sr = [], []
    for b in range(n_boot):
        a_b = boot[b]
        m = np.isfinite(a_b)
        if m.sum() >= 2:
            g_s.append(np.polyfit(np.log(rr[m]), np.log(a_b[m]), 1)[0])
        pick = rng.integers(0, len(ranks), size=len(ranks))
        m2 = np.isfinite(a_b[pick])
        if np.unique(pick[m2]).size >= 3 or (len(ranks) < 3 and np.unique(pick[m2]).size >= 2):
            g_sr.append(np.polyfit(np.log(rr[pick][m2]), np.log(a_b[pick][m2]), 1)[0])
    pct = lambda v: np.percentile(v, [2.5, 97.5]).tolist() if len(v) else [math.nan, math.nan]  # noqa: E731
    out["gamma_ci_bootstrap_seeds"] = pct(g_s)
    out["gamma_ci_bootstrap_seeds_and_ranks"] = pct(g_sr)
    out["grid_step_log"] = step
    return out


def _stability_limited(row) -> bool:
    """α* is an interior grid point that was not refined: a neighbour diverged."""
    return bool(np.isfinite(row.alpha_star) and not row.at_edge and not row.refined)


def figure_F6(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F6: the rank law (THEORY §5, P6), Adam and SGD; see the module docstring.

    **Returns:** the summary dict: top-level ``gamma``, ``c`` (Adam, the headline) with
    intervals, ``gamma_method``, ``lack_of_fit_p``, and ``rank_law[optimizer]`` with its
    ``bracket``.
    """
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    F = settings(mode)
    ranks, seeds = F["ranks"], F["seeds"]
    sweeps, laws, widened, lrs = {}, {}, {}, {}
    for o in F["optimizers"]:
        lrs[o] = lr_std(mode, o)
        sweeps[o], widened[o] = alpha_star_sweep(
            mode, ctx, optimizer=o, ranks=ranks, alphas=F["alphas"], seeds=seeds, lr=lrs[o],
            widen_octaves=F["widen_octaves"], max_widen=F["max_widen"])
        laws[o] = rank_law(sweeps[o], ranks, n_boot=F["n_boot"])
    all_alpha = np.unique(np.concatenate([sweeps[o][r][0] for o in sweeps for r in ranks]))
    nO, nR, nA, nS = len(F["optimizers"]), len(ranks), all_alpha.size, len(seeds)
    FL = np.full((nO, nR, nA, nS), np.nan)
    DV = np.full_like(FL, np.nan)
    AS = np.full((nO, nR, 3), np.nan)
    EDGE = np.zeros((nO, nR), np.int8)
    STAB = np.zeros((nO, nR), np.int8)
    GAM = np.full((nO, 3), np.nan)
    CC = np.full((nO, 3), np.nan)
    BR = np.array([first_step_brackets(o) for o in F["optimizers"]])
    for i, o in enumerate(F["optimizers"]):
        for k, r in enumerate(ranks):
            g, fl, dv = sweeps[o][r]
            idx = np.searchsorted(all_alpha, g)
            FL[i, k, idx] = np.where(np.isfinite(fl), fl, np.inf)
            DV[i, k, idx] = dv
            row = laws[o]["rows"][r]
            AS[i, k] = (row.alpha_star, row.lo, row.hi)
            EDGE[i, k] = row.at_edge
            STAB[i, k] = _stability_limited(row)
        f = laws[o]["fit"]
        if f is not None:
            GAM[i] = (f.gamma, f.gamma_lo, f.gamma_hi)
            CC[i] = (f.c, f.c_lo, f.c_hi)
    ds = xr.Dataset(
        {"final_loss": (("optimizer", "rank", "alpha", "seed"), FL),
         "diverged": (("optimizer", "rank", "alpha", "seed"), DV),
         "alpha_star": (("optimizer", "rank"), AS[..., 0]),
         "alpha_star_lo": (("optimizer", "rank"), AS[..., 1]),
         "alpha_star_hi": (("optimizer", "rank"), AS[..., 2]),
         "at_edge": (("optimizer", "rank"), EDGE),
         "next_to_diverged": (("optimizer", "rank"), STAB),
         "gamma": (("optimizer", "bound"), GAM),
         "c": (("optimizer", "bound"), CC),
         "bracket": (("optimizer", "end"), BR)},
        coords={"optimizer": list(F["optimizers"]), "rank": np.array(ranks, np.int32),
                "alpha": all_alpha, "seed": np.array(seeds, np.int32),
                "bound": ["value", "lo", "hi"], "end": ["lo", "hi"]},
        attrs={"figure": "F6 rank law (THEORY §5, P6)", "run_mode": mode,
               "lr_adam": lrs.get("adam", np.nan), "lr_sgd": lrs.get("sgd", np.nan),
               "steps": base_config(mode).steps, "batch": base_config(mode).batch,
               "basis": base_config(mode).basis, "ci_method": LOG_CI_METHOD,
               "gamma_method": (laws[F["optimizers"][0]]["fit"].method
                                if laws[F["optimizers"][0]]["fit"] else "no fit")},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    per_opt: dict[str, Any] = {}
    for i, o in enumerate(F["optimizers"]):
        L = laws[o]
        f = L["fit"]
        lo_b, hi_b = first_step_brackets(o)
        ast = L["alpha_star"]
        entry: dict[str, Any] = {
            "lr": lrs[o], "bracket": [lo_b, hi_b],
            "alpha_star_next_to_diverged": [r for r in ranks if _stability_limited(L["rows"][r])],
            "alpha_star_next_to_diverged_note": (
                "at these ranks α* is the grid α next to a diverged one (no parabola through a "
                "diverged point): the optimum is set by the stability boundary, resolved to one "
                "grid step; γ then measures how that boundary moves with r"),
            "alpha_star": {f"r={r}": {"value": ast[k], "ci": [AS[i, k, 1], AS[i, k, 2]],
                                      "s_star": ast[k] / r, "alpha_over_sqrt_r": ast[k] / math.sqrt(r),
                                      "at_edge": bool(EDGE[i, k]), "widened": widened[o][r],
                                      "grid": [float(sweeps[o][r][0].min()), float(sweeps[o][r][0].max())],
                                      "var_log_alpha_star_seeds": L["var_log"][k]}
                           for k, r in enumerate(ranks)},
            "edge_warning": (None if not EDGE[i].any() else
                             "α* at the α-grid edge after widening for ranks "
                             + ", ".join(str(r) for r, e in zip(ranks, EDGE[i]) if e)
                             + ": α* there is a bound, not an estimate"),
        }
        if f is not None:
            entry.update({
                "gamma": {"value": f.gamma, "ci": [f.gamma_lo, f.gamma_hi]},
                "c": {"value": f.c, "ci": [f.c_lo, f.c_hi]},
                "gamma_method": f.method,
                "lack_of_fit_p": f.lack_of_fit_p, "lack_of_fit_chi2": f.lack_of_fit_chi2,
                "lack_of_fit_df": f.lack_of_fit_df,
                "lack_of_fit_method": ("χ² of the weighted residuals of log α* against its seed "
                                       "variance (bootstrap over seeds, floored at (Δ log α)²/12)"),
                "curvature": {"q": f.curvature, "ci": [f.curvature_lo, f.curvature_hi],
                              "p": f.curvature_p,
                              "model": "log α* = a + γ·u + q·u², u = log r − mean"},
                "local_exponents": {f"r={a}->{b}": v for a, b, v in zip(ranks[:-1], ranks[1:], f.local)},
                "gamma_ci_bootstrap_seeds": L["gamma_ci_bootstrap_seeds"],
                "gamma_ci_bootstrap_seeds_and_ranks": L["gamma_ci_bootstrap_seeds_and_ranks"],
                "where_gamma_falls": bracket_position(f.gamma, lo_b, hi_b, ci=(f.gamma_lo, f.gamma_hi)),
            })
        per_opt[o] = entry
    head = per_opt.get("adam", per_opt[F["optimizers"][0]])
    out = {"gamma": head.get("gamma"), "c": head.get("c"),
           "gamma_method": head.get("gamma_method"), "lack_of_fit_p": head.get("lack_of_fit_p"),
           "headline": "adam (random basis, lr 1e-3)",
           "brackets": {o: per_opt[o]["bracket"] for o in per_opt},
           "rank_law": per_opt,
           "settings": {"ranks": ranks, "alphas": F["alphas"], "seeds": len(seeds),
                        "optimizers": F["optimizers"], "lrs": lrs, "rule": "lora (s = alpha/r)",
                        "steps": base_config(mode).steps, "batch": base_config(mode).batch,
                        "aggregate": "mean of log L over seeds; parabola refinement in log L"},
           "files": files, "seconds": time.time() - t0}
    return jsonable(out)


# =========================================================================== plot
def _alpha_ticks(ax, lo: float, hi: float) -> None:
    """Label a log α axis at powers of 2 (at most ~7 labels), so α* is readable."""
    e0, e1 = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, int(math.ceil((e1 - e0) / 7)))
    ticks = [2.0**e for e in range(e0, e1 + 1, step)]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.yaxis.set_minor_locator(NullLocator())


def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F6: (a, b) loss against α per rank; (c) α*(r) with fits and the derived brackets;
    (d) s* = α*/r; (e) α*/√r; (f) measured γ against the brackets. **Returns:** the Figure."""
    opts = [str(o) for o in ds["optimizer"].values]
    ranks = np.asarray(ds["rank"].values, float)
    alpha = np.asarray(ds["alpha"].values, float)
    fig, axes = new_figure(2, 3, width=4.6, height=3.9)
    cols = colors(len(ranks))
    for i, opt in enumerate(opts[:2]):
        ax = axes[0, i]
        for k, r in enumerate(ranks):
            loss = np.asarray(ds["final_loss"].values[i, k], float)
            dv = np.asarray(ds["diverged"].values[i, k], float)
            ran = np.isfinite(dv).all(axis=-1)
            gm, _, _, anydiv = seed_loss(np.where(np.isinf(loss), np.nan, loss), np.nan_to_num(dv, nan=0))
            ok = ran & np.isfinite(gm)
            ax.plot(alpha[ok], gm[ok], "o-", ms=3, color=cols[k], label=f"r = {int(r)}")
            mark_diverged(ax, alpha, anydiv & ran, color=cols[k], row=k)
            a = float(ds["alpha_star"].values[i, k])
            if np.isfinite(a):
                ax.axvline(a, color=cols[k], lw=0.8, ls=":")
        set_axes(ax, xscale="log", yscale="log", xlabel="α (s = α/r)",
                 ylabel="final excess loss (geo. mean)")
        lr = attr(ds, f"lr_{opt}", "")
        diverged_strip(ax, len(ranks), f"({'ab'[i]}) {opt}, lr {float(lr):.2g}; dotted: α*")
        legend_outside(ax, where="below", ncol=4)
    # (c) α*(r), fits, brackets.
    ax = axes[0, 2]
    rr = np.geomspace(ranks.min() / 1.2, ranks.max() * 1.2, 50)
    lo_all, hi_all = [], []
    for i, opt in enumerate(opts):
        c = OPT_COLORS.get(opt, "k")
        a = np.asarray(ds["alpha_star"].values[i], float)
        lo = np.asarray(ds["alpha_star_lo"].values[i], float)
        hi = np.asarray(ds["alpha_star_hi"].values[i], float)
        edge = np.asarray(ds["at_edge"].values[i], float) > 0
        yerr = np.vstack([np.where(np.isfinite(lo), a - lo, 0), np.where(np.isfinite(hi), hi - a, 0)])
        ax.errorbar(ranks, a, yerr=np.maximum(yerr, 0), fmt="o", color=c, capsize=3,
                    label=f"{opt}: α*(r), 95% bootstrap CI")
        if edge.any():
            ax.plot(ranks[edge], a[edge], "s", mfc="none", mec="tab:red", ms=10)
        stab = np.asarray(ds["next_to_diverged"].values[i], bool) if "next_to_diverged" in ds else None
        if stab is not None and stab.any():
            ax.plot(ranks[stab], a[stab], "^", mfc="none", mec=c, ms=11,
                    label=f"{opt}: α* next to a diverged α (stability bound)")
        g, glo, ghi = (float(v) for v in ds["gamma"].values[i])
        cc = float(ds["c"].values[i, 0])
        if np.isfinite(g):
            ax.plot(rr, cc * rr**g, "-", color=c, lw=1.6,
                    label=f"{opt}: γ = {g:.2f} [{glo:.2f}, {ghi:.2f}]")
            b0, b1 = (float(v) for v in ds["bracket"].values[i])
            x0 = float(np.exp(np.mean(np.log(ranks))))
            y0 = cc * x0**g
            ax.fill_between(rr, y0 * (rr / x0) ** b0, y0 * (rr / x0) ** b1, color=c, alpha=0.15,
                            label=f"{opt}: derived bracket γ ∈ [{b0:g}, {b1:g}]")
        lo_all += list(a[np.isfinite(a)])
    ax.plot(rr, np.full_like(rr, ALPHA_STD), ":", color="grey", label="α = 16")
    ax.plot(rr, 2 * rr, "-.", color="grey", label="α = 2r")
    set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel="optimal α*")
    rank_ticks(ax, ranks)
    if lo_all:
        _alpha_ticks(ax, min(lo_all + [ALPHA_STD]) / 1.5, max(lo_all + [2 * ranks.max()]) * 1.5)
    ax.set_title("(c) α*(r) = c·r^γ; bands: §5 brackets")
    legend_outside(ax, where="below", ncol=1)
    # (d) s* = α*/r and (e) α*/√r.
    for j, (fn, lab) in enumerate(((lambda a, r: a / r, "s* = α*/r"),
                                   (lambda a, r: a / np.sqrt(r), "α*/√r (rsLoRA's α)"))):
        ax = axes[1, j]
        for i, opt in enumerate(opts):
            c = OPT_COLORS.get(opt, "k")
            a = np.asarray(ds["alpha_star"].values[i], float)
            lo = np.asarray(ds["alpha_star_lo"].values[i], float)
            hi = np.asarray(ds["alpha_star_hi"].values[i], float)
            y, ylo, yhi = fn(a, ranks), fn(lo, ranks), fn(hi, ranks)
            yerr = np.vstack([np.where(np.isfinite(ylo), y - ylo, 0), np.where(np.isfinite(yhi), yhi - y, 0)])
            ax.errorbar(ranks, y, yerr=np.maximum(yerr, 0), fmt="o-", color=c, capsize=3, label=opt)
        set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel=lab)
        rank_ticks(ax, ranks)
        ax.set_title(f"({'de'[j]}) {lab}: flat ⇔ γ = {1 if j == 0 else 0.5}")
        legend_outside(ax, where="below", ncol=2)
    # (f) γ against the brackets.
    ax = axes[1, 2]
    for i, opt in enumerate(opts):
        c = OPT_COLORS.get(opt, "k")
        b0, b1 = (float(v) for v in ds["bracket"].values[i])
        ax.fill_between([b0, b1], i - 0.3, i + 0.3, color=c, alpha=0.25,
                        label=f"{opt}: derived [{b0:g}, {b1:g}]")
        g, glo, ghi = (float(v) for v in ds["gamma"].values[i])
        if np.isfinite(g):
            ax.errorbar([g], [i], xerr=[[g - glo], [ghi - g]] if np.isfinite(glo) else None,
                        fmt="o", color="k", capsize=4)
    ax.axvline(1.0, color="grey", ls=":", lw=1, label="γ = 1 (s constant)")
    ax.set_yticks(range(len(opts)))
    ax.set_yticklabels([f"{o}\nγ = {float(ds['gamma'].values[i, 0]):.2f}\n"
                        f"[{float(ds['gamma'].values[i, 1]):.2f}, {float(ds['gamma'].values[i, 2]):.2f}]"
                        for i, o in enumerate(opts)], fontsize=FONT)
    ax.set_ylim(-0.7, len(opts) - 0.3)
    ax.set_xlabel("γ (95% t CI, rank-level residuals)")
    ax.set_title("(f) measured γ against THEORY §5")
    legend_outside(ax, where="below", ncol=1)
    fig.suptitle(f"F6 rank law, rule lora, {attr(ds, 'steps', '?')} steps, minibatch "
                 f"{attr(ds, 'batch', '?')}, {attr(ds, 'basis', '')} basis", fontsize=FONT + 2)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig
