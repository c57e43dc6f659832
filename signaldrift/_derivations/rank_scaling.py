"""First-step progress and update norm, their exponents in r, rank-stable rules (THEORY.md §5).

First step from ``B₀ = 0``, where ``∇_A = sBᵀG = 0``:

- SGD: ``ΔB = −ηsGAᵀ``, ``ΔA = 0``, ``S₁ = −ηs²GAᵀA``; progress
  ``π₁ = ηs²‖GAᵀ‖²/‖G‖`` and, with ``E[aaᵀ] = σ_A²I`` for each row a of A,
  ``E[π₁] = ηs²rσ_A²‖G‖``; ``E‖S₁‖² = η²s⁴rσ_A⁴(d + r − 2 + κ)‖G‖²``, κ = E[a⁴]/σ_A⁴.
- Adam: bias correction makes step 1 ``−η·m̂/(√v̂ + ε) → −η·sign(g)`` (ε → 0), so
  ``ΔA = 0``, ``ΔB = −η·sign(GAᵀ)`` (sign descent) and ``π₁ = ηs‖GAᵀ‖₁/‖G‖``; with
  ``E|g·a| = √(2/π)σ_A‖g‖``, ``E[π₁] = ηsr√(2/π)σ_A‖G‖_{2,1}/‖G‖`` (``‖G‖_{2,1}`` = sum
  of row norms); ``E‖S₁‖² = η²s²mrσ_A²(d + 2(r − 1)/π)`` (Gaussian A, exact).

The r-exponent of each quantity (leading order in d, r ≪ d) under each rule's s(r), and the
exponent γ of a rank-stable rule ``s ∝ r^γ``, follow by ``x·∂ₓ log f``.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ._algebra import inner, norm_sq, to_sympy, words
from ._common import (SHAPES, A, Derivation, M, Result, d, eta, expect_iid, explicit, m, r,
                      random_point, rel_err, s)
from .signal_drift import adam_update, adapter_gradients, decomposition

TITLE = "first-step progress and update norm vs rank, rank-stable scaling rules (THEORY §5)"

sigma_A, kappa, alpha, coef = sp.symbols("sigma_A kappa alpha c", positive=True)
dd, mm = sp.symbols("d m", positive=True)
norm_G, norm_G21 = sp.symbols("normG normG_21", positive=True)
RULES = {"lora": alpha / r, "rslora": alpha / sp.sqrt(r), "lora-alpha": coef / sp.sqrt(r)}


def log_slope(f, x) -> sp.Expr:
    """``x·∂ₓ log f``: the exponent of f in x (constant when f is a power of x)."""
    return sp.simplify(x * sp.diff(f, x) / f)


def leading(f, x):
    """Leading term of f as x → ∞."""
    p = sp.limit(log_slope(f, x), x, sp.oo)
    return sp.simplify(sp.limit(f / x**p, x, sp.oo)) * x**p


def first_step_formulas() -> dict[tuple[str, str], sp.Expr]:
    """(optimiser, criterion) -> E[π₁] or RMS ‖S₁‖, moments kept symbolic."""
    sgd_progress = eta * s**2 * r * sigma_A**2 * norm_G
    sgd_norm = sp.sqrt(eta**2 * s**4 * r * sigma_A**4 * (dd + r - 2 + kappa)) * norm_G
    adam_progress = eta * s * r * sp.sqrt(2 / sp.pi) * sigma_A * norm_G21 / norm_G
    adam_norm = sp.sqrt(eta**2 * s**2 * mm * r * sigma_A**2 * (dd + 2 * (r - 1) / sp.pi))
    return {("sgd", "progress"): sgd_progress, ("sgd", "magnitude"): sgd_norm,
            ("adam", "progress"): adam_progress, ("adam", "magnitude"): adam_norm}


def exponents() -> dict[tuple[str, str], dict[str, sp.Expr]]:
    """(optimiser, criterion) -> {rule: exponent of r, "stable": γ of s ∝ r^γ}."""
    out = {}
    for key, f in first_step_formulas().items():
        lead = leading(f, dd)
        row = {rule: log_slope(lead.subs(s, sr), r) for rule, sr in RULES.items()}
        row["stable"] = -log_slope(lead, r) / log_slope(lead, s)
        out[key] = row
    return out


def derive() -> Derivation:
    """Derive the first-step formulas, their r-exponents and the rank-stable rules."""
    der = Derivation("rank_scaling", TITLE)
    G, B0 = M("G"), M("B")
    S, _ = decomposition()
    grad_A, grad_B = (words(g).drop("B") for g in adapter_gradients(S))
    der.check("at B = 0: ∇_A = 0, ∇_B = sGAᵀ", grad_A.is_zero()
              and (grad_B - words(s * G * A.T)).is_zero())
    # SGD first step
    S1 = to_sympy(words(S.xreplace({M("dA"): 0 * M("dA"), M("dB"): -eta * s * G * A.T})
                        .xreplace({B0: 0 * B0})), SHAPES)
    der.results.append(Result("SGD first step, S₁ (B = 0, ΔA = 0)", "S_1", S1))
    der.check("SGD: −⟨S₁, G⟩ = ηs²‖GAᵀ‖² (trace identities)",
              (inner(S1, G).scaled(-1) - norm_sq(G * A.T).scaled(eta * s**2)).is_zero())
    _check_sgd_moments(der)
    # Adam first step
    g, e, b1, b2 = sp.symbols("g varepsilon beta1 beta2", real=True)
    u1 = sp.limit(adam_update([g], beta1=b1, beta2=b2, eps=sp.Abs(e)), e, 0)
    der.results.append(Result("Adam step 1 direction, ε → 0", "mhat/(sqrt(vhat)+eps)", u1))
    der.check("Adam step 1 is sign descent: m̂₁/√v̂₁ = sign(g)",
              all(u1.subs(g, x) == sp.sign(x) for x in (sp.Rational(-3, 2), sp.Rational(7, 3))))
    Z = sp.MatrixSymbol("Z", *SHAPES["B"])  # Z = sign(GAᵀ)
    S1_adam = to_sympy(words(S.xreplace({M("dA"): 0 * M("dA"), M("dB"): -eta * Z})
                             .xreplace({B0: 0 * B0})), {**SHAPES, "Z": Z.shape})
    der.results.append(Result("Adam first step, S₁ (ΔB = −η·sign(GAᵀ) = −ηZ)", "S_1", S1_adam))
    der.check("Adam: −⟨S₁, G⟩ = ηs⟨Z, GAᵀ⟩ = ηs‖GAᵀ‖₁ (trace identities)",
              (inner(S1_adam, G).scaled(-1) - inner(Z, G * A.T).scaled(eta * s)).is_zero())
    _check_adam_moments(der)
    _check_first_step_numeric(der)

    for (opt, crit), f in first_step_formulas().items():
        label = "E[π₁]" if crit == "progress" else "RMS ‖S₁‖"
        der.results.append(Result(f"{opt}: {label} (init moments symbolic)", label, f))
        der.results.append(Result(f"{opt}: {label}, r ≪ d", label, leading(f, dd)))
    table = exponents()
    expected = {("sgd", "progress"): {"lora": -1, "rslora": 0, "lora-alpha": 0,
                                      "stable": sp.Rational(-1, 2)},
                ("sgd", "magnitude"): {"lora": sp.Rational(-3, 2), "rslora": sp.Rational(-1, 2),
                                       "lora-alpha": sp.Rational(-1, 2),
                                       "stable": sp.Rational(-1, 4)},
                ("adam", "progress"): {"lora": 0, "rslora": sp.Rational(1, 2),
                                       "lora-alpha": sp.Rational(1, 2), "stable": -1},
                ("adam", "magnitude"): {"lora": sp.Rational(-1, 2), "rslora": 0,
                                        "lora-alpha": 0, "stable": sp.Rational(-1, 2)}}
    for key, row in table.items():
        for rule in RULES:
            der.results.append(Result(f"{key[0]} {key[1]}, rule {rule} (s = {RULES[rule]})",
                                      f"{key[1]}", r ** row[rule], True))
        der.results.append(Result(f"{key[0]} {key[1]}: rank-stable rule", "s", r ** row["stable"],
                                  True))
    der.check("exponents of r match THEORY §5 (SGD s ∝ r^-1/2 progress, r^-1/4 magnitude; "
              "Adam r^-1 progress, r^-1/2 magnitude)", table == expected, str(table))
    return der


def _check_sgd_moments(der) -> None:
    """E‖GAᵀ‖² = rσ²‖G‖², E‖GAᵀA‖² = rσ⁴(d + r − 2 + κ)‖G‖² at explicit sizes."""
    sig2, m4 = sp.symbols("sigma2 m4", positive=True)
    sizes = {r: 2, m: 2, d: 3}
    Ax, Gx = explicit(A, sizes), explicit(M("G"), sizes)
    entries = list(Ax)
    nG = sum(x**2 for x in Gx)
    p2 = expect_iid(sum(x**2 for x in Gx * Ax.T), entries, {2: sig2})
    p4 = expect_iid(sum(x**2 for x in Gx * Ax.T * Ax), entries, {2: sig2, 4: m4})
    ok = (sp.expand(p2 - 2 * sig2 * nG) == 0
          and sp.expand(p4 - 2 * (sig2**2 * (3 + 2 - 2) + m4) * nG) == 0)
    der.check("E‖GAᵀ‖² = rσ²‖G‖², E‖GAᵀA‖² = r(σ⁴(d + r − 2) + E a⁴)‖G‖² "
              "(explicit symbolic, r = 2, d = 3)", ok)
    rng = np.random.default_rng(6)
    r_, d_, m_, draws, sd = 2, 16, 3, 20000, 0.7
    Gn = rng.standard_normal((m_, d_))
    As = rng.normal(0.0, sd, (draws, r_, d_))
    mc = np.mean(np.sum((Gn @ np.transpose(As, (0, 2, 1)) @ As) ** 2, axis=(1, 2)))
    exact = r_ * sd**4 * (d_ + r_ - 2 + 3) * np.sum(Gn**2)
    err = abs(mc / exact - 1)
    # Monte Carlo, 20000 draws: relative standard error ≈ 0.6%; tolerance 4%.
    der.check("Monte Carlo E‖S₁‖² (SGD, Gaussian A, κ = 3), tol 4%", err < 0.04, f"{err:.3f}")


def _check_adam_moments(der) -> None:
    """E|x| = √(2/π)τ for x ~ N(0, τ²); Monte Carlo of E‖GAᵀ‖₁ and E‖sign(GAᵀ)A‖²."""
    x, tau = sp.symbols("x tau", positive=True)
    abs_mean = 2 * sp.integrate(x * sp.exp(-x**2 / (2 * tau**2)) / (sp.sqrt(2 * sp.pi) * tau),
                                (x, 0, sp.oo))
    der.results.append(Result("E|g·a|, g·a ~ N(0, τ²), τ = σ_A‖g‖", "E|x|", abs_mean))
    der.check("E|x| = √(2/π)τ", sp.simplify(abs_mean - sp.sqrt(2 / sp.pi) * tau) == 0)
    rng = np.random.default_rng(7)
    r_, d_, m_, draws, sd = 3, 16, 4, 20000, 0.7
    Gn = rng.standard_normal((m_, d_))
    As = rng.normal(0.0, sd, (draws, r_, d_))
    GA = Gn @ np.transpose(As, (0, 2, 1))
    l1 = np.mean(np.abs(GA).sum(axis=(1, 2)))
    l1_exact = r_ * np.sqrt(2 / np.pi) * sd * np.linalg.norm(Gn, axis=1).sum()
    za = np.mean(np.sum((np.sign(GA) @ As) ** 2, axis=(1, 2)))
    za_exact = m_ * r_ * sd**2 * (d_ + 2 * (r_ - 1) / np.pi)
    errs = (abs(l1 / l1_exact - 1), abs(za / za_exact - 1))
    # Monte Carlo, 20000 draws: relative standard errors < 0.5%; tolerance 3%.
    der.check("Monte Carlo E‖GAᵀ‖₁ and E‖sign(GAᵀ)A‖² (Gaussian A), tol 3%",
              max(errs) < 0.03, f"{errs[0]:.3f}, {errs[1]:.3f}")


def _check_first_step_numeric(der) -> None:
    """π₁ of one dense SGD and one dense Adam step (ε → 0) from B = 0 at a seeded point."""
    v = random_point(8)
    a, g, sc, lr = v["A"], v["G"], v["s"], v["eta"]
    for opt, dB_, expected in (
            ("SGD", -lr * sc * g @ a.T, lr * sc**2 * np.sum((g @ a.T) ** 2)),
            ("Adam", -lr * np.sign(g @ a.T), lr * sc * np.abs(g @ a.T).sum())):
        dW = sc * dB_ @ a  # W(A, B + ΔB) − W(A, 0) with ΔA = 0
        err = rel_err(-np.sum(dW * g), expected)
        der.check(f"{opt}: ‖G‖π₁ at a seeded float64 point (rtol 1e-12)", err < 1e-12,
                  f"{err:.1e}")
