"""Exact one-step loss change of the quadratic loss (THEORY.md §3).

For ``L(W) = ½tr(EΣEᵀ)``, ``E = W − W⋆``: the W-gradient is ``G = EΣ`` and, because L is
quadratic, ``L(W + ΔW) − L(W) = ⟨G, ΔW⟩ + ½tr(ΔWΣΔWᵀ)`` with no remainder (the ε¹ and ε²
coefficients of ``L(E + εΔW) − L(E)``; the ε³ and higher ones vanish).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ._algebra import gradient, inner, to_sympy, trace, words
from ._common import SHAPES, Derivation, M, Result, Sigma, epsilon, evaluate, explicit_zero, \
    random_point, rel_err

TITLE = "exact loss change L_{t+1} − L_t = ⟨G, ΔW⟩ + ½tr(ΔWΣΔWᵀ) (THEORY §3)"


def loss(E):
    """``L = ½tr(EΣEᵀ)`` as a trace word sum."""
    return trace(words(E * Sigma * E.T)).scaled(sp.Rational(1, 2))


def derive() -> Derivation:
    """Derive the gradient and the exact loss change; verify them."""
    der = Derivation("loss_change", TITLE)
    E, DW = M("E"), M("DW")
    change = loss(E + epsilon * DW) - loss(E)
    first, second = change.coefficient(epsilon, 1), change.coefficient(epsilon, 2)
    rest = change - first.scaled(epsilon) - second.scaled(epsilon**2)
    G = to_sympy(gradient(first, "DW"), SHAPES)
    der.results += [Result("W-gradient from dL = ⟨G, ΔW⟩", "G", G),
                    Result("first order (descent)", "descent", to_sympy(first, SHAPES)),
                    Result("second order (curvature κ)", "kappa", to_sympy(second, SHAPES)),
                    Result("L(W+ΔW) − L(W)", "L_{t+1} - L_t",
                           to_sympy(first + second, SHAPES))]
    der.check("G = EΣ", words(G - E * Sigma).is_zero())
    der.check("no ε³ or higher terms: the change is exact", rest.is_zero())
    der.check("first order = ⟨G, ΔW⟩ (trace identities)", (first - inner(E * Sigma, DW)).is_zero())
    der.check("second order = ½tr(ΔWΣΔWᵀ) (trace identities)",
              (second - trace(words(DW * Sigma * DW.T)).scaled(sp.Rational(1, 2))).is_zero())
    identity = (sp.Trace((E + DW) * Sigma * (E + DW).T) / 2 - sp.Trace(E * Sigma * E.T) / 2
                - sp.Trace((E * Sigma).T * DW) - sp.Trace(DW * Sigma * DW.T) / 2)
    der.check("L(W+ΔW) − L(W) = ⟨G, ΔW⟩ + ½tr(ΔWΣΔWᵀ) (explicit symbolic)",
              explicit_zero(identity))
    v = random_point(1)
    e, dw, sig = v["E"], v["DW"], v["Sigma"]
    lhs = 0.5 * np.trace((e + dw) @ sig @ (e + dw).T) - 0.5 * np.trace(e @ sig @ e.T)
    err = rel_err(evaluate(to_sympy(first + second, SHAPES), v), lhs)
    der.check("loss change at a seeded float64 point (rtol 1e-12)", err < 1e-12, f"{err:.1e}")
    return der
