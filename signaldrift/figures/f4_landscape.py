"""F4: the (η, α) landscape of final loss (THEORY §6, P4), with lines of constant η_B.

Heatmap of the seeds' geometric-mean final loss over a log grid of lr × α (rule ``lora``,
r = 16 so that α = 16 and α = 2r differ) for SGD and Adam, in the common training setting
(random feature basis, minibatches of 32, fixed budget). Diverged cells (any seed) are
black, cells not run are white.

THEORY §3 (exact): with B₀ = 0 the run at scale c·s and lr η equals the run at scale s with
η_A = η and η_B = c·η (Adam, with ε_B = ε/c) or η_B = c²·η (SGD). So along the lines
η·s = const (Adam) and η·s² = const (SGD) the learning rate of B is constant and only η_A
changes: the dashed lines are **lines of constant η_B**, labelled by η_B relative to the
standard point (η_std, α = 16).

The grid is widened (two octaves at a time, at most ``max_widen`` times per side) while the
best cell sits on its edge; a best cell still on the edge is reported as a bound.
This module also owns the landscape data that F2 reads (:func:`landscape`).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.colors import ListedColormap, LogNorm
from matplotlib.figure import Figure

from .._analysis import aggregate_seeds
from ._common import (draw_and_write, finish, ALPHA_STD, FONT, Ctx, attr, base_config, check_mode, jsonable,
                      legend_outside, lr_std, new_figure, pow2, save_figure, set_axes, write)

ID, STEM = "F4", "landscape"
TITLE = "the (η, α) landscape with lines of constant η_B"
OPTIMIZERS = ("sgd", "adam")


def settings(mode: str) -> dict[str, Any]:
    """The landscape grid of ``mode`` (shared by F2 and F4; fixed a priori)."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    return {"rank": 4 if test else 16,
            "alphas": pow2(0, 6, 2) if test else (pow2(0, 10, 0.5) if full else pow2(0, 10)),
            "lr_factors": pow2(-2, 2, 2) if test else (pow2(-6, 6, 0.5) if full else pow2(-6, 6)),
            "seeds": [0, 1] if test else (list(range(8)) if full else [0, 1, 2]),
            "widen_octaves": 2.0, "max_widen": 1 if test else 3}


_MEMO: dict[tuple[str, str], xr.Dataset] = {}


def _extend(grid: list[float], side: str, octaves: float) -> list[float]:
    g = sorted(grid)
    step = math.log2(g[1] / g[0]) if len(g) > 1 else 1.0
    n = max(1, int(round(octaves / step)))
    if side == "lo":
        return sorted(g + [g[0] * 2.0 ** (-step * k) for k in range(1, n + 1)])
    return sorted(g + [g[-1] * 2.0 ** (step * k) for k in range(1, n + 1)])


def landscape(mode: str, ctx: Ctx) -> xr.Dataset:
    """Final loss over the (α, lr) grid per optimiser, widened until the best cell is
    interior (or ``max_widen`` is reached). Cached per (mode, out dir) in this process.

    **Returns:** Dataset with ``final_loss``, ``diverged`` (NaN: not run) over
    (optimizer, alpha, lr_factor, seed), ``lr(optimizer, lr_factor)``, ``at_edge(optimizer)``,
    ``widened_*``; attrs ``rank``, ``lr_std_<opt>``, ``steps``, ``batch``.
    """
    key = (mode, str(ctx.out.resolve()))
    if key in _MEMO:
        return _MEMO[key]
    L = settings(mode)
    r, seeds = L["rank"], L["seeds"]
    std = {o: lr_std(mode, o) for o in OPTIMIZERS}
    grids = {o: (list(L["alphas"]), list(L["lr_factors"])) for o in OPTIMIZERS}
    widened = {o: {"alpha_lo": 0, "alpha_hi": 0, "lr_lo": 0, "lr_hi": 0} for o in OPTIMIZERS}
    done: dict[tuple, tuple[float, int]] = {}
    edge = {o: "" for o in OPTIMIZERS}
    pending = list(OPTIMIZERS)
    while pending:
        cfgs, index = [], []
        for o in pending:
            al, lf = grids[o]
            for a in al:
                for f in lf:
                    for sd in seeds:
                        if (o, a, f, sd) not in done:
                            cfgs.append(base_config(mode, rank=r, alpha=float(a), optimizer=o,
                                                    lr=float(std[o] * f), seed=sd))
                            index.append((o, a, f, sd))
        for k, fin in zip(index, ctx.finals(cfgs)):
            done[k] = fin
        nxt = []
        for o in pending:
            al, lf = grids[o]
            loss = np.array([[[done[(o, a, f, sd)][0] for sd in seeds] for f in lf] for a in al])
            agg = aggregate_seeds(loss, axis=-1)
            if not np.isfinite(agg).any():
                edge[o] = "every cell diverged"
                continue
            i, j = np.unravel_index(np.argmin(agg), agg.shape)
            sides = []
            if i == 0:
                sides.append(("alpha_lo", 0, "lo"))
            if i == len(al) - 1:
                sides.append(("alpha_hi", 0, "hi"))
            if j == 0:
                sides.append(("lr_lo", 1, "lo"))
            if j == len(lf) - 1:
                sides.append(("lr_hi", 1, "hi"))
            grew = False
            for name, axis, side in sides:
                if widened[o][name] < L["max_widen"]:
                    g = list(grids[o])
                    g[axis] = _extend(g[axis], side, L["widen_octaves"])
                    grids[o] = tuple(g)
                    widened[o][name] += 1
                    grew = True
            edge[o] = ", ".join(n for n, _, _ in sides)
            if grew:
                nxt.append(o)
        pending = nxt

    all_a = sorted({a for o in OPTIMIZERS for a in grids[o][0]})
    all_f = sorted({f for o in OPTIMIZERS for f in grids[o][1]})
    shape = (len(OPTIMIZERS), len(all_a), len(all_f), len(seeds))
    FL = np.full(shape, np.nan)
    DV = np.full(shape, np.nan)
    for (o, a, f, sd), (fl, dv) in done.items():
        idx = (OPTIMIZERS.index(o), all_a.index(a), all_f.index(f), seeds.index(sd))
        FL[idx], DV[idx] = fl, dv
    ds = xr.Dataset(
        {"final_loss": (("optimizer", "alpha", "lr_factor", "seed"), FL),
         "diverged": (("optimizer", "alpha", "lr_factor", "seed"), DV),
         "lr": (("optimizer", "lr_factor"), np.array([[std[o] * f for f in all_f] for o in OPTIMIZERS])),
         "best_at_edge": (("optimizer",), np.array([edge[o] for o in OPTIMIZERS])),
         "widened": (("optimizer", "side"), np.array([[widened[o][s] for s in
                                                     ("alpha_lo", "alpha_hi", "lr_lo", "lr_hi")]
                                                    for o in OPTIMIZERS], np.int32))},
        coords={"optimizer": list(OPTIMIZERS), "alpha": np.array(all_a), "lr_factor": np.array(all_f),
                "seed": np.array(seeds, np.int32), "side": ["alpha_lo", "alpha_hi", "lr_lo", "lr_hi"]},
        attrs={"rank": r, "alpha_std": ALPHA_STD, "lr_std_sgd": std["sgd"], "lr_std_adam": std["adam"],
               "steps": base_config(mode).steps, "batch": base_config(mode).batch,
               "basis": base_config(mode).basis, "run_mode": mode,
               "aggregate": "geometric mean over seeds; a cell with a diverged seed is diverged"},
    )
    _MEMO[key] = ds
    return ds


def cell_means(sub: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(geometric-mean loss, any seed diverged, cell was run) over (alpha, lr_factor)."""
    loss = np.asarray(sub["final_loss"].values, float)
    dv = np.asarray(sub["diverged"].values, float)
    ran = np.isfinite(dv).all(axis=-1)
    div = (np.nan_to_num(dv, nan=0) > 0) | (ran[..., None] & ~np.isfinite(loss))
    anydiv = div.any(axis=-1) & ran
    agg = aggregate_seeds(np.where(div, np.inf, loss), axis=-1)
    mean = np.where(ran & ~anydiv & np.isfinite(agg), np.exp(agg), np.nan)
    return mean, anydiv, ran


def iso_power(opt: str) -> float:
    """p of the lines of constant η_B: η·s^p = const (THEORY §3: Adam p = 1, SGD p = 2)."""
    return 1.0 if opt.startswith("adam") else 2.0


def figure_F4(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F4: the (η, α) landscape (THEORY §6, P4); see the module docstring.

    The summary measures how far η_B alone sets the loss: along the line of constant η_B
    through the best cell, the ratio of the largest to the smallest mean loss among
    converged cells (and diverged cells), against the same along the line of constant η.
    """
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    ds = landscape(mode, ctx).copy()
    ds.attrs.update(figure="F4 (eta, alpha) landscape (THEORY §6, P4)")
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")
    out: dict[str, Any] = {"rank": int(ds.attrs["rank"]), "basis": ds.attrs["basis"],
                           "aggregate": ds.attrs["aggregate"]}
    la = np.log2(ds.alpha.values)
    lf = np.log2(ds.lr_factor.values)
    for o in ds.optimizer.values:
        o = str(o)
        x = ds.sel(optimizer=o)
        mean, anydiv, ran = cell_means(x)
        p = iso_power(o)
        if np.all(np.isnan(mean)):
            out[o] = {"note": "every cell diverged"}
            continue
        i, j = np.unravel_index(np.nanargmin(mean), mean.shape)
        # log η + p log s = const on log2 grids: lf[j'] + p·la[i'] = lf[j] + p·la[i].
        on_iso = np.isclose(lf[None, :] + p * la[:, None], lf[j] + p * la[i]) & ran
        on_eta = np.zeros_like(on_iso)
        on_eta[:, j] = True
        on_eta &= ran

        def spread(mask):
            v = mean[mask]
            v = v[np.isfinite(v)]
            return {"cells": int(mask.sum()), "diverged": int((anydiv & mask).sum()),
                    "max_over_min_loss": float(v.max() / v.min()) if v.size > 1 else None}

        edge = str(x["best_at_edge"].values)
        out[o] = {"best_lr": float(x["lr"].values[j]), "best_alpha": float(ds.alpha.values[i]),
                  "best_loss": float(mean[i, j]), "diverged_cells": int(anydiv.sum()),
                  "cells_run": int(ran.sum()),
                  "best_at_edge": edge or None,
                  "best_is_bound": bool(edge),
                  "grid_alpha": [float(ds.alpha.values[ran.any(1)].min()), float(ds.alpha.values[ran.any(1)].max())],
                  "grid_lr": [float(x["lr"].values[ran.any(0)].min()), float(x["lr"].values[ran.any(0)].max())],
                  "iso_line": "constant eta_B: " + ("eta*s" if p == 1 else "eta*s^2"),
                  "along_constant_eta_B_through_best": spread(on_iso),
                  "along_constant_eta_through_best": spread(on_eta)}
    out["files"] = files
    out["seconds"] = time.time() - t0
    return jsonable(out)


# =========================================================================== plot
def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges of a log-spaced grid (geometric midpoints)."""
    lx = np.log(np.asarray(x, float))
    if lx.size == 1:
        return np.exp(np.array([lx[0] - 0.5, lx[0] + 0.5]))
    mid = 0.5 * (lx[1:] + lx[:-1])
    return np.exp(np.r_[lx[0] - (mid[0] - lx[0]), mid, lx[-1] + (lx[-1] - mid[-1])])


def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F4: one heatmap per optimiser with lines of constant η_B (THEORY §3).

    **Arguments:** `ds` with `final_loss`, `diverged` (NaN: not run) over (optimizer, alpha,
    lr_factor, seed), `lr(optimizer, lr_factor)`; attrs `rank`, `alpha_std`,
    `lr_std_<opt>`. **Returns:** the Figure.
    """
    opts = [str(o) for o in ds["optimizer"].values]
    rank = int(attr(ds, "rank", 1))
    a_std = float(attr(ds, "alpha_std", ALPHA_STD))
    fig, axes = new_figure(1, len(opts), width=5.6, height=5.2)
    alpha = np.asarray(ds["alpha"].values, float)
    for k, opt in enumerate(opts):
        ax = axes[0, k]
        sub = ds.sel(optimizer=opt)
        lr = np.asarray(sub["lr"].values, float)
        mean, anydiv, ran = cell_means(sub)
        le, ae = _edges(lr), _edges(alpha)
        finite = mean[np.isfinite(mean) & (mean > 0)]
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
        mesh = ax.pcolormesh(le, ae, np.ma.masked_invalid(mean), norm=norm, cmap="viridis_r",
                             shading="flat")
        cb = fig.colorbar(mesh, ax=ax)
        cb.set_label("final excess loss (geometric mean over seeds)", fontsize=FONT)
        if anydiv.any():
            ax.pcolormesh(le, ae, np.ma.masked_where(~anydiv, np.ones_like(mean)),
                          cmap=ListedColormap(["black"]), shading="flat", vmin=0, vmax=1)
        # Lines of constant η_B: η·s^p = const, s = α/r ⇒ α = r·(c/η)^(1/p); labelled by
        # η_B/η_B(standard) = (η/η_std)·(α/α_std)^p.
        p = iso_power(opt)
        lstd = float(attr(ds, f"lr_std_{opt}", lr[len(lr) // 2]))
        etas = np.geomspace(le[0], le[-1], 60)
        lo_e = math.floor(math.log2(lr.min() / lstd) + p * math.log2(alpha.min() / a_std))
        hi_e = math.ceil(math.log2(lr.max() / lstd) + p * math.log2(alpha.max() / a_std))
        step = max(2, int(math.ceil((hi_e - lo_e) / 6)))
        for e in range(lo_e + step, hi_e, step):
            al = a_std * (2.0**e * lstd / etas) ** (1.0 / p)
            ok = (al >= ae[0]) & (al <= ae[-1])
            # The label sits outside the heatmap, where the line meets its top or right
            # edge; lines that meet neither (lower-left corner) are not drawn.
            eta_top = 2.0**e * lstd / (ae[-1] / a_std) ** p
            a_right = a_std * (2.0**e * lstd / le[-1]) ** (1.0 / p)
            at_top, at_right = le[0] <= eta_top <= le[-1], ae[0] <= a_right <= ae[-1]
            if ok.sum() < 2 or not (at_top or at_right):
                continue
            ax.plot(etas[ok], al[ok], color="w", lw=0.9, ls="--")
            if at_top:
                ax.annotate(f"2^{e}", (eta_top, 1.0), xycoords=("data", "axes fraction"),
                            xytext=(0, 2), textcoords="offset points", ha="center",
                            va="bottom", fontsize=FONT, color="0.25", annotation_clip=False)
            else:
                ax.annotate(f"2^{e}", (1.0, a_right), xycoords=("axes fraction", "data"),
                            xytext=(2, 0), textcoords="offset points", ha="left",
                            va="center", fontsize=FONT, color="0.25", annotation_clip=False)
        if finite.size:
            i, j = np.unravel_index(np.nanargmin(np.where(np.isfinite(mean), mean, np.inf)),
                                    mean.shape)
            ax.plot(lr[j], alpha[i], "*", color="tab:red", ms=12, label="best cell")
        ax.plot(lstd, a_std, "o", mfc="none", mec="tab:red", ms=9, label="standard (η_std, α = 16)")
        ax.plot([], [], "s", color="k", label="diverged (any seed)")
        ax.plot([], [], "s", mfc="w", mec="0.5", label="not run")
        ax.plot([], [], "--", color="0.4",
                label=f"constant η_B (η·s{'' if p == 1 else '²'} = const);\n"
                      "edge labels: η_B / η_B at the standard point")
        set_axes(ax, xscale="log", yscale="log", xlim=(le[0], le[-1]), ylim=(ae[0], ae[-1]),
                 xlabel="learning rate η (= η_A)", ylabel="α (s = α/r)")
        ax.set_title(f"({'ab'[k]}) {opt}, r = {rank}, {attr(ds, 'basis', '')} basis", pad=14)
        legend_outside(ax, where="below", ncol=1)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig
