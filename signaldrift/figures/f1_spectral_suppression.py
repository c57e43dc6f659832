"""F1: spectral suppression of the LoRA Hessian (THEORY §4, prediction P1).

Panels:

- (a) λ_max(H₀) at initialisation over r and α, as ψ = λ_max(H₀)/λ_max(Σ) (full fine-tuning's
  sharpness is λ_max(Σ)). Markers: the simulator's Hessian (Lanczos on exact HVPs), mean ±
  95% t interval over many seeds (A₀ varies, the task is seed 0's). Curves: the closed form
  ``(s²μ + √(s⁴μ² + 4s²g²))/2`` with the *derived* ``μ = E λ_max(A₀ΣA₀ᵀ)``
  (:mod:`signaldrift._derivations.init_sharpness`), drawn only where that derivation holds.
  Crosses: the closed form with each run's own μ: a check of the Hessian code, not a
  prediction.
- (b) μ = λ_max(A₀ΣA₀ᵀ) against r: measured, derived, the naive trΣ/(3d) (valid for
  r ≪ d_eff only) and the generalised Marchenko–Pastur edge.
- (c) λ_max(H) along Adam training at the standard lr; (d) Adam's preconditioned sharpness
  λ_max(P⁻¹H) against its threshold (2 + 2β₁)/((1 − β₁)η).
- (e) the GD stability lr 2/λ_max(H₀) against SGD's standard lr and full fine-tuning's.
- (f) the measured divergence lr of plain GD (SGD, momentum 0, population gradient) on a
  grid of multiples of 2/λ_max(H₀), against 2/λ_max(H₀).

Population gradients throughout. The init experiments (a, b, e) draw A₀ in Σ's eigenbasis
(``basis="eigen"``): λ_max(H₀) and SGD are basis-equivariant (THEORY §1), and there PEFT's
iid entries are exactly the derivation's model. Training (c, d) uses the common random basis.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from .._analysis import _t_quantile, divergence_threshold, t_interval
from .._derivations.init_sharpness import (DOMAIN, effective_dimension, expected_lambda_max,
                                           in_domain, mp_edge, naive_mu)
from .._task import make_task
from ._common import (draw_and_write, finish, ADAM_LR_STD, ALPHA_STD, CI_METHOD, FONT, Ctx, attr, base_config,
                      check_mode, colors, final, jsonable, legend_outside, mean_ci,
                      new_figure, pmap, pow2, save_figure, set_axes, sgd_lr_std, sharp0,
                      write)

ID, STEM = "F1", "spectral_suppression"
TITLE = "spectral suppression: λ_max(H₀) at init against the derived closed form"


def settings(mode: str) -> dict[str, Any]:
    """F1's settings in ``mode`` (fixed a priori)."""
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    steps = 30 if test else (400 if full else 200)
    return {
        "ranks": [2, 4] if test else ([2, 4, 8, 16, 32, 64] if full else [2, 4, 8, 16, 32]),
        "alphas": [4.0, 16.0] if test else (pow2(0, 8) if full else pow2(0, 8, 2)),
        # Seeds of the init panels: enough that the measured mean's standard error is below
        # 2% (λ_max(A₀ΣA₀ᵀ) has a relative sd of ~21% at r ≤ 8 for λ ∝ 1/i; 21%/√128 = 1.9%).
        "init_seeds": 12 if test else (256 if full else 128),
        "iso_rank_alpha": (4, 8.0) if test else (8, ALPHA_STD),
        "train_cases": [(4, 16.0)] if test else [(8, 16.0), (8, 128.0), (32, 16.0), (32, 256.0)],
        "train_steps": steps,
        "sharp_steps": [0, 5, 29] if test else sorted({0, 10, 25, 50, 100, steps // 2, steps - 1}),
        "div_cases": [(4, 16.0), "full"] if test else
        [(2, 16.0), (8, 4.0), (8, 16.0), (8, 64.0), (32, 16.0), (32, 256.0), "full"],
        "div_factors": [float(2.0**e) for e in np.linspace(-1, 2, 4 if test else (25 if full else 13))],
        "div_steps": 60 if test else (400 if full else 200),
    }


def closed_form(s, mu, g):
    """λ_max(H₀) = (s²μ + √(s⁴μ² + 4s²g²))/2 (THEORY §4; ``signaldrift derive hessian``)."""
    s = np.asarray(s, float)
    return 0.5 * (s**2 * mu + np.sqrt(s**4 * mu**2 + 4.0 * s**2 * g**2))


def g_task(task) -> float:
    """g = σ_max(Δ⋆Σ) from the factors: Δ⋆Σ = U diag(σ⋆) VᵀΣ (eigen-coordinates)."""
    M = task.sigma_star[:, None] * (task.V * task.lam[:, None]).T  # (k, d)
    R = np.linalg.qr(task.U, mode="r")
    C = (R * task.sigma_star) @ ((task.V * task.lam[:, None] ** 2).T @ task.V) @ (R * task.sigma_star).T
    return float(np.sqrt(max(np.linalg.eigvalsh(0.5 * (C + C.T))[-1], 0.0))) if M.size else 0.0


def _init_point(item):
    """One (rank, seed): μ of the run's own A₀ and, per α, λ_max(H₀) measured by the
    simulator (Lanczos on exact HVPs) and the closed form with the run's own μ."""
    from .._simulate import simulate_block

    cfg, alphas = item
    meas, own = [], []
    mu = math.nan
    # One block for the α of this seed (bit-identical to a run each; one set-up).
    for res in simulate_block([cfg.replace(alpha=float(a)) for a in alphas]):
        if math.isnan(mu):
            A0, lam = res.A0, res.task.lam
            mu = float(np.linalg.eigvalsh((A0 * lam) @ A0.T)[-1])
            g = g_task(res.task)
        meas.append(sharp0(res))
        own.append(float(closed_form(res.scale, mu, g)))
    return mu, meas, own


def figure_F1(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F1: spectral suppression (THEORY §4, P1); see the module docstring.

    **Returns:** the summary dict (derived and measured μ and λ_max(H₀), their errors, ψ,
    thresholds, divergence brackets).
    """
    t0 = time.time()
    ctx = Ctx(out_dir, workers, progress)
    F = settings(mode)
    ranks, alphas = F["ranks"], F["alphas"]
    seeds = list(range(F["init_seeds"]))
    pop = base_config(mode, population=True, task_seed=0, optimizer="sgd")
    init_base = pop.replace(basis="eigen", steps=1, record_every=1, sharpness_steps=(0,))
    task = make_task(init_base)
    lam = task.lam
    lam_sigma = float(lam.max())
    eta_std = sgd_lr_std(task)
    init_base = init_base.replace(lr=eta_std)
    d = init_base.d
    var = 1.0 / (3.0 * d)  # PEFT: U(−1/√d, 1/√d)
    g = g_task(task)

    # (a, b) sharpness at init over (rank, alpha, seed), many seeds, no cache.
    items = [(init_base.replace(rank=r, seed=sd), alphas) for r in ranks for sd in seeds]
    out = pmap(_init_point, items, ctx.workers)
    shape = (len(ranks), len(seeds))
    mu_meas = np.array([o[0] for o in out]).reshape(shape)
    lam0 = np.array([o[1] for o in out]).reshape(*shape, len(alphas)).transpose(0, 2, 1)
    lamc = np.array([o[2] for o in out]).reshape(*shape, len(alphas)).transpose(0, 2, 1)
    beta = float(init_base.spectrum)
    dom = np.array([in_domain(d=d, rank=r, beta=beta) for r in ranks])
    mu_th = np.array([expected_lambda_max(lam, r, var) if ok else math.nan
                      for r, ok in zip(ranks, dom)])
    mu_edge = np.array([mp_edge(lam, r, var) for r in ranks])
    mu_naive = naive_mu(lam, var)
    scale = np.array([[a / r for a in alphas] for r in ranks])
    lam_th = closed_form(scale, mu_th[:, None], g)  # (rank, alpha)
    lam_th_seed = np.broadcast_to(lam_th[:, :, None], lam0.shape).copy()
    ts = np.geomspace(scale.min() / 1.5, scale.max() * 1.5, 80)
    th_curve = np.array([closed_form(ts, m, g) for m in mu_th])  # (rank, theory_s)

    # Isotropic Σ at the standard point: derived and measured ψ (README used μ = 1/3).
    r_iso, a_iso = F["iso_rank_alpha"]
    iso_base = init_base.replace(spectrum=0.0, rank=r_iso)
    iso_task = make_task(iso_base)
    iso_out = pmap(_init_point, [(iso_base.replace(seed=sd), [a_iso]) for sd in seeds], ctx.workers)
    iso_meas = np.array([o[1][0] for o in iso_out])
    g_iso = g_task(iso_task)
    mu_iso = expected_lambda_max(iso_task.lam, r_iso, var)
    psi_iso_derived = float(closed_form(a_iso / r_iso, mu_iso, g_iso) / iso_task.lam.max())
    psi_iso_naive = float(closed_form(a_iso / r_iso, naive_mu(iso_task.lam, var), g_iso)
                          / iso_task.lam.max())
    im, ilo, ihi, _ = t_interval(iso_meas / iso_task.lam.max())

    # (c, d) along Adam training at the standard lr (common random basis, minibatch-free).
    cases = F["train_cases"]
    tr_cfgs = [pop.replace(rank=r, alpha=a, optimizer="adam", lr=ADAM_LR_STD,
                           steps=F["train_steps"], record_every=F["train_steps"],
                           sharpness_steps=tuple(F["sharp_steps"]))
               for r, a in cases]
    tr_res = ctx.run(tr_cfgs)
    sh_steps = np.array(F["sharp_steps"])
    lam_tr = np.full((len(cases), sh_steps.size), np.nan)
    plam_tr = np.full_like(lam_tr, np.nan)
    for i, res in enumerate(tr_res):
        sh = getattr(res, "sharpness", {}) or {}
        if "lambda_max" in sh:
            lam_tr[i] = sh["lambda_max"]
            plam_tr[i] = sh["precond_lambda_max"]
    adam_thr = (2 + 2 * pop.beta1) / ((1 - pop.beta1) * ADAM_LR_STD)

    # (f) measured GD divergence lr around 2/λ_max(H₀) (each case's own seed-0 A₀).
    div_base = init_base.replace(seed=0)
    div_labels, div_pred, div_lo, div_hi, div_mono = [], [], [], [], []
    div_cfgs, div_slices = [], []
    pre = [div_base.replace(rank=c[0], alpha=c[1]) for c in F["div_cases"] if c != "full"]
    pre_res = iter(ctx.run(pre))
    for c in F["div_cases"]:
        if c == "full":
            pred = 2.0 / lam_sigma
            cb = div_base.replace(model="full", sharpness_steps=())
            div_labels.append("full FT")
        else:
            pred = 2.0 / sharp0(next(pre_res))
            cb = div_base.replace(rank=c[0], alpha=c[1], sharpness_steps=())
            div_labels.append(f"r={c[0]}, α={c[1]:g}")
        lrs = [pred * f for f in F["div_factors"]]
        div_pred.append(pred)
        div_slices.append((len(div_cfgs), len(div_cfgs) + len(lrs), lrs))
        div_cfgs += [cb.replace(lr=float(lr), steps=F["div_steps"], record_every=F["div_steps"])
                     for lr in lrs]
    div_res = ctx.run(div_cfgs)
    for a, b, lrs in div_slices:
        th = divergence_threshold(lrs, [final(r)[1] for r in div_res[a:b]])
        div_lo.append(th.lr_converged)
        div_hi.append(th.lr_diverged)
        div_mono.append(th.monotone)

    ds = xr.Dataset(
        {
            "lambda_max_init": (("rank", "alpha", "seed"), lam0),
            "lambda_max_init_theory": (("rank", "alpha", "seed"), lam_th_seed),
            "lambda_closed_own_mu": (("rank", "alpha", "seed"), lamc),
            "mu_init": (("rank", "seed"), mu_meas),
            "mu_init_theory": (("rank",), mu_th),
            "mu_mp_edge": (("rank",), mu_edge),
            "in_domain": (("rank",), dom.astype(np.int8)),
            "scale": (("rank", "alpha"), scale),
            "theory_lambda": (("rank", "theory_s"), th_curve),
            "lambda_train": (("case", "sharp_step"), lam_tr),
            "precond_lambda_train": (("case", "sharp_step"), plam_tr),
            "case_label": (("case",), np.array([f"r={r}, α={a:g}" for r, a in cases])),
            "div_pred": (("div_case",), np.array(div_pred)),
            "div_lo": (("div_case",), np.array(div_lo, float)),
            "div_hi": (("div_case",), np.array(div_hi, float)),
            "div_monotone": (("div_case",), np.array(div_mono, np.int8)),
            "div_label": (("div_case",), np.array(div_labels)),
        },
        coords={"rank": np.array(ranks, np.int32), "alpha": np.array(alphas, float),
                "seed": np.array(seeds, np.int32), "theory_s": ts,
                "sharp_step": sh_steps.astype(np.int32)},
        attrs={"figure": "F1 spectral suppression (THEORY §4, P1)", "run_mode": mode,
               "lambda_sigma": lam_sigma, "eta_std_sgd": eta_std, "mu_naive": mu_naive,
               "g": g, "d": d, "spectrum": beta, "d_eff": effective_dimension(lam),
               "adam_lr": ADAM_LR_STD, "adam_threshold": adam_thr, "ci_method": CI_METHOD,
               "div_steps": F["div_steps"], "div_bound": pop.divergence_bound,
               "derivation": "signaldrift derive init_sharpness",
               "domain": f"beta in {DOMAIN['beta']}, d in {DOMAIN['d']}, r in {DOMAIN['rank']}"},
    )
    files = draw_and_write(plot, ds, ctx.out, f"{ID}_{STEM}")

    # Summary numbers.
    m, lo, hi, n = t_interval(lam0, axis=-1)
    se_rel = (hi - m) / np.maximum(m, 1e-300) / np.where(n > 1, _tq(n), np.nan)
    err = lam_th / m - 1.0
    mu_m, mu_lo, mu_hi, _ = t_interval(mu_meas, axis=-1)
    std_idx = _index(ranks, alphas, 8, ALPHA_STD)
    summary = {
        "settings": {k: F[k] for k in ("ranks", "alphas", "init_seeds", "train_cases", "div_steps")},
        "lambda_max_sigma": lam_sigma, "eta_std_sgd": eta_std, "g": g,
        "d_eff": effective_dimension(lam),
        "ci_method": CI_METHOD,
        "mu": {f"r={r}": {"measured": mu_m[i], "ci": [mu_lo[i], mu_hi[i]],
                          "derived": mu_th[i], "rel_error": mu_th[i] / mu_m[i] - 1.0,
                          "naive_trSigma_over_3d": mu_naive, "mp_edge": mu_edge[i],
                          "in_domain": bool(dom[i])} for i, r in enumerate(ranks)},
        "overlay": {
            "max_rel_error_in_domain": float(np.nanmax(np.abs(err[dom]))) if dom.any() else None,
            "max_rel_se_of_measured_mean": float(np.nanmax(se_rel)),
            "rel_error": {f"r={r}": {f"alpha={a:g}": err[i, j] for j, a in enumerate(alphas)}
                          for i, r in enumerate(ranks)},
            "note": ("curve: closed form with the derived E λ_max(A₀ΣA₀ᵀ) "
                     "(signaldrift derive init_sharpness); markers: simulator's Hessian"),
        },
        "hessian_check_max_rel_error": float(np.nanmax(np.abs(lam0 / lamc - 1.0))),
        "psi_at_init": {f"r={r}": {f"alpha={a:g}": m[i, j] / lam_sigma for j, a in enumerate(alphas)}
                        for i, r in enumerate(ranks)},
        "psi_standard_r8_alpha16": (m[std_idx] / lam_sigma) if std_idx else None,
        "psi_isotropic": {"rank": r_iso, "alpha": a_iso, "derived": psi_iso_derived,
                          "measured": float(im), "ci": [float(ilo), float(ihi)],
                          "naive_mu_one_third": psi_iso_naive, "n_seeds": len(seeds)},
        "gd_stability_lr_over_eta_std_r8_alpha16":
            (float(2.0 / m[std_idx] / eta_std) if std_idx else None),
        "train": {f"r={r}, alpha={a:g}": {
            "steps": sh_steps.tolist(), "lambda_max": lam_tr[i].tolist(),
            "precond_lambda_max": plam_tr[i].tolist()} for i, (r, a) in enumerate(cases)},
        "adam_precond_threshold": adam_thr,
        "divergence": {lab: {"predicted_2_over_lambda": p, "largest_stable": lo_, "smallest_diverged": hi_,
                             "ratio_to_prediction": [lo_ / p if np.isfinite(lo_) else None,
                                                     hi_ / p if np.isfinite(hi_) else None],
                             "monotone": bool(mo)}
                       for lab, p, lo_, hi_, mo in zip(div_labels, div_pred, div_lo, div_hi, div_mono)},
        "files": files, "seconds": time.time() - t0,
    }
    return jsonable(summary)


def _tq(n):
    """t_{0.975, n−1} (at least one degree of freedom)."""
    return _t_quantile(0.975, np.maximum(n - 1, 1))


def _index(ranks, alphas, r, a):
    if r in ranks and a in alphas:
        return (list(ranks).index(r), list(alphas).index(a))
    return None


# =========================================================================== plot
def plot(ds, *, save_to=None, dpi: int = 150) -> Figure:
    """Draw F1 from its Dataset (the variables written by :func:`figure_F1`; see the module
    docstring for the panels). **Returns:** the Figure (2×3 panels)."""
    lam_sigma = float(attr(ds, "lambda_sigma", 1.0))
    eta_std = float(attr(ds, "eta_std_sgd", 1.0 / lam_sigma))
    fig, axes = new_figure(2, 3, width=4.4, height=3.5)
    (ax1, ax2, ax5), (ax3, ax4, ax6) = axes
    ranks = np.asarray(ds["rank"].values)
    cmap = colors(len(ranks))
    s_all = np.asarray(ds["scale"].values, float)
    lam0 = np.asarray(ds["lambda_max_init"].values, float)
    lamc = np.asarray(ds["lambda_closed_own_mu"].values, float)
    ts = np.asarray(ds["theory_s"].values, float)
    tl = np.asarray(ds["theory_lambda"].values, float)
    dom = np.asarray(ds["in_domain"].values, bool)
    m, lo, hi = mean_ci(lam0)
    mc = np.nanmean(lamc, axis=-1)

    # (a) ψ = λ_max(H₀)/λ_max(Σ) against s.
    for i, r in enumerate(ranks):
        if dom[i]:
            ax1.plot(ts, tl[i] / lam_sigma, "-", color=cmap[i], lw=1.1)
        ax1.errorbar(s_all[i], m[i] / lam_sigma, yerr=[(m - lo)[i] / lam_sigma, (hi - m)[i] / lam_sigma],
                     fmt="o", color=cmap[i], ms=4, capsize=2, label=f"r = {r}")
        ax1.plot(s_all[i], mc[i] / lam_sigma, "+", color="k", ms=7)
    ax1.plot([], [], "-", color="grey", label="derived (E μ, init_sharpness)")
    ax1.plot([], [], "o", color="grey", label="measured, mean ± 95% t")
    ax1.plot([], [], "+", color="k", label="each run's own μ (Hessian check)")
    if not dom.all():
        ax1.text(0.02, 0.98, "no curve for r = " + ", ".join(str(r) for r in ranks[~dom])
                 + ":\noutside the derivation's domain", transform=ax1.transAxes, va="top",
                 fontsize=FONT, color="tab:red")
    ax1.axhline(1.0, color="grey", lw=0.8, ls=":")
    set_axes(ax1, xscale="log", yscale="log", xlabel="scale s = α/r",
             ylabel="ψ = λ_max(H₀) / λ_max(Σ)", title="(a) sharpness at init")
    legend_outside(ax1, where="below", ncol=2)

    # (b) μ against r: the three effects of THEORY §4.
    mu = np.asarray(ds["mu_init"].values, float)
    mm, ml, mh = mean_ci(mu)
    ax2.errorbar(ranks, mm, yerr=[mm - ml, mh - mm], fmt="o", color="k", ms=4, capsize=2,
                 label="measured, mean ± 95% t")
    mth = np.asarray(ds["mu_init_theory"].values, float)
    ax2.plot(ranks[dom], mth[dom], "-", color="tab:blue", label="derived E λ_max (P)")
    ax2.plot(ranks, np.asarray(ds["mu_mp_edge"].values, float), "--", color="tab:orange",
             label="MP edge of (S)")
    ax2.axhline(float(attr(ds, "mu_naive", np.nan)), color="grey", ls=":",
                label="trΣ/(3d) (r ≪ d_eff only)")
    set_axes(ax2, xscale="log", yscale="log", xlabel="rank r", ylabel="μ = λ_max(A₀ΣA₀ᵀ)",
             title=f"(b) μ at init, d_eff = {float(attr(ds, 'd_eff', np.nan)):.0f}")
    from ._common import rank_ticks
    rank_ticks(ax2, ranks)
    legend_outside(ax2, where="below", ncol=2)

    # (e) GD stability lr 2/λ_max(H₀) against the standard lr.
    for i, r in enumerate(ranks):
        ax5.plot(s_all[i], 2.0 / m[i], "o", color=cmap[i], ms=4, label=f"r = {r}")
        if dom[i]:
            ax5.plot(ts, 2.0 / tl[i], "-", color=cmap[i], lw=1.0)
    ax5.axhline(eta_std, color="tab:red", ls="-.", lw=1, label=f"SGD η_std = {eta_std:.3g}")
    ax5.axhline(2.0 / lam_sigma, color="k", ls="--", lw=1, label="full FT 2/λ_max(Σ)")
    ax5.plot([], [], "-", color="grey", label="2/λ derived")
    set_axes(ax5, xscale="log", yscale="log", xlabel="scale s = α/r", ylabel="2/λ_max(H₀)",
             title="(e) GD stability lr at init")
    legend_outside(ax5, where="below", ncol=2)

    # (c) along training (Adam at its standard lr).
    steps = np.asarray(ds["sharp_step"].values, float)
    cc = colors(ds.sizes.get("case", 1))
    for c in range(ds.sizes.get("case", 0)):
        ax3.plot(steps, np.asarray(ds["lambda_train"].values[c], float), "o-", ms=3,
                 color=cc[c], label=str(ds["case_label"].values[c]))
    ax3.axhline(lam_sigma, color="k", ls="--", lw=1, label="full FT λ_max(Σ)")
    set_axes(ax3, yscale="log", xlabel="step", ylabel="λ_max(H)",
             title=f"(c) along Adam training, lr {attr(ds, 'adam_lr', '')}")
    legend_outside(ax3, where="below", ncol=2)

    # (d) Adam's preconditioned sharpness. Step 0 is left out: v̂_A = 0 there (∇A = 0 at
    # B = 0), so P_A = ε and λ_max(P⁻¹H) is meaningless.
    keep = steps > 0
    for c in range(ds.sizes.get("case", 0)):
        y = np.asarray(ds["precond_lambda_train"].values[c], float)
        ax4.plot(steps[keep], y[keep], "o-", ms=3, color=cc[c], label=str(ds["case_label"].values[c]))
    thr = float(attr(ds, "adam_threshold", np.nan))
    if np.isfinite(thr):
        ax4.axhline(thr, color="tab:red", ls="--", lw=1, label="(2+2β₁)/((1−β₁)η)")
    set_axes(ax4, yscale="log", xlabel="step", ylabel="λ_max(P⁻¹H)",
             title="(d) Adam preconditioned sharpness")
    legend_outside(ax4, where="below", ncol=2)

    # (f) measured GD divergence lr against 2/λ_max(H₀): one marker per case (legend).
    pred = np.asarray(ds["div_pred"].values, float)
    dlo = np.asarray(ds["div_lo"].values, float)
    dhi = np.asarray(ds["div_hi"].values, float)
    mid = np.sqrt(np.where(np.isfinite(dlo), dlo, dhi) * np.where(np.isfinite(dhi), dhi, dlo))
    marks = "osD^v<>ph*"
    dc = colors(pred.size)
    for j in range(pred.size):
        yerr = [[mid[j] - (dlo[j] if np.isfinite(dlo[j]) else mid[j])],
                [(dhi[j] if np.isfinite(dhi[j]) else mid[j]) - mid[j]]]
        ax6.errorbar([pred[j]], [mid[j]], yerr=yerr, fmt=marks[j % len(marks)], color=dc[j],
                     ms=5, capsize=3, label=str(ds["div_label"].values[j]))
    allv = np.r_[pred, dlo, dhi]
    lim = np.array([np.nanmin(allv) / 1.5, np.nanmax(allv) * 1.5])
    ax6.plot(lim, lim, "k-", lw=1, label="η = 2/λ_max(H₀)")
    set_axes(ax6, xscale="log", yscale="log", xlabel="2/λ_max(H₀)",
             ylabel="GD divergence lr (stable … diverged)", title="(f) measured divergence (GD)")
    legend_outside(ax6, where="below", ncol=2)
    fig.suptitle(f"F1 spectral suppression, d = {attr(ds, 'd', '?')}, λ_i ∝ i^−{attr(ds, 'spectrum', '?')}"
                 f"; error bars: {CI_METHOD}", fontsize=FONT + 1)
    finish(fig)
    save_figure(fig, save_to, dpi=dpi)
    return fig
