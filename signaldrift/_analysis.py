"""Analysis of sweeps: log-log slopes, power-law fits, α*, optimisation gap, divergence.

Pure functions on arrays (no simulation, no I/O), used by the figures and the CLI summary.
Every fit states its formula and the THEORY.md section it measures. Diverged runs enter as
NaN or ±inf losses: slope fits drop non-finite and non-positive points (and report how many
they used), minimisations count them as +inf (never the minimum).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

__all__ = [
    "SlopeFit",
    "PowerLawFit",
    "OptimalAlpha",
    "OptimisationGap",
    "DivergenceThreshold",
    "loglog_slope",
    "fit_power_law",
    "optimal_alpha",
    "alpha_star_resamples",
    "optimisation_gap",
    "divergence_threshold",
    "first_step_slopes",
    "predicted_first_step_slopes",
    "bracket_position",
    "first_step_brackets",
    "t_interval",
    "log_t_interval",
    "aggregate_seeds",
    "RankLawFit",
    "fit_rank_law",
]


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class SlopeFit:
    """OLS fit ``log y = intercept + slope·log x`` with a t-based confidence interval.

    Attributes:
        slope: the fitted slope (the exponent p of ``y ∝ x^p``).
        lo, hi: the ``ci`` confidence interval of the slope (NaN when n = 2).
        intercept: the fitted intercept (natural log).
        stderr: standard error of the slope (NaN when n = 2).
        n: number of points used (finite, x > 0, y > 0).
        ci: the confidence level.
    """

    slope: float
    lo: float
    hi: float
    intercept: float
    stderr: float
    n: int
    ci: float

    def __iter__(self):
        # ``slope, lo, hi = loglog_slope(x, y)`` works.
        return iter((self.slope, self.lo, self.hi))


@dataclass(frozen=True)
class PowerLawFit:
    """Fit of ``y = c·x^γ`` in log-log (THEORY §5, P6).

    Attributes:
        gamma, gamma_lo, gamma_hi: exponent γ and its CI.
        c, c_lo, c_hi: prefactor c and its CI.
        method: ``"t"`` (t-based, one value per x) or ``"bootstrap"`` (percentile bootstrap
            over seeds/groups).
        n: number of points used; n_groups: number of groups (seeds), 1 for ``"t"``.
        ci: the confidence level.
    """

    gamma: float
    gamma_lo: float
    gamma_hi: float
    c: float
    c_lo: float
    c_hi: float
    method: str
    n: int
    n_groups: int
    ci: float

    def __call__(self, x):
        """The fitted law ``c·x^γ`` evaluated at ``x``."""
        return self.c * np.asarray(x, dtype=float) ** self.gamma


@dataclass(frozen=True)
class OptimalAlpha:
    """α* = argmin over α of the seed-aggregated log final loss (THEORY §5, P6).

    Attributes:
        alpha_star: the refined minimiser (parabola in log α through the grid minimum and its
            neighbours); the grid value when at the edge or when a neighbour diverged;
            NaN when every α diverged.
        lo, hi: percentile bootstrap CI over seeds (NaN without seeds or bootstrap).
        index: index of the grid minimum in ``alphas`` (as given, not sorted); −1 if none.
        at_edge: the grid minimum is the smallest or largest α (α* may lie outside the grid).
        refined: whether the parabola refinement was applied.
        min_loss: the seed-aggregated final loss at the grid minimum.
        mean_loss: (n_alpha,) seed-aggregated final loss (``aggregate``: the geometric mean
            by default; +inf where a seed diverged).
        edge_fraction: fraction of bootstrap resamples whose minimum is at the edge.
        n_seeds: number of seeds.
        ci: the confidence level.
    """

    alpha_star: float
    lo: float
    hi: float
    index: int
    at_edge: bool
    refined: bool
    min_loss: float
    mean_loss: np.ndarray
    edge_fraction: float
    n_seeds: int
    ci: float


@dataclass(frozen=True)
class OptimisationGap:
    """The optimisation gap at standard hyperparameters (THEORY §4, P2).

    Attributes:
        lr_std, alpha_std: the standard hyperparameters.
        best_lr: best learning rate at ``alpha_std`` (refined like α*: parabola in log lr).
        lr_ratio: ``best_lr / lr_std``.
        best_lr_at_edge: the best lr at ``alpha_std`` is at the grid edge.
        loss_std: L(lr_std, α_std).
        loss_min: min over the (lr, α) grid of L.
        loss_gap: ``loss_std − loss_min`` (≥ 0; +inf if the standard run diverged).
        argmin_lr, argmin_alpha: the grid (lr, α) of ``loss_min``.
        argmin_at_edge: the grid minimum lies on the edge of the grid.
    """

    lr_std: float
    alpha_std: float
    best_lr: float
    lr_ratio: float
    best_lr_at_edge: bool
    loss_std: float
    loss_min: float
    loss_gap: float
    argmin_lr: float
    argmin_alpha: float
    argmin_at_edge: bool


@dataclass(frozen=True)
class DivergenceThreshold:
    """Bracket of the divergence learning rate (THEORY §4, P1: compare with 2/λ_max).

    Attributes:
        lr_converged: the largest lr below ``lr_diverged`` that converged (NaN if none).
        lr_diverged: the smallest lr that diverged (NaN if none diverged).
        estimate: geometric midpoint ``√(lr_converged·lr_diverged)`` (NaN if either is NaN).
        monotone: True when every lr above ``lr_diverged`` diverged too.
    """

    lr_converged: float
    lr_diverged: float
    estimate: float
    monotone: bool


# ---------------------------------------------------------------------------- helpers
def _check_ci(ci: float) -> float:
    ci = float(ci)
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci: must be in (0, 1), got {ci!r}")
    return ci


def _as_losses(a) -> np.ndarray:
    """Float array with every non-finite value (NaN, ±inf: diverged) replaced by +inf."""
    a = np.array(a, dtype=np.float64)
    a[~np.isfinite(a)] = np.inf
    return a


def _ols(u: np.ndarray, v: np.ndarray):
    """OLS of v on u: (slope, intercept, se_slope, se_intercept); NaN standard errors if n = 2."""
    n = u.size
    ub, vb = u.mean(), v.mean()
    suu = np.sum((u - ub) ** 2)
    slope = float(np.sum((u - ub) * (v - vb)) / suu)
    intercept = float(vb - slope * ub)
    if n <= 2:
        return slope, intercept, float("nan"), float("nan")
    resid = v - intercept - slope * u
    s2 = float(np.sum(resid**2) / (n - 2))
    se_slope = float(np.sqrt(s2 / suu))
    se_intercept = float(np.sqrt(s2 * (1.0 / n + ub**2 / suu)))
    return slope, intercept, se_slope, se_intercept


def _ols_se(u: np.ndarray, s2: float) -> tuple[float, float]:
    """Standard errors of OLS slope and intercept for a residual variance s2."""
    ub = u.mean()
    suu = np.sum((u - ub) ** 2)
    return float(np.sqrt(s2 / suu)), float(np.sqrt(s2 * (1.0 / u.size + ub**2 / suu)))


def _loglog_points(x, y, groups=None):
    """Flatten and keep the points usable in log-log: finite, x > 0, y > 0."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if groups is None and y.ndim == 2 and x.ndim == 1:
        if y.shape[0] != x.size:
            raise ValueError(f"y: a 2-D y must have shape (len(x), n_seeds) = ({x.size}, ·), "
                             f"got {y.shape}")
        groups = np.broadcast_to(np.arange(y.shape[1])[None, :], y.shape)
        x = np.broadcast_to(x[:, None], y.shape)
    if x.shape != y.shape:
        raise ValueError(f"x, y: must have the same shape, got {x.shape} and {y.shape}")
    x, y = x.ravel(), y.ravel()
    if groups is not None:
        groups = np.asarray(groups).ravel()
        if groups.size != x.size:
            raise ValueError(f"groups: must have one label per point ({x.size}), got {groups.size}")
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    u, v = np.log(x[ok]), np.log(y[ok])
    if u.size < 2 or np.unique(u).size < 2:
        raise ValueError(f"need at least 2 usable points with distinct x (finite, x > 0, y > 0), "
                         f"got {u.size} usable of {x.size}")
    return u, v, (None if groups is None else groups[ok])


def _refine_min(u: np.ndarray, L: np.ndarray):
    """Minimise columns of ``L`` (n, B) over sorted grid ``u`` (n,), refined by a parabola.

    Returns ``(u_star, idx, at_edge, refined)`` arrays of length B. A column that is +inf
    everywhere gives NaN; a minimum at the edge or next to a +inf neighbour is not refined.
    """
    n, B = L.shape
    idx = np.argmin(L, axis=0)
    cols = np.arange(B)
    Lmin = L[idx, cols]
    none = ~np.isfinite(Lmin)
    at_edge = ((idx == 0) | (idx == n - 1)) & ~none
    u_star = u[idx].astype(np.float64)
    inner = ~at_edge & ~none
    refined = np.zeros(B, dtype=bool)
    if np.any(inner):
        i = idx[inner]
        c = cols[inner]
        a, b, cc = u[i - 1], u[i], u[i + 1]
        fa, fb, fc = L[i - 1, c], L[i, c], L[i + 1, c]
        ok = np.isfinite(fa) & np.isfinite(fc)
        with np.errstate(invalid="ignore", divide="ignore"):
            # Vertex of the quadratic through (a, fa), (b, fb), (c, fc) (Numerical Recipes'
            # parabolic interpolation step); with fb the smallest it lies in [a, c].
            num = (b - a) ** 2 * (fb - fc) - (b - cc) ** 2 * (fb - fa)
            den = (b - a) * (fb - fc) - (b - cc) * (fb - fa)
            v = b - 0.5 * num / den
        ok &= np.isfinite(v) & (den != 0)
        v = np.where(ok, np.clip(v, a, cc), b)
        u_star[inner] = v
        refined[inner] = ok
    u_star[none] = np.nan
    return u_star, idx, at_edge, refined


def _t_quantile(q, df):
    """Student-t quantile ``t_{q, df}`` by ``scipy.special.stdtrit(df, q)``.

    The same computation as ``scipy.stats.t.ppf(q, df)`` (whose ``_ppf`` is ``stdtrit`` and
    whose ``ppf`` gives ``inf`` at q = 1, as ``stdtrit`` does), for ``0 < q ≤ 1`` and
    ``df > 0``, without importing :mod:`scipy.stats` (the slowest import of the figures);
    :mod:`scipy.special` is imported on first use.
    """
    from scipy.special import stdtrit

    return stdtrit(df, q)


def _percentile_ci(samples: np.ndarray, ci: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return float("nan"), float("nan")
    q = 100.0 * np.array([(1.0 - ci) / 2.0, (1.0 + ci) / 2.0])
    lo, hi = np.percentile(samples, q)
    return float(lo), float(hi)


# ---------------------------------------------------------------------------- functions
def loglog_slope(x, y, *, ci: float = 0.95) -> SlopeFit:
    """OLS slope of ``log y`` on ``log x`` with a t-based confidence interval.

    ``log y_i = a + p·log x_i + e_i``; ``p̂ = Σ(u−ū)(v−v̄)/Σ(u−ū)²`` with ``u = log x``,
    ``v = log y``; ``se(p̂) = √(Σe²/(n−2) / Σ(u−ū)²)``; CI ``p̂ ± t_{(1+ci)/2, n−2}·se``
    (t by :func:`_t_quantile`: ``scipy.special.stdtrit``, as ``scipy.stats.t.ppf``).
    Used for the slopes of THEORY §3 (P3: ρ ∝ η·s for SGD, ρ ∝ η for Adam) and §5 (P5).

    **Arguments:**
    - `x`, `y`: 1-D arrays of equal length; points with non-finite values or x ≤ 0 or
      y ≤ 0 are dropped (diverged runs).
    - `ci`: confidence level in (0, 1).

    **Returns:** a :class:`SlopeFit` (unpacks as ``slope, lo, hi``).
    Raises ``ValueError`` with fewer than 2 usable points or a single distinct x.

    Example::

        >>> fit = loglog_slope([1, 2, 4, 8], [3, 6, 12, 24])
        >>> round(fit.slope, 12)
        1.0
    """
    ci = _check_ci(ci)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape:
        raise ValueError(f"x, y: must be 1-D of equal length, got {x.shape} and {y.shape}")
    u, v, _ = _loglog_points(x, y)
    slope, intercept, se, _ = _ols(u, v)
    n = u.size
    if n > 2:
        t = float(_t_quantile(0.5 + ci / 2.0, n - 2))
        lo, hi = slope - t * se, slope + t * se
    else:
        lo = hi = float("nan")
    return SlopeFit(slope=slope, lo=float(lo), hi=float(hi), intercept=intercept,
                    stderr=se, n=int(n), ci=ci)


def fit_power_law(x, y, *, ci: float = 0.95, n_boot: int = 2000, seed: int = 0,
                  groups=None) -> PowerLawFit:
    """Fit ``y = c·x^γ`` by least squares in log-log (THEORY §5, P6: α*(r) = c·r^γ).

    ``log y = log c + γ·log x + e`` (multiplicative noise). With one value per x the CI is
    t-based (as :func:`loglog_slope`; the CI of ``log c`` from the intercept's standard error
    ``√(s²(1/n + ū²/Σ(u−ū)²))``). With per-seed values — ``y`` 2-D of shape
    (len(x), n_seeds), or 1-D ``y`` with ``x`` of the same length and ``groups`` labelling
    each point's seed — the point estimate is the pooled OLS fit and the CI is a percentile
    bootstrap over seeds (resample whole seeds with replacement, refit; ``n_boot``
    resamples, generator seeded by ``seed``). Non-finite and non-positive points are dropped.

    **Returns:** a :class:`PowerLawFit` (callable: ``fit(x) = c·x^γ``).

    Example::

        >>> fit = fit_power_law([1, 4, 16], [3, 6, 12])
        >>> round(fit.gamma, 12), round(fit.c, 12)
        (0.5, 3.0)
    """
    ci = _check_ci(ci)
    u, v, g = _loglog_points(x, y, groups)
    gamma, logc, se_g, se_c = _ols(u, v)
    n = u.size
    if g is None:
        if n > 2:
            t = float(_t_quantile(0.5 + ci / 2.0, n - 2))
            glo, ghi = gamma - t * se_g, gamma + t * se_g
            clo, chi = np.exp(logc - t * se_c), np.exp(logc + t * se_c)
        else:
            glo = ghi = clo = chi = float("nan")
        return PowerLawFit(gamma=gamma, gamma_lo=float(glo), gamma_hi=float(ghi),
                           c=float(np.exp(logc)), c_lo=float(clo), c_hi=float(chi),
                           method="t", n=int(n), n_groups=1, ci=ci)
    labels, inv = np.unique(g, return_inverse=True)
    G = labels.size
    members = [np.flatnonzero(inv == j) for j in range(G)]
    rng = np.random.default_rng(seed)
    gam_b = np.full(int(n_boot), np.nan)
    logc_b = np.full(int(n_boot), np.nan)
    for b in range(int(n_boot)):
        pick = rng.integers(0, G, size=G)
        rows = np.concatenate([members[j] for j in pick])
        ub = u[rows]
        if np.unique(ub).size < 2:
            continue  # a resample with a single distinct x has no slope; skip it
        gam_b[b], logc_b[b], _, _ = _ols(ub, v[rows])
    glo, ghi = _percentile_ci(gam_b, ci)
    llo, lhi = _percentile_ci(logc_b, ci)
    return PowerLawFit(gamma=gamma, gamma_lo=glo, gamma_hi=ghi, c=float(np.exp(logc)),
                       c_lo=float(np.exp(llo)), c_hi=float(np.exp(lhi)), method="bootstrap",
                       n=int(n), n_groups=int(G), ci=ci)


def _grid_axis(values, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name}: must be a non-empty 1-D array, got shape {a.shape}")
    if not np.all(np.isfinite(a) & (a > 0)):
        raise ValueError(f"{name}: must be finite and > 0, got {a.tolist()}")
    if np.unique(a).size != a.size:
        raise ValueError(f"{name}: values must be distinct, got {a.tolist()}")
    return a


def optimal_alpha(alphas, final_loss, *, seed_axis: int | None = -1, n_boot: int = 2000,
                  ci: float = 0.95, seed: int = 0, aggregate: str = "logmean") -> OptimalAlpha:
    """α* = argmin_α of the seed-aggregated log final loss, refined in log α (THEORY §5, P6).

    Seeds are aggregated in log space (:func:`aggregate_seeds`): ``ℓ(α) = mean_seeds log L``
    (``aggregate="logmean"``, the default: a geometric mean, which one bad seed cannot
    dominate), ``median_seeds log L`` (``"median"``) or ``log mean_seeds L`` (``"mean"``).
    Non-finite losses count as +inf, so (logmean, mean) a diverged seed makes that α +inf.
    With ``u = log α`` and the grid minimum ``b = u_i`` of ℓ, α* is the vertex of the
    parabola (in log L) through ``(a, f_a) = (u_{i−1}, ℓ_{i−1})``, ``(b, f_b)``,
    ``(c, f_c) = (u_{i+1}, ℓ_{i+1})``:
    ``u* = b − ½·[(b−a)²(f_b−f_c) − (b−c)²(f_b−f_a)] / [(b−a)(f_b−f_c) − (b−c)(f_b−f_a)]``,
    clamped to ``[a, c]``; ``α* = exp(u*)``. At the grid edge α* is the edge value and
    ``at_edge`` is set (the true minimiser may lie outside the grid); next to a diverged
    neighbour α* is the grid value (``refined`` False). CI: percentile bootstrap over seeds
    (resample seeds with replacement, recompute the mean and α*), on log α*.

    **Arguments:**
    - `alphas`: (n_alpha,) positive, distinct (any order).
    - `final_loss`: (n_alpha,) or 2-D with seeds along ``seed_axis`` and α along the other.
    - `seed_axis`: the seed axis of a 2-D ``final_loss`` (ignored for 1-D).
    - `n_boot`, `ci`, `seed`: bootstrap resamples, confidence level, generator seed.
    - `aggregate`: ``"logmean"``, ``"median"`` or ``"mean"`` (above).

    **Returns:** an :class:`OptimalAlpha` (``mean_loss`` and ``min_loss`` are
    ``exp`` of the aggregated log loss: geometric means for ``"logmean"``).
    """
    ci = _check_ci(ci)
    al = _grid_axis(alphas, "alphas")
    L = _as_losses(final_loss)
    if L.ndim == 1:
        L = L[:, None]
    elif L.ndim == 2:
        if seed_axis is None:
            raise ValueError("seed_axis: required for a 2-D final_loss")
        L = np.moveaxis(L, seed_axis, -1)
    else:
        raise ValueError(f"final_loss: must be 1-D or 2-D, got shape {L.shape}")
    if L.shape[0] != al.size:
        raise ValueError(f"final_loss: has {L.shape[0]} values along α, expected {al.size}")
    order = np.argsort(al)
    u = np.log(al[order])
    Ls = L[order]
    S = Ls.shape[1]
    mean = aggregate_seeds(Ls, axis=1, how=aggregate)  # log loss; +inf: diverged
    u_star, idx, edge, refined = _refine_min(u, mean[:, None])
    lo = hi = float("nan")
    edge_fraction = float("nan")
    if S > 1 and n_boot > 0:
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, S, size=(int(n_boot), S))
        boot_mean = aggregate_seeds(Ls[:, pick], axis=2, how=aggregate)  # (n_alpha, n_boot)
        ub, _, edge_b, _ = _refine_min(u, boot_mean)
        lo, hi = _percentile_ci(ub, ci)
        lo, hi = float(np.exp(lo)), float(np.exp(hi))
        edge_fraction = float(np.mean(edge_b))
    i_sorted = int(idx[0])
    finite = np.isfinite(mean[i_sorted])
    mean_in_order = np.empty_like(mean)
    mean_in_order[order] = np.exp(mean)
    return OptimalAlpha(
        alpha_star=float(np.exp(u_star[0])), lo=lo, hi=hi,
        index=int(order[i_sorted]) if finite else -1, at_edge=bool(edge[0]),
        refined=bool(refined[0]), min_loss=float(np.exp(mean[i_sorted])), mean_loss=mean_in_order,
        edge_fraction=edge_fraction, n_seeds=int(S), ci=ci)


def alpha_star_resamples(alphas, final_loss, picks, *, seed_axis: int = -1,
                         aggregate: str = "logmean") -> np.ndarray:
    """α* of :func:`optimal_alpha` (``n_boot=0``) for each resample of the seeds at once.

    Entry ``b`` is ``optimal_alpha(alphas, L_b, seed_axis=…, n_boot=0).alpha_star`` where
    ``L_b`` holds the seeds ``picks[b]`` of ``final_loss`` (the same operations on the same
    numbers, so the same bits): for a bootstrap of a statistic of α*, e.g. the seed noise of
    log α*(r) in a rank law.

    **Arguments:**
    - `alphas`: (n_alpha,) positive, distinct (any order).
    - `final_loss`: 2-D, seeds along ``seed_axis`` and α along the other.
    - `picks`: (n_resamples, n_picked) indices of seeds (with repeats: a bootstrap).
    - `aggregate`: as in :func:`optimal_alpha`.

    **Returns:** (n_resamples,) α* (NaN where every α diverged).
    """
    al = _grid_axis(alphas, "alphas")
    L = _as_losses(final_loss)
    if L.ndim != 2:
        raise ValueError(f"final_loss: must be 2-D (alpha and seeds), got shape {L.shape}")
    L = np.moveaxis(L, seed_axis, -1)
    if L.shape[0] != al.size:
        raise ValueError(f"final_loss: has {L.shape[0]} values along α, expected {al.size}")
    picks = np.asarray(picks, dtype=np.intp)
    if picks.ndim != 2:
        raise ValueError(f"picks: must be 2-D (resamples, seeds), got shape {picks.shape}")
    if picks.shape[0] == 0:
        return np.empty(0)
    order = np.argsort(al)
    u = np.log(al[order])
    # C order, so that each resample's seeds are reduced as one contiguous row, exactly as
    # optimal_alpha reduces its (contiguous) copy: numpy sums a contiguous row pairwise and
    # a strided one in sequence, which differ in the last bit from 8 seeds on.
    picked = np.ascontiguousarray(L[order][:, picks])  # (n_alpha, n, n_picked)
    boot_mean = aggregate_seeds(picked, axis=2, how=aggregate)  # (n_alpha, n)
    u_star, _, _, _ = _refine_min(u, boot_mean)
    return np.exp(u_star)


def _match(grid: np.ndarray, value: float, name: str) -> int:
    hit = np.flatnonzero(np.isclose(grid, value, rtol=1e-9, atol=0.0))
    if hit.size != 1:
        raise ValueError(f"{name}: {value!r} is not a grid value; the grid is {grid.tolist()}")
    return int(hit[0])


def optimisation_gap(lrs, alphas, final_loss, *, lr_std: float, alpha_std: float,
                     seed_axis: int | None = None, aggregate: str = "logmean") -> OptimisationGap:
    """The optimisation gap at (lr_std, α_std) (THEORY §4, P2).

    ``best_lr = argmin_lr L(lr, α_std)`` (refined by a parabola in log lr as in
    :func:`optimal_alpha`), ``lr_ratio = best_lr / lr_std``,
    ``loss_gap = L(lr_std, α_std) − min_{lr, α} L(lr, α)``. Non-finite losses count as +inf.

    **Arguments:**
    - `lrs`: (n_lr,), `alphas`: (n_alpha,): the grid; ``lr_std`` and ``alpha_std`` must be
      grid values (matched with relative tolerance 1e-9).
    - `final_loss`: (n_lr, n_alpha), or 3-D with a seed axis ``seed_axis``, aggregated by
      :func:`aggregate_seeds` (``aggregate``; default the geometric mean; a diverged seed
      makes the cell +inf). The best lr is refined by a parabola in log L.

    **Returns:** an :class:`OptimisationGap`.
    """
    lr = _grid_axis(lrs, "lrs")
    al = _grid_axis(alphas, "alphas")
    L = _as_losses(final_loss)
    if seed_axis is not None:
        L = np.exp(aggregate_seeds(L, axis=seed_axis, how=aggregate))
    if L.shape != (lr.size, al.size):
        raise ValueError(f"final_loss: must have shape (n_lr, n_alpha) = ({lr.size}, {al.size}) "
                         f"after averaging seeds, got {L.shape}")
    i_std = _match(lr, lr_std, "lr_std")
    j_std = _match(al, alpha_std, "alpha_std")
    order = np.argsort(lr)
    with np.errstate(divide="ignore"):
        logL = np.log(L[order, j_std])
    u_star, _, edge, _ = _refine_min(np.log(lr[order]), logL[:, None])
    best_lr = float(np.exp(u_star[0]))
    loss_std = float(L[i_std, j_std])
    flat = int(np.argmin(L))
    ia, ja = np.unravel_index(flat, L.shape)
    loss_min = float(L[ia, ja])
    argmin_at_edge = bool(lr[ia] in (lr.min(), lr.max()) or al[ja] in (al.min(), al.max()))
    if not np.isfinite(loss_min):
        return OptimisationGap(lr_std=float(lr_std), alpha_std=float(alpha_std),
                               best_lr=float("nan"), lr_ratio=float("nan"),
                               best_lr_at_edge=False, loss_std=loss_std, loss_min=loss_min,
                               loss_gap=float("nan"), argmin_lr=float("nan"),
                               argmin_alpha=float("nan"), argmin_at_edge=False)
    return OptimisationGap(
        lr_std=float(lr_std), alpha_std=float(alpha_std), best_lr=best_lr,
        lr_ratio=best_lr / float(lr_std), best_lr_at_edge=bool(edge[0]), loss_std=loss_std,
        loss_min=loss_min, loss_gap=loss_std - loss_min, argmin_lr=float(lr[ia]),
        argmin_alpha=float(al[ja]), argmin_at_edge=argmin_at_edge)


def divergence_threshold(lrs, diverged) -> DivergenceThreshold:
    """Bracket the learning rate at which training diverges (THEORY §4, P1: η_c = 2/λ_max).

    ``lr_diverged = min{lr : diverged}``, ``lr_converged = max{lr < lr_diverged : not
    diverged}``, ``estimate = √(lr_converged·lr_diverged)`` (geometric midpoint; the grid
    is geometric). ``monotone`` is False when some lr above ``lr_diverged`` converged.

    **Arguments:** `lrs` (n,) positive; `diverged` (n,) booleans (or 0/1).

    Example::

        >>> divergence_threshold([0.1, 0.2, 0.4, 0.8], [0, 0, 1, 1]).lr_diverged
        0.4
    """
    lr = _grid_axis(lrs, "lrs")
    dv = np.asarray(diverged)
    if dv.shape != lr.shape:
        raise ValueError(f"diverged: must have shape {lr.shape}, got {dv.shape}")
    dv = dv.astype(bool)
    nan = float("nan")
    if not dv.any():
        return DivergenceThreshold(lr_converged=float(lr.max()), lr_diverged=nan,
                                   estimate=nan, monotone=True)
    hi = float(lr[dv].min())
    below = lr[~dv & (lr < hi)]
    lo = float(below.max()) if below.size else nan
    monotone = not bool(np.any(~dv & (lr > hi)))
    est = float(np.sqrt(lo * hi)) if below.size else nan
    return DivergenceThreshold(lr_converged=lo, lr_diverged=hi, estimate=est, monotone=monotone)


def first_step_slopes(ranks, values, *, ci: float = 0.95):
    """Log-log slopes in r of first-step quantities (THEORY §5 table, P5).

    Each slope is :func:`loglog_slope` of the quantity against r; compare with
    :func:`predicted_first_step_slopes`.

    **Arguments:**
    - `ranks`: (n,) LoRA ranks.
    - `values`: a mapping name -> (n,) array (e.g. ``{"progress": π₁, "update_norm": ‖S₁‖}``),
      or a single (n,) array.

    **Returns:** a dict name -> :class:`SlopeFit` (a single :class:`SlopeFit` for an array).
    """
    if isinstance(values, Mapping):
        return {name: loglog_slope(ranks, v, ci=ci) for name, v in values.items()}
    return loglog_slope(ranks, values, ci=ci)


_RULE_EXPONENT = {"lora": -1.0, "rslora": -0.5, "lora-alpha": -0.5, "fixed": 0.0}


def predicted_first_step_slopes(optimizer: str, rule: str) -> dict[str, float]:
    """Predicted log-log slopes in r of π₁ and ‖S₁‖ at fixed α (or c, s) and η (THEORY §5).

    With ``s ∝ r^e`` (``lora`` e = −1, ``rslora``/``lora-alpha`` e = −½, ``fixed`` e = 0):
    SGD ``π₁ ∝ s² r`` → 2e + 1, ``‖S₁‖ ∝ s² √r`` → 2e + ½;
    Adam/AdamW (step 1 is sign descent; ε → 0, no weight decay) ``π₁ ∝ s r`` → e + 1,
    ``‖S₁‖ ∝ s √r`` → e + ½.

    **Returns:** ``{"progress": ..., "update_norm": ...}``.

    Example::

        >>> predicted_first_step_slopes("adam", "rslora")
        {'progress': 0.5, 'update_norm': 0.0}
    """
    if rule not in _RULE_EXPONENT:
        raise ValueError(f"rule: must be one of {', '.join(_RULE_EXPONENT)}, got {rule!r}")
    e = _RULE_EXPONENT[rule]
    if optimizer == "sgd":
        return {"progress": 2 * e + 1.0, "update_norm": 2 * e + 0.5}
    if optimizer in ("adam", "adamw"):
        return {"progress": e + 1.0, "update_norm": e + 0.5}
    raise ValueError(f"optimizer: must be one of sgd, adam, adamw, got {optimizer!r}")


def bracket_position(gamma: float, lo: float, hi: float, *,
                     ci: tuple[float, float] | None = None) -> str:
    """Where a measured exponent γ falls against a bracket [lo, hi] (THEORY §5), as text.

    The brackets THEORY §5 derives are :func:`first_step_brackets` (Adam [0, ½], SGD
    [½, ¾]). The relative position is ``f = (γ − lo)/(hi − lo)`` (0 at ``lo``, 1 at ``hi``).
    With ``ci = (γ_lo, γ_hi)`` the text also says which ends the CI contains.

    Example::

        >>> bracket_position(0.62, 0.5, 0.75)
        'γ = 0.62 lies inside [0.5, 0.75], 48% of the way from 0.5 to 0.75'
    """
    g, lo, hi = float(gamma), float(lo), float(hi)
    if not hi > lo:
        raise ValueError(f"lo, hi: need lo < hi, got {lo!r}, {hi!r}")
    if not np.isfinite(g):
        return f"γ = {g:g} is not finite"
    f = (g - lo) / (hi - lo)
    if f < 0:
        where = f"lies below [{lo:g}, {hi:g}], by {lo - g:.3g}"
    elif f > 1:
        where = f"lies above [{lo:g}, {hi:g}], by {g - hi:.3g}"
    else:
        where = f"lies inside [{lo:g}, {hi:g}], {100 * f:.0f}% of the way from {lo:g} to {hi:g}"
    text = f"γ = {g:.3g} {where}"
    if ci is not None:
        clo, chi = float(ci[0]), float(ci[1])
        inside = [f"{b:g}" for b in (lo, hi) if clo <= b <= chi]
        if inside:
            text += f"; the CI [{clo:.3g}, {chi:.3g}] contains {' and '.join(inside)}"
        else:
            text += f"; the CI [{clo:.3g}, {chi:.3g}] excludes both {lo:g} and {hi:g}"
    return text


# ---------------------------------------------------------------------------- statistics
def t_interval(a, axis: int = -1, *, ci: float = 0.95):
    """Mean and Student-t confidence interval over ``axis`` (non-finite values dropped).

    ``mean ± t_{(1+ci)/2, n−1}·sd/√n`` with the sample sd (ddof 1); n < 2 gives NaN bounds.
    With 2–4 seeds t is 12.7–3.2, not the normal 1.96. t by :func:`_t_quantile`
    (``scipy.special.stdtrit``, as ``scipy.stats.t.ppf``).

    **Returns:** ``(mean, lo, hi, n)`` arrays (reduced over ``axis``).

    Example::

        >>> m, lo, hi, n = t_interval([1.0, 2.0, 3.0])
        >>> round(float(hi - m), 4)  # t_{0.975, 2} · 1/√3
        2.4841
    """
    ci = _check_ci(ci)
    a = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(a)
    n = ok.sum(axis=axis)
    x = np.where(ok, a, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = x.sum(axis=axis) / n
        dev = np.where(ok, a - np.expand_dims(mean, axis), 0.0)
        sd = np.sqrt((dev**2).sum(axis=axis) / (n - 1))
        t = _t_quantile(0.5 + ci / 2.0, np.maximum(n - 1, 1))
        half = np.where(n >= 2, t * sd / np.sqrt(n), np.nan)
    mean = np.where(n >= 1, mean, np.nan)
    return mean, mean - half, mean + half, n


def log_t_interval(a, axis: int = -1, *, ci: float = 0.95):
    """Geometric mean and Student-t interval of positive values, computed on log values.

    For losses spread over decades (seeds of one setting differ by factors), the interval
    ``exp(mean log ± t·sd(log)/√n)``; non-finite and non-positive values are dropped.

    **Returns:** ``(gmean, lo, hi, n)``.
    """
    a = np.asarray(a, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        la = np.where(np.isfinite(a) & (a > 0), np.log(np.where(a > 0, a, 1.0)), np.nan)
    m, lo, hi, n = t_interval(la, axis, ci=ci)
    return np.exp(m), np.exp(lo), np.exp(hi), n


def aggregate_seeds(loss, axis: int = -1, *, how: str = "logmean") -> np.ndarray:
    """Aggregate final losses over seeds in log space: returns the aggregated **log** loss.

    - ``"logmean"``: mean over seeds of log L (log of the geometric mean); +inf where any
      seed diverged (non-finite), so a diverged seed makes the cell diverged, and a finite
      outlier seed moves the result only by its log.
    - ``"median"``: median over seeds of log L (+inf counts as the largest value, so the cell
      is +inf only when at least half of the seeds diverged).
    - ``"mean"``: log of the arithmetic mean (+inf where any seed diverged); kept for
      comparison: one large seed dominates it.
    """
    L = _as_losses(loss)
    with np.errstate(divide="ignore"):
        logL = np.log(np.maximum(L, 0.0))
    if how == "logmean":
        return logL.mean(axis=axis)
    if how == "median":
        return np.median(logL, axis=axis)
    if how == "mean":
        with np.errstate(divide="ignore"):
            return np.log(L.mean(axis=axis))
    raise ValueError(f"how: must be one of logmean, median, mean, got {how!r}")


def first_step_brackets(optimizer: str) -> tuple[float, float]:
    """THEORY §5's brackets for γ in ``α*(r) ∝ r^γ`` (rule ``lora``, s = α/r), derived.

    With α ∝ r^γ, s ∝ r^(γ−1). First-step progress and update norm scale as
    (:func:`predicted_first_step_slopes` with s ∝ r^e): SGD ``π₁ ∝ r^(2e+1)``,
    ``‖S₁‖ ∝ r^(2e+½)``; Adam ``π₁ ∝ r^(e+1)``, ``‖S₁‖ ∝ r^(e+½)``. Setting each exponent to
    0 with e = γ − 1: SGD γ = ½ (progress-stable) and ¾ (magnitude-stable); Adam γ = 0 and ½.

    **Returns:** ``(lo, hi)``: Adam/AdamW (0, 0.5), SGD (0.5, 0.75).
    """
    if optimizer == "sgd":
        a_p, b_p, a_n, b_n = 2.0, 1.0, 2.0, 0.5  # π₁: 2e + 1; ‖S₁‖: 2e + ½
    elif optimizer in ("adam", "adamw"):
        a_p, b_p, a_n, b_n = 1.0, 1.0, 1.0, 0.5  # π₁: e + 1; ‖S₁‖: e + ½
    else:
        raise ValueError(f"optimizer: must be one of sgd, adam, adamw, got {optimizer!r}")
    # a·(γ − 1) + b = 0  ⇒  γ = 1 − b/a
    g = sorted((1.0 - b_p / a_p, 1.0 - b_n / a_n))
    return float(g[0]), float(g[1])


@dataclass(frozen=True)
class RankLawFit:
    """The rank law ``α*(r) = c·r^γ`` fitted over ranks, with its lack of fit (THEORY §6 P6).

    Attributes:
        gamma, gamma_lo, gamma_hi: γ and its t-based CI from the rank-level residuals
            (OLS of log α* on log r, t with n − 2 degrees of freedom): the residuals hold
            both the noise of each α* and the misfit of the power law, so the CI widens
            when the law does not fit.
        c, c_lo, c_hi: prefactor and its CI (same regression).
        n: number of ranks used; df: n − 2.
        resid_sd: residual sd of log α* about the law.
        lack_of_fit_chi2, lack_of_fit_df, lack_of_fit_p: χ² test of the law against the
            pure error of each α*: ``X² = Σ_j e_j²/v_j`` with e_j the residuals of the
            weighted fit (weights 1/v_j) and v_j the variance of log α*_j (from a bootstrap
            over seeds, floored at the grid's quantisation variance); ``X² ~ χ²_{n−2}``
            under the law. Small p: the power law does not fit within the seed noise.
            NaN without variances.
        curvature, curvature_lo, curvature_hi, curvature_p: the coefficient q of
            ``log α* = a + γ·u + q·u²`` (u = log r centred), with its t CI and two-sided p
            (n − 3 df; NaN for n < 4). q ≠ 0: the exponent drifts with r.
        local: local exponents between neighbouring ranks.
        method: text naming the method.
        ci: confidence level.
    """

    gamma: float
    gamma_lo: float
    gamma_hi: float
    c: float
    c_lo: float
    c_hi: float
    n: int
    df: int
    resid_sd: float
    lack_of_fit_chi2: float
    lack_of_fit_df: int
    lack_of_fit_p: float
    curvature: float
    curvature_lo: float
    curvature_hi: float
    curvature_p: float
    local: tuple
    method: str
    ci: float


def fit_rank_law(ranks, alpha_star, *, var_log=None, min_var: float = 0.0,
                 ci: float = 0.95) -> RankLawFit:
    """Fit ``α*(r) = c·r^γ`` with a CI that includes the law's misfit, a lack-of-fit test and
    a curvature test (THEORY §6, P6).

    **Arguments:**
    - `ranks`, `alpha_star`: (n,) ranks and α* (non-finite or non-positive α* dropped).
    - `var_log`: (n,) variance of each log α* from seed noise (e.g. a bootstrap over seeds);
      enables the χ² lack-of-fit test. ``min_var`` floors it and the residual variance of
      the t CI (the α grid's quantisation variance (Δ log α)²/12: α* is not resolved below
      the grid, so a law through grid points has zero residuals but not zero uncertainty).
    - `ci`: confidence level.

    t quantiles by :func:`_t_quantile` (``scipy.special.stdtrit``); the tail probabilities by
    ``scipy.special.stdtr(df, −x)`` and ``chdtrc(df, x)``, what ``scipy.stats.t.sf(x, df)``
    and ``chi2.sf(x, df)`` evaluate.

    **Returns:** a :class:`RankLawFit`. Raises ``ValueError`` with fewer than 2 ranks.

    Example::

        >>> f = fit_rank_law([1, 4, 16], [3.0, 6.0, 12.0])
        >>> round(f.gamma, 12), round(f.c, 12)
        (0.5, 3.0)
    """
    from scipy.special import chdtrc, stdtr

    ci = _check_ci(ci)
    r = np.asarray(ranks, dtype=np.float64)
    a = np.asarray(alpha_star, dtype=np.float64)
    ok = np.isfinite(r) & np.isfinite(a) & (r > 0) & (a > 0)
    if var_log is not None:
        v = np.asarray(var_log, dtype=np.float64)
        ok &= np.isfinite(v)
    u, y = np.log(r[ok]), np.log(a[ok])
    n = u.size
    if n < 2 or np.unique(u).size < 2:
        raise ValueError(f"need at least 2 ranks with a finite α*, got {n}")
    gamma, logc, se_g, se_c = _ols(u, y)
    q = 0.5 + ci / 2.0
    if n > 2:
        resid_sd = float(np.sqrt(np.sum((y - logc - gamma * u) ** 2) / (n - 2)))
        if resid_sd**2 < min_var:
            # α* on a grid is resolved no better than the grid's quantisation: a law through
            # grid values (e.g. every α* the largest stable grid point) has zero residuals
            # but not zero uncertainty.
            f = math.sqrt(min_var) / max(resid_sd, 1e-300)
            se_g, se_c = (se_g * f, se_c * f) if resid_sd > 0 else _ols_se(u, min_var)
        t = float(_t_quantile(q, n - 2))
        glo, ghi = gamma - t * se_g, gamma + t * se_g
        clo, chi = float(np.exp(logc - t * se_c)), float(np.exp(logc + t * se_c))
    else:
        glo = ghi = clo = chi = resid_sd = float("nan")
    # χ² lack of fit against the pure (seed) error of each log α*.
    chi2 = pval = float("nan")
    if var_log is not None and n > 2:
        w = 1.0 / np.maximum(v[ok], max(float(min_var), 1e-300))
        X = np.column_stack([np.ones(n), u])
        beta = np.linalg.solve(X.T @ (X * w[:, None]), X.T @ (w * y))
        e = y - X @ beta
        chi2 = float(np.sum(w * e**2))
        pval = float(chdtrc(n - 2, chi2))
    # Curvature: a quadratic term in centred log r.
    qc = qlo = qhi = qp = float("nan")
    if n >= 4:
        uc = u - u.mean()
        X = np.column_stack([np.ones(n), uc, uc**2])
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        res = y - X @ coef
        s2 = float(res @ res) / (n - 3)
        cov = s2 * np.linalg.inv(X.T @ X)
        qc = float(coef[2])
        se_q = float(np.sqrt(cov[2, 2]))
        tq = float(_t_quantile(q, n - 3))
        qlo, qhi = qc - tq * se_q, qc + tq * se_q
        qp = float(2 * stdtr(n - 3, -(abs(qc) / se_q))) if se_q > 0 else 0.0
    order = np.argsort(u)
    uu, yy = u[order], y[order]
    local = tuple(float((yy[i + 1] - yy[i]) / (uu[i + 1] - uu[i])) for i in range(n - 1))
    return RankLawFit(
        gamma=float(gamma), gamma_lo=float(glo), gamma_hi=float(ghi), c=float(np.exp(logc)),
        c_lo=clo, c_hi=chi, n=int(n), df=int(n - 2), resid_sd=resid_sd,
        lack_of_fit_chi2=chi2, lack_of_fit_df=int(n - 2), lack_of_fit_p=pval,
        curvature=qc, curvature_lo=float(qlo), curvature_hi=float(qhi), curvature_p=qp,
        local=local,
        method=(f"OLS of log α* on log r over {n} ranks; {100 * ci:.0f}% CI from Student-t "
                f"({n - 2} df) with rank-level residuals (includes the power law's misfit; "
                f"residual variance floored at the α grid's quantisation variance)"),
        ci=ci)
