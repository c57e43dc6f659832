"""Gradients, Hessian, Hessian-vector product and sharpness at init (THEORY.md §2, §4).

For ``L(A, B) = ½tr(EΣEᵀ)``, ``E = sBA − Δ⋆``, along a direction ``(T_A, T_B)``
(letters ``tA``, ``tB``), with ``f(θ + εT) = f + ε·Df[T] + ε²·…``:

- gradients from ``DL[T] = ⟨∇_A, T_A⟩ + ⟨∇_B, T_B⟩``: ``∇_B = sGAᵀ``, ``∇_A = sBᵀG``,
  ``G = EΣ``;
- Hessian quadratic form ``H[T] = 2·[ε²]L(θ + εT)
  = s²‖(T_B A + B T_A)Σ^½‖² + 2s⟨T_B T_A, G⟩``;
- Hessian-vector product ``HT = D∇[T]`` (ε¹ coefficient of the gradients);
- at B = 0: the B-block ``s²(AΣAᵀ) ⊗ I_m`` (column-major vec(T_B)); ``E[AΣAᵀ] =
  σ_A² trΣ I_r`` (``trΣ/(3d)·I_r`` for PEFT's uniform init);
- exact ``λ_max = (s²μ + √(s⁴μ² + 4s²g²))/2``, μ = λ_max(AΣAᵀ), g = σ_max(G): in bases
  where AΣAᵀ and G are diagonal the characteristic polynomial factors into
  ``λ² − s²μ_jλ − s²g_i²`` (and ``λ − s²μ_j`` for the left null space of G).
"""

from __future__ import annotations

import numpy as np
import sympy as sp

from ._algebra import WordSum, factorise, gradient, inner, to_sympy, trace, word_of, words
from ._common import (SHAPES, A, B, Derivation, Result, Sigma, delta_star, epsilon, evaluate,
                      expect_iid, explicit, explicit_zero, r, random_point, rel_err, residual,
                      s, tA, tB)

TITLE = "Hessian of L(A, B), its HVP, the B-block and exact sharpness at B = 0 (THEORY §4)"


def loss(A_=A, B_=B) -> WordSum:
    """``L = ½tr(EΣEᵀ)`` at (A_, B_) as a trace word sum."""
    E = residual().xreplace({A: A_, B: B_})
    return trace(words(E * Sigma * E.T)).scaled(sp.Rational(1, 2))


def population_gradients() -> tuple[sp.MatrixExpr, sp.MatrixExpr]:
    """``(∇_A, ∇_B)`` of L, read off the differential ``DL[T] = [ε¹]L(θ + εT)``."""
    dL = loss(A + epsilon * tA, B + epsilon * tB).coefficient(epsilon, 1)
    return (to_sympy(gradient(dL.drop("tB"), "tA"), SHAPES),
            to_sympy(gradient(dL.drop("tA"), "tB"), SHAPES))


def hvp() -> tuple[sp.MatrixExpr, sp.MatrixExpr]:
    """``(H_A T, H_B T)``: the ε¹ coefficients of the gradients at ``θ + εT``."""
    move = {A: A + epsilon * tA, B: B + epsilon * tB}
    return tuple(to_sympy(words(g.xreplace(move)).coefficient(epsilon, 1), SHAPES)
                 for g in population_gradients())


def quadratic_form() -> WordSum:
    """``H[T] = 2·[ε²]L(θ + εT)``."""
    return loss(A + epsilon * tA, B + epsilon * tB).coefficient(epsilon, 2).scaled(2)


def theory_quadratic_form() -> WordSum:
    """THEORY §4: ``s²‖(T_B A + B T_A)Σ^½‖² + 2s⟨T_B T_A, G⟩``."""
    J = tB * A + B * tA
    return (trace(words(J * Sigma * J.T)).scaled(s**2)
            + inner(tB * tA, residual() * Sigma).scaled(2 * s))


def derive() -> Derivation:
    """Derive and verify the gradients, the Hessian, its HVP and λ_max at B = 0."""
    der = Derivation("hessian", TITLE)
    G = residual() * Sigma
    grad_A, grad_B = population_gradients()
    der.results += [Result("∇_A L", "grad_A", grad_A), Result("∇_B L", "grad_B", grad_B)]
    der.check("∇_A = sBᵀG, ∇_B = sGAᵀ, G = EΣ (THEORY §2)",
              words(grad_A - s * B.T * G).is_zero() and words(grad_B - s * G * A.T).is_zero())

    H = quadratic_form()
    der.results.append(Result("H[T] = d²/dε² L(θ + εT)", "H[tA, tB]", to_sympy(H, SHAPES)))
    der.check("H[T] = s²‖(T_B A + B T_A)Σ^½‖² + 2s⟨T_B T_A, G⟩ (trace identities)",
              (H - theory_quadratic_form()).is_zero())
    theory = (s**2 * sp.Trace((tB * A + B * tA) * Sigma * (tB * A + B * tA).T)
              + 2 * s * sp.Trace((tB * tA).T * G))
    der.check("same, explicit symbolic matrices", explicit_zero(to_sympy(H, SHAPES) - theory))

    h_A, h_B = hvp()
    der.results += [Result("Hessian-vector product, A part", "(H T)_A", h_A),
                    Result("Hessian-vector product, B part", "(H T)_B", h_B)]
    pairing = inner(tA, h_A) + inner(tB, h_B)
    der.check("⟨T, HT⟩ = H[T] (trace identities)", (pairing - H).is_zero())
    _check_hvp_numeric(der, h_A, h_B)

    _b_block(der)
    _init_moments(der)
    _lambda_max_at_init(der, h_A, h_B)
    return der


def _check_hvp_numeric(der, h_A, h_B) -> None:
    from .._sharpness import dense_hessian
    from .._task import Task
    v = random_point(2)
    task = Task(lam=np.diag(v["Sigma"]).copy(), U=v["U"], sigma_star=np.diag(v["Sg"]).copy(),
                V=v["V"], noise=0.0)
    Hd = dense_hessian(task, v["s"], v["A"], v["B"])
    ref = Hd @ np.concatenate([v["tA"].ravel(), v["tB"].ravel()])
    got = np.concatenate([evaluate(h_A, v).ravel(), evaluate(h_B, v).ravel()])
    err = rel_err(got, ref)
    der.check("HVP = dense Hessian @ T at a seeded float64 point (rtol 1e-12)", err < 1e-12,
              f"{err:.1e}")


def _b_block(der) -> None:
    """At B = 0, T_A = 0: H[T] = s²tr(T_B AΣAᵀ T_Bᵀ), Hessian in vec(T_B) = s²(AΣAᵀ) ⊗ I_m."""
    block = quadratic_form().drop("B").drop("tA")
    defs = {"tB": word_of(tB), "M": word_of(A * Sigma * A.T)}
    der.results.append(Result("B-block quadratic form at B = 0 (M = AΣAᵀ)", "H[0, tB]",
                              to_sympy(factorise(block, defs), {**SHAPES, "M": (r, r)})))
    q = explicit(to_sympy(block, SHAPES))
    tb = explicit(tB)
    vec = [tb[i, j] for j in range(tb.shape[1]) for i in range(tb.shape[0])]  # column-major
    hess = sp.hessian(q, vec) / 2
    mm = explicit(A * Sigma * A.T)
    kron = s**2 * sp.kronecker_product(mm, sp.eye(tb.shape[0]))
    der.results.append(Result("B-block at B = 0, column-major vec(T_B)", "H_BB",
                              "s**2*(A*Sigma*A.T) ⊗ I_m"))
    der.check("H_BB = s²(AΣAᵀ) ⊗ I_m (explicit symbolic, ½∇² of the quadratic form)",
              (hess - kron).expand() == sp.zeros(*kron.shape))


def _init_moments(der) -> None:
    """E[AΣAᵀ] = σ_A² trΣ I_r; PEFT's U(−1/√d, 1/√d) has σ_A² = 1/(3d)."""
    sigma_A2, x, dd = sp.symbols("sigma_A2 x d", positive=True)
    a = 1 / sp.sqrt(dd)
    peft_var = sp.integrate(x**2 / (2 * a), (x, -a, a))
    der.results.append(Result("variance of U(−1/√d, 1/√d)", "sigma_A**2", peft_var))
    der.check("PEFT init variance = 1/(3d)", sp.simplify(peft_var - 1 / (3 * dd)) == 0)
    a_ = explicit(A)
    mm = explicit(A * Sigma * A.T)
    expect = mm.applyfunc(lambda e: expect_iid(e, list(a_), {2: sigma_A2}))
    trS = explicit(sp.Trace(Sigma))
    der.results += [Result("E[AΣAᵀ], iid entries of variance σ_A²", "E[A*Sigma*A.T]",
                           "sigma_A2*tr(Sigma)*I_r"),
                    Result("PEFT init, mean-1 Σ (trΣ = d)", "E[A*Sigma*A.T]", "I_r/3")]
    der.check("E[AΣAᵀ] = σ_A² trΣ I_r (explicit symbolic, r = 2, d = 4)",
              (expect - sigma_A2 * trS * sp.eye(mm.shape[0])).expand() == sp.zeros(*mm.shape))
    rng = np.random.default_rng(3)
    d_, r_, draws = 64, 2, 400
    lam = rng.uniform(0.2, 1.8, d_)
    acc = np.zeros((r_, r_))
    for _ in range(draws):
        Ai = rng.uniform(-1 / np.sqrt(d_), 1 / np.sqrt(d_), (r_, d_))
        acc += (Ai * lam) @ Ai.T / draws
    target = lam.sum() / (3 * d_)
    err = np.abs(acc - target * np.eye(r_)).max() / target
    # Monte Carlo: relative standard error ≈ √(0.8/d/draws) ≈ 0.6%; 3% is 5 standard errors.
    der.check("Monte Carlo E[AΣAᵀ] = trΣ/(3d)·I (PEFT, d = 64, 400 draws, tol 3%)",
              err < 0.03, f"{err:.3f}")


def _lambda_max_at_init(der, h_A, h_B) -> None:
    """Spectrum of H at B = 0 from the HVP, in bases where AΣAᵀ and G are diagonal."""
    mu, g, ss = sp.symbols("mu g s", positive=True)
    lam_ = sp.Symbol("lambda")
    # At B = 0: (HT)_B = s²T_B M + s G T_Aᵀ and (HT)_A = s T_Bᵀ G, with M = AΣAᵀ and
    # G = −Δ⋆Σ = −U·Sg·VᵀΣ (the tokens below). Orthogonal changes of basis of R^m, R^d, R^r
    # keep the spectrum, so M = diag(μ_j) and G = rectangular diag(g_i) (m = 3, d = r = 2).
    defs = {"tA": word_of(tA), "tB": word_of(tB), "M": word_of(A * Sigma * A.T),
            "Dt": word_of(delta_star() * Sigma)}
    shapes = {**SHAPES, "M": (r, r), "Dt": SHAPES["G"]}
    parts = [to_sympy(factorise(words(h).drop("B"), defs), shapes) for h in (h_A, h_B)]
    der.results += [Result("HVP at B = 0, A part (M = AΣAᵀ, Dt = Δ⋆Σ = −G)", "(H T)_A",
                           parts[0]),
                    Result("HVP at B = 0, B part", "(H T)_B", parts[1])]
    mus, gs = sp.symbols("mu1:3", positive=True), sp.symbols("g1:3", positive=True)
    Mx = sp.diag(*mus)
    Gx = sp.Matrix([[gs[0], 0], [0, gs[1]], [0, 0]])
    tAx, tBx = sp.Matrix(2, 2, sp.symbols("a:4")), sp.Matrix(3, 2, sp.symbols("b:6"))
    env = {sp.MatrixSymbol("M", *shapes["M"]): Mx, sp.MatrixSymbol("Dt", *shapes["Dt"]): -Gx,
           tA: tAx, tB: tBx}
    out = [sp.Matrix(p.xreplace(env).doit()).xreplace({s: ss}) for p in parts]
    theta = list(tAx) + list(tBx)
    op = sp.Matrix([list(out[0]) + list(out[1])]).T.jacobian(theta)
    charpoly = sp.factor(op.charpoly(lam_).as_expr())
    expected = sp.Mul(*[lam_**2 - ss**2 * mu_ * lam_ - ss**2 * g_**2 for mu_ in mus for g_ in gs],
                      *[lam_ - ss**2 * mu_ for mu_ in mus])
    der.results.append(Result("characteristic polynomial of H at B = 0 (m = 3, d = r = 2)",
                              "det(lambda*I - H)", charpoly))
    der.check("det(λI − H) = Π_ij(λ² − s²μ_jλ − s²g_i²)·Π_j(λ − s²μ_j) (symbolic)",
              sp.expand(charpoly - expected) == 0)
    root = max(sp.solve(lam_**2 - ss**2 * mu * lam_ - ss**2 * g**2, lam_),
               key=lambda e: e.subs({ss: 1, mu: 1, g: 1}))
    der.results.append(Result("λ_max at B = 0, μ = λ_max(AΣAᵀ), g = σ_max(G)", "lambda_max",
                              root))
    der.check("λ = (s²μ + √(s⁴μ² + 4s²g²))/2 is the larger root",
              sp.simplify(root - (ss**2 * mu + sp.sqrt(ss**4 * mu**2 + 4 * ss**2 * g**2)) / 2)
              == 0)
    der.check("∂λ/∂μ > 0 and ∂λ/∂g > 0: λ_max takes the largest μ and g",
              sp.simplify(root.diff(mu)).is_positive and sp.simplify(root.diff(g)).is_positive)
    _check_lambda_numeric(der)


def _check_lambda_numeric(der) -> None:
    from .._sharpness import dense_hessian, sharpness_at_init
    from .._task import Task
    v = random_point(4)
    task = Task(lam=np.diag(v["Sigma"]).copy(), U=v["U"], sigma_star=np.diag(v["Sg"]).copy(),
                V=v["V"], noise=0.0)
    zero = np.zeros_like(v["B"])
    dense = np.linalg.eigvalsh(dense_hessian(task, v["s"], v["A"], zero))[-1]
    err = rel_err(sharpness_at_init(task, v["s"], v["A"]), dense)
    der.check("closed-form λ_max = dense eigvalsh at B = 0, float64 (rtol 1e-10)", err < 1e-10,
              f"{err:.1e}")
