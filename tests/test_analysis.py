"""Tests of the sweep analysis functions (signaldrift._analysis): planted answers recovered."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from signaldrift._analysis import (
    aggregate_seeds,
    alpha_star_resamples,
    bracket_position,
    first_step_brackets,
    fit_rank_law,
    log_t_interval,
    t_interval,
    divergence_threshold,
    first_step_slopes,
    fit_power_law,
    loglog_slope,
    optimal_alpha,
    optimisation_gap,
    predicted_first_step_slopes,
)


@pytest.fixture
def rng():
    return np.random.default_rng(20261123)


# ---------------------------------------------------------------------------- slopes
def test_loglog_slope_exact_power_law():
    # y = 2·x^1.5 exactly: slope 1.5, intercept log 2 (hand-worked), zero residuals.
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    fit = loglog_slope(x, 2.0 * x**1.5)
    assert fit.slope == pytest.approx(1.5, rel=1e-12)
    assert fit.intercept == pytest.approx(np.log(2.0), rel=1e-12)
    assert fit.hi - fit.lo == pytest.approx(0.0, abs=1e-10)
    slope, lo, hi = fit  # unpacks as a triple
    assert lo <= slope <= hi


def test_loglog_slope_matches_scipy_linregress(rng):
    # Expected slope and standard error computed with scipy.stats.linregress on log data.
    x = np.geomspace(1, 100, 9)
    y = 0.7 * x**-0.8 * np.exp(0.1 * rng.standard_normal(x.size))
    ref = stats.linregress(np.log(x), np.log(y))
    fit = loglog_slope(x, y, ci=0.9)
    assert fit.slope == pytest.approx(ref.slope, rel=1e-12)
    assert fit.stderr == pytest.approx(ref.stderr, rel=1e-10)
    t = stats.t.ppf(0.95, x.size - 2)
    assert fit.lo == pytest.approx(ref.slope - t * ref.stderr, rel=1e-10)
    assert fit.hi == pytest.approx(ref.slope + t * ref.stderr, rel=1e-10)


def test_loglog_slope_ci_coverage(rng):
    # The t-interval must cover the planted slope in about 95% of replicates; with 400
    # replicates the binomial standard deviation is ~1.1%, so [0.91, 0.99] is > 3 sd wide.
    x = np.geomspace(1, 64, 6)
    hits = 0
    for _ in range(400):
        y = 3.0 * x**0.5 * np.exp(0.2 * rng.standard_normal(x.size))
        fit = loglog_slope(x, y)
        hits += fit.lo <= 0.5 <= fit.hi
    assert 0.91 <= hits / 400 <= 0.99


def test_loglog_slope_drops_diverged_points():
    # NaN / inf / zero values (diverged runs, ρ at step 0) are dropped, not fitted.
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    y = x**-1.0
    y_bad = y.copy()
    y_bad[[1, 4]] = [np.nan, np.inf]
    fit = loglog_slope(x, y_bad)
    assert fit.n == 4
    assert fit.slope == pytest.approx(-1.0, rel=1e-12)


def test_loglog_slope_needs_two_points():
    with pytest.raises(ValueError, match="at least 2 usable points"):
        loglog_slope([1.0, 2.0, 3.0], [1.0, np.nan, np.inf])


# ---------------------------------------------------------------------------- power law
def test_fit_power_law_planted_t_based(rng):
    # Planted y = 3·x^0.5 with 5% multiplicative noise (seeded): CIs cover γ = 0.5, c = 3.
    x = np.geomspace(1, 256, 9)
    y = 3.0 * x**0.5 * np.exp(0.05 * rng.standard_normal(x.size))
    fit = fit_power_law(x, y)
    assert fit.method == "t"
    assert fit.gamma_lo <= 0.5 <= fit.gamma_hi
    assert fit.c_lo <= 3.0 <= fit.c_hi
    assert fit.gamma_lo <= fit.gamma <= fit.gamma_hi
    # Standard error of γ is 0.05/sqrt(Σ(u−ū)²) ≈ 0.0124 here; 4 sd is a safe bound.
    assert abs(fit.gamma - 0.5) < 0.05
    assert fit(4.0) == pytest.approx(fit.c * 2.0 ** (2 * fit.gamma), rel=1e-12)


def test_fit_power_law_planted_bootstrap_over_seeds(rng):
    # Per-seed values (8 seeds, a per-seed offset and per-point noise): bootstrap over seeds.
    x = np.geomspace(1, 64, 7)
    offs = 0.1 * rng.standard_normal(8)
    offs -= offs.mean()  # centred: c = 3 holds for these 8 seeds, not only in expectation
    y = 3.0 * x[:, None] ** 0.5 * np.exp(offs[None, :] + 0.05 * rng.standard_normal((7, 8)))
    fit = fit_power_law(x, y, n_boot=500, seed=1)
    assert fit.method == "bootstrap" and fit.n_groups == 8 and fit.n == 56
    assert fit.gamma_lo <= 0.5 <= fit.gamma_hi
    assert fit.c_lo <= 3.0 <= fit.c_hi
    # Same data given as 1-D y with explicit group labels: the same resamples, same CI.
    xx = np.repeat(x, 8)
    g = np.tile(np.arange(8), 7)
    fit2 = fit_power_law(xx, y.ravel(), groups=g, n_boot=500, seed=1)
    assert (fit2.gamma, fit2.gamma_lo, fit2.gamma_hi) == pytest.approx(
        (fit.gamma, fit.gamma_lo, fit.gamma_hi), rel=1e-12)


def test_fit_power_law_exact():
    # Hand-worked: (1, 3), (4, 6), (16, 12) lie on 3·x^0.5.
    fit = fit_power_law([1, 4, 16], [3, 6, 12])
    assert fit.gamma == pytest.approx(0.5, rel=1e-12)
    assert fit.c == pytest.approx(3.0, rel=1e-12)


# ---------------------------------------------------------------------------- α*
ALPHA0 = 7.3  # planted minimiser, deliberately between grid points


def _parabola_losses(alphas, rng, n_seeds=6, noise=0.0):
    # log L is a parabola in log α plus a per-seed offset (no effect on α*): the seeds'
    # geometric mean (optimal_alpha's default aggregation) is exactly a parabola in log L.
    u = np.log(alphas)[:, None]
    offs = 0.05 * rng.standard_normal(n_seeds)[None, :]
    return np.exp(1.0 + (u - np.log(ALPHA0)) ** 2 + offs + noise * rng.standard_normal(
        (alphas.size, n_seeds)))


def test_optimal_alpha_planted_parabola(rng):
    # The seeds' mean log loss is exactly a parabola in log α, so the refinement (fitted to
    # log L) is exact (to rounding); the brief's requirement is 1%.
    alphas = np.geomspace(0.5, 512, 11)
    res = optimal_alpha(alphas, _parabola_losses(alphas, rng), seed_axis=1, n_boot=300)
    assert res.alpha_star == pytest.approx(ALPHA0, rel=1e-9)
    assert not res.at_edge and res.refined
    assert res.n_seeds == 6
    assert alphas[res.index] == pytest.approx(8.0, rel=1e-12)  # nearest grid point (log)


def test_optimal_alpha_noisy_with_bootstrap_ci(rng):
    alphas = np.geomspace(0.5, 512, 11)
    L = _parabola_losses(alphas, rng, n_seeds=10, noise=0.01)
    res = optimal_alpha(alphas, L, seed_axis=-1, n_boot=500, seed=3)
    assert res.alpha_star == pytest.approx(ALPHA0, rel=0.01)
    assert res.lo <= ALPHA0 <= res.hi
    assert res.edge_fraction == 0.0
    # Seeds along axis 0 give the same answer.
    res_t = optimal_alpha(alphas, L.T, seed_axis=0, n_boot=500, seed=3)
    assert (res_t.alpha_star, res_t.lo, res_t.hi) == (res.alpha_star, res.lo, res.hi)


def test_optimal_alpha_order_invariant(rng):
    alphas = np.geomspace(0.5, 512, 11)
    L = _parabola_losses(alphas, rng)
    perm = rng.permutation(alphas.size)
    a = optimal_alpha(alphas, L, n_boot=0)
    b = optimal_alpha(alphas[perm], L[perm], n_boot=0)
    assert b.alpha_star == pytest.approx(a.alpha_star, rel=1e-12)
    assert alphas[perm][b.index] == alphas[a.index]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # log of a negative mean ("mean")
@pytest.mark.parametrize("how", ["logmean", "median", "mean"])
@pytest.mark.parametrize("case", range(16))
def test_alpha_star_resamples_is_optimal_alpha_per_resample_bit_for_bit(case, how):
    # Reference: one optimal_alpha(n_boot=0) per resample (what F6's rank law looped over).
    # Unsorted grids, seeds on either axis, diverged (inf/NaN) cells, minima at an edge or
    # next to a diverged α, and every α diverged: the same bits, not merely close values.
    r = np.random.default_rng(case)
    n_a, S = int(r.integers(2, 16)), 1 + case % 13  # from 8 seeds numpy sums pairwise
    alphas = r.permutation(np.geomspace(0.5, 0.5 * 2.0 ** (n_a - 1), n_a))
    L = np.exp(r.normal(size=(n_a, S)) + 0.3 * np.log(alphas)[:, None] ** 2
               - r.uniform(-2, 2) * np.log(alphas)[:, None])
    if case % 3 == 1:
        L[r.random(L.shape) < 0.2] = r.choice([np.inf, np.nan, -1.0])
    if case == 11:
        L[:] = np.inf  # every α diverged: NaN
    picks = r.integers(0, S, size=(200, S))
    ref = np.array([optimal_alpha(alphas, L[:, p], seed_axis=1, n_boot=0,
                                  aggregate=how).alpha_star for p in picks])
    axis, data = (0, L.T) if case % 2 else (1, L)
    got = alpha_star_resamples(alphas, data, picks, seed_axis=axis, aggregate=how)
    np.testing.assert_array_equal(got.view(np.int64), ref.view(np.int64))
    assert alpha_star_resamples(alphas, L, picks[:0], seed_axis=1).shape == (0,)


def test_optimal_alpha_at_edge(rng):
    # Planted minimum at 7.3 but the grid stops at 4: α* is the edge value, flagged.
    alphas = np.array([0.5, 1.0, 2.0, 4.0])
    res = optimal_alpha(alphas, _parabola_losses(alphas, rng), n_boot=100)
    assert res.at_edge and not res.refined
    assert res.alpha_star == pytest.approx(4.0, rel=1e-12)
    assert res.edge_fraction == 1.0


def test_optimal_alpha_diverged_is_never_the_minimum(rng):
    alphas = np.geomspace(0.5, 512, 11)
    L = _parabola_losses(alphas, rng)
    i8 = int(np.argmin(np.abs(alphas - 8.0)))
    L[i8, 2] = np.nan  # one seed diverged at the best α: that α's mean is +inf
    res = optimal_alpha(alphas, L, n_boot=0)
    assert res.index != i8
    assert not res.refined  # its neighbour (the diverged α) has no finite loss
    assert res.alpha_star == pytest.approx(alphas[res.index], rel=1e-12)
    assert np.isinf(res.mean_loss[i8])
    every = optimal_alpha(alphas, np.full((11, 3), np.inf), n_boot=0)
    assert np.isnan(every.alpha_star) and every.index == -1


# ---------------------------------------------------------------------------- gap
def test_optimisation_gap_planted():
    # log L(lr, α) = (log lr − log 0.02)² + 0.1·(log α − log 8)²: at any α the best lr is
    # 0.02 (log L exactly a parabola in log lr, which the refinement fits); the grid minimum
    # is the brute-force numpy minimum.
    lrs = np.geomspace(1e-3, 1.0, 13)
    alphas = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    L = np.exp((np.log(lrs)[:, None] - np.log(0.02)) ** 2 + 0.1 * (np.log(alphas)[None, :]
                                                                   - np.log(8.0)) ** 2)
    lr_std = lrs[2]
    gap = optimisation_gap(lrs, alphas, L, lr_std=lr_std, alpha_std=16.0)
    assert gap.best_lr == pytest.approx(0.02, rel=1e-9)
    assert gap.lr_ratio == pytest.approx(0.02 / lr_std, rel=1e-9)
    assert gap.loss_std == L[2, 4]
    assert gap.loss_min == L.min()
    assert gap.loss_gap == pytest.approx(L[2, 4] - L.min(), rel=1e-12)
    ia, ja = np.unravel_index(np.argmin(L), L.shape)
    assert (gap.argmin_lr, gap.argmin_alpha) == (lrs[ia], alphas[ja])
    assert gap.argmin_alpha == 8.0 and not gap.argmin_at_edge
    with pytest.raises(ValueError, match="not a grid value"):
        optimisation_gap(lrs, alphas, L, lr_std=0.0123, alpha_std=16.0)


def test_optimisation_gap_diverged_standard_run():
    lrs = np.array([0.1, 0.2, 0.4])
    alphas = np.array([1.0, 2.0])
    L = np.array([[3.0, 2.0], [1.0, 1.5], [np.nan, np.nan]])
    gap = optimisation_gap(lrs, alphas, L, lr_std=0.4, alpha_std=2.0)
    assert np.isinf(gap.loss_gap) and gap.loss_min == 1.0


# ---------------------------------------------------------------------------- divergence
def test_divergence_threshold_planted():
    lrs = np.geomspace(1e-3, 1.0, 16)
    thr = 0.037  # planted
    res = divergence_threshold(lrs, lrs > thr)
    assert res.lr_converged < thr < res.lr_diverged
    assert res.monotone
    # Adjacent grid points, and the geometric midpoint between them.
    ratio = lrs[1] / lrs[0]
    assert res.lr_diverged / res.lr_converged == pytest.approx(ratio, rel=1e-12)
    assert res.estimate == pytest.approx(np.sqrt(res.lr_converged * res.lr_diverged))


def test_divergence_threshold_edge_cases():
    lrs = [0.1, 0.2, 0.4, 0.8]
    non = divergence_threshold(lrs, [False, True, False, True])
    assert not non.monotone and non.lr_diverged == 0.2 and non.lr_converged == 0.1
    none = divergence_threshold(lrs, [0, 0, 0, 0])
    assert np.isnan(none.lr_diverged) and none.lr_converged == 0.8
    every = divergence_threshold(lrs, [1, 1, 1, 1])
    assert np.isnan(every.lr_converged) and every.lr_diverged == 0.1
    assert np.isnan(every.estimate)


# ---------------------------------------------------------------------------- §5 table
@pytest.mark.parametrize(
    "optimizer, rule, expected",
    [  # hand-derived from THEORY §5 with s ∝ r^e (lora e=-1, rslora/lora-alpha -1/2)
        ("sgd", "lora", {"progress": -1.0, "update_norm": -1.5}),
        ("sgd", "rslora", {"progress": 0.0, "update_norm": -0.5}),
        ("adam", "lora", {"progress": 0.0, "update_norm": -0.5}),
        ("adam", "lora-alpha", {"progress": 0.5, "update_norm": 0.0}),
        ("adamw", "fixed", {"progress": 1.0, "update_norm": 0.5}),
    ],
)
def test_predicted_first_step_slopes(optimizer, rule, expected):
    assert predicted_first_step_slopes(optimizer, rule) == expected


def test_first_step_slopes_mapping_and_array():
    r = np.array([1, 2, 4, 8, 16])
    out = first_step_slopes(r, {"progress": 5.0 * r**0.5, "update_norm": r**-0.5})
    assert out["progress"].slope == pytest.approx(0.5, rel=1e-12)
    assert out["update_norm"].slope == pytest.approx(-0.5, rel=1e-12)
    assert first_step_slopes(r, r**2.0).slope == pytest.approx(2.0, rel=1e-12)


def test_bracket_position_text():
    assert (bracket_position(0.62, 0.5, 1.0)
            == "γ = 0.62 lies inside [0.5, 1], 24% of the way from 0.5 to 1")
    assert "below [0.5, 0.75]" in bracket_position(0.2, 0.5, 0.75)
    assert "above [0, 0.5]" in bracket_position(0.9, 0.0, 0.5)
    assert "contains 0.5" in bracket_position(0.55, 0.5, 0.75, ci=(0.45, 0.7))
    assert "excludes both" in bracket_position(0.85, 0.5, 0.75, ci=(0.8, 0.9))
    with pytest.raises(TypeError):  # no default bracket: [½, 1] is not derived anywhere
        bracket_position(0.62)


def test_first_step_brackets_are_theory_section_5():
    # THEORY §5: Adam [0, ½] (α constant = progress-stable, α ∝ √r = magnitude-stable),
    # SGD [½, ¾] (rsLoRA = progress-stable, s ∝ r^(−1/4) = magnitude-stable); γ = 1 is in
    # neither. Derived in first_step_brackets from the exponents of the §5 table.
    assert first_step_brackets("adam") == (0.0, 0.5)
    assert first_step_brackets("adamw") == (0.0, 0.5)
    assert first_step_brackets("sgd") == (0.5, 0.75)
    # Consistency with the §5 table: at α ∝ r^γ (s = α/r ∝ r^(γ−1)) the progress exponent
    # of predicted_first_step_slopes is 0 at the lower end, the norm exponent at the upper.
    for opt in ("sgd", "adam"):
        lo, hi = first_step_brackets(opt)
        a = 2.0 if opt == "sgd" else 1.0
        prog0 = predicted_first_step_slopes(opt, "fixed")["progress"]  # exponent at s ∝ r⁰
        norm0 = predicted_first_step_slopes(opt, "fixed")["update_norm"]
        assert prog0 + a * (lo - 1.0) == pytest.approx(0.0)
        assert norm0 + a * (hi - 1.0) == pytest.approx(0.0)


# ---------------------------------------------------------------------------- statistics
def test_t_interval_matches_scipy_student_t(rng):
    # Expected: scipy.stats.t.interval with the standard error of the mean.
    x = rng.normal(2.0, 0.5, size=(3, 4))
    m, lo, hi, n = t_interval(x, axis=1)
    for i in range(3):
        ref = stats.t.interval(0.95, 3, loc=x[i].mean(), scale=stats.sem(x[i]))
        assert (lo[i], hi[i]) == pytest.approx(ref, rel=1e-12)
    assert (n == 4).all()
    # Two seeds: t_{0.975, 1} = 12.71, not 1.96 (the old normal interval was 6.5× too narrow).
    m, lo, hi, _ = t_interval([1.0, 2.0])
    assert hi - m == pytest.approx(12.7062 * 0.5, rel=1e-4)
    # Non-finite values are dropped; one value gives NaN bounds.
    m, lo, hi, n = t_interval([1.0, np.nan, np.inf])
    assert m == 1.0 and np.isnan(lo) and n == 1


def test_log_t_interval_is_geometric():
    m, lo, hi, n = log_t_interval([1e-4, 1e-2, np.inf])
    assert m == pytest.approx(1e-3, rel=1e-12) and n == 2
    assert lo < 1e-4 and hi > 1e-2


def test_aggregate_seeds_resists_one_bad_seed():
    L = np.array([[1e-3, 1.1e-3, 1e-3, 50.0]])  # one seed 5·10⁴× worse (finite)
    assert np.exp(aggregate_seeds(L, how="mean"))[0] > 10  # the arithmetic mean is dominated
    assert np.exp(aggregate_seeds(L, how="logmean"))[0] < 0.02
    # median of 4 log values: the mean of the middle two, i.e. √(1e-3 · 1.1e-3)
    assert np.exp(aggregate_seeds(L, how="median"))[0] == pytest.approx(np.sqrt(1.1e-6))
    D = np.array([[1e-3, np.inf, 1e-3]])  # a diverged seed: cell diverged under logmean
    assert np.isinf(aggregate_seeds(D, how="logmean")[0])
    assert np.isfinite(aggregate_seeds(D, how="median")[0])
    with pytest.raises(ValueError):
        aggregate_seeds(L, how="max")


# ---------------------------------------------------------------------------- rank law
def test_fit_rank_law_exact_and_t_ci_against_statsmodels_formula(rng):
    r = np.array([4.0, 8, 16, 32, 64])
    y = 2.0 * r**0.6 * np.exp(0.05 * rng.standard_normal(5))
    f = fit_rank_law(r, y)
    ref = stats.linregress(np.log(r), np.log(y))  # expected slope and se: scipy
    t = stats.t.ppf(0.975, 3)
    assert f.gamma == pytest.approx(ref.slope, rel=1e-12)
    assert (f.gamma_lo, f.gamma_hi) == pytest.approx(
        (ref.slope - t * ref.stderr, ref.slope + t * ref.stderr), rel=1e-10)
    assert "Student-t" in f.method and f.df == 3


def test_fit_rank_law_lack_of_fit_detects_a_bent_law():
    # Planted: log α* = 1 + 1.4u − 0.25u² over r = 8…128 (local exponents fall from ~1.1 to
    # ~0.4, like the project's F6), with seed noise sd 0.03 on each log α*. A power law
    # cannot fit: χ² p tiny, curvature q < 0 with a CI excluding 0.
    r = np.array([8.0, 16, 32, 64, 128])
    u = np.log(r) - np.log(r).mean()
    bent = np.exp(1.0 + 0.9 * u - 0.25 * u**2)
    f = fit_rank_law(r, bent, var_log=np.full(5, 0.03**2))
    assert f.lack_of_fit_p < 1e-6
    assert f.curvature == pytest.approx(-0.25, rel=1e-9)
    assert f.curvature_hi < 0
    # The t CI includes the misfit: it is wider than the seed-noise-only sd would give.
    assert f.gamma_hi - f.gamma_lo > 4 * 0.03 / np.sqrt(np.sum((u - u.mean()) ** 2))


def test_fit_rank_law_lack_of_fit_calibrated(rng):
    # A true power law with known noise: p-values uniform, so p < 0.05 in ≈5% of 400
    # replicates (binomial sd 1.1%: accept [0.02, 0.09]); curvature CI covers 0 in ≈95%.
    r = np.array([8.0, 16, 32, 64, 128])
    rej = cover = 0
    for _ in range(400):
        y = 3.0 * r**0.5 * np.exp(0.1 * rng.standard_normal(5))
        f = fit_rank_law(r, y, var_log=np.full(5, 0.01))
        rej += f.lack_of_fit_p < 0.05
        cover += f.curvature_lo <= 0 <= f.curvature_hi
    assert 0.02 <= rej / 400 <= 0.09
    assert 0.91 <= cover / 400 <= 0.99
