"""Plot functions for the seven figures (THEORY.md §3–§6).

Every function takes the :class:`xarray.Dataset` that :mod:`signaldrift._figures` builds (and
writes to netCDF next to the image), so a figure can be redrawn from its saved data:

    >>> import xarray as xr
    >>> from signaldrift._plotting import plot_rank_law
    >>> fig = plot_rank_law(xr.open_dataset("figures/out/F6_rank_law.nc"))  # doctest: +SKIP

Each returns the :class:`matplotlib.figure.Figure` and, with ``save_to``, writes it: a path
ending in ``.png`` or ``.pdf`` writes that file, a path without one of these suffixes writes
both ``<path>.png`` and ``<path>.pdf``. Figures are drawn on the Agg canvas directly, never
through ``pyplot``, so no global figure state is created or leaked.

Conventions: theory is drawn as black/grey lines (dashed = derived slopes, solid = closed
forms), simulation as markers; diverged runs are drawn as red crosses pinned to the top of the
axis, never dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import warnings

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter
from matplotlib.figure import Figure

__all__ = [
    "plot_spectral_suppression",
    "plot_optimisation_gap",
    "plot_signal_drift",
    "plot_landscape",
    "plot_rank_stability",
    "plot_rank_law",
    "plot_rule_comparison",
    "save_figure",
]

_DIVERGED_STYLE = dict(marker="x", color="tab:red", linestyle="none", markersize=6, zorder=5)
_RULE_COLORS = {"lora": "tab:blue", "rslora": "tab:orange", "lora-alpha": "tab:green"}
_OPT_COLORS = {"sgd": "tab:purple", "adam": "tab:cyan", "adamw": "tab:olive"}


# --------------------------------------------------------------------------- helpers
def _new_figure(nrows: int, ncols: int, *, width: float = 4.0, height: float = 3.2,
                **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save_figure(fig: Figure, save_to: str | Path | None, *, dpi: int = 100) -> list[Path]:
    """Write ``fig``: ``x.png``/``x.pdf`` as given, or both ``x.png`` and ``x.pdf``.

    **Returns:** the paths written (empty when ``save_to`` is ``None``).
    """
    if save_to is None:
        return []
    p = Path(save_to)
    p.parent.mkdir(parents=True, exist_ok=True)
    targets = [p] if p.suffix.lower() in (".png", ".pdf") else [
        p.with_name(p.name + ".png"), p.with_name(p.name + ".pdf")]
    for t in targets:
        # Fixed metadata keeps PDFs byte-stable between identical runs.
        meta = {"CreationDate": None} if t.suffix.lower() == ".pdf" else {"Software": None}
        fig.savefig(t, dpi=dpi, metadata=meta)
    return targets


def _has_positive(ax, axis: str) -> bool:
    """Whether the data lines of ``ax`` hold any finite positive value along ``axis``."""
    for ln in ax.get_lines():
        if ln.get_transform() != ax.transData:
            continue
        v = np.asarray(ln.get_xdata() if axis == "x" else ln.get_ydata(), float)
        if np.any(np.isfinite(v) & (v > 0)):
            return True
    return False


def _set_axes(ax, *, xscale: str = "linear", yscale: str = "linear", **kw: Any) -> None:
    """``ax.set`` that falls back to a linear scale (with a note) when a log axis has no
    positive data, e.g. a panel where every run diverged."""
    empty = False
    if xscale == "log" and not _has_positive(ax, "x"):
        xscale, empty = "linear", True
    if yscale == "log" and not _has_positive(ax, "y"):
        yscale, empty = "linear", True
    ax.set(xscale=xscale, yscale=yscale, **kw)
    # Minor-tick labels of short log ranges overlap ("2×10⁰ 3×10⁰ …"): label majors only.
    if xscale == "log":
        ax.xaxis.set_minor_formatter(NullFormatter())
    if yscale == "log":
        ax.yaxis.set_minor_formatter(NullFormatter())
    if empty:
        ax.text(0.5, 0.5, "no finite positive values\n(every run diverged?)", ha="center",
                va="center", transform=ax.transAxes, fontsize=8, color="tab:red")


def _rank_ticks(ax, ranks) -> None:
    """Label a log rank axis at the ranks themselves (1, 2, 4, …)."""
    ax.xaxis.set_major_locator(FixedLocator(np.asarray(ranks, float)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def _ref_line(ax, x: np.ndarray, slope: float, x0: float, y0: float, **kw: Any) -> None:
    """Draw ``y = y0 (x/x0)^slope`` over the range of ``x`` (a log-log reference line)."""
    xs = np.geomspace(np.nanmin(x), np.nanmax(x), 50)
    kw.setdefault("color", "k")
    kw.setdefault("linestyle", "--")
    kw.setdefault("linewidth", 1.0)
    ax.plot(xs, y0 * (xs / x0) ** slope, **kw)


def _geo_center(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Geometric centre of the finite positive points (anchor for reference slopes)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not ok.any():
        return 1.0, 1.0
    return float(np.exp(np.mean(np.log(x[ok])))), float(np.exp(np.mean(np.log(y[ok]))))


def _mean_ci(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and a normal-approximation 95% interval (1.96 standard errors) over ``axis``."""
    a = np.asarray(a, float)
    n = np.sum(np.isfinite(a), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: every seed diverged
        mean = np.nanmean(a, axis=axis) if a.size else a
        sd = np.nanstd(a, axis=axis, ddof=1) if a.shape[axis] > 1 else np.zeros_like(mean)
        half = 1.96 * sd / np.sqrt(np.maximum(n, 1))
    half = np.where(np.isfinite(half), half, 0.0)
    return mean, mean - half, mean + half


def _attr(ds, name: str, default: Any = None) -> Any:
    return ds.attrs.get(name, default)


def _mark_diverged(ax, x: np.ndarray, diverged: np.ndarray, label: str | None = None,
                   color: Any = None, offset: int = 0) -> None:
    """Crosses pinned near the top of the axis for diverged points (red, or ``color`` when
    several series share an axis; ``offset`` staggers series vertically)."""
    x = np.asarray(x, float)[np.asarray(diverged, bool)]
    if x.size:
        style = dict(_DIVERGED_STYLE)
        if color is not None:
            style["color"] = color
        ax.plot(x, np.full(x.size, 0.97 - 0.04 * offset), transform=ax.get_xaxis_transform(),
                label=label, clip_on=False, **style)


def _seed_reduce(loss: np.ndarray, diverged: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean final loss over the last axis (seeds) and whether any seed diverged.

    A cell where any seed diverged is reported as diverged (its mean is NaN): averaging only
    the survivors would hide the divergence.
    """
    loss = np.asarray(loss, float)
    div = np.asarray(diverged, bool) | ~np.isfinite(loss)
    anydiv = div.any(axis=-1)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: every seed diverged
        mean = np.where(anydiv, np.nan, np.nanmean(np.where(div, np.nan, loss), axis=-1))
    return mean, anydiv


# --------------------------------------------------------------------------- F1
def plot_spectral_suppression(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F1: spectral suppression of the LoRA Hessian (THEORY §4, prediction P1).

    **Arguments:**
    - `ds`: Dataset with
      `lambda_init(rank, alpha)` measured λ_max(H) at initialisation,
      `lambda_closed(rank, alpha)` the closed form at B = 0,
      λ = (s²μ + √(s⁴μ² + 4s²g²))/2 with the run's own A,
      `scale(rank, alpha)` s = α/r, `theory_lambda(theory_s)` the same closed form with
      μ = trΣ/(3d) (PEFT init, r ≪ d), `lambda_train(case, sharp_step)` λ_max(H) along Adam
      training with `case_label(case)`, `div_pred(div_case)` = 2/λ_max(H₀),
      `div_lo(div_case)`/`div_hi(div_case)` the measured divergence bracket of GD
      (largest stable / smallest diverged lr on the grid) with `div_label(div_case)`;
      attrs `lambda_sigma` (λ_max(Σ), full fine-tuning's sharpness) and `eta_std_sgd`.
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (four panels).
    """
    lam_sigma = float(_attr(ds, "lambda_sigma", 1.0))
    eta_std = float(_attr(ds, "eta_std_sgd", 1.0 / lam_sigma))
    fig, axes = _new_figure(1, 5, width=3.6, height=3.4)
    ax1, ax2, ax5, ax3, ax4 = axes[0]
    ranks = np.asarray(ds["rank"].values)
    cmap = _colors(len(ranks))
    s_all = np.asarray(ds["scale"].values, float)
    lam0 = np.asarray(ds["lambda_init"].values, float)
    lamc = np.asarray(ds["lambda_closed"].values, float)
    ts = np.asarray(ds["theory_s"].values, float)
    tl = np.asarray(ds["theory_lambda"].values, float)

    # (a) suppression factor ψ = λ_max(H₀)/λ_max(Σ) against s.
    ax1.plot(ts, tl / lam_sigma, "k-", lw=1.2, label="closed form, μ = trΣ/3d")
    for i, r in enumerate(ranks):
        ax1.plot(s_all[i], lam0[i] / lam_sigma, "o", color=cmap[i], ms=5, label=f"r = {r}")
        ax1.plot(s_all[i], lamc[i] / lam_sigma, "+", color="k", ms=7)
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    _set_axes(ax1, xscale="log", yscale="log", xlabel="scale s = α/r",
            ylabel="ψ = λ_max(H₀) / λ_max(Σ)", title="(a) sharpness at init")
    ax1.legend(fontsize=7, loc="upper left")

    # (b) along training (Adam at its standard lr).
    steps = np.asarray(ds["sharp_step"].values, float)
    for c in range(ds.sizes.get("case", 0)):
        y = np.asarray(ds["lambda_train"].values[c], float)
        ax2.plot(steps, y, "o-", ms=3, label=str(ds["case_label"].values[c]))
    ax2.plot([], [], " ", label=f"Adam lr {_attr(ds, 'adam_lr', '')}")
    ax2.axhline(lam_sigma, color="k", ls="--", lw=1, label="full FT λ_max(Σ)")
    _set_axes(ax2, yscale="log", xlabel="step", ylabel="λ_max(H)", title="(b) along Adam training")
    ax2.legend(fontsize=7)

    # (b') Adam's preconditioned sharpness against its threshold (THEORY §4). Step 0 is left
    # out: v̂_A = 0 there (∇A = 0 at B = 0), so P_A = ε and λ_max(P⁻¹H) is meaningless.
    if "precond_lambda_train" in ds:
        keep = steps > 0
        for c in range(ds.sizes.get("case", 0)):
            y = np.asarray(ds["precond_lambda_train"].values[c], float)
            ax5.plot(steps[keep], y[keep], "o-", ms=3, label=str(ds["case_label"].values[c]))
        thr = float(_attr(ds, "adam_threshold", np.nan))
        if np.isfinite(thr):
            ax5.axhline(thr, color="tab:red", ls="--", lw=1, label="(2+2β₁)/((1−β₁)η)")
        _set_axes(ax5, yscale="log", xlabel="step", ylabel="λ_max(P⁻¹H)",
                  title="(b') Adam preconditioned")
        ax5.legend(fontsize=7)

    # (c) GD stability lr 2/λ_max against the standard lr.
    for i, r in enumerate(ranks):
        ax3.plot(s_all[i], 2.0 / lam0[i], "o", color=cmap[i], ms=5, label=f"r = {r}")
    ax3.plot(ts, 2.0 / tl, "k-", lw=1.2, label="2/λ closed form")
    ax3.axhline(eta_std, color="tab:red", ls="-.", lw=1, label=f"SGD standard η = {eta_std:.3g}")
    ax3.axhline(2.0 / lam_sigma, color="k", ls="--", lw=1, label="full FT 2/λ_max(Σ)")
    _set_axes(ax3, xscale="log", yscale="log", xlabel="scale s = α/r", ylabel="GD stability lr 2/λ_max",
            title="(c) stability threshold")
    ax3.legend(fontsize=7)

    # (d) measured GD divergence lr against 2/λ_max(H₀).
    pred = np.asarray(ds["div_pred"].values, float)
    lo = np.asarray(ds["div_lo"].values, float)
    hi = np.asarray(ds["div_hi"].values, float)
    mid = np.sqrt(np.where(np.isfinite(lo), lo, hi) * np.where(np.isfinite(hi), hi, lo))
    yerr = np.vstack([mid - np.where(np.isfinite(lo), lo, mid),
                      np.where(np.isfinite(hi), hi, mid) - mid])
    ax4.errorbar(pred, mid, yerr=yerr, fmt="s", color="tab:blue", ms=4, capsize=3,
                 label="measured (stable … diverged)")
    for j in range(pred.size):
        ax4.annotate(str(ds["div_label"].values[j]), (pred[j], mid[j]), fontsize=6,
                     xytext=(3, -8), textcoords="offset points")
    lim = np.array([np.nanmin(np.r_[pred, lo, hi]) / 1.5, np.nanmax(np.r_[pred, lo, hi]) * 1.5])
    ax4.plot(lim, lim, "k-", lw=1, label="η = 2/λ_max(H₀)")
    _set_axes(ax4, xscale="log", yscale="log", xlabel="2/λ_max(H₀)", ylabel="GD divergence lr",
            title="(d) measured divergence (SGD, μ=0)")
    ax4.legend(fontsize=7)
    save_figure(fig, save_to, dpi=dpi)
    return fig


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cm = colormaps["viridis"]
    return [cm(x) for x in np.linspace(0.05, 0.9, max(n, 1))]


# --------------------------------------------------------------------------- F2
def plot_optimisation_gap(ds, *, alphas: Sequence[float] | None = None,
                          save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F2: final loss against the learning rate for several α (THEORY §4, P2).

    **Arguments:**
    - `ds`: Dataset with `final_loss(optimizer, alpha, lr_factor, seed)`,
      `diverged(optimizer, alpha, lr_factor, seed)`, `lr(optimizer, lr_factor)`, and attrs
      `rank`, `alpha_std` (16), `lr_std_<optimizer>` (the standard lr).
    - `alphas`: the α to draw (default: all of `ds.alpha`). α = 16 and α = 2r are drawn
      thick and labelled.
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (one panel per optimiser).
    """
    opts = [str(o) for o in ds["optimizer"].values]
    rank = int(_attr(ds, "rank", 0))
    a_std = float(_attr(ds, "alpha_std", 16.0))
    all_alpha = np.asarray(ds["alpha"].values, float)
    alphas = all_alpha if alphas is None else np.asarray(alphas, float)
    fig, axes = _new_figure(1, len(opts), width=4.6, height=3.6)
    cols = _colors(len(alphas))
    for k, opt in enumerate(opts):
        ax = axes[0, k]
        lr = np.asarray(ds["lr"].sel(optimizer=opt).values, float)
        for j, a in enumerate(alphas):
            i = int(np.argmin(np.abs(np.log(all_alpha / a))))
            sub = ds.sel(optimizer=opt).isel(alpha=i)
            mean, anydiv = _seed_reduce(sub["final_loss"].values, sub["diverged"].values)
            special = []
            if math.isclose(a, a_std):
                special.append("standard")
            if math.isclose(a, 2 * rank):
                special.append("2r")
            lw = 2.6 if special else 1.0
            lab = f"α = {a:g}" + (f" ({', '.join(special)})" if special else "")
            ax.plot(lr, mean, "o-", ms=3, lw=lw, color=cols[j], label=lab)
            _mark_diverged(ax, lr, anydiv, color=cols[j], offset=j)
        lstd = float(_attr(ds, f"lr_std_{opt}", np.nan))
        if np.isfinite(lstd):
            ax.axvline(lstd, color="k", ls=":", lw=1, label=f"standard lr {lstd:.2g}")
        ax.plot([], [], label="diverged (any seed; colour = series)", **_DIVERGED_STYLE)
        _set_axes(ax, xscale="log", yscale="log", xlabel="learning rate η",
               ylabel="final excess loss (mean over seeds)",
               title=f"{opt.upper() if opt == 'sgd' else opt.capitalize()}, r = {rank}")
        ax.legend(fontsize=6.5)
    save_figure(fig, save_to, dpi=dpi)
    return fig


# --------------------------------------------------------------------------- F3
def plot_signal_drift(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F3: signal ‖S‖ and drift ratio ρ against η and against α (THEORY §3, P3).

    **Arguments:**
    - `ds`: Dataset with `rho_eta(optimizer, lr_factor, seed)`,
      `signal_eta(optimizer, lr_factor, seed)` (at a fixed α) against `lr(optimizer,
      lr_factor)`, and `rho_alpha(optimizer, alpha, seed)`, `signal_alpha(optimizer, alpha,
      seed)` (at a fixed lr) against `scale(alpha)`; derived exponents
      `slope_theory(optimizer, quantity, variable)` with quantity ∈ {rho, signal} and
      variable ∈ {eta, s} (NaN: none derived); attrs `plot_step`, `state` (text).
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (2×2 panels: ρ and ‖S‖ against η and against s).
    """
    opts = [str(o) for o in ds["optimizer"].values]
    fig, axes = _new_figure(2, 2, width=4.3, height=3.3)
    state = str(_attr(ds, "state", ""))
    for row, q in enumerate(("rho", "signal")):
        for col, var in enumerate(("eta", "s")):
            ax = axes[row, col]
            for opt in opts:
                c = _OPT_COLORS.get(opt, "k")
                if var == "eta":
                    x = np.asarray(ds["lr"].sel(optimizer=opt).values, float)
                    y = np.asarray(ds[f"{q}_eta"].sel(optimizer=opt).values, float)
                else:
                    x = np.asarray(ds["scale"].values, float)
                    y = np.asarray(ds[f"{q}_alpha"].sel(optimizer=opt).values, float)
                mean, lo, hi = _mean_ci(y)
                ax.errorbar(x, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4, color=c,
                            capsize=2, label=f"{opt} (sim)")
                k = float(ds["slope_theory"].sel(optimizer=opt, quantity=q, variable=var))
                if np.isfinite(k):
                    x0, y0 = _geo_center(x, mean)
                    _ref_line(ax, x, k, x0, y0, color=c, label=f"{opt} theory ∝ {var}^{k:g}")
                # ρ/‖B‖: THEORY §3's law at a given state (defined where slope_theory is).
                if q == "rho" and "rhoB_eta" in ds and "rhoB" in ds["quantity"].values:
                    kb = float(ds["slope_theory"].sel(optimizer=opt, quantity="rhoB", variable=var))
                    if np.isfinite(kb):
                        yb = np.asarray(ds["rhoB_eta" if var == "eta" else "rhoB_alpha"]
                                        .sel(optimizer=opt).values, float)
                        mb, lb, hb = _mean_ci(yb)
                        ax.errorbar(x, mb, yerr=[mb - lb, hb - mb], fmt="s", mfc="none", ms=5,
                                    color=c, capsize=2, label=f"{opt} ρ/‖B‖ (given-state law)")
                        x0, y0 = _geo_center(x, mb)
                        _ref_line(ax, x, kb, x0, y0, color=c, linestyle=":",
                                  label=f"{opt} §3: ρ/‖B‖ ∝ {var}^{kb:g}")
            ylab = "drift ratio ρ = ‖D‖/‖S‖" if q == "rho" else "signal ‖S‖"
            xlab = "learning rate η" if var == "eta" else "scale s = α/r"
            _set_axes(ax, xscale="log", yscale="log", xlabel=xlab, ylabel=ylab)
            ax.legend(fontsize=6.5)
    fig.suptitle(f"Signal and drift at step {_attr(ds, 'plot_step', 1)}" +
                 (f" ({state})" if state else ""), fontsize=10)
    save_figure(fig, save_to, dpi=dpi)
    return fig


# --------------------------------------------------------------------------- F4
def plot_landscape(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F4: the (η, α) landscape of final loss (THEORY §6, P4).

    Lines of equal η·s (Adam: α and η interchangeable at a given state, §3) and equal η·s²
    (SGD: the signal is ∝ η s²) are drawn through the grid; diverged cells are black.

    **Arguments:**
    - `ds`: Dataset with `final_loss(optimizer, alpha, lr_factor, seed)`,
      `diverged(optimizer, alpha, lr_factor, seed)`, `lr(optimizer, lr_factor)`; attr `rank`.
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (one heatmap per optimiser).
    """
    opts = [str(o) for o in ds["optimizer"].values]
    rank = int(_attr(ds, "rank", 1))
    fig, axes = _new_figure(1, len(opts), width=4.8, height=4.0)
    alpha = np.asarray(ds["alpha"].values, float)
    for k, opt in enumerate(opts):
        ax = axes[0, k]
        sub = ds.sel(optimizer=opt)
        lr = np.asarray(sub["lr"].values, float)
        mean, anydiv = _seed_reduce(sub["final_loss"].values, sub["diverged"].values)
        le, ae = _edges(lr), _edges(alpha)
        finite = mean[np.isfinite(mean) & (mean > 0)]
        norm = LogNorm(vmin=finite.min(), vmax=finite.max()) if finite.size else None
        mesh = ax.pcolormesh(le, ae, np.ma.masked_invalid(mean), norm=norm, cmap="viridis_r",
                             shading="flat")
        fig.colorbar(mesh, ax=ax, label="final excess loss")
        if anydiv.any():
            ax.pcolormesh(le, ae, np.ma.masked_where(~anydiv, np.ones_like(mean)),
                          cmap=_black_cmap(), shading="flat", vmin=0, vmax=1)
        # iso-lines through the grid: η·s^p = const, s = α/r  ⇒  α ∝ η^(−1/p).
        p = 1.0 if opt.startswith("adam") else 2.0
        etas = np.geomspace(le[0], le[-1], 50)
        for c in np.geomspace(lr.min() * (alpha.min() / rank) ** p,
                              lr.max() * (alpha.max() / rank) ** p, 9)[1:-1]:
            ax.plot(etas, rank * (c / etas) ** (1.0 / p), color="w", lw=0.8, ls="--")
        if finite.size:
            i, j = np.unravel_index(np.nanargmin(np.where(np.isfinite(mean), mean, np.inf)),
                                    mean.shape)
            ax.plot(lr[j], alpha[i], "*", color="tab:red", ms=12, label="best cell")
        ax.plot([], [], "s", color="k", label="diverged")
        ax.plot([], [], "w--", label="η·s = const" if p == 1 else "η·s² = const")
        _set_axes(ax, xscale="log", yscale="log", xlim=(le[0], le[-1]), ylim=(ae[0], ae[-1]),
               xlabel="learning rate η", ylabel="α (s = α/r)",
               title=f"{opt}, r = {rank}")
        leg = ax.legend(fontsize=7, loc="lower left", facecolor="0.8")
        leg.get_frame().set_alpha(0.8)
    save_figure(fig, save_to, dpi=dpi)
    return fig


def _edges(x: np.ndarray) -> np.ndarray:
    """Cell edges of a log-spaced grid (geometric midpoints)."""
    lx = np.log(np.asarray(x, float))
    if lx.size == 1:
        return np.exp(np.array([lx[0] - 0.5, lx[0] + 0.5]))
    mid = 0.5 * (lx[1:] + lx[:-1])
    return np.exp(np.r_[lx[0] - (mid[0] - lx[0]), mid, lx[-1] + (lx[-1] - mid[-1])])


def _black_cmap():
    from matplotlib.colors import ListedColormap

    return ListedColormap(["black"])


# --------------------------------------------------------------------------- F5
def plot_rank_stability(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F5: first-step progress, update norm and loss after a budget against r (THEORY §5, P5).

    **Arguments:**
    - `ds`: Dataset with `progress1(optimizer, rule, rank, seed)` (π at the first step),
      `signal1(optimizer, rule, rank, seed)` (‖S‖ at the first step),
      `final_loss(optimizer, rule, rank, seed)`, `diverged(...)`, and
      `slope_theory(optimizer, rule, quantity)` the §5 exponents in r (quantity ∈
      {progress, signal}); attr `steps`.
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (rows: optimisers; columns: π₁, ‖S₁‖, loss after the budget).
    """
    opts = [str(o) for o in ds["optimizer"].values]
    rules = [str(r) for r in ds["rule"].values]
    ranks = np.asarray(ds["rank"].values, float)
    fig, axes = _new_figure(len(opts), 3, width=3.9, height=3.1)
    for i, opt in enumerate(opts):
        for j, (q, lab) in enumerate((("progress1", "first-step progress π₁"),
                                      ("signal1", "first-step update ‖S₁‖"),
                                      ("final_loss", f"loss after {_attr(ds, 'steps', '?')} steps"))):
            ax = axes[i, j]
            for rule in rules:
                c = _RULE_COLORS.get(rule, "k")
                sub = ds.sel(optimizer=opt, rule=rule)
                y = np.asarray(sub[q].values, float)
                if q == "final_loss":
                    mean, anydiv = _seed_reduce(y, sub["diverged"].values)
                    ok = np.isfinite(mean)
                    ax.plot(ranks[ok], mean[ok], "o-", ms=4, color=c, label=rule)
                    _mark_diverged(ax, ranks, anydiv, color=c, offset=rules.index(rule))
                    continue
                mean, lo, hi = _mean_ci(y)
                ax.errorbar(ranks, mean, yerr=[mean - lo, hi - mean], fmt="o", ms=4, color=c,
                            capsize=2, label=rule)
                k = float(ds["slope_theory"].sel(optimizer=opt, rule=rule,
                                                 quantity=q[:-1]))
                if np.isfinite(k):
                    x0, y0 = _geo_center(ranks, mean)
                    _ref_line(ax, ranks, k, x0, y0, color=c, label=f"§5: r^{k:g}")
            if q == "final_loss":
                ax.plot([], [], label="diverged", **_DIVERGED_STYLE)
            _set_axes(ax, xscale="log", yscale="log", xlabel="rank r", ylabel=lab, title=opt)
            _rank_ticks(ax, ranks)
            ax.legend(fontsize=6.5)
    save_figure(fig, save_to, dpi=dpi)
    return fig


# --------------------------------------------------------------------------- F6
def plot_rank_law(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F6: the rank law α*(r) = c·r^γ with confidence intervals (THEORY §5, P6).

    **Arguments:**
    - `ds`: Dataset with `final_loss(rank, alpha, seed)` and `diverged(rank, alpha, seed)`
      (NaN/absent cells were not run), `alpha_star(rank)`, `alpha_star_lo(rank)`,
      `alpha_star_hi(rank)` (bootstrap CI over seeds), `at_edge(rank)` (1 where the minimum
      sits at the edge of the α grid); attrs `gamma`, `gamma_lo`, `gamma_hi`, `c`, `c_lo`,
      `c_hi`, `bracket` (text), `optimizer`, `lr`, `steps`.
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (loss against α per rank; α* against r with the fitted law).
    """
    fig, axes = _new_figure(1, 2, width=4.8, height=3.8)
    ax1, ax2 = axes[0]
    ranks = np.asarray(ds["rank"].values, float)
    alpha = np.asarray(ds["alpha"].values, float)
    cols = _colors(len(ranks))
    for i, r in enumerate(ranks):
        sub = ds.isel(rank=i)
        loss = np.asarray(sub["final_loss"].values, float)
        div = np.asarray(sub["diverged"].values, float)
        ran = np.isfinite(loss).any(axis=-1) | (np.nan_to_num(div, nan=0) > 0).any(axis=-1)
        mean, anydiv = _seed_reduce(loss, np.nan_to_num(div, nan=0) > 0)
        ok = ran & np.isfinite(mean)
        ax1.plot(alpha[ok], mean[ok], "o-", ms=3, color=cols[i], label=f"r = {int(r)}")
        _mark_diverged(ax1, alpha, anydiv & ran, color=cols[i], offset=i)
        ast = float(ds["alpha_star"].values[i])
        if np.isfinite(ast):
            ax1.axvline(ast, color=cols[i], lw=0.7, ls=":")
    ax1.plot([], [], label="diverged", **_DIVERGED_STYLE)
    _set_axes(ax1, xscale="log", yscale="log", xlabel="α (s = α/r)", ylabel="final excess loss",
            title=f"{_attr(ds, 'optimizer', '')} lr={_attr(ds, 'lr', '')}, "
                  f"{_attr(ds, 'steps', '')} steps")
    ax1.legend(fontsize=6.5)

    ast = np.asarray(ds["alpha_star"].values, float)
    lo = np.asarray(ds["alpha_star_lo"].values, float)
    hi = np.asarray(ds["alpha_star_hi"].values, float)
    edge = np.asarray(ds["at_edge"].values, float) > 0
    yerr = np.vstack([np.where(np.isfinite(lo), ast - lo, 0), np.where(np.isfinite(hi), hi - ast, 0)])
    ax2.errorbar(ranks, ast, yerr=yerr, fmt="o", color="k", capsize=3, label="α*(r), 95% CI")
    if edge.any():
        ax2.plot(ranks[edge], ast[edge], "s", mfc="none", mec="tab:red", ms=10,
                 label="minimum at grid edge")
    g, c = float(_attr(ds, "gamma", np.nan)), float(_attr(ds, "c", np.nan))
    rr = np.geomspace(ranks.min() / 1.3, ranks.max() * 1.3, 50)
    if np.isfinite(g) and np.isfinite(c):
        ax2.plot(rr, c * rr**g, "-", color="tab:blue", lw=1.8,
                 label=f"fit γ = {g:.2f} [{_attr(ds, 'gamma_lo', np.nan):.2f}, "
                       f"{_attr(ds, 'gamma_hi', np.nan):.2f}], c = {c:.3g}")
    x0, y0 = _geo_center(ranks, ast)
    _ref_line(ax2, rr, 0.5, x0, y0, color="tab:green", label="γ = ½ (√r law)")
    _ref_line(ax2, rr, 1.0, x0, y0, color="tab:orange", label="γ = 1 (s constant)")
    ax2.plot(rr, np.full_like(rr, 16.0), ":", color="grey", label="α = 16")
    ax2.plot(rr, 2 * rr, "-.", color="grey", label="α = 2r")
    ax2.plot(rr, 16 * np.sqrt(rr), ":", color="tab:olive", label="rsLoRA α=16 (α_eff = 16√r)")
    _set_axes(ax2, xscale="log", yscale="log", xlabel="rank r", ylabel="optimal α* (s = α/r)",
            title="rank law α* = c·r^γ")
    _rank_ticks(ax2, ranks)
    ax2.legend(fontsize=6.5)
    br = str(_attr(ds, "bracket", ""))
    if br:
        ax2.text(0.02, 0.02, br, transform=ax2.transAxes, fontsize=6.5, va="bottom", wrap=True)
    save_figure(fig, save_to, dpi=dpi)
    return fig


# --------------------------------------------------------------------------- F7
def plot_rule_comparison(ds, *, save_to: str | Path | None = None, dpi: int = 100) -> Figure:
    """F7: LoRA-α against LoRA and rsLoRA: final loss across ranks (mean ± 95% CI over seeds).

    **Arguments:**
    - `ds`: Dataset with `final_loss(optimizer, rule, rank, seed)` and `diverged(...)`;
      attrs `steps`, `rule_settings` (text).
    - `save_to`, `dpi`: see :func:`save_figure`.

    **Returns:** the Figure (one panel per optimiser).
    """
    opts = [str(o) for o in ds["optimizer"].values]
    rules = [str(r) for r in ds["rule"].values]
    ranks = np.asarray(ds["rank"].values, float)
    fig, axes = _new_figure(1, len(opts), width=4.6, height=3.6)
    for k, opt in enumerate(opts):
        ax = axes[0, k]
        for rule in rules:
            sub = ds.sel(optimizer=opt, rule=rule)
            loss = np.asarray(sub["final_loss"].values, float)
            div = np.asarray(sub["diverged"].values, bool) | ~np.isfinite(loss)
            mean, lo, hi = _mean_ci(np.where(div, np.nan, loss))
            anydiv = div.any(axis=-1)
            mean = np.where(anydiv, np.nan, mean)
            c = _RULE_COLORS.get(rule, "k")
            ok = np.isfinite(mean)
            ax.errorbar(ranks[ok], mean[ok], yerr=[(mean - lo)[ok], (hi - mean)[ok]], fmt="o-",
                        ms=4, capsize=3, color=c, label=rule)
            _mark_diverged(ax, ranks, anydiv, color=c, offset=rules.index(rule))
        ax.plot([], [], label="diverged (any seed; colour = series)", **_DIVERGED_STYLE)
        _set_axes(ax, xscale="log", yscale="log", xlabel="rank r",
               ylabel=f"loss after {_attr(ds, 'steps', '?')} steps",
               title=f"{opt}, lr = {_attr(ds, f'lr_{opt}', '?')}")
        _rank_ticks(ax, ranks)
        ax.legend(fontsize=7)
    rs = str(_attr(ds, "rule_settings", ""))
    if rs:
        fig.suptitle(rs, fontsize=8)
    save_figure(fig, save_to, dpi=dpi)
    return fig
