"""The seven figures: experiment definitions, simulations, fits, plots and saved data.

Each ``figure_F<n>(mode, out_dir, *, workers)`` runs its simulations through
:func:`signaldrift._sweep.run_configs` (cached in ``<out_dir>/.cache``), draws the figure
with :mod:`signaldrift._plotting`, writes ``<out_dir>/F<n>_<name>.png``, ``.pdf`` and the
plotted data as ``.nc`` (netCDF3), and returns a JSON-serialisable summary of its measured
numbers. :func:`run_figures` runs several and writes ``summary.json``.

Modes (all settings are fixed here, a priori, never tuned to a published result):

- ``"quick"``: the project's main job (``signaldrift figures --quick``), all seven figures in
  a few minutes on two cores: d = m = 128, budgets of 200 steps, 2–8 seeds.
- ``"full"``: publication quality: d = m = 256, finer grids, more seeds, 400 steps.
- ``"test"``: a smoke size for the test suite only (d = m = 32, tens of steps, 2–3 seeds);
  its numbers mean nothing.

Common task (THEORY §1): Σ with power-law spectrum λ_i ∝ i^(−1) (mean 1; λ_max(Σ) ≈ 23.6 at
d = 128), task rank k = 8, equal singular values (δ = 0), noise-free labels, Haar-random V;
the task is drawn per seed (``task_seed`` = seed). Training figures (F2, F4, F5's budget
column, F6, F7) use minibatches of n = 32 fresh samples (the randomness of training); the
theory figures (F1, F3, F5's first step) use the exact population gradient, where THEORY's
predictions are exact. Standard hyperparameters: Adam lr 1e-3 (β = (0.9, 0.999),
ε = 1e-8); SGD (momentum 0) lr ``η_std = 1/λ_max(Σ)``, half of full fine-tuning's gradient
descent stability limit 2/λ_max(Σ) (what a practitioner tuned on full fine-tuning would use);
α_std = 16.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from . import _plotting as P
from ._analysis import (
    bracket_position,
    divergence_threshold,
    fit_power_law,
    loglog_slope,
    optimal_alpha,
    optimisation_gap,
    predicted_first_step_slopes,
)
from ._config import ConfigError, SimConfig
from ._task import Task, make_task

__all__ = [
    "MODES",
    "FIGURES",
    "settings",
    "base_config",
    "figure_F1",
    "figure_F2",
    "figure_F3",
    "figure_F4",
    "figure_F5",
    "figure_F6",
    "figure_F7",
    "run_figures",
    "resolve_names",
    "script_main",
]

MODES = ("test", "quick", "full")

#: Standard hyperparameters (module docstring).
ADAM_LR_STD = 1e-3
ALPHA_STD = 16.0


# =========================================================================== settings
def settings(mode: str) -> dict[str, Any]:
    """Every experimental setting of every figure in ``mode`` (a plain dict, for the docs).

    Raises :class:`ConfigError` for an unknown mode.
    """
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    test, full = mode == "test", mode == "full"
    d = 32 if test else (256 if full else 128)
    steps = 30 if test else (400 if full else 200)
    pow2 = lambda a, b, step=1.0: [float(2.0**e) for e in np.arange(a, b + 1e-9, step)]  # noqa: E731
    return {
        "common": {"d": d, "m": d, "task_rank": 4 if test else 8, "spectrum": 1.0,
                   "decay": 0.0, "noise": 0.0, "batch_train": 8 if test else 32,
                   "steps": steps, "adam_lr": ADAM_LR_STD, "alpha_std": ALPHA_STD,
                   "sgd_lr": "1/lambda_max(Sigma)"},
        "F1": {"ranks": [2, 4] if test else ([2, 4, 8, 16, 32, 64] if full else [2, 4, 8, 16, 32]),
               "alphas": [4.0, 16.0] if test else (pow2(0, 8) if full else pow2(0, 8, 2)),
               "seeds": [0] if test else ([0, 1, 2] if full else [0]),
               "train_cases": [(4, 16.0)] if test else [(8, 16.0), (8, 128.0), (32, 16.0), (32, 256.0)],
               "train_steps": steps,
               "sharp_steps": [0, 5, 29] if test else sorted({0, 10, 25, 50, 100, steps // 2, steps - 1}),
               "div_cases": [(4, 16.0), "full"] if test else
               [(2, 16.0), (8, 4.0), (8, 16.0), (8, 64.0), (32, 16.0), (32, 256.0), "full"],
               "div_factors": [float(2.0**e) for e in np.linspace(-1, 2, 4 if test else (25 if full else 13))],
               "div_steps": 60 if test else (400 if full else 200)},
        "landscape": {"rank": 4 if test else 16,
                      "alphas": pow2(0, 6, 2) if test else (pow2(0, 10, 0.5) if full else pow2(0, 10)),
                      "lr_factors": pow2(-2, 2, 2) if test else (pow2(-6, 6, 0.5) if full else pow2(-6, 6)),
                      "seeds": [0, 1] if test else ([0, 1, 2, 3] if full else [0, 1])},
        "F2": {"alphas": [1.0, 4.0, 16.0] if test else [1.0, 4.0, 16.0, 32.0, 64.0, 256.0, 1024.0]},
        # lr multiples of each optimiser's standard lr: SGD's keep η·s² ≤ 0.005 so the
        # higher-order terms are negligible; Adam's keep the gradients ≫ ε = 1e-8 (the
        # ε → 0 limit of §3: with lr ~1e-6, ∇A = s·BᵀG ~ ε at small s breaks scale invariance).
        "F3": {"rank": 4 if test else 8,
               "lr_factors": {"sgd": pow2(-10, -6, 2) if test else pow2(-10, -5, 0.5 if full else 1),
                              "adam": pow2(-6, -2, 2) if test else pow2(-6, -1, 0.5 if full else 1)},
               "alphas": [2.0, 8.0, 32.0] if test else pow2(0, 6, 0.5 if full else 1),
               "alpha_lr_factor": {"sgd": 2.0**-10, "adam": 2.0**-4}, "steps": 3, "plot_step": 1,
               "seeds": [0, 1] if test else ([0, 1, 2, 3, 4, 5] if full else [0, 1, 2])},
        "F5": {"ranks": [1, 2, 4] if test else ([1, 2, 4, 8, 16, 32, 64, 128] if full else [1, 2, 4, 8, 16, 32, 64]),
               "d_first": 64 if test else (1024 if full else 512),
               "rules": {"lora": {"alpha": ALPHA_STD}, "rslora": {"alpha": ALPHA_STD},
                         "lora-alpha": {"coef": 64.0}},
               "seeds_first": [0, 1] if test else (list(range(16)) if full else list(range(8))),
               "seeds_budget": [0] if test else ([0, 1, 2, 3] if full else [0, 1])},
        "F6": {"ranks": [4, 8] if test else ([8, 16, 32, 64, 128] if full else [8, 16, 32, 64]),
               "alphas": pow2(0, 8, 2) if test else (pow2(0, 12, 0.5) if full else pow2(0, 12)),
               "optimizer": "adam", "lr": ADAM_LR_STD,
               "seeds": [0, 1, 2] if test else (list(range(8)) if full else [0, 1, 2, 3]),
               "widen_octaves": 2.0, "max_widen": 2, "n_boot": 200 if test else 1000},
        "F7": {"ranks": [2, 4] if test else ([2, 4, 8, 16, 32, 64, 128] if full else [2, 4, 8, 16, 32, 64]),
               "rules": {"lora": {"alpha": ALPHA_STD}, "rslora": {"alpha": ALPHA_STD},
                         "lora-alpha": {"coef": 64.0}},
               "seeds": [0, 1] if test else (list(range(8)) if full else [0, 1, 2, 3])},
        "dpi": 150 if full else 80,
    }


def base_config(mode: str, *, population: bool = False, **changes: Any) -> SimConfig:
    """The common task and student of ``mode`` (module docstring), with ``changes``.

    ``population=True`` uses the exact population gradient (batch 0); otherwise minibatches.
    The per-step records are kept only at t = 0 (``record_every = steps``) unless changed:
    the training figures need the final loss only, and recording costs time.
    """
    c = settings(mode)["common"]
    kw = dict(d=c["d"], m=c["m"], task_rank=c["task_rank"], spectrum=c["spectrum"],
              decay=c["decay"], noise=c["noise"], batch=0 if population else c["batch_train"],
              rank=8, alpha=ALPHA_STD, rule="lora", optimizer="adam", lr=ADAM_LR_STD,
              steps=c["steps"], record_every=c["steps"])
    kw.update(changes)
    if "record_every" not in changes:
        kw["record_every"] = kw["steps"]
    return SimConfig(**kw)


def sgd_lr_std(task: Task) -> float:
    """SGD's standard lr: ``1/λ_max(Σ)``, half of full fine-tuning's GD limit 2/λ_max(Σ)."""
    return 1.0 / float(np.max(task.lam))


def _task_of(mode: str, seed: int = 0) -> Task:
    return make_task(base_config(mode, seed=seed))


# =========================================================================== helpers
class _Ctx:
    """Where a figure writes (out dir, cache) and how it runs (workers, progress)."""

    def __init__(self, out_dir: str | os.PathLike, workers: int | None, progress: bool):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = str(self.out / ".cache")
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.progress = progress

    def run(self, configs: Sequence[SimConfig]) -> list:
        from ._sweep import run_configs

        if not configs:
            return []
        return run_configs(list(configs), workers=self.workers, cache_dir=self.cache,
                           progress=self.progress)


def _final(res) -> tuple[float, int]:
    """(final loss, diverged flag) of a result; a diverged or failed run gives (inf, 1)."""
    div = bool(getattr(res, "diverged", True))
    fl = float(res.final_loss) if not div else math.inf
    if not math.isfinite(fl):
        div = True
    return fl, int(div)


def _rec(res, name: str, t: int) -> float:
    """Record ``name`` at step t (NaN if absent: failed or diverged before t)."""
    step = np.asarray(getattr(res, "step", []))
    hit = np.flatnonzero(step == t)
    if hit.size == 0 or name not in getattr(res, "records", {}):
        return math.nan
    return float(res.records[name][hit[0]])


def _jsonable(x: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats (→ None) for JSON."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def _slope_boot(x, Y, theory: float | None = None, tol: float | None = None, *,
                n_boot: int = 1000, seed: int = 0) -> dict:
    """Log-log slope of the seed mean of ``Y`` (len(x), seeds) against ``x``, with a
    percentile-bootstrap 95% CI over seeds (resample seeds, average, refit).

    Fitting the mean rather than pooling log values avoids Jensen's bias E log y < log E y,
    which differs between x values when the spread over seeds does (e.g. small ranks).
    """
    x = np.asarray(x, float)
    Y = np.asarray(Y, float)
    try:
        point = loglog_slope(x, np.nanmean(Y, axis=1)).slope
    except ValueError as exc:
        return {"value": None, "ci": [None, None], "theory": theory, "note": str(exc)}
    rng = np.random.default_rng(seed)
    S = Y.shape[1]
    boots = []
    if S > 1:
        for _ in range(n_boot):
            pick = rng.integers(0, S, size=S)
            try:
                boots.append(loglog_slope(x, np.nanmean(Y[:, pick], axis=1)).slope)
            except ValueError:
                continue
    ci = np.percentile(boots, [2.5, 97.5]).tolist() if boots else [math.nan, math.nan]
    out = {"value": point, "ci": ci, "n_x": int(x.size), "n_seeds": int(S),
           "ci_method": "percentile bootstrap over seeds"}
    if theory is not None:
        out["theory"] = theory
        if tol is not None:
            out["tolerance"] = tol
            out["agrees"] = bool(abs(point - theory) <= tol)
    return out


def _write(ds: xr.Dataset, fig, out: Path, stem: str, dpi: int) -> list[str]:
    """Write ``<stem>.png``, ``<stem>.pdf`` and ``<stem>.nc``; return the file names."""
    P.save_figure(fig, out / stem, dpi=dpi)
    ds = ds.copy()
    for k, v in list(ds.attrs.items()):
        if isinstance(v, (bool, np.bool_)):
            ds.attrs[k] = int(v)
        elif isinstance(v, (dict, list, tuple)):
            ds.attrs[k] = json.dumps(_jsonable(v))
        elif v is None:
            ds.attrs[k] = "none"
    tmp = out / f".{stem}.nc.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine="scipy")
    os.replace(tmp, out / f"{stem}.nc")
    return [f"{stem}.png", f"{stem}.pdf", f"{stem}.nc"]


def _closed_form_init(task: Task, s: float, A: np.ndarray) -> float:
    """λ_max(H) at B = 0 (THEORY §4): (s²μ + √(s⁴μ² + 4s²g²))/2, μ = λ_max(AΣAᵀ),
    g = σ_max(Δ⋆Σ). Uses the derivations module's implementation when present."""
    try:
        from ._sharpness import sharpness_at_init  # type: ignore[attr-defined]

        return float(sharpness_at_init(task, s, A))
    except ImportError:
        pass
    mu = float(np.linalg.eigvalsh((A * task.lam[None, :]) @ A.T).max()) if A.size else 0.0
    return _closed_form_curve(s, mu, _g_task(task))


def _g_task(task: Task) -> float:
    """σ_max(Δ⋆Σ) from the factors: Δ⋆Σ = U diag(σ⋆) VᵀΣ with UᵀU = I."""
    M = task.sigma_star[:, None] * (task.V * task.lam[:, None]).T  # (k, d)
    return float(np.sqrt(np.linalg.eigvalsh(M @ M.T).max()))


def _closed_form_curve(s, mu: float, g: float):
    s = np.asarray(s, float)
    return 0.5 * (s**2 * mu + np.sqrt(s**4 * mu**2 + 4.0 * s**2 * g**2))


def _sharp0(res) -> float:
    """λ_max(H) measured at step 0 (NaN if absent)."""
    sh = getattr(res, "sharpness", {}) or {}
    st = np.asarray(sh.get("step", []))
    hit = np.flatnonzero(st == 0)
    return float(sh["lambda_max"][hit[0]]) if hit.size else math.nan


# =========================================================================== F1
def figure_F1(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F1: spectral suppression (THEORY §4, P1).

    (a) λ_max(H₀) of LoRA at initialisation over r and α against the closed form
    (s²μ + √(s⁴μ² + 4s²g²))/2, as the suppression factor ψ = λ_max(H₀)/λ_max(Σ) (full
    fine-tuning's sharpness is λ_max(Σ)); (b) λ_max(H) along Adam training at the standard
    lr, with the preconditioned sharpness against Adam's threshold (2 + 2β₁)/((1 − β₁)η);
    (c) the GD stability lr 2/λ_max(H₀) against SGD's standard lr and full fine-tuning's
    2/λ_max(Σ); (d) the measured divergence lr of plain GD (SGD, momentum 0, population
    gradient) on a grid of multiples of 2/λ_max(H₀), against 2/λ_max(H₀).
    Population gradients throughout; the task is that of seed 0 for every point.

    **Returns:** the summary dict (ψ table, closed-form error, thresholds, divergence brackets).
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    F = S["F1"]
    base = base_config(mode, population=True, task_seed=0, optimizer="sgd")
    task = make_task(base)
    lam_sigma = float(task.lam.max())
    eta_std = sgd_lr_std(task)
    ranks, alphas, seeds = F["ranks"], F["alphas"], F["seeds"]

    # (a) sharpness at init: one step, measured at t = 0.
    init_cfgs = [base.replace(rank=r, alpha=a, seed=sd, steps=1, record_every=1,
                              sharpness_steps=(0,), lr=eta_std)
                 for r in ranks for a in alphas for sd in seeds]
    init_res = ctx.run(init_cfgs)
    shape = (len(ranks), len(alphas), len(seeds))
    lam0 = np.array([_sharp0(r) for r in init_res]).reshape(shape)
    lamc = np.array([_closed_form_init(task, r.scale, r.A0) if not getattr(r, "failed", False)
                     else math.nan for r in init_res]).reshape(shape)
    scale = np.array([[a / r for a in alphas] for r in ranks])
    mu_typ = float(task.lam.mean()) / 3.0  # trΣ/(3d) for PEFT's U(−1/√d, 1/√d) init
    g = _g_task(task)
    ts = np.geomspace(scale.min() / 1.5, scale.max() * 1.5, 100)
    tl = _closed_form_curve(ts, mu_typ, g)

    # (b) along Adam training at the standard lr.
    cases = F["train_cases"]
    tr_cfgs = [base.replace(rank=r, alpha=a, optimizer="adam", lr=ADAM_LR_STD,
                            steps=F["train_steps"], sharpness_steps=tuple(F["sharp_steps"]))
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
    adam_thr = (2 + 2 * base.beta1) / ((1 - base.beta1) * ADAM_LR_STD)

    # (d) measured GD divergence lr around 2/λ_max(H₀).
    div_labels, div_pred, div_lo, div_hi, div_mono = [], [], [], [], []
    div_cfgs, div_slices = [], []
    pre = [base.replace(rank=c[0], alpha=c[1], steps=1, record_every=1, sharpness_steps=(0,),
                        lr=eta_std) for c in F["div_cases"] if c != "full"]
    pre_res = iter(ctx.run(pre))
    for c in F["div_cases"]:
        if c == "full":
            pred = 2.0 / lam_sigma
            cb = base.replace(model="full")
            div_labels.append("full FT")
        else:
            lam = _sharp0(next(pre_res))
            pred = 2.0 / lam
            cb = base.replace(rank=c[0], alpha=c[1])
            div_labels.append(f"r={c[0]}, α={c[1]:g}")
        lrs = [pred * f for f in F["div_factors"]]
        div_pred.append(pred)
        div_slices.append((len(div_cfgs), len(div_cfgs) + len(lrs), lrs))
        div_cfgs += [cb.replace(lr=float(lr), steps=F["div_steps"],
                                record_every=F["div_steps"]) for lr in lrs]
    div_res = ctx.run(div_cfgs)
    for a, b, lrs in div_slices:
        dv = [_final(r)[1] for r in div_res[a:b]]
        th = divergence_threshold(lrs, dv)
        div_lo.append(th.lr_converged)
        div_hi.append(th.lr_diverged)
        div_mono.append(th.monotone)

    ds = xr.Dataset(
        {
            "lambda_init": (("rank", "alpha"), np.nanmean(lam0, axis=-1)),
            "lambda_closed": (("rank", "alpha"), np.nanmean(lamc, axis=-1)),
            "lambda_init_seed": (("rank", "alpha", "seed"), lam0),
            "lambda_closed_seed": (("rank", "alpha", "seed"), lamc),
            "scale": (("rank", "alpha"), scale),
            "theory_lambda": (("theory_s",), tl),
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
                "seed": np.array(seeds, np.int32), "theory_s": ts, "sharp_step": sh_steps.astype(np.int32)},
        attrs={"figure": "F1 spectral suppression (THEORY §4, P1)", "run_mode": mode,
               "lambda_sigma": lam_sigma, "eta_std_sgd": eta_std, "mu_typical": mu_typ, "g": g,
               "adam_lr": ADAM_LR_STD, "adam_threshold": adam_thr,
               "div_steps": F["div_steps"], "div_bound": base.divergence_bound},
    )
    fig = P.plot_spectral_suppression(ds)
    files = _write(ds, fig, ctx.out, "F1_spectral_suppression", S["dpi"])

    rel = np.abs(lam0 / lamc - 1.0)
    psi = {f"r={r}": {f"alpha={a:g}": float(np.nanmean(lam0[i, j]) / lam_sigma)
                      for j, a in enumerate(alphas)} for i, r in enumerate(ranks)}
    std_idx = _find_case_index(ranks, alphas, 8, ALPHA_STD)
    psi_std = (float(np.nanmean(lam0[std_idx]) / lam_sigma) if std_idx else None)
    iso = make_task(base.replace(spectrum=0.0))
    summary = {
        "settings": {k: F[k] for k in ("ranks", "alphas", "seeds", "train_cases", "div_steps")},
        "lambda_max_sigma": lam_sigma,
        "eta_std_sgd": eta_std,
        "closed_form": {"mu_typical": mu_typ, "g": g,
                        "max_rel_error_measured_vs_closed": float(np.nanmax(rel)) if rel.size else None},
        "psi_at_init": psi,
        "psi_standard_r8_alpha16": psi_std,
        "psi_standard_closed_form_isotropic_spectrum": float(
            _closed_form_curve(2.0, 1.0 / 3.0, _g_task(iso)) / float(iso.lam.max())),
        "gd_stability_lr_over_eta_std_r8_alpha16":
            (float(2.0 / np.nanmean(lam0[std_idx]) / eta_std) if std_idx else None),
        "train": {f"r={r}, alpha={a:g}": {
            "steps": sh_steps.tolist(), "lambda_max": lam_tr[i].tolist(),
            "precond_lambda_max": plam_tr[i].tolist(),
            "lambda_max_over_lambda_sigma_final": float(lam_tr[i, -1] / lam_sigma)}
            for i, (r, a) in enumerate(cases)},
        "adam_precond_threshold": adam_thr,
        "divergence": {lab: {"predicted_2_over_lambda": p, "largest_stable": lo, "smallest_diverged": hi,
                             "ratio_to_prediction": [lo / p if np.isfinite(lo) else None,
                                                     hi / p if np.isfinite(hi) else None],
                             "monotone": bool(mo)}
                       for lab, p, lo, hi, mo in zip(div_labels, div_pred, div_lo, div_hi, div_mono)},
        "files": files,
        "seconds": time.time() - t0,
    }
    return _jsonable(summary)


def _find_case_index(ranks, alphas, r, a):
    if r in ranks and a in alphas:
        return (list(ranks).index(r), list(alphas).index(a))
    return None


# =========================================================================== F2 / F4
_LANDSCAPE_MEMO: dict[tuple[str, str], xr.Dataset] = {}


def _landscape(mode: str, ctx: _Ctx) -> xr.Dataset:
    """Final loss over the (η, α) grid for SGD and Adam (shared by F2 and F4; cached)."""
    key = (mode, str(ctx.out.resolve()))
    if key in _LANDSCAPE_MEMO:
        return _LANDSCAPE_MEMO[key]
    L = settings(mode)["landscape"]
    r, alphas, facs, seeds = L["rank"], L["alphas"], L["lr_factors"], L["seeds"]
    opts = ["sgd", "adam"]
    lr_std = {"sgd": sgd_lr_std(_task_of(mode)), "adam": ADAM_LR_STD}
    # The SGD standard lr is that of the seed-0 task; spectra are identical across seeds.
    cfgs = [base_config(mode, rank=r, alpha=a, optimizer=o, lr=float(lr_std[o] * f), seed=sd)
            for o in opts for a in alphas for f in facs for sd in seeds]
    res = ctx.run(cfgs)
    shape = (len(opts), len(alphas), len(facs), len(seeds))
    fl = np.array([_final(x)[0] for x in res]).reshape(shape)
    dv = np.array([_final(x)[1] for x in res], np.int8).reshape(shape)
    ds = xr.Dataset(
        {"final_loss": (("optimizer", "alpha", "lr_factor", "seed"), fl),
         "diverged": (("optimizer", "alpha", "lr_factor", "seed"), dv),
         "lr": (("optimizer", "lr_factor"), np.array([[lr_std[o] * f for f in facs] for o in opts]))},
        coords={"optimizer": opts, "alpha": np.array(alphas), "lr_factor": np.array(facs),
                "seed": np.array(seeds, np.int32)},
        attrs={"rank": r, "alpha_std": ALPHA_STD, "lr_std_sgd": lr_std["sgd"],
               "lr_std_adam": lr_std["adam"], "steps": base_config(mode).steps,
               "batch": base_config(mode).batch, "run_mode": mode},
    )
    _LANDSCAPE_MEMO[key] = ds
    return ds


def figure_F2(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F2: the optimisation gap (THEORY §4, P2): final loss against lr for several α.

    The data is the (η, α) grid of F4 (r = 16, so α = 16 and α = 2r = 32 differ); the gap
    numbers are those of :func:`signaldrift._analysis.optimisation_gap` at
    (lr_std, α_std = 16): the best lr at α = 16 over the standard lr, and
    L(lr_std, 16) − min over the grid.
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    ds = _landscape(mode, ctx)
    shown = [a for a in S["F2"]["alphas"] if np.any(np.isclose(ds.alpha.values, a))]
    sub = ds.sel(alpha=shown)
    sub.attrs.update(figure="F2 optimisation gap (THEORY §4, P2)")
    fig = P.plot_optimisation_gap(sub)
    files = _write(sub, fig, ctx.out, "F2_optimisation_gap", S["dpi"])
    out: dict[str, Any] = {"rank": int(ds.attrs["rank"]), "alpha_std": ALPHA_STD,
                           "steps": int(ds.attrs["steps"]), "batch": int(ds.attrs["batch"])}
    r = int(ds.attrs["rank"])
    for o in ds.optimizer.values:
        o = str(o)
        x = ds.sel(optimizer=o)
        lrs = x["lr"].values
        loss = np.transpose(x["final_loss"].values, (1, 0, 2))  # (lr, alpha, seed)
        lstd = float(ds.attrs[f"lr_std_{o}"])
        gap = optimisation_gap(lrs, ds.alpha.values, loss, lr_std=lstd, alpha_std=ALPHA_STD,
                               seed_axis=2)
        mean = np.where(np.isfinite(loss), loss, np.inf).mean(axis=2)
        i_std = int(np.argmin(np.abs(np.log(lrs / lstd))))
        ja = int(np.argmin(mean[i_std]))
        j2r = np.flatnonzero(np.isclose(ds.alpha.values, 2 * r))
        j16 = int(np.argmin(np.abs(np.log(ds.alpha.values / ALPHA_STD))))
        out[o] = {
            "lr_std": lstd, "best_lr_at_alpha16": gap.best_lr, "lr_ratio_best_over_std": gap.lr_ratio,
            "best_lr_at_edge": gap.best_lr_at_edge, "loss_std": gap.loss_std, "loss_min": gap.loss_min,
            "loss_gap": gap.loss_gap,
            "loss_ratio_std_over_min": gap.loss_std / gap.loss_min if gap.loss_min > 0 else None,
            "argmin_lr": gap.argmin_lr, "argmin_alpha": gap.argmin_alpha,
            "argmin_at_edge": gap.argmin_at_edge,
            "best_alpha_at_lr_std": float(ds.alpha.values[ja]), "loss_best_alpha_at_lr_std": float(mean[i_std, ja]),
            "loss_alpha_2r_at_lr_std": float(mean[i_std, j2r[0]]) if j2r.size else None,
            # The seed's claim "α gains cannot be replicated by lr scaling alone", in numbers:
            # tune α at the standard lr, or tune the lr at the standard α.
            "loss_best_lr_at_alpha_std": float(mean[:, j16].min()),
            "best_alpha_at_lr_std_note": "best over the α grid at lr_std vs best over the lr grid at α = 16",
        }
    out["files"] = files
    out["seconds"] = time.time() - t0
    return _jsonable(out)


def figure_F4(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F4: the (η, α) landscape (THEORY §6, P4): heatmap of final loss with iso-lines.

    Lines of equal η·s (Adam, where α and η trade one for one at a given state, §3) and of
    equal η·s² (SGD, whose signal is ∝ η s²). The summary measures interchangeability: along
    the iso-line through the best cell, the ratio of the largest to the smallest mean loss
    among converged cells, and how many cells on it diverged, against the same along the
    line of constant η through the best cell.
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    ds = _landscape(mode, ctx).copy()
    ds.attrs.update(figure="F4 (eta, alpha) landscape (THEORY §6, P4)")
    fig = P.plot_landscape(ds)
    files = _write(ds, fig, ctx.out, "F4_landscape", S["dpi"])
    out: dict[str, Any] = {"rank": int(ds.attrs["rank"])}
    la = np.log2(ds.alpha.values)
    lf = np.log2(ds.lr_factor.values)
    for o in ds.optimizer.values:
        o = str(o)
        x = ds.sel(optimizer=o)
        loss = x["final_loss"].values
        div = (x["diverged"].values > 0) | ~np.isfinite(loss)
        anydiv = div.any(axis=-1)
        mean = np.where(anydiv, np.nan, np.where(div, np.nan, loss).mean(axis=-1))
        p = 1.0 if o.startswith("adam") else 2.0
        if np.all(np.isnan(mean)):
            out[o] = {"note": "every cell diverged"}
            continue
        i, j = np.unravel_index(np.nanargmin(mean), mean.shape)
        # log η + p log s = const, on log2 grids: lf[j'] + p·la[i'] = lf[j] + p·la[i].
        on_iso = np.isclose(lf[None, :] + p * la[:, None], lf[j] + p * la[i])
        on_eta = np.zeros_like(on_iso)
        on_eta[:, j] = True

        def spread(mask):
            v = mean[mask]
            v = v[np.isfinite(v)]
            return {"cells": int(mask.sum()), "diverged": int((anydiv & mask).sum()),
                    "max_over_min_loss": float(v.max() / v.min()) if v.size > 1 else None}

        out[o] = {"best_lr": float(x["lr"].values[j]), "best_alpha": float(ds.alpha.values[i]),
                  "best_loss": float(mean[i, j]), "diverged_cells": int(anydiv.sum()),
                  "cells": int(anydiv.size),
                  "iso_line": ("eta*s" if p == 1 else "eta*s^2"),
                  "along_iso_line_through_best": spread(on_iso),
                  "along_fixed_lr_through_best": spread(on_eta)}
    out["files"] = files
    out["seconds"] = time.time() - t0
    return _jsonable(out)


# =========================================================================== F3
def figure_F3(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F3: signal ‖S‖ and drift ratio ρ against η and α (THEORY §3, P3).

    Population gradient, PEFT init, records at steps 0–2; plotted at step 1 (ρ₀ = 0 because
    B₀ = 0 makes ΔA₀ = 0). Derived exponents drawn as reference lines:

    - THEORY §3, at a given state (A, B): SGD ρ = η s ‖ĜAᵀBᵀĜ‖/‖ĜAᵀA + BBᵀĜ‖ ∝ η s;
      Adam ρ ∝ η s⁰.
    - Along the trajectory from B₀ = 0 the state itself depends on η and s: SGD's
      B₁ = −η s G₀A₀ᵀ, so ρ₁ ∝ (η s)·‖B₁‖ ∝ η² s² and ‖S₁‖ ∝ η s²; Adam's first steps are
      sign steps of size O(η) whatever s, so ρ₁ ∝ η s⁰ and ‖S₁‖ ∝ η s.

    The given-state law for SGD is measured as ρ₁/‖B₁‖ (B₁ has a fixed direction, so this
    removes the state's dependence on ηs): its exponents are 1 and 1.
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    F = S["F3"]
    opts = ["sgd", "adam"]
    base = base_config(mode, population=True, rank=F["rank"], steps=F["steps"], record_every=1)
    lr_ref = {"sgd": sgd_lr_std(_task_of(mode)), "adam": ADAM_LR_STD}
    facs, alphas, seeds, t = F["lr_factors"], F["alphas"], F["seeds"], F["plot_step"]
    n_lr = len(facs["sgd"])
    eta_cfgs = [base.replace(optimizer=o, lr=float(lr_ref[o] * f), alpha=ALPHA_STD, seed=sd)
                for o in opts for f in facs[o] for sd in seeds]
    al_cfgs = [base.replace(optimizer=o, lr=float(lr_ref[o] * F["alpha_lr_factor"][o]), alpha=a,
                            seed=sd)
               for o in opts for a in alphas for sd in seeds]
    res = ctx.run(eta_cfgs + al_cfgs)
    re_, ra_ = res[:len(eta_cfgs)], res[len(eta_cfgs):]

    def grab(rs, n, name, step):
        return np.array([_rec(x, name, step) for x in rs]).reshape(len(opts), n, len(seeds))

    data, summary_steps = {}, {}
    for tt in range(1, F["steps"]):
        for tag, rs, n in (("eta", re_, n_lr), ("alpha", ra_, len(alphas))):
            rho = grab(rs, n, "drift_ratio", tt)
            sig = grab(rs, n, "signal_norm", tt)
            bn = grab(rs, n, "B_norm", tt)
            data[(tt, tag)] = (rho, sig, rho / bn)
    theory = {  # (optimizer, quantity, variable) -> exponent, along the trajectory (docstring)
        ("sgd", "rho", "eta"): 2.0, ("sgd", "rho", "s"): 2.0,
        ("sgd", "rhoB", "eta"): 1.0, ("sgd", "rhoB", "s"): 1.0,
        ("sgd", "signal", "eta"): 1.0, ("sgd", "signal", "s"): 2.0,
        ("adam", "rho", "eta"): 1.0, ("adam", "rho", "s"): 0.0,
        ("adam", "rhoB", "eta"): math.nan, ("adam", "rhoB", "s"): math.nan,
        ("adam", "signal", "eta"): 1.0, ("adam", "signal", "s"): 1.0,
    }
    quants, variables = ["rho", "rhoB", "signal"], ["eta", "s"]
    slope_th = np.array([[[theory[(o, q, v)] for v in variables] for q in quants] for o in opts])
    rho_e, sig_e, rb_e = data[(t, "eta")]
    rho_a, sig_a, rb_a = data[(t, "alpha")]
    scale = np.array([a / F["rank"] for a in alphas])
    lrs = np.array([[lr_ref[o] * f for f in facs[o]] for o in opts])
    ds = xr.Dataset(
        {"rho_eta": (("optimizer", "lr_index", "seed"), rho_e),
         "signal_eta": (("optimizer", "lr_index", "seed"), sig_e),
         "rhoB_eta": (("optimizer", "lr_index", "seed"), rb_e),
         "rho_alpha": (("optimizer", "alpha", "seed"), rho_a),
         "signal_alpha": (("optimizer", "alpha", "seed"), sig_a),
         "rhoB_alpha": (("optimizer", "alpha", "seed"), rb_a),
         "lr": (("optimizer", "lr_index"), lrs),
         "scale": (("alpha",), scale),
         "slope_theory": (("optimizer", "quantity", "variable"), slope_th)},
        coords={"optimizer": opts, "lr_index": np.arange(n_lr, dtype=np.int32), "alpha": np.array(alphas),
                "seed": np.array(seeds, np.int32), "quantity": quants, "variable": variables},
        attrs={"figure": "F3 signal and drift (THEORY §3, P3)", "run_mode": mode, "plot_step": t,
               "rank": F["rank"], "alpha_fixed": ALPHA_STD,
               "lr_fixed_sgd": lr_ref["sgd"] * F["alpha_lr_factor"]["sgd"],
               "lr_fixed_adam": lr_ref["adam"] * F["alpha_lr_factor"]["adam"],
               "state": "trajectory from B0 = 0, population gradient"},
    )
    fig = P.plot_signal_drift(ds)
    files = _write(ds, fig, ctx.out, "F3_signal_drift", S["dpi"])
    tol = 0.05
    for tt in range(1, F["steps"]):
        rho_e, sig_e, rb_e = data[(tt, "eta")]
        rho_a, sig_a, rb_a = data[(tt, "alpha")]
        block = {}
        for k, o in enumerate(opts):
            block[o] = {}
            for q, ye, ya in (("rho", rho_e, rho_a), ("rhoB", rb_e, rb_a), ("signal", sig_e, sig_a)):
                the, ths = theory[(o, q, "eta")], theory[(o, q, "s")]
                if not np.isfinite(the):
                    continue
                block[o][q] = {"eta": _slope_boot(lrs[k], ye[k], the, tol),
                               "s": _slope_boot(scale, ya[k], ths, tol)}
        summary_steps[f"step_{tt}"] = block
    out = {"settings": {"rank": F["rank"], "lr_factors": facs, "alphas": alphas, "seeds": seeds,
                        "lr_ref": lr_ref, "alpha_lr_factor": F["alpha_lr_factor"]},
           "note": ("rho: drift ratio along the trajectory from B0 = 0; rhoB = rho/||B||: THEORY §3's "
                    "given-state law (SGD rho ∝ eta·s); signal = ||S||. Exponents: 'theory'."),
           "slopes": summary_steps, "files": files, "seconds": time.time() - t0}
    return _jsonable(out)


# =========================================================================== F5
def _rule_changes(rule: str, spec: dict) -> dict:
    return {"rule": rule, **spec}


def figure_F5(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F5: rank stability (THEORY §5, P5): first-step π₁ and ‖S₁‖, and loss after the budget,
    against r for ``lora`` (α = 16), ``rslora`` (α = 16) and ``lora-alpha`` (c = 64) under SGD
    (η_std) and Adam (1e-3).

    First step: population gradient, d = m = ``d_first`` ≫ r, averaged over seeds, against the
    §5 exponents (:func:`signaldrift._analysis.predicted_first_step_slopes`). Budget: the
    common minibatch setting.
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    F = S["F5"]
    opts, rules, ranks = ["sgd", "adam"], list(F["rules"]), F["ranks"]
    lr_ref = {"sgd": sgd_lr_std(_task_of(mode)), "adam": ADAM_LR_STD}
    dfirst = F["d_first"]
    first_base = base_config(mode, population=True, d=dfirst, m=dfirst, steps=1, record_every=1)
    lr_first = {"sgd": sgd_lr_std(make_task(first_base)), "adam": ADAM_LR_STD}
    sf, sb = F["seeds_first"], F["seeds_budget"]
    f_cfgs = [first_base.replace(optimizer=o, lr=float(lr_first[o]), rank=r, seed=sd,
                                 **_rule_changes(rule, F["rules"][rule]))
              for o in opts for rule in rules for r in ranks for sd in sf]
    b_cfgs = [base_config(mode, optimizer=o, lr=float(lr_ref[o]), rank=r, seed=sd,
                          **_rule_changes(rule, F["rules"][rule]))
              for o in opts for rule in rules for r in ranks for sd in sb]
    res = ctx.run(f_cfgs + b_cfgs)
    fr, br = res[:len(f_cfgs)], res[len(f_cfgs):]
    shp = (len(opts), len(rules), len(ranks))
    prog = np.array([_rec(x, "progress", 0) for x in fr]).reshape(*shp, len(sf))
    sig = np.array([_rec(x, "signal_norm", 0) for x in fr]).reshape(*shp, len(sf))
    fl = np.array([_final(x)[0] for x in br]).reshape(*shp, len(sb))
    dv = np.array([_final(x)[1] for x in br], np.int8).reshape(*shp, len(sb))
    th = np.array([[[predicted_first_step_slopes(o, rule)[k] for k in ("progress", "update_norm")]
                    for rule in rules] for o in opts])
    ds = xr.Dataset(
        {"progress1": (("optimizer", "rule", "rank", "seed"), prog),
         "signal1": (("optimizer", "rule", "rank", "seed"), sig),
         "final_loss": (("optimizer", "rule", "rank", "seed_budget"), fl),
         "diverged": (("optimizer", "rule", "rank", "seed_budget"), dv),
         "slope_theory": (("optimizer", "rule", "quantity"), th)},
        coords={"optimizer": opts, "rule": rules, "rank": np.array(ranks, np.int32),
                "seed": np.array(sf, np.int32), "seed_budget": np.array(sb, np.int32),
                "quantity": ["progress", "signal"]},
        attrs={"figure": "F5 rank stability (THEORY §5, P5)", "run_mode": mode,
               "steps": base_config(mode).steps, "d_first": dfirst,
               "rules": json.dumps(F["rules"]), "lr_sgd_first": lr_first["sgd"],
               "lr_sgd_budget": lr_ref["sgd"], "lr_adam": ADAM_LR_STD},
    )
    fig = P.plot_rank_stability(ds)
    files = _write(ds, fig, ctx.out, "F5_rank_stability", S["dpi"])
    tol = 0.1
    slopes: dict[str, Any] = {}
    for i, o in enumerate(opts):
        slopes[o] = {}
        for j, rule in enumerate(rules):
            pr = predicted_first_step_slopes(o, rule)
            mean_loss = np.where(dv[i, j].any(-1), np.nan, np.nanmean(fl[i, j], axis=-1))
            slopes[o][rule] = {
                "progress": _slope_boot(ranks, prog[i, j], pr["progress"], tol),
                "update_norm": _slope_boot(ranks, sig[i, j], pr["update_norm"], tol),
                "loss_after_budget": {f"r={r}": mean_loss[k] for k, r in enumerate(ranks)},
                "diverged_runs": int(dv[i, j].sum()),
            }
    out = {"settings": {"ranks": ranks, "rules": F["rules"], "d_first": dfirst,
                        "seeds_first": len(sf), "seeds_budget": len(sb), "lr_first": lr_first,
                        "lr_budget": lr_ref},
           "tolerance_note": ("|measured − §5| ≤ 0.1: the §5 table is leading order in r/d "
                              "(AAᵀ ≈ I/3 up to O(√(r/d)) fluctuations)"),
           "slopes": slopes, "files": files, "seconds": time.time() - t0}
    return _jsonable(out)


# =========================================================================== F6
def figure_F6(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F6: the rank law α*(r) = c·r^γ (THEORY §5, P6).

    Adam at its standard lr, rule ``lora`` (s = α/r), the common minibatch setting. Per rank,
    α* = argmin over a log grid of the mean final loss over seeds, refined by a parabola in
    log α (:func:`signaldrift._analysis.optimal_alpha`, percentile-bootstrap CI over seeds).
    If the minimum sits at an edge of the grid, the grid is widened by ``widen_octaves`` at
    that edge (at most ``max_widen`` times); if it still does, the rank is flagged
    ``at_edge`` and excluded from nothing (it is reported, and the fit is also given without it).
    γ and c: least squares of log α* on log r; CI: percentile bootstrap over seeds of the
    whole pipeline (resample seeds, recompute every α*(r), refit).
    """
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    F = S["F6"]
    ranks, seeds = F["ranks"], F["seeds"]
    grid0 = np.array(F["alphas"])
    step = float(np.log2(grid0[1] / grid0[0]))
    per_rank: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    grids = {r: grid0.copy() for r in ranks}
    widened = {r: 0 for r in ranks}
    pending = list(ranks)
    while pending:
        cfgs, index = [], []
        for r in pending:
            for a in grids[r]:
                for sd in seeds:
                    cfgs.append(base_config(mode, rank=r, alpha=float(a), optimizer=F["optimizer"],
                                            lr=F["lr"], seed=sd))
                    index.append((r, a, sd))
        res = ctx.run(cfgs)
        by = {(r, a, sd): _final(x) for (r, a, sd), x in zip(index, res)}
        nxt = []
        for r in pending:
            g = grids[r]
            fl = np.array([[by[(r, a, sd)][0] for sd in seeds] for a in g])
            dv = np.array([[by[(r, a, sd)][1] for sd in seeds] for a in g])
            per_rank[r] = (g, fl, dv)
            oa = optimal_alpha(g, fl, seed_axis=1, n_boot=0)
            if oa.at_edge and widened[r] < F["max_widen"]:
                n_new = int(round(F["widen_octaves"] / step))
                if oa.index == int(np.argmin(g)):
                    extra = g.min() * 2.0 ** (-step * np.arange(n_new, 0, -1))
                else:
                    extra = g.max() * 2.0 ** (step * np.arange(1, n_new + 1))
                grids[r] = np.sort(np.r_[g, extra])
                widened[r] += 1
                nxt.append(r)
        pending = nxt

    # Point estimates and per-rank CIs.
    rows = {}
    for r in ranks:
        g, fl, dv = per_rank[r]
        oa = optimal_alpha(g, fl, seed_axis=1, n_boot=F["n_boot"], seed=r)
        rows[r] = oa
    ast = np.array([rows[r].alpha_star for r in ranks])
    edge = np.array([rows[r].at_edge for r in ranks])
    ok = np.isfinite(ast)
    fit = fit_power_law(np.array(ranks)[ok], ast[ok]) if ok.sum() >= 2 else None
    # Pipeline bootstrap over seeds.
    rng = np.random.default_rng(12345)
    nS = len(seeds)
    gam_b, c_b = [], []
    for _ in range(F["n_boot"]):
        pick = rng.integers(0, nS, size=nS)
        a_b = []
        for r in ranks:
            g, fl, _ = per_rank[r]
            a_b.append(optimal_alpha(g, fl[:, pick], seed_axis=1, n_boot=0).alpha_star)
        a_b = np.array(a_b)
        m = np.isfinite(a_b)
        if m.sum() >= 2:
            fb = fit_power_law(np.array(ranks)[m], a_b[m])
            gam_b.append(fb.gamma)
            c_b.append(fb.c)
    q = [2.5, 97.5]
    g_ci = np.percentile(gam_b, q).tolist() if gam_b else [math.nan, math.nan]
    c_ci = np.percentile(c_b, q).tolist() if c_b else [math.nan, math.nan]
    gamma = fit.gamma if fit else math.nan
    c = fit.c if fit else math.nan
    bracket = bracket_position(gamma, 0.5, 1.0, ci=tuple(g_ci)) if fit else "no fit"
    fit_interior = None
    if edge.any() and (ok & ~edge).sum() >= 2:
        fi = fit_power_law(np.array(ranks)[ok & ~edge], ast[ok & ~edge])
        fit_interior = {"gamma": fi.gamma, "c": fi.c, "ranks": np.array(ranks)[ok & ~edge].tolist()}

    lr_, la_ = np.log(np.array(ranks, float)), np.log(ast)
    local = {f"r={ranks[k]}->{ranks[k + 1]}": float((la_[k + 1] - la_[k]) / (lr_[k + 1] - lr_[k]))
             for k in range(len(ranks) - 1)}
    if fit and len(ranks) > 2:
        bracket += ("; local exponents between neighbouring ranks: "
                    + ", ".join(f"{v:.2f}" for v in local.values()))
    all_alpha = np.unique(np.concatenate([per_rank[r][0] for r in ranks]))
    FL = np.full((len(ranks), all_alpha.size, nS), np.nan)
    DV = np.full_like(FL, np.nan)
    for i, r in enumerate(ranks):
        g, fl, dv = per_rank[r]
        idx = np.searchsorted(all_alpha, g)
        FL[i, idx] = np.where(np.isfinite(fl), fl, np.nan)
        DV[i, idx] = dv
    ds = xr.Dataset(
        {"final_loss": (("rank", "alpha", "seed"), FL),
         "diverged": (("rank", "alpha", "seed"), DV),
         "alpha_star": (("rank",), ast),
         "alpha_star_lo": (("rank",), np.array([rows[r].lo for r in ranks])),
         "alpha_star_hi": (("rank",), np.array([rows[r].hi for r in ranks])),
         "at_edge": (("rank",), edge.astype(np.int8))},
        coords={"rank": np.array(ranks, np.int32), "alpha": all_alpha, "seed": np.array(seeds, np.int32)},
        attrs={"figure": "F6 rank law (THEORY §5, P6)", "run_mode": mode, "gamma": gamma,
               "gamma_lo": g_ci[0], "gamma_hi": g_ci[1], "c": c, "c_lo": c_ci[0], "c_hi": c_ci[1],
               "bracket": bracket, "optimizer": F["optimizer"], "lr": F["lr"],
               "steps": base_config(mode).steps, "batch": base_config(mode).batch},
    )
    fig = P.plot_rank_law(ds)
    files = _write(ds, fig, ctx.out, "F6_rank_law", S["dpi"])
    heur = {}
    for i, r in enumerate(ranks):
        g, fl, dv = per_rank[r]
        mean = np.where(np.isfinite(fl), fl, np.inf).mean(axis=1)
        best = float(mean.min())

        def at(a):
            k = np.flatnonzero(np.isclose(g, a))
            return float(mean[k[0]] / best) if k.size and best > 0 else None

        heur[f"r={r}"] = {"loss_ratio_alpha16_over_best": at(16.0), "loss_ratio_alpha2r_over_best": at(2.0 * r),
                          "loss_ratio_rslora16_over_best": at(16.0 * math.sqrt(r))}
    out = {
        "gamma": {"value": gamma, "ci": g_ci},
        "c": {"value": c, "ci": c_ci},
        "bracket": bracket,
        "ci_method": f"percentile bootstrap over {nS} seeds of the whole pipeline ({len(gam_b)} resamples)",
        "gamma_t_ci": [fit.gamma_lo, fit.gamma_hi] if fit else None,
        "gamma_t_ci_note": ("t-based CI from the residuals about the power law (includes lack of "
                            "fit); the bootstrap CI above reflects seed-to-seed noise only"),
        "local_exponents": local,
        "alpha_star": {f"r={r}": {"value": rows[r].alpha_star, "ci": [rows[r].lo, rows[r].hi],
                                  "at_edge": rows[r].at_edge, "edge_fraction": rows[r].edge_fraction,
                                  "grid": [float(per_rank[r][0].min()), float(per_rank[r][0].max())],
                                  "widened": widened[r]} for r in ranks},
        "edge_warning": (None if not edge.any() else
                         "α* at the α-grid edge for ranks " + ", ".join(str(r) for r, e in zip(ranks, edge) if e)
                         + " after widening: α* there is a bound, not an estimate"),
        "fit_without_edge_ranks": fit_interior,
        "heuristics": heur,
        "settings": {"ranks": ranks, "alphas": F["alphas"], "seeds": seeds, "optimizer": F["optimizer"],
                     "lr": F["lr"], "rule": "lora (s = alpha/r)", "steps": base_config(mode).steps,
                     "batch": base_config(mode).batch},
        "files": files, "seconds": time.time() - t0,
    }
    return _jsonable(out)


# =========================================================================== F7
def figure_F7(mode: str, out_dir, *, workers: int | None = None, progress: bool = False) -> dict:
    """F7: LoRA-α (c = 64) against LoRA (α = 16) and rsLoRA (α = 16): final loss across ranks,
    mean ± 95% CI over seeds, at the standard lrs (Adam 1e-3, SGD η_std), common minibatch
    setting. Diverged runs are shown as diverged."""
    t0 = time.time()
    ctx = _Ctx(out_dir, workers, progress)
    S = settings(mode)
    F = S["F7"]
    opts, rules, ranks, seeds = ["sgd", "adam"], list(F["rules"]), F["ranks"], F["seeds"]
    lr_ref = {"sgd": sgd_lr_std(_task_of(mode)), "adam": ADAM_LR_STD}
    cfgs = [base_config(mode, optimizer=o, lr=float(lr_ref[o]), rank=r, seed=sd,
                        **_rule_changes(rule, F["rules"][rule]))
            for o in opts for rule in rules for r in ranks for sd in seeds]
    res = ctx.run(cfgs)
    shp = (len(opts), len(rules), len(ranks), len(seeds))
    fl = np.array([_final(x)[0] for x in res]).reshape(shp)
    dv = np.array([_final(x)[1] for x in res], np.int8).reshape(shp)
    rs = "; ".join(f"{k}: " + ", ".join(f"{a}={v:g}" for a, v in F["rules"][k].items()) for k in rules)
    ds = xr.Dataset(
        {"final_loss": (("optimizer", "rule", "rank", "seed"), fl),
         "diverged": (("optimizer", "rule", "rank", "seed"), dv)},
        coords={"optimizer": opts, "rule": rules, "rank": np.array(ranks, np.int32),
                "seed": np.array(seeds, np.int32)},
        attrs={"figure": "F7 LoRA-alpha vs LoRA vs rsLoRA", "run_mode": mode,
               "steps": base_config(mode).steps, "rule_settings": rs,
               "lr_sgd": float(f"{lr_ref['sgd']:.4g}"), "lr_adam": ADAM_LR_STD},
    )
    fig = P.plot_rule_comparison(ds)
    files = _write(ds, fig, ctx.out, "F7_rule_comparison", S["dpi"])
    table: dict[str, Any] = {}
    for i, o in enumerate(opts):
        table[o] = {}
        for k, r in enumerate(ranks):
            row = {}
            for j, rule in enumerate(rules):
                x = fl[i, j, k]
                d = dv[i, j, k] > 0
                if d.any():
                    row[rule] = {"diverged_seeds": int(d.sum())}
                    continue
                m = float(x.mean())
                h = float(1.96 * x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else math.nan
                row[rule] = {"mean": m, "ci": [m - h, m + h]}
            ok = {k2: v["mean"] for k2, v in row.items() if "mean" in v}
            row["best"] = min(ok, key=ok.get) if ok else None
            table[o][f"r={r}"] = row
    out = {"settings": {"rules": F["rules"], "ranks": ranks, "seeds": seeds, "lr": lr_ref,
                        "steps": base_config(mode).steps, "batch": base_config(mode).batch},
           "final_loss": table, "files": files, "seconds": time.time() - t0}
    return _jsonable(out)


# =========================================================================== driver
FIGURES: dict[str, tuple[str, Callable[..., dict]]] = {
    "F1": ("spectral_suppression", figure_F1),
    "F2": ("optimisation_gap", figure_F2),
    "F3": ("signal_drift", figure_F3),
    "F4": ("landscape", figure_F4),
    "F5": ("rank_stability", figure_F5),
    "F6": ("rank_law", figure_F6),
    "F7": ("rule_comparison", figure_F7),
}


def resolve_names(names: Sequence[str] | None) -> list[str]:
    """Figure ids (``F1``…``F7``) for ``names`` (ids or names, any case; None: all).

    Raises :class:`ConfigError` (one line) for an unknown name, before anything runs.
    """
    if not names:
        return list(FIGURES)
    lookup = {}
    for fid, (stem, _) in FIGURES.items():
        for alias in (fid, stem, f"{fid}_{stem}"):
            lookup[alias.lower()] = fid
    out = []
    for n in names:
        fid = lookup.get(str(n).strip().lower())
        if fid is None:
            raise ConfigError(f"--only: unknown figure {n!r}; choose from "
                              + ", ".join(f"{k} ({v[0]})" for k, v in FIGURES.items()))
        if fid not in out:
            out.append(fid)
    return out


def _warm_up() -> None:
    """Compile (or load) the Numba kernels once in this process before any worker forks,
    so that forked workers inherit them instead of each compiling its own copy."""
    from ._simulate import simulate

    tiny = SimConfig(d=8, m=8, task_rank=2, rank=2, steps=2, record_every=1)
    for kw in ({"optimizer": "sgd", "sharpness_steps": (0,)},
               {"optimizer": "adam", "sharpness_steps": (1,), "batch": 2},
               {"model": "full", "optimizer": "sgd"}):
        simulate(tiny.replace(**kw))


def run_figures(names: Sequence[str] | None, *, mode: str = "quick", out_dir="figures/out",
                workers: int | None = None, progress: bool = True, log=sys.stderr) -> dict:
    """Run the figures ``names`` (all when None) and write ``<out_dir>/summary.json``.

    The summary has one entry per figure and top-level ``gamma`` and ``c`` (from F6). An
    existing ``summary.json`` in ``out_dir`` is updated, so ``--only`` runs keep the others.

    **Returns:** the summary dict written.
    """
    fids = resolve_names(names)
    settings(mode)  # validates the mode before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    summary: dict[str, Any] = {}
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            summary = {}
    if summary.get("mode") not in (None, mode):
        summary = {}
    summary["mode"] = mode
    summary.setdefault("figures", {})
    t_all = time.time()
    _warm_up()
    for fid in fids:
        stem, fn = FIGURES[fid]
        t0 = time.time()
        if log is not None:
            print(f"[figures] {fid} {stem} ...", file=log, flush=True)
        summary["figures"][fid] = fn(mode, out, workers=workers, progress=progress)
        if log is not None:
            print(f"[figures] {fid} done in {time.time() - t0:.1f} s", file=log, flush=True)
        if fid == "F6":
            summary["gamma"] = summary["figures"]["F6"]["gamma"]
            summary["c"] = summary["figures"]["F6"]["c"]
            summary["gamma_bracket"] = summary["figures"]["F6"]["bracket"]
    summary.setdefault("gamma", None)
    summary.setdefault("c", None)
    summary["settings"] = _jsonable(settings(mode))
    summary["seconds_last_run"] = time.time() - t_all
    tmp = path.with_name(f".summary.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(_jsonable(summary), indent=1, sort_keys=False))
    os.replace(tmp, path)
    return summary


def script_main(fid: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the thin scripts in ``figures/``: ``--quick``/``--full``, ``--out``,
    ``--workers``. Prints the figure's summary as JSON."""
    import argparse

    stem, fn = FIGURES[fid]
    p = argparse.ArgumentParser(description=f"{fid}: {stem.replace('_', ' ')} ({fn.__doc__.splitlines()[0]})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick")
    g.add_argument("--full", dest="mode", action="store_const", const="full")
    p.set_defaults(mode="quick")
    p.add_argument("--out", default="figures/out")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    s = run_figures([fid], mode=a.mode, out_dir=a.out, workers=a.workers)
    print(json.dumps(s["figures"][fid], indent=1))
    return 0
