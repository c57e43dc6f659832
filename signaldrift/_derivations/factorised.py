"""Every recorded quantity as traces of small Gram matrices and thin products (THEORY.md §2–§4).

Each kernel of :mod:`signaldrift._generated.factorised` starts from its dense form (m×d
matrices), expanded into words; :func:`~._algebra.factorise` rewrites each word, using
``tr(XY) = tr(YX)`` and ``tr(X) = tr(Xᵀ)``, as a product of the kernel's own arguments
(Gram matrices such as ``BtB = BᵀB``, thin products such as ``AS = AΣ``, or plain factors).
The result is verified three ways: the factorised words expand back to the dense ones; the
two forms agree at explicit symbolic matrices; and they agree numerically in float64.

:func:`b0_kernels` are the Hessian-vector product at B = 0 (THEORY §4: λ_max at
initialisation), derived by setting the letter B to zero in the dense form. Their terms are
those of the general kernels less the terms that hold B, in the same order, so at B = 0
they do the general kernel's floating-point operations less additions of exact zeros.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp

from ._algebra import WordSum, expand_tokens, factorise, to_sympy, trace, word_of, words
from ._common import (SHAPES, A, B, Derivation, M, N, R, Result, Sigma, U, V, X, dA, dB,
                      delta_star, evaluate, explicit_zero, n, random_point, rel_err, residual,
                      s, tA, tB)
from .hessian import hvp, population_gradients
from .signal_drift import adapter_gradients, decomposition

TITLE = "factorised kernels: traces of small Gram matrices and thin products (THEORY §2)"

#: Gram matrices and thin products (name -> definition), the kernels' matrix arguments.
GRAMS: dict[str, sp.MatrixExpr] = {
    "BtB": B.T * B, "AAt": A * A.T, "ASAt": A * Sigma * A.T, "AS2At": A * Sigma**2 * A.T,
    "UtB": U.T * B, "VSAt": V.T * Sigma * A.T, "VS2At": V.T * Sigma**2 * A.T,
    "AS": A * Sigma, "VtS": V.T * Sigma,
    "dBtdB": dB.T * dB, "dAdAt": dA * dA.T, "dBtB": dB.T * B, "dAAt": dA * A.T,
    "ASdAt": A * Sigma * dA.T, "dASdAt": dA * Sigma * dA.T, "dBtU": dB.T * U,
    "VSdAt": V.T * Sigma * dA.T,
    "AStAt": A * Sigma * tA.T, "VStAt": V.T * Sigma * tA.T, "BttB": B.T * tB,
    "tAS": tA * Sigma, "tBtU": tB.T * U,
    "XA": X * A.T, "XV": X * V,
}
#: Scalar constants (name -> the matrix whose trace they are).
CONSTANTS: dict[str, sp.MatrixExpr] = {
    "c_loss": delta_star() * Sigma * delta_star().T,      # ‖Δ⋆Σ^½‖²
    "c_grad": delta_star() * Sigma**2 * delta_star().T,   # ‖Δ⋆Σ‖²
}
SCALARS = {"s": s, "n": n}


@dataclass(frozen=True)
class Kernel:
    """A generated kernel: name, argument list (the contract), dense form, description.

    The value is ``dense`` (a matrix) or, if ``trace``, ``coeff·tr(dense)``.
    """

    name: str
    args: tuple[str, ...]
    dense: sp.MatrixExpr
    doc: str
    trace: bool = False
    coeff: sp.Expr = sp.S.One

    def dense_words(self) -> WordSum:
        ws = words(self.dense)
        return trace(ws).scaled(self.coeff) if self.trace else ws

    def dense_sympy(self):
        return self.coeff * sp.Trace(self.dense) if self.trace else self.dense


@functools.cache
def kernels() -> tuple[Kernel, ...]:
    """The kernels, in the order of the contract (docs/CONTRACTS.md)."""
    E = residual()
    G = E * Sigma
    S, D = decomposition()
    grad_A, grad_B = population_gradients()
    G_hat = R.T * X / n
    batch_A, batch_B = (g.xreplace({M("G"): G_hat}) for g in adapter_gradients(S))
    h_A, h_B = hvp()
    half = sp.Rational(1, 2)
    return (
        Kernel("excess_loss", ("s", "BtB", "ASAt", "UtB", "VSAt", "Sg", "c_loss"),
               E * Sigma * E.T, "L = ½tr(EΣEᵀ), E = sBA − Δ⋆ (THEORY §2)", True, half),
        Kernel("grad_norm_sq", ("s", "BtB", "AS2At", "UtB", "VS2At", "Sg", "c_grad"),
               G * G.T, "‖G‖², G = EΣ (THEORY §2)", True),
        Kernel("grad_B", ("s", "B", "U", "Sg", "ASAt", "VSAt"), grad_B,
               "∇_B L = sGAᵀ (THEORY §2; derived in hessian)"),
        Kernel("grad_A", ("s", "BtB", "UtB", "Sg", "AS", "VtS"), grad_A,
               "∇_A L = sBᵀG (THEORY §2; derived in hessian)"),
        Kernel("batch_residual", ("s", "B", "XA", "U", "Sg", "XV", "N"), X * E.T - N,
               "minibatch residual R = XEᵀ − N, rows are samples (THEORY §2)"),
        Kernel("batch_grad_B", ("s", "n", "R", "XA"), batch_B,
               "sĜAᵀ, Ĝ = RᵀX/n (THEORY §2)"),
        Kernel("batch_grad_A", ("s", "n", "R", "B", "X"), batch_A,
               "sBᵀĜ, Ĝ = RᵀX/n (THEORY §2)"),
        Kernel("signal_norm_sq", ("s", "dBtdB", "AAt", "dBtB", "dAAt", "BtB", "dAdAt"),
               S.T * S, "‖S‖², S = s(ΔB·A + B·ΔA) (THEORY §3)", True),
        Kernel("drift_norm_sq", ("s", "dBtdB", "dAdAt"), D.T * D,
               "‖D‖², D = sΔB·ΔA (THEORY §3)", True),
        Kernel("signal_drift_inner", ("s", "dBtdB", "dAAt", "dBtB", "dAdAt"), S.T * D,
               "⟨S, D⟩ (THEORY §3)", True),
        Kernel("descent", ("s", "dBtB", "dBtU", "BtB", "UtB", "Sg", "ASAt", "VSAt", "ASdAt",
                           "VSdAt"),
               G.T * (S + D), "⟨G, ΔW⟩, ΔW = S + D (THEORY §3)", True),
        Kernel("curvature", ("s", "dBtdB", "dBtB", "BtB", "ASAt", "ASdAt", "dASdAt"),
               (S + D) * Sigma * (S + D).T, "κ = ½tr(ΔWΣΔWᵀ) (THEORY §3)", True, half),
        Kernel("descent_signal", ("s", "dBtB", "dBtU", "BtB", "UtB", "Sg", "ASAt", "VSAt",
                                  "ASdAt", "VSdAt"),
               G.T * S, "⟨G, S⟩, the signal's part of the descent (THEORY §3 split)", True),
        Kernel("descent_drift", ("s", "dBtB", "dBtU", "BtB", "UtB", "Sg", "ASAt", "VSAt",
                                 "ASdAt", "VSdAt"),
               G.T * D, "⟨G, D⟩, the drift's part of the descent (THEORY §3 split)", True),
        Kernel("curvature_cross", ("s", "dBtdB", "dBtB", "BtB", "ASAt", "ASdAt", "dASdAt"),
               S * Sigma * D.T, "⟨S, D⟩_Σ = tr(SΣDᵀ) (THEORY §3 split)", True),
        Kernel("hvp_B", ("s", "tB", "B", "U", "Sg", "ASAt", "AStAt", "VStAt"), h_B,
               "B part of the Hessian-vector product H·(tA, tB) (THEORY §4)"),
        Kernel("hvp_A", ("s", "BttB", "BtB", "AS", "tAS", "tBtU", "Sg", "VtS"), h_A,
               "A part of the Hessian-vector product H·(tA, tB) (THEORY §4)"),
    )


#: Kernels with a variant at B = 0 (:func:`b0_kernels`), and the suffix of its name.
B0_OF = ("hvp_B", "hvp_A")
B0_SUFFIX = "_b0"


def _holds_B(arg: str) -> bool:
    """Whether the kernel argument ``arg`` is B or a product with a factor B (zero at B = 0)."""
    expr = GRAMS.get(arg, CONSTANTS.get(arg))
    if expr is None:
        return arg == "B"
    return any(name == "B" for name, _ in word_of(expr))


@functools.cache
def b0_kernels() -> tuple[Kernel, ...]:
    """The Hessian-vector product at B = 0, every entry of B zero (THEORY §4).

    At initialisation (B = 0) λ_max is measured by Lanczos (:mod:`signaldrift._lanczos`), and
    every term of ``hvp_A``, ``hvp_B`` with a factor B or BᵀB vanishes:
    ``(HT)_A = −s·T_BᵀUΣ⋆VᵀΣ`` and ``(HT)_B = −s·UΣ⋆VᵀΣT_Aᵀ + s²·T_B·AΣAᵀ``. Each variant
    is the general kernel's dense form with B substituted by the zero matrix, factorised
    over the general kernel's arguments less those that hold B (``B``, ``BtB``, ``BttB``);
    its arguments are those the result uses, in the general kernel's order. :func:`derive`
    verifies it like the others and checks that its terms are the general kernel's terms
    without B, in the same order.

    Returns:
        ``hvp_B_b0``, ``hvp_A_b0`` (the kernels of :data:`B0_OF` with :data:`B0_SUFFIX`).
    """
    general = {k.name: k for k in kernels()}
    zero = {B: sp.ZeroMatrix(*B.shape)}
    out = []
    for name in B0_OF:
        k = general[name]
        trial = Kernel(name + B0_SUFFIX, tuple(a for a in k.args if not _holds_B(a)),
                       k.dense.xreplace(zero).doit(), f"{k.doc}, at B = 0", k.trace, k.coeff)
        ws = factorised_words(trial)
        used = ws.letters() | {str(x) for _, c in ws.terms for x in c.free_symbols}
        out.append(Kernel(trial.name, tuple(a for a in trial.args if a in used), trial.dense,
                          trial.doc, trial.trace, trial.coeff))
    return tuple(out)


def token_defs(kernel: Kernel) -> tuple[dict, dict]:
    """The kernel's matrix arguments as tokens (name -> word) and its scalar constants."""
    defs, consts = {}, {}
    for arg in kernel.args:
        if arg in GRAMS:
            defs[arg] = word_of(GRAMS[arg])
        elif arg in CONSTANTS:
            consts[arg] = word_of(CONSTANTS[arg])
        elif arg in SHAPES:
            defs[arg] = ((arg, False),)
    return defs, consts


def shapes() -> dict[str, tuple]:
    """Shapes of the base matrices and of the Gram matrices."""
    return {**SHAPES, **{name: expr.shape for name, expr in GRAMS.items()}}


@functools.cache
def factorised_words(kernel: Kernel) -> WordSum:
    """The kernel's value as a word sum over its arguments."""
    defs, consts = token_defs(kernel)
    return factorise(kernel.dense_words(), defs, consts)


def factorised_expr(kernel: Kernel):
    """The kernel's value as a SymPy expression in its arguments (what is generated)."""
    consts = {c: sp.Symbol(c) for c in CONSTANTS}
    return to_sympy(factorised_words(kernel), shapes(), consts)


def factorised_terms(kernel: Kernel) -> list:
    """The terms of :func:`factorised_expr`, one SymPy expression each, in sorted order."""
    consts = {c: sp.Symbol(c) for c in CONSTANTS}
    ws = factorised_words(kernel)
    return [to_sympy(WordSum((t,), ws.trace), shapes(), consts) for t in ws.terms]


def substitutions() -> dict:
    """Gram symbols and constants -> their definitions (to expand a factorised form)."""
    out = {sp.MatrixSymbol(name, *expr.shape): expr for name, expr in GRAMS.items()}
    out.update({sp.Symbol(c): sp.Trace(expr) for c, expr in CONSTANTS.items()})
    return out


def gram_values(values: dict) -> dict:
    """Numeric Gram matrices and constants from numeric base matrices."""
    out = dict(values)
    for name, expr in GRAMS.items():
        out[name] = evaluate(expr, values)
    for name, expr in CONSTANTS.items():
        out[name] = float(np.trace(evaluate(expr, values)))
    return out


def derive() -> Derivation:
    """Factorise every kernel and verify it against its dense form."""
    der = Derivation("factorised", TITLE)
    values = gram_values(random_point(5))
    subs = substitutions()
    for kernel in kernels() + b0_kernels():
        fw = factorised_words(kernel)
        defs, consts = token_defs(kernel)
        expr = to_sympy(fw, shapes(), {c: sp.Symbol(c) for c in CONSTANTS})
        der.results.append(Result(f"{kernel.name}: {kernel.doc}", kernel.name, expr))
        back = expand_tokens(fw, {**defs, **consts})
        der.check(f"{kernel.name}: factorised words expand to the dense words",
                  (back - kernel.dense_words()).is_zero())
        der.check(f"{kernel.name}: factorised = dense (explicit symbolic matrices)",
                  explicit_zero(expr.xreplace(subs) - kernel.dense_sympy()))
        err = rel_err(evaluate(expr, values), evaluate(kernel.dense_sympy(), values))
        der.check(f"{kernel.name}: factorised = dense, float64 (rtol 1e-12)", err < 1e-12,
                  f"{err:.1e}")
    general = {k.name: k for k in kernels()}
    for kernel in b0_kernels():
        full = general[kernel.name.removesuffix(B0_SUFFIX)]
        kept = tuple((w, c) for w, c in factorised_words(full).terms
                     if not any(_holds_B(name) for name, _ in w))
        der.check(f"{kernel.name}: {full.name}'s terms without B, in the same order (the same "
                  "floating-point operations less exact zeros)",
                  factorised_words(kernel).terms == kept and len(kept) > 0)
    return der
