"""F8: the rank law across widths (THEORY §6, P6): does α*(r) converge as d grows?

An exponent γ of α*(r) ∝ r^γ means something only if α*(r) has a limit as the width grows
(with d_eff growing too). F8 measures α*(r) at widths d = m ∈ ``widths`` with a spectrum
λ_i ∝ i^(−β), β = 0.5 < 1, whose d_eff = (trΣ)²/tr(Σ²) grows with d (≈ 83, 148, 282 at
d = 128, 256, 512; F1–F7's β = 1 has d_eff ≈ 18–28, nearly constant), under two task-rank
protocols: k = r (the task grows with the adapter) and k fixed (k = 8), at budgets
T ∈ ``budgets`` (minibatch 32), for Adam (lr 1e-3, random basis) and SGD (η_std = 1/λ_max(Σ)
of each width). Rule ``lora``; α* per rank as in F6 (mean log loss over seeds, parabola in
log L, grid widened at an edge minimum).

It first shows α* against d per rank (convergence), then γ per (d, k-protocol, T) with the
Student-t CI from rank-level residuals and the lack-of-fit p
(:func:`signaldrift._analysis.fit_rank_law`).

Cost: the largest sweep of the project. It runs on today's engine
(:func:`signaldrift._sweep.run_configs` with workers; the batched engine of the sweep-engine
issue is not available): the summary holds the measured seconds per run of this mode and
an estimate of ``--full``'s time from a cost model ``seconds ∝ T·(d + m)·(r + k)``
calibrated on this run.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .._analysis import first_step_brackets
from .._derivations.init_sharpness import effective_dimension, spectrum
from ._common import (draw_and_write, finish, FONT, OPT_COLORS, Ctx, attr, check_mode, colors, jsonable,
                      legend_outside, new_figure, pow2, rank_ticks, save_figure, set_axes,
                      task_of, sgd_lr_std, ADAM_LR_STD, write)
from .f6_rank_law import alpha_star_sweep, rank_law

ID, STEM = "F8", "rank_law_widths"
TITLE = "the rank law across widths: convergence of α*(r) in d, γ per (d, k, T)"
OPTIMIZERS = ("adam", "sgd")
BETA = 0.5


def settings(mode: str) -> dict[str, Any]:
    """F8's settings in ``mode`` (fixed a priori)."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"widths": [24, 32] if test else ([256, 512, 1024, 2048, 4096] if full else [128, 256, 512]),
            "spectrum": BETA,
            "ranks": [2, 4, 8] if test else ([4, 8, 16, 32, 64] if full else [4, 8, 16, 32]),
            "k_protocols": ["k=r", "k=4" if test else "k=8"],
            "budgets": [20] if test else ([100, 400, 1600] if full else [100]),
            "optimizers": list(OPTIMIZERS),
            "alphas": pow2(0, 8, 2) if test else (pow2(0, 12, 0.5) if full else pow2(0, 12)),
            "seeds": [0, 1] if test else (list(range(6)) if full else [0, 1]),
            "batch": 8 if test else 32,
            "widen_octaves": 2.0, "max_widen": 2, "n_boot": 100 if test else (500 if full else 200)}


def _k_of(protocol: str):
    if protocol == "k=r":
        return lambda r: r
    k = int(protocol.split("=")[1])
    return lambda r: k


def _cost_units(steps: int, d: int, r: int, k: int, batch: int) -> float:
    """Work of one run in the cost model: steps·batch·(d + m)·(r + k) (THEORY §2, minibatch)."""
    return float(steps) * batch * (2 * d) * (r + k)


def calibrate(batch: int = 32) -> dict[str, float]:
    """Measure the cost model on this machine, independently of any cache: two fresh runs
    (d = 128, r = k = 4 and d = 512, r = k = 32, Adam, 100 steps) give the cost per unit and
    the per-run time of the simulator; a few cached-sweep runs give the sweep engine's
    per-run overhead (writing and reading archives, processes)."""
    import tempfile

    from .._config import SimConfig
    from .._simulate import simulate
    from .._sweep import run_configs

    pts = []
    for d, r in ((128, 4), (512, 32)):
        cfg = SimConfig(d=d, m=d, task_rank=r, rank=r, spectrum=BETA, batch=batch, steps=100,
                        record_every=100, optimizer="adam", lr=ADAM_LR_STD)
        simulate(cfg.replace(steps=2, record_every=2))  # compile or load the kernels
        t = time.perf_counter()
        simulate(cfg)
        pts.append((time.perf_counter() - t, _cost_units(100, d, r, r, batch)))
    (t1, u1), (t2, u2) = pts
    c = max((t2 - t1) / (u2 - u1), 0.0)
    base = max(t1 - c * u1, 0.0)
    tiny = [SimConfig(d=128, m=128, task_rank=4, rank=4, steps=1, seed=s) for s in range(6)]
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        run_configs(tiny, workers=1, cache_dir=tmp, progress=False)
        per = (time.perf_counter() - t) / len(tiny)
    return {"seconds_per_unit": c, "seconds_per_run": base + per}


def estimate_seconds(mode: str, seconds_per_unit: float, overhead_per_run: float) -> dict:
    """Serial seconds of ``mode``'s F8 sweep from the cost model (before any grid widening)."""
    S = settings(mode)
    units = runs = 0
    for d in S["widths"]:
        for prot in S["k_protocols"]:
            kf = _k_of(prot)
            for T in S["budgets"]:
                for r in S["ranks"]:
                    n = len(S["alphas"]) * len(S["seeds"]) * len(S["optimizers"])
                    units += n * _cost_units(T, d, r, kf(r), S["batch"])
                    runs += n
    return {"runs": runs, "serial_seconds": units * seconds_per_unit + runs * overhead_per_run}


def figure_F8(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F8: the rank law across widths; see the module docstring. **Returns:** the summary,
    with γ per (optimizer, k-protocol, budget, width) and the time estimate of ``--full``."""
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    S = settings(mode)
    W, R, K, T, O = S["widths"], S["ranks"], S["k_protocols"], S["budgets"], S["optimizers"]
    shape = (len(O), len(K), len(T), len(W))
    AST = np.full(shape + (len(R), 3), np.nan)
    EDGE = np.zeros(shape + (len(R),), np.int8)
    GAM = np.full(shape + (3,), np.nan)
    LOF = np.full(shape, np.nan)
    CURV = np.full(shape + (3,), np.nan)
    DEFF = np.array([effective_dimension(spectrum(d, S["spectrum"])) for d in W])
    timing = []
    for i, o in enumerate(O):
        for j, prot in enumerate(K):
            for b, steps in enumerate(T):
                for w, d in enumerate(W):
                    ch = dict(d=d, m=d, spectrum=S["spectrum"], steps=steps, batch=S["batch"],
                              task_rank_of=_k_of(prot))
                    lr = (ADAM_LR_STD if o != "sgd" else
                          sgd_lr_std(task_of(mode, d=d, m=d, spectrum=S["spectrum"])))
                    ts = time.time()
                    per_rank, _ = alpha_star_sweep(
                        mode, ctx, optimizer=o, ranks=R, alphas=S["alphas"], seeds=S["seeds"],
                        lr=lr, widen_octaves=S["widen_octaves"], max_widen=S["max_widen"], **ch)
                    n_runs = sum(v[0].size for v in per_rank.values()) * len(S["seeds"])
                    timing.append((time.time() - ts, n_runs))
                    law = rank_law(per_rank, R, n_boot=S["n_boot"])
                    for q, r in enumerate(R):
                        row = law["rows"][r]
                        AST[i, j, b, w, q] = (row.alpha_star, row.lo, row.hi)
                        EDGE[i, j, b, w, q] = row.at_edge
                    f = law["fit"]
                    if f is not None:
                        GAM[i, j, b, w] = (f.gamma, f.gamma_lo, f.gamma_hi)
                        LOF[i, j, b, w] = f.lack_of_fit_p
                        CURV[i, j, b, w] = (f.curvature, f.curvature_lo, f.curvature_hi)
    ds = xr.Dataset(
        {"alpha_star": (("optimizer", "k_protocol", "budget", "width", "rank"), AST[..., 0]),
         "alpha_star_lo": (("optimizer", "k_protocol", "budget", "width", "rank"), AST[..., 1]),
         "alpha_star_hi": (("optimizer", "k_protocol", "budget", "width", "rank"), AST[..., 2]),
         "at_edge": (("optimizer", "k_protocol", "budget", "width", "rank"), EDGE),
         "gamma": (("optimizer", "k_protocol", "budget", "width", "bound"), GAM),
         "lack_of_fit_p": (("optimizer", "k_protocol", "budget", "width"), LOF),
         "curvature": (("optimizer", "k_protocol", "budget", "width", "bound"), CURV),
         "d_eff": (("width",), DEFF),
         "bracket": (("optimizer", "end"), np.array([first_step_brackets(o) for o in O]))},
        coords={"optimizer": O, "k_protocol": K, "budget": np.array(T, np.int32),
                "width": np.array(W, np.int32), "rank": np.array(R, np.int32),
                "bound": ["value", "lo", "hi"], "end": ["lo", "hi"]},
        attrs={"figure": "F8 rank law across widths (THEORY §6, P6)", "run_mode": mode,
               "spectrum": S["spectrum"], "batch": S["batch"], "seeds": len(S["seeds"]),
               "gamma_method": "OLS of log α* on log r; Student-t CI from rank-level residuals"},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    secs = np.array([t_[0] for t_ in timing])
    runs = np.array([t_[1] for t_ in timing])
    nw = ctx.workers
    cal = calibrate(S["batch"])
    est = {m: estimate_seconds(m, cal["seconds_per_unit"], cal["seconds_per_run"])
           for m in ("quick", "full")}
    gam: dict[str, Any] = {}
    for i, o in enumerate(O):
        for j, prot in enumerate(K):
            for b, steps in enumerate(T):
                key = f"{o}, {prot}, T={steps}"
                gam[key] = {f"d={d}": {"gamma": GAM[i, j, b, w, 0],
                                       "ci": [GAM[i, j, b, w, 1], GAM[i, j, b, w, 2]],
                                       "lack_of_fit_p": LOF[i, j, b, w],
                                       "curvature_q": CURV[i, j, b, w, 0],
                                       "alpha_star": {f"r={r}": AST[i, j, b, w, q, 0] for q, r in enumerate(R)},
                                       "alpha_star_at_edge": [r for q, r in enumerate(R) if EDGE[i, j, b, w, q]]}
                            for w, d in enumerate(W)}
                # Convergence: change of log α* between the two largest widths, per rank.
                if len(W) >= 2:
                    a1, a0 = AST[i, j, b, -1, :, 0], AST[i, j, b, -2, :, 0]
                    gam[key]["log2_change_of_alpha_star_between_two_largest_widths"] = {
                        f"r={r}": float(np.log2(a1[q] / a0[q])) for q, r in enumerate(R)}
    out = {"gamma_per_width": gam,
           "brackets": {o: list(first_step_brackets(o)) for o in O},
           "gamma_method": ds.attrs["gamma_method"],
           "d_eff": {f"d={d}": DEFF[w] for w, d in enumerate(W)},
           "settings": S,
           "timing": {"measured_seconds_this_run": float(secs.sum()),
                      "runs_this_mode": int(runs.sum()),
                      "note": "measured_seconds_this_run is ~0 for runs found in the cache",
                      "workers": nw, "calibration": cal,
                      "cost_model": ("serial seconds = runs·seconds_per_run + "
                                     "Σ steps·batch·(d+m)·(r+k)·seconds_per_unit (before grid "
                                     "widening; today's engine, eigen-basis kernels)"),
                      "estimated_serial_seconds": {m: v["serial_seconds"] for m, v in est.items()},
                      "estimated_runs": {m: v["runs"] for m, v in est.items()},
                      "estimated_full_hours_on_2_workers": est["full"]["serial_seconds"] / 2 / 3600},
           "files": files, "seconds": time.time() - t0}
    return jsonable(out)


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F8 (at the largest budget): row 1, α*(r) per width for each (optimizer,
    k-protocol); row 2, α* against d per rank (convergence); row 3, γ against d with its CI
    for every budget, over the derived bracket. **Returns:** the Figure."""
    O = [str(o) for o in ds["optimizer"].values]
    K = [str(k) for k in ds["k_protocol"].values]
    W = np.asarray(ds["width"].values, float)
    R = np.asarray(ds["rank"].values, float)
    T = np.asarray(ds["budget"].values)
    combos = [(i, j) for i in range(len(O)) for j in range(len(K))]
    fig, axes = new_figure(3, len(combos), width=3.9, height=3.5)
    cw, cr = colors(W.size), colors(R.size)
    b = len(T) - 1
    letters = iter("abcdefghijklmnopqrstuvwx")
    for c, (i, j) in enumerate(combos):
        ttl = f"{O[i]}, {K[j]}"
        ax = axes[0, c]
        for w, d in enumerate(W):
            a = np.asarray(ds["alpha_star"].values[i, j, b, w], float)
            lo = np.asarray(ds["alpha_star_lo"].values[i, j, b, w], float)
            hi = np.asarray(ds["alpha_star_hi"].values[i, j, b, w], float)
            yerr = np.vstack([np.where(np.isfinite(lo), a - lo, 0), np.where(np.isfinite(hi), hi - a, 0)])
            ax.errorbar(R * (1 + 0.03 * (w - W.size / 2)), a, yerr=np.maximum(yerr, 0), fmt="o-",
                        ms=3, capsize=2, color=cw[w], label=f"d = {int(d)}")
            e = np.asarray(ds["at_edge"].values[i, j, b, w], bool)
            if e.any():
                ax.plot(R[e], a[e], "s", mfc="none", mec="tab:red", ms=8)
        set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel="α*")
        rank_ticks(ax, R)
        ax.set_title(f"({next(letters)}) α*(r): {ttl}, T = {int(T[b])}")
        if c == len(combos) - 1:
            ax.plot([], [], "s", mfc="none", mec="tab:red", label="α* at grid edge (bound)")
            legend_outside(ax, where="right")
        ax = axes[1, c]
        for q, r in enumerate(R):
            a = np.asarray(ds["alpha_star"].values[i, j, b, :, q], float)
            ax.plot(W, a, "o-", ms=3, color=cr[q], label=f"r = {int(r)}")
        set_axes(ax, xscale="log", yscale="log", xlabel="width d = m", ylabel="α*")
        rank_ticks(ax, W)
        ax.set_title(f"({next(letters)}) α* against d: {ttl}")
        if c == len(combos) - 1:
            legend_outside(ax, where="right")
        ax = axes[2, c]
        b0, b1 = (float(v) for v in ds["bracket"].values[i])
        ax.axhspan(b0, b1, color=OPT_COLORS.get(O[i], "grey"), alpha=0.2,
                   label=f"derived bracket [{b0:g}, {b1:g}]")
        for bb, steps in enumerate(T):
            g = np.asarray(ds["gamma"].values[i, j, bb], float)
            ok = np.isfinite(g[:, 0])
            yerr = np.vstack([g[:, 0] - g[:, 1], g[:, 2] - g[:, 0]])
            yerr = np.where(np.isfinite(yerr), yerr, 0)
            ax.errorbar(W[ok] * (1 + 0.04 * bb), g[ok, 0], yerr=yerr[:, ok], fmt="o-", ms=4,
                        capsize=3, color=colors(len(T))[bb], label=f"T = {int(steps)}")
        ax.axhline(1.0, color="grey", ls=":", lw=1, label="γ = 1")
        ax.set_xscale("log")
        rank_ticks(ax, W)
        ax.set_xlabel("width d = m")
        ax.set_ylabel("γ (95% t CI)")
        ax.set_title(f"({next(letters)}) γ against d: {ttl}; band: §5")
        if c == len(combos) - 1:
            legend_outside(ax, where="right")
    deff = ", ".join(f"{v:.0f}" for v in np.asarray(ds["d_eff"].values, float))
    fig.suptitle(f"F8 rank law across widths: λ_i ∝ i^−{attr(ds, 'spectrum', '?')} (d_eff = {deff}), "
                 f"minibatch {attr(ds, 'batch', '?')}, {attr(ds, 'seeds', '?')} seeds",
                 fontsize=FONT + 2)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig
