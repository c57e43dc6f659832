"""One-step Signal-Drift decomposition and the drift-ratio exponents (THEORY.md §3).

- ``ΔW = s(B+ΔB)(A+ΔA) − sBA = S + D`` exactly, S the part linear in the step
  ``(ΔA, ΔB)`` and D the second-order part (the ε¹ and ε² coefficients of ΔW at
  ``(εΔA, εΔB)``).
- SGD, ``ΔA = −η s BᵀĜ``, ``ΔB = −η s ĜAᵀ``: ``S = −ηs²(ĜAᵀA + BBᵀĜ)``,
  ``D = η²s³ ĜAᵀBᵀĜ``, so ``ρ = ‖D‖/‖S‖ ∝ η¹ s¹``.
- Adam with ε → 0 is invariant to rescaling the gradient by c > 0, so at a given state
  ``ΔA = η P_A``, ``ΔB = η P_B`` with P independent of s, and ``ρ ∝ η¹ s⁰``.

The exponent of ρ in x is read off by substituting ``x → c·x`` in ‖D‖² and ‖S‖² (both
homogeneous in x) and taking half the difference of the powers of c.
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ._algebra import WordSum, gradient, inner, norm_sq, to_sympy, words
from ._common import (SHAPES, A, B, Derivation, M, Result, dA, dB, epsilon, eta, evaluate,
                      explicit_zero, random_point, rel_err, s)

TITLE = "one-step Signal-Drift decomposition ΔW = S + D and drift-ratio exponents (THEORY §3)"


def decomposition() -> tuple[sp.MatrixExpr, sp.MatrixExpr]:
    """``(S, D)``: the ε¹ and ε² coefficients of ``W(A+εΔA, B+εΔB) − W(A, B)``."""
    dW = words(s * (B + epsilon * dB) * (A + epsilon * dA) - s * B * A)
    return to_sympy(dW.coefficient(epsilon, 1), SHAPES), to_sympy(dW.coefficient(epsilon, 2),
                                                                 SHAPES)


def adapter_gradients(S: sp.MatrixExpr) -> tuple[sp.MatrixExpr, sp.MatrixExpr]:
    """``(∇_A, ∇_B)`` of a loss with W-gradient Ĝ: from ``dL = ⟨Ĝ, S⟩`` (chain rule)."""
    differential = inner(M("G"), S)
    grad_A = to_sympy(gradient(differential.drop("dB"), "dA"), SHAPES)
    grad_B = to_sympy(gradient(differential.drop("dA"), "dB"), SHAPES)
    return grad_A, grad_B


def exponent(ws: WordSum, x: sp.Symbol) -> sp.Rational:
    """p with ``ws(x → c·x) = c^p·ws`` (every term must scale alike)."""
    c = sp.Symbol("c", positive=True)
    powers = set()
    for _, coeff in ws.terms:
        ratio = sp.simplify(coeff.subs(x, c * x) / coeff)
        base, p = ratio.as_base_exp()
        if ratio == 1:
            p = sp.S.Zero
        elif base != c or p.free_symbols:
            raise ValueError(f"{coeff} is not homogeneous in {x}")
        powers.add(p)
    if len(powers) != 1:
        raise ValueError(f"terms scale with different powers of {x}: {powers}")
    return powers.pop()


def rho_exponents(S: sp.MatrixExpr, D: sp.MatrixExpr) -> dict[sp.Symbol, sp.Rational]:
    """Exponents of ``ρ = ‖D‖/‖S‖`` in η and s."""
    nS, nD = norm_sq(S), norm_sq(D)
    return {x: (exponent(nD, x) - exponent(nS, x)) / 2 for x in (eta, s)}


def adam_update(grads, *, beta1, beta2, eps):
    """Adam's bias-corrected update direction ``m̂_t/(√v̂_t + ε)`` after gradients g₁…g_t."""
    t = len(grads)
    m1 = sum((1 - beta1) * beta1 ** (t - 1 - i) * g for i, g in enumerate(grads))
    v = sum((1 - beta2) * beta2 ** (t - 1 - i) * g**2 for i, g in enumerate(grads))
    return (m1 / (1 - beta1**t)) / (sp.sqrt(v / (1 - beta2**t)) + eps)


def derive() -> Derivation:
    """Derive and verify the decomposition, the SGD and Adam forms, and ρ's exponents."""
    der = Derivation("signal_drift", TITLE)
    S, D = decomposition()
    dW_exact = s * (B + dB) * (A + dA) - s * B * A
    der.results += [Result("S: part of ΔW linear in (ΔA, ΔB)", "S", S),
                    Result("D: part of ΔW quadratic in (ΔA, ΔB)", "D", D)]
    der.check("ΔW = S + D exactly (explicit symbolic matrices)", explicit_zero(dW_exact - S - D))

    grad_A, grad_B = adapter_gradients(S)
    G = M("G")
    der.results += [Result("∇_A from dL = ⟨Ĝ, S⟩", "grad_A", grad_A),
                    Result("∇_B from dL = ⟨Ĝ, S⟩", "grad_B", grad_B)]
    der.check("∇_A = s BᵀĜ, ∇_B = s ĜAᵀ (THEORY §2)",
              (words(grad_A - s * B.T * G).is_zero() and words(grad_B - s * G * A.T).is_zero()))

    sgd = {dA: -eta * grad_A, dB: -eta * grad_B}
    S_sgd, D_sgd = (to_sympy(words(x.xreplace(sgd)), SHAPES) for x in (S, D))
    der.results += [Result("SGD signal", "S_SGD", S_sgd), Result("SGD drift", "D_SGD", D_sgd)]
    theory_S = -eta * s**2 * (G * A.T * A + B * B.T * G)
    theory_D = eta**2 * s**3 * G * A.T * B.T * G
    der.check("SGD: S = −ηs²(ĜAᵀA + BBᵀĜ), D = η²s³ĜAᵀBᵀĜ (explicit symbolic)",
              explicit_zero(S_sgd - theory_S) and explicit_zero(D_sgd - theory_D))

    rho = sp.Symbol("rho")
    exps = rho_exponents(S_sgd, D_sgd)
    der.results.append(Result("SGD drift ratio", rho, eta ** exps[eta] * s ** exps[s], True))
    der.check("SGD: ρ ∝ η¹ s¹", exps == {eta: 1, s: 1}, f"exponents {exps}")

    # Adam: the update direction is invariant to g -> c·g (c > 0) as ε -> 0.
    c, b1, b2, e = sp.symbols("c beta1 beta2 varepsilon", positive=True)
    gs = sp.symbols("g1:4", positive=True)
    u = adam_update(gs, beta1=b1, beta2=b2, eps=e)
    u_scaled = adam_update([c * g for g in gs], beta1=b1, beta2=b2, eps=e)
    change = sp.simplify(sp.limit(u_scaled, e, 0) - sp.limit(u, e, 0))
    invariant = change == 0
    der.results.append(Result("Adam update after 3 steps, ε → 0, gradients scaled by c > 0",
                              "u_3(c*g) - u_3(g)", change))
    der.check("Adam (ε→0) is invariant to gradient rescaling (3 steps, symbolic)", invariant)
    adam = {dA: eta * M("PA"), dB: eta * M("PB")}
    S_adam, D_adam = (to_sympy(words(x.xreplace(adam)), SHAPES) for x in (S, D))
    exps = rho_exponents(S_adam, D_adam)
    der.results += [Result("Adam signal (ΔA = ηP_A, ΔB = ηP_B, P independent of s)", "S_Adam",
                           S_adam),
                    Result("Adam drift", "D_Adam", D_adam),
                    Result("Adam drift ratio", rho, eta ** exps[eta] * s ** exps[s], True)]
    der.check("Adam: ρ ∝ η¹ s⁰", exps == {eta: 1, s: 0}, f"exponents {exps}")

    _numeric_checks(der, S, D, S_sgd, D_sgd, S_adam, D_adam)
    return der


def _numeric_checks(der, S, D, S_sgd, D_sgd, S_adam, D_adam) -> None:
    v = random_point(0)
    a, b, g = v["A"], v["B"], v["G"]
    dW = v["s"] * (b + v["dB"]) @ (a + v["dA"]) - v["s"] * b @ a
    err = rel_err(evaluate(S, v) + evaluate(D, v), dW)
    der.check("ΔW = S + D at a seeded float64 point (rtol 1e-12)", err < 1e-12, f"{err:.1e}")
    ref = -v["eta"] * v["s"] ** 2 * (g @ a.T @ a + b @ b.T @ g)
    err = rel_err(evaluate(S_sgd, v), ref)
    der.check("SGD signal, float64 (rtol 1e-12)", err < 1e-12, f"{err:.1e}")

    def rho(S_, D_, **kw):
        w = {**v, **kw}
        return np.linalg.norm(evaluate(D_, w)) / np.linalg.norm(evaluate(S_, w))

    slopes = []
    for S_, D_ in ((S_sgd, D_sgd), (S_adam, D_adam)):
        base = rho(S_, D_)
        slopes.append((np.log2(rho(S_, D_, eta=2 * v["eta"]) / base),
                       np.log2(rho(S_, D_, s=2 * v["s"]) / base)))
    ok = np.allclose(slopes, [(1, 1), (1, 0)], atol=1e-10)
    der.check("log2 ρ(2η)/ρ(η), ρ(2s)/ρ(s) = (1, 1) SGD, (1, 0) Adam, float64", ok,
              f"{np.round(slopes, 12).tolist()}")
