"""E λ_max(A₀ΣA₀ᵀ) at the plotted sizes: the μ of the sharpness at init (THEORY.md §4).

THEORY §4: at B = 0, ``λ_max(H₀) = (s²μ + √(s⁴μ² + 4s²g²))/2`` with ``μ = λ_max(A₀ΣA₀ᵀ)``.
``E[A₀ΣA₀ᵀ] = σ_A²·trΣ·I_r`` (``trΣ/(3d)`` under PEFT's init), but ``μ ≈ σ_A² trΣ`` needs
``r ≪ d_eff = (trΣ)²/tr(Σ²)``; for λ_i ∝ 1/i, d_eff ≈ 18 at d = 128 and the sampled μ is
2.4× the naive value at r = 8. This derivation predicts ``E μ`` where r is not ≪ d_eff.

**Model.** ``K = A₀ΣA₀ᵀ = Σ_i τ_i a_i a_iᵀ`` (r×r) with ``a_i ∈ R^r`` the columns of A₀ in
Σ's eigenbasis, standardised (iid, mean 0, variance 1) and ``τ_i = σ_A²·λ_i``.

**Step 1 (deterministic equivalent, Marchenko–Pastur 1967 / Silverstein–Bai 1995).** The
Stieltjes transform ``m(z) = (1/r)·tr(K − z)⁻¹`` of K's eigenvalue distribution is, to
leading order in 1/r, the solution with ``Im m > 0`` (Im z > 0) of

    m = −1 / ( z − Σ_i τ_i / (1 + r·τ_i·m) ),                                    (S)

with the *actual* finite list of τ_i (no limit of the spectrum is taken), and the density is
``ρ(x) = Im m(x + i0)/π``. (S) holds the first two effects of THEORY §4 at once: the bulk
widens toward the generalised MP edge, and each top direction of Σ with ``r·τ_i`` not small
becomes its own bump (a spike). Its isotropic case is the MP law with ratio r/d and upper
edge ``σ_A²·trΣ·(1 + √(r/d))²``.

**Step 2 (the top eigenvalue at finite r).** The edge of ρ overshoots E λ_max (the top
eigenvalue of r of them sits below the edge, and a spike's bump is centred on its
eigenvalue, not at its top). The counting function ``N(x) = r∫_x^∞ ρ`` says how many
eigenvalues lie above x; the top eigenvalue owns the top unit of it, so

    E λ_max ≈ μ_pred := r ∫_{x₁}^∞ x ρ(x) dx,   N(x₁) = 1                           (P)

(the mean of the top unit of the deterministic-equivalent spectrum). Exact at r = 1: (S)
preserves the first moment, ``r∫xρ = Σ_i τ_i``, so μ_pred = σ_A² trΣ = E μ.

**Domain** (checked against sampled PEFT matrices, :data:`DOMAIN`): λ_i ∝ i^(−β), mean 1,
β ∈ [0, 1.5], d ∈ [32, 512], 1 ≤ r ≤ min(64, d): |μ_pred / mean − 1| ≤ 3.5% (the worst
cells are β ≥ 1 at r = 2–4, where K is dominated by a few spikes); the naive σ_A² trΣ is
off by up to 96% on the same grid. Outside it the prediction is not claimed. It depends on
A₀ only through σ_A² (MP universality), so it holds for PEFT's uniform and the Gaussian
init, in any feature basis (A₀Q has the same deterministic equivalent).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

if TYPE_CHECKING:
    from ._common import Derivation

TITLE = "E λ_max(A₀ΣA₀ᵀ) at init: deterministic equivalent + top unit of mass (THEORY §4)"

__all__ = ["TITLE", "DOMAIN", "derive", "spectrum", "expected_lambda_max", "in_domain",
           "mp_edge", "naive_mu", "effective_dimension", "sample_lambda_max"]

#: Where :func:`expected_lambda_max` is claimed (and was checked to ≤ 3.5%): spectrum
#: exponent β, width d, rank r (r ≤ d also), and the largest relative error allowed there.
DOMAIN = {"beta": (0.0, 1.5), "d": (32, 512), "rank": (1, 64), "max_rel_error": 0.05,
          "checked_max_rel_error": 0.035}


# --------------------------------------------------------------------------- numerics
def spectrum(d: int, beta: float) -> np.ndarray:
    """λ_i ∝ i^(−β), normalised to mean 1 (THEORY §1)."""
    lam = np.arange(1, d + 1, dtype=np.float64) ** (-float(beta))
    return lam / lam.mean()


def effective_dimension(lam) -> float:
    """d_eff = (trΣ)²/tr(Σ²)."""
    lam = np.asarray(lam, dtype=np.float64)
    return float(lam.sum() ** 2 / np.sum(lam**2))


def naive_mu(lam, var: float) -> float:
    """σ_A²·trΣ: μ when r ≪ d_eff (``trΣ/(3d)`` under PEFT's init)."""
    return float(var * np.sum(lam))


def mp_edge(lam, rank: int, var: float) -> float:
    """Upper edge of the deterministic equivalent (S): ``min_u [1/u + Σ τ_i/(1 − rτ_i u)]``
    over ``0 < u < 1/(r τ_max)`` (the inverse of m on the real axis has its minimum at the
    edge; Silverstein & Choi 1995). Isotropic: ``σ_A² trΣ (1 + √(r/d))²``."""
    from scipy.optimize import minimize_scalar

    tau = var * np.asarray(lam, dtype=np.float64)
    top = 1.0 / (rank * tau.max())

    def z(v):  # v in (0, 1): u = v·top
        u = v * top
        return 1.0 / u + np.sum(tau / (1.0 - rank * tau * u))

    res = minimize_scalar(z, bounds=(1e-9, 1 - 1e-12), method="bounded",
                          options={"xatol": 1e-12})
    return float(res.fun)


@njit(cache=True)
def _density(tau: np.ndarray, rank: int, xs: np.ndarray, eta: float) -> np.ndarray:
    """ρ(x) from (S) at z = x + iη, by Newton's method continued from large x downward
    (compiled: the continuation is sequential, ~10⁵ Newton steps per call)."""
    out = np.empty(xs.size)
    m = -1.0 / (xs[-1] + 1j * eta)
    for k in range(xs.size - 1, -1, -1):
        z = xs[k] + 1j * eta
        for _ in range(100):
            S = 0j
            Sp = 0j
            for i in range(tau.size):
                den = 1.0 + rank * tau[i] * m
                S += tau[i] / den
                Sp -= rank * tau[i] ** 2 / (den * den)
            F = m * (z - S) + 1.0
            step = F / (z - S - m * Sp)
            new = m - step
            if new.imag < 0:  # stay on the physical branch (Im m > 0)
                new = complex(new.real, 0.5 * abs(m.imag))
            m = new
            if abs(step) < 1e-13 * abs(m):
                break
        out[k] = m.imag / math.pi
    return out


def expected_lambda_max(lam, rank: int, var: float, *, n_grid: int = 6000) -> float:
    """μ_pred of (P): the predicted E λ_max(A₀ΣA₀ᵀ) for A₀ with iid entries of variance
    ``var`` (PEFT: 1/(3d)) and Σ's eigenvalues ``lam``.

    Solves (S) on a grid of ``n_grid`` points (η = 10⁻⁴ of the grid's span) and returns the
    mean of the top unit of ``N(x) = r∫_x^∞ρ``. Claimed inside :data:`DOMAIN` only
    (:func:`in_domain`).
    """
    lam = np.asarray(lam, dtype=np.float64)
    rank = int(rank)
    tau = var * lam
    hi = 1.5 * (rank * tau.max() + tau.sum()) + 3.0 * math.sqrt(rank * np.sum(tau**2))
    xs = np.linspace(hi / n_grid, hi, n_grid)
    rho = _density(tau, rank, xs, 1e-4 * hi)
    w = rho * (xs[1] - xs[0]) * rank  # expected number of eigenvalues per cell
    tail = np.cumsum(w[::-1])[::-1]
    target = min(1.0, float(tail[0]))
    j = int(np.flatnonzero(tail >= target)[-1])
    above = float(tail[j + 1]) if j + 1 < xs.size else 0.0
    part = target - above  # the fraction of cell j inside the top unit
    return float((np.sum(xs[j + 1:] * w[j + 1:]) + part * xs[j]) / target)


def in_domain(*, d: int, rank: int, beta: float) -> bool:
    """Whether (d, r, β) lies in :data:`DOMAIN`, where :func:`expected_lambda_max` is claimed."""
    b0, b1 = DOMAIN["beta"]
    d0, d1 = DOMAIN["d"]
    r0, r1 = DOMAIN["rank"]
    return bool(b0 <= beta <= b1 and d0 <= d <= d1 and r0 <= rank <= min(r1, d))


def sample_lambda_max(d: int, rank: int, beta: float, n: int, seed: int) -> np.ndarray:
    """λ_max(A₀ΣA₀ᵀ) of ``n`` sampled PEFT inits (A₀ iid U(−1/√d, 1/√d)), seeded."""
    rng = np.random.default_rng(seed)
    lam = spectrum(d, beta)
    b = 1.0 / math.sqrt(d)
    out = np.empty(n)
    for j in range(n):
        A = rng.uniform(-b, b, size=(rank, d))
        out[j] = np.linalg.eigvalsh((A * lam) @ A.T)[-1]
    return out


# --------------------------------------------------------------------------- derivation
#: The grid of the Monte Carlo check in :func:`derive` (a subset of the domain's grid,
#: small enough for ``signaldrift derive --check``): (d, r, β).
CHECK_GRID = [(d, r, b) for d in (32, 128) for r in (1, 4, 16) for b in (0.0, 1.0)]
CHECK_SAMPLES = 400


def derive() -> Derivation:
    """Derive (S) and (P), verify their limits symbolically and the prediction against
    sampled PEFT matrices over :data:`CHECK_GRID`.

    SymPy (and :mod:`._common`, which builds symbols on import) is imported here, not at
    module level: the numerics above, used by the figures, do not need it.
    """
    import sympy as sp

    from ._common import Derivation, Result

    der = Derivation("init_sharpness", TITLE)
    z, m_, u = sp.symbols("z m u")
    r_, d_, tau = sp.symbols("r d tau", positive=True)

    # (S) for equal weights τ_i = τ (isotropic Σ): the Marchenko–Pastur quadratic.
    S_iso = d_ * tau / (1 + r_ * tau * m_)
    eq = sp.together(m_ * (z - S_iso) + 1)
    num = sp.expand(sp.numer(eq))
    mp = sp.expand(r_ * tau * z * m_**2 + (z - d_ * tau + r_ * tau) * m_ + 1)
    der.results.append(Result("(S) Stieltjes transform of A₀ΣA₀ᵀ, τ_i = σ_A²λ_i",
                              "m(z)", "-1/(z - Σ_i τ_i/(1 + r τ_i m(z)))"))
    der.results.append(Result("(S), isotropic (τ_i = τ): Marchenko–Pastur", 0, mp))
    der.check("(S) with equal τ_i is the MP quadratic rτz m² + (z − dτ + rτ)m + 1 = 0",
              sp.simplify(num - mp) == 0)

    # Upper edge: minimum over u of the real inverse z(u) = 1/u + dτ/(1 − rτu).
    zu = 1 / u + d_ * tau / (1 - r_ * tau * u)
    u_star = 1 / (r_ * tau + sp.sqrt(r_ * d_) * tau)
    edge = sp.simplify(zu.subs(u, u_star))
    der.results.append(Result("upper edge, isotropic", "x₊", tau * (sp.sqrt(d_) + sp.sqrt(r_))**2))
    der.check("z'(u*) = 0 at u* = 1/(τ(r + √(rd)))",
              sp.simplify(sp.diff(zu, u).subs(u, u_star)) == 0)
    der.check("x₊ = τ(√d + √r)² = σ_A² trΣ (1 + √(r/d))²",
              sp.simplify(edge - tau * (sp.sqrt(d_) + sp.sqrt(r_))**2) == 0)

    # First moment: m(z) = −1/z − (Σ τ_i)/z² + O(z⁻³) for three explicit weights, so the
    # deterministic equivalent keeps (1/r)E tr K = Σ τ_i; (P) is exact at r = 1.
    t1, t2, t3 = sp.symbols("t1:4", positive=True)
    w = sp.Symbol("w")  # w = 1/z
    mm = -w + sp.Symbol("c2") * w**2 + sp.Symbol("c3") * w**3
    lhs = mm * (1 / w - sum(t / (1 + r_ * t * mm) for t in (t1, t2, t3))) + 1
    ser = sp.expand(sp.series(lhs, w, 0, 3).removeO())
    c2 = sp.solve(ser.coeff(w, 1), sp.Symbol("c2"))[0]
    der.results.append(Result("first moment of (S): r∫xρ(x)dx", "Σ_i τ_i", "σ_A² trΣ"))
    der.check("(S) keeps the first moment: m = −1/z − (Στ_i)/z² + …",
              sp.simplify(c2 + (t1 + t2 + t3)) == 0)

    der.results.append(Result("(P) prediction", "E λ_max(A₀ΣA₀ᵀ)",
                              "r ∫_{x₁}^∞ x ρ(x) dx,  r ∫_{x₁}^∞ ρ(x) dx = 1"))
    der.results.append(Result("naive (r ≪ d_eff)", "E λ_max(A₀ΣA₀ᵀ)", "σ_A² trΣ"))

    # Numerical: the MP edge in closed form against the minimisation used by mp_edge.
    for d, r in ((128, 8), (64, 32)):
        lam = np.ones(d)
        closed = (1.0 / (3 * d)) * d * (1 + math.sqrt(r / d)) ** 2
        got = mp_edge(lam, r, 1.0 / (3 * d))
        der.check(f"mp_edge isotropic d={d}, r={r} equals (1 + √(r/d))²/3 (rtol 1e-6)",
                  abs(got / closed - 1) < 1e-6, f"{got:.8f} vs {closed:.8f}")
    # Monte Carlo: (P) against sampled PEFT inits over CHECK_GRID. Tolerance 5% (the
    # domain's claim); the sampled mean's standard error is ≤ 1.3% with 400 samples.
    worst = 0.0
    for i, (d, r, b) in enumerate(CHECK_GRID):
        lam = spectrum(d, b)
        pred = expected_lambda_max(lam, r, 1.0 / (3 * d))
        mc = sample_lambda_max(d, r, b, CHECK_SAMPLES, seed=1000 + i)
        err = pred / mc.mean() - 1.0
        worst = max(worst, abs(err))
        der.check(f"(P) vs {CHECK_SAMPLES} sampled PEFT inits, d={d}, r={r}, β={b:g} "
                  f"(|err| ≤ 5%)", abs(err) <= 0.05,
                  f"pred {pred:.4f}, sampled {mc.mean():.4f} ± {mc.std(ddof=1) / math.sqrt(mc.size):.4f}, "
                  f"err {100 * err:+.1f}%")
    der.results.append(Result("largest |error| of (P) on the check grid", "max |err|",
                              f"{100 * worst:.1f}%"))
    return der
