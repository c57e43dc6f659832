"""α is exactly the learning rate of B (THEORY.md §3, "Exact equivalence").

With ``B' = B/c`` and ``B₀ = 0`` (or B₀ scaled alike), the run with scale ``c·s`` and lr η
equals, in function space at every step, the run with scale s and

- SGD (with or without momentum, any weight decay on A only): ``η_A = η``, ``η_B = c²·η``;
- Adam: ``η_B = c·η`` and ``ε_B = ε/c`` (``loraplus_lr_ratio = c``, ``eps_b = ε/c``).

Proof by induction over steps, checked here symbolically: suppose at step t the two runs
share A and the W-gradient G (they share W = c·s·B₁A = s·B₂A), with ``B₂ = c·B₁`` and
optimiser state ``buf_B₂ = buf_B₁/c`` (SGD) or ``m_B₂ = m_B₁/c``, ``v_B₂ = v_B₁/c²``
(Adam). Then ``∇_A`` is the same (``c·s·B₁ᵀG = s·B₂ᵀG``), ``∇_{B₂} = ∇_{B₁}/c``, and one
step keeps every relation; W_{t+1} agrees. ``simulate`` runs both sides numerically.
"""

from __future__ import annotations

import sympy as sp

from ._common import Derivation, Result

TITLE = "α is the learning rate of B: (c·s, η) ≡ (s, η_B = c²η) under SGD, (s, c·η, ε/c) under Adam (THEORY §3)"


def _sgd_step(p, g, buf, lr, mu):
    buf = mu * buf + g
    return p - lr * buf, buf


def derive() -> Derivation:
    """One inductive step for explicit 2×2 factors; Adam entrywise with positive symbols."""
    der = Derivation("equivalence", TITLE)
    c, s, eta, mu = sp.symbols("c s eta mu", positive=True)
    A = sp.Matrix(2, 3, sp.symbols("a0:6"))
    B1 = sp.Matrix(2, 2, sp.symbols("b0:4"))
    G = sp.Matrix(2, 3, sp.symbols("g0:6"))          # the shared W-gradient (any data)
    bufA = sp.Matrix(2, 3, sp.symbols("p0:6"))
    bufB1 = sp.Matrix(2, 2, sp.symbols("q0:4"))
    B2, bufB2 = c * B1, bufB1 / c
    # run 1: scale c·s, lr η for both factors; run 2: scale s, η_A = η, η_B = c²η.
    A1, _ = _sgd_step(A, c * s * B1.T * G, bufA, eta, mu)
    B1n, bufB1n = _sgd_step(B1, c * s * G * A.T, bufB1, eta, mu)
    A2, _ = _sgd_step(A, s * B2.T * G, bufA, eta, mu)
    B2n, bufB2n = _sgd_step(B2, s * G * A.T, bufB2, c**2 * eta, mu)
    zero = sp.zeros
    der.check("SGD (momentum μ): A_{t+1} agrees", sp.simplify(A1 - A2) == zero(2, 3))
    der.check("SGD: B₂_{t+1} = c·B₁_{t+1}", sp.simplify(B2n - c * B1n) == zero(2, 2))
    der.check("SGD: buf_B₂ = buf_B₁/c is kept", sp.simplify(bufB2n - bufB1n / c) == zero(2, 2))
    der.check("SGD: W_{t+1} = c·s·B₁A = s·B₂A agrees",
              sp.simplify(c * s * B1n * A1 - s * B2n * A2) == zero(2, 3))
    der.results.append(Result("SGD equivalence", "(c·s, η_A, η_B)", "(s, η, c²·η)"))

    # Adam, one entry of B (entrywise): run 2's gradient g, moments m, v; run 1's c·g, c·m, c²·v.
    g, m, v, eps, b1, b2, k = sp.symbols("g m v epsilon beta1 beta2 k", positive=True)

    def adam_step(grad, m_prev, v_prev, lr, e):
        m_new = b1 * m_prev + (1 - b1) * grad
        v_new = b2 * v_prev + (1 - b2) * grad**2
        step = -lr * (m_new / (1 - b1**k)) / (sp.sqrt(v_new / (1 - b2**k)) + e)
        return step, m_new, v_new

    d1, m1, v1 = adam_step(c * g, c * m, c**2 * v, eta, eps)
    d2, m2, v2 = adam_step(g, m, v, c * eta, eps / c)
    der.check("Adam: ΔB₂ = c·ΔB₁ with η_B = c·η, ε_B = ε/c", sp.simplify(d2 - c * d1) == 0)
    der.check("Adam: m_B₂ = m_B₁/c and v_B₂ = v_B₁/c² are kept",
              sp.simplify(m2 - m1 / c) == 0 and sp.simplify(v2 - v1 / c**2) == 0)
    d_same_eps, _, _ = adam_step(g, m, v, c * eta, eps)
    der.check("Adam: with ε_B = ε the equivalence is not exact (ε > 0)",
              sp.simplify(d_same_eps - c * d1) != 0)
    der.results.append(Result("Adam equivalence", "(c·s, η_A, η_B, ε_B)", "(s, η, c·η, ε/c)"))
    return der
