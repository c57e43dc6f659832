"""THEORY.md §6's exact predictions (P1, P3, P5) checked against the simulator.

Each test runs ``signaldrift.simulate`` on a small problem and compares with a closed form
derived on paper (THEORY §3–§5), with a stated tolerance that a wrong exponent, a wrong
factor of s or a wrong Hessian would exceed.
"""

from __future__ import annotations

import numpy as np
import pytest

import signaldrift as sd
from signaldrift._analysis import divergence_threshold, loglog_slope, predicted_first_step_slopes

# Σ's eigenbasis: the Hessian's spectrum does not depend on the feature basis, and here the
# closed form below needs no rotation (the random basis is checked in test_findings.py).
SMALL = dict(d=48, m=40, task_rank=4, spectrum=1.0, batch=0, basis="eigen")


# ----------------------------------------------------------------------------- P1
def closed_form_init_sharpness(task, s, A):
    """λ_max(H) at B = 0 (THEORY §4), computed here densely and independently:
    H = [[s²(AΣAᵀ) ⊗ I_m, s I_r ⊗ G], [s I_r ⊗ Gᵀ, 0]] with G = −Δ⋆Σ; on each pair
    (eigenvector of AΣAᵀ with value μ, singular pair of G with value g) it acts as
    [[s²μ, s g], [s g, 0]], whose top eigenvalue (s²μ + √(s⁴μ² + 4s²g²))/2 grows with μ and g.
    """
    Sigma = task.sigma_matrix()  # in the feature basis, like A and Δ⋆
    mu = np.linalg.eigvalsh(A @ Sigma @ A.T).max()
    g = np.linalg.svd(task.delta_star() @ Sigma, compute_uv=False).max()
    return 0.5 * (s**2 * mu + np.sqrt(s**4 * mu**2 + 4 * s**2 * g**2))


@pytest.mark.parametrize("rank, alpha", [(1, 16.0), (4, 1.0), (4, 16.0), (8, 64.0)])
def test_P1_sharpness_at_init_matches_closed_form(rank, alpha):
    cfg = sd.SimConfig(**SMALL, rank=rank, alpha=alpha, optimizer="sgd", lr=1e-3, steps=1,
                       sharpness_steps=(0,), seed=3)
    res = sd.simulate(cfg)
    expected = closed_form_init_sharpness(res.task, res.scale, res.A0)
    # rtol 1e-6: the measurement is an iterative eigen-solver on exact Hessian-vector
    # products; a missing factor of s, a dropped cross term or a wrong μ is off by > 1e-2.
    np.testing.assert_allclose(res.sharpness["lambda_max"][0], expected, rtol=1e-6)


def _divergence_bracket(base, pred, factors):
    lrs = [pred * f for f in factors]
    div = [sd.simulate(base.replace(lr=float(lr))).diverged for lr in lrs]
    return divergence_threshold(lrs, div)


def test_P1_full_finetuning_gd_diverges_at_two_over_lambda_max():
    # Full fine-tuning is a quadratic with Hessian Σ ⊗ I: GD diverges iff η > 2/λ_max(Σ),
    # exactly. ±5% around it: the top mode grows or shrinks by |1 − ηλ| ≈ 1.05 per step, enough
    # to cross the bound (10⁴ × the initial loss) or decay in 600 steps.
    base = sd.SimConfig(**SMALL, model="full", optimizer="sgd", steps=600,
                        record_every=600, divergence_bound=1e4)
    lam = sd.make_task(base).lam.max()
    th = _divergence_bracket(base, 2.0 / lam, [0.8, 0.95, 1.05, 1.25])
    assert th.lr_converged == pytest.approx(0.95 * 2.0 / lam)
    assert th.lr_diverged == pytest.approx(1.05 * 2.0 / lam)
    assert th.monotone


@pytest.mark.parametrize("rank, alpha", [(2, 16.0), (4, 16.0), (4, 64.0)])
def test_P1_lora_gd_divergence_lr_near_two_over_lambda_init(rank, alpha):
    # LoRA's loss is quartic in (A, B): 2/λ_max(H₀) is the stability threshold at
    # initialisation only. The sharpness moves during training: it grows at small s
    # (progressive sharpening, divergence somewhat below 2/λ₀) and GD can self-stabilise
    # above it (the catapult phase of two-layer linear models, up to about 4/λ₀).
    # Asserted: the measured bracket lies within [½, 2]·(2/λ₀) up to one grid step (quarter
    # octave) at the upper end; measured here: [1.68, 2.0], [1.19, 1.41], [1.68, 2.0].
    # A Hessian off by a factor s or s² (≥ 4 here) fails this.
    base = sd.SimConfig(**SMALL, rank=rank, alpha=alpha, optimizer="sgd", steps=200,
                        record_every=200)
    lam0 = sd.simulate(base.replace(steps=1, record_every=1, lr=1e-3,
                                    sharpness_steps=(0,))).sharpness["lambda_max"][0]
    pred = 2.0 / lam0
    factors = 2.0 ** np.arange(-1.5, 1.51, 0.25)
    th = _divergence_bracket(base, pred, factors)
    assert np.isfinite(th.lr_diverged) and np.isfinite(th.lr_converged)
    assert th.lr_converged / pred >= 0.5
    assert th.lr_diverged / pred <= 2.0 * 2**0.25 + 1e-9


# ----------------------------------------------------------------------------- P3
P3_BASE = dict(d=64, m=64, task_rank=4, spectrum=1.0, batch=0, rank=4, steps=3, record_every=1)
SEEDS = (0, 1)


def _step1(cfgs, name):
    """Seed-mean of record ``name`` at step 1 (ρ₀ = 0 because B₀ = 0 gives ΔA₀ = 0)."""
    out = []
    for c in cfgs:
        vals = []
        for seed in SEEDS:
            r = sd.simulate(c.replace(seed=seed))
            if name == "rhoB":
                v = r.records["drift_ratio"][1] / r.records["B_norm"][1]
            else:
                v = r.records[name][1]
            vals.append(v)
        out.append(np.mean(vals))
    return np.array(out)


def _sgd_lr_std():
    return 1.0 / sd.make_task(sd.SimConfig(**P3_BASE)).lam.max()


# Tolerance ±0.05 on log-log slopes: SGD runs keep η·s²·λ_max ≤ 0.01 and Adam runs keep
# η ≤ 5e-4 (A's entries are ~0.07) and gradients ≫ ε = 1e-8, so the next-order relative
# corrections are ≤ 1% over the range and move a slope by ≤ 0.01. Competing exponents differ
# by ≥ 0.5 (1 vs 2, 0 vs 1), so a wrong law fails.
TOL = 0.05


@pytest.mark.parametrize("quantity, exponent", [("drift_ratio", 2.0), ("rhoB", 1.0),
                                                ("signal_norm", 1.0)])
def test_P3_sgd_slopes_in_eta(quantity, exponent):
    # Along the trajectory from B₀ = 0: B₁ = −ηs G₀A₀ᵀ, so ρ₁ = (ηs)·‖B₁‖·c ∝ η²s² and
    # ρ₁/‖B₁‖ ∝ ηs (THEORY §3's given-state law, ρ ∝ η s); ‖S₁‖ ∝ η s².
    etas = _sgd_lr_std() * 2.0 ** np.arange(-12.0, -7.0)
    cfgs = [sd.SimConfig(**P3_BASE, optimizer="sgd", lr=float(e), alpha=16.0) for e in etas]
    slope = loglog_slope(etas, _step1(cfgs, quantity)).slope
    assert slope == pytest.approx(exponent, abs=TOL)


@pytest.mark.parametrize("quantity, exponent", [("drift_ratio", 2.0), ("rhoB", 1.0),
                                                ("signal_norm", 2.0)])
def test_P3_sgd_slopes_in_s(quantity, exponent):
    alphas = 2.0 ** np.arange(0.0, 7.0)  # s = α/4 from 1/4 to 16
    lr = _sgd_lr_std() * 2.0**-14
    cfgs = [sd.SimConfig(**P3_BASE, optimizer="sgd", lr=float(lr), alpha=float(a)) for a in alphas]
    slope = loglog_slope(alphas / 4.0, _step1(cfgs, quantity)).slope
    assert slope == pytest.approx(exponent, abs=TOL)


@pytest.mark.parametrize("quantity, exponent", [("drift_ratio", 1.0), ("signal_norm", 1.0)])
def test_P3_adam_slopes_in_eta(quantity, exponent):
    # Adam (ε → 0) is invariant to rescaling the gradient: its first steps have size O(η)
    # whatever s, so ρ₁ ∝ η s⁰ and ‖S₁‖ ∝ η s.
    etas = 1e-3 * 2.0 ** np.arange(-5.0, 0.0)
    cfgs = [sd.SimConfig(**P3_BASE, optimizer="adam", lr=float(e), alpha=16.0) for e in etas]
    slope = loglog_slope(etas, _step1(cfgs, quantity)).slope
    assert slope == pytest.approx(exponent, abs=TOL)


@pytest.mark.parametrize("quantity, exponent", [("drift_ratio", 0.0), ("signal_norm", 1.0)])
def test_P3_adam_slopes_in_s(quantity, exponent):
    alphas = 2.0 ** np.arange(0.0, 7.0)
    cfgs = [sd.SimConfig(**P3_BASE, optimizer="adam", lr=1e-4, alpha=float(a)) for a in alphas]
    slope = loglog_slope(alphas / 4.0, _step1(cfgs, quantity)).slope
    assert slope == pytest.approx(exponent, abs=TOL)


# ----------------------------------------------------------------------------- P5
P5_RANKS = np.array([1, 2, 4, 8, 16])
P5_SEEDS = range(24)


@pytest.fixture(scope="module")
def first_step():
    """Seed means of π₁ (``progress`` at t = 0) and ‖S₁‖ (``signal_norm`` at t = 0; D₀ = 0)
    for each optimiser and rule, on d = m = 512 ≫ r."""
    out = {}
    for opt, lr in (("sgd", 1e-3), ("adam", 1e-3)):
        for rule, kw in (("lora", {"alpha": 16.0}), ("rslora", {"alpha": 16.0}),
                         ("lora-alpha", {"coef": 64.0})):
            prog, sig = [], []
            for r in P5_RANKS:
                p, s = [], []
                for seed in P5_SEEDS:
                    res = sd.simulate(sd.SimConfig(d=512, m=512, task_rank=8, spectrum=1.0,
                                                   batch=0, rank=int(r), rule=rule, **kw,
                                                   optimizer=opt, lr=lr, steps=1, seed=seed))
                    p.append(res.records["progress"][0])
                    s.append(res.records["signal_norm"][0])
                prog.append(np.mean(p))
                sig.append(np.mean(s))
            out[(opt, rule)] = (np.array(prog), np.array(sig))
    return out


@pytest.mark.parametrize("opt", ["sgd", "adam"])
@pytest.mark.parametrize("rule", ["lora", "rslora", "lora-alpha"])
def test_P5_first_step_slopes_in_rank(first_step, opt, rule):
    # THEORY §5 table (signaldrift._analysis.predicted_first_step_slopes): e.g. SGD lora
    # π₁ ∝ s²r ∝ r⁻¹, rslora r⁰; Adam lora π₁ ∝ s r ∝ r⁰, ‖S₁‖ ∝ s√r ∝ r^(−½).
    # Tolerance ±0.1: the table is leading order in r/d (AAᵀ ≈ I/3 up to O(√(r/d)),
    # ‖GAᵀA‖² ∝ r(1 + O(r/d))); with r/d ≤ 1/32 and 24 seeds (the task and A₀ vary) the
    # measured slopes sit within a few hundredths; neighbouring rules' exponents differ by ½.
    prog, sig = first_step[(opt, rule)]
    pred = predicted_first_step_slopes(opt, rule)
    assert loglog_slope(P5_RANKS, prog).slope == pytest.approx(pred["progress"], abs=0.1)
    assert loglog_slope(P5_RANKS, sig).slope == pytest.approx(pred["update_norm"], abs=0.1)


# ----------------------------------------------------------------------------- P1: derived μ
def _sampled_mu(cfg, n):
    """λ_max(A₀ΣA₀ᵀ) of the simulator's own init (init_adapter) for seeds 0…n−1 (Σ's
    eigenbasis, where PEFT's entries are iid; SGD and λ_max(H₀) are basis-equivariant)."""
    lam = sd.make_task(cfg).lam
    out = []
    for seed in range(n):
        A0, _ = sd.init_adapter(cfg.replace(seed=seed))
        out.append(np.linalg.eigvalsh((A0 * lam) @ A0.T)[-1])
    return np.array(out)


@pytest.mark.parametrize("mode", ["quick", "full"])
def test_P1_derived_overlay_within_5pct_at_every_plotted_point(mode):
    # Finding 1: F1(a)'s curve is the closed form with the derived μ = E λ_max(A₀ΣA₀ᵀ)
    # (signaldrift derive init_sharpness). At every (r, α) F1 plots, and where the derivation
    # claims to hold, it must lie within 5% of the measured mean λ_max(H₀). λ_max(H₀) of a
    # seed is the closed form of its own μ (exact; test_P1_sharpness_at_init_matches_closed_
    # form checks the simulator's Hessian against it), so the measured mean is taken over 200
    # sampled inits (standard error ≤ 1.5%). The old curve (μ = trΣ/(3d)) fails this by
    # 2.4× in μ at r = 8 and 6.8× at r = 32.
    from signaldrift._derivations.init_sharpness import expected_lambda_max, in_domain
    from signaldrift.figures import f1_spectral_suppression as F1
    from signaldrift.figures._common import common_settings

    S, c = F1.settings(mode), common_settings(mode)
    d = c["d"]
    for r in S["ranks"]:
        cfg = sd.SimConfig(d=d, m=d, task_rank=c["task_rank"], spectrum=c["spectrum"],
                           basis="eigen", rank=r, task_seed=0)
        assert in_domain(d=d, rank=r, beta=c["spectrum"])
        task = sd.make_task(cfg)
        g = F1.g_task(task)
        mu = _sampled_mu(cfg, 200)
        mu_pred = expected_lambda_max(task.lam, r, 1.0 / (3 * d))
        for a in S["alphas"]:
            measured = F1.closed_form(a / r, mu, g).mean()
            predicted = F1.closed_form(a / r, mu_pred, g)
            assert predicted / measured == pytest.approx(1.0, abs=0.05), (r, a)


def test_P1_naive_mu_fails_where_r_is_not_small_against_d_eff():
    # THEORY §4: trΣ/(3d) = 1/3 needs r ≪ d_eff (≈ 18 for λ ∝ 1/i at d = 128); measured
    # E μ / (1/3) ≈ 2.4 at r = 8 (THEORY quotes a sampled mean of 0.81).
    cfg = sd.SimConfig(d=128, m=128, task_rank=8, spectrum=1.0, basis="eigen", rank=8)
    mu = _sampled_mu(cfg, 200).mean()
    assert 0.75 < mu < 0.88
    assert mu / (1.0 / 3.0) > 2.0


def test_P1_isotropic_psi_is_the_derived_value_not_1_64():
    # README quoted ψ = 1.64 for an isotropic Σ at r = 8, α = 16, d = 128 (μ = 1/3); the
    # simulator's Hessian gives ≈ 2.1 because μ ≈ 0.47 there (MP bulk widening). The derived
    # value must match the measured mean (48 seeds: sd of ψ ≈ 2%, so SE ≈ 0.3%) within 3%.
    from signaldrift._derivations.init_sharpness import expected_lambda_max
    from signaldrift.figures import f1_spectral_suppression as F1

    cfg = sd.SimConfig(d=128, m=128, task_rank=8, spectrum=0.0, basis="eigen", rank=8,
                       alpha=16.0, optimizer="sgd", lr=1e-3, steps=1, sharpness_steps=(0,),
                       task_seed=0)
    task = sd.make_task(cfg)
    psi = [sd.simulate(cfg.replace(seed=s)).sharpness["lambda_max"][0] / task.lam.max()
           for s in range(48)]
    derived = F1.closed_form(2.0, expected_lambda_max(task.lam, 8, 1 / 384), F1.g_task(task))
    assert derived / task.lam.max() == pytest.approx(np.mean(psi), rel=0.03)
    assert np.mean(psi) > 1.64 * 1.15
