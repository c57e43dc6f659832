"""Exact reduced dynamics on the overlaps, its gradient flow and balancedness (THEORY.md §7).

Setting: isotropic ``Σ = λI``, the population (full-batch) gradient, SGD with torch.optim's
semantics (L2 weight decay ``wd``, momentum μ, Nesterov flag ν ∈ {0, 1}), scale s, per-factor
learning rates ``η_A``, ``η_B = λ_r·η_A`` (LoRA+). Task ``Δ⋆ = U·Sg·Vᵀ`` with orthonormal
``U`` (m×k), ``V`` (d×k) and ``Sg = diag(σ⋆)``.

Every input-side matrix is split along ``V`` and its orthogonal complement, every output-side
matrix along ``U`` (letters of this module):

    A = N·Vᵀ + Ap,   F = Nf·Vᵀ + Fp       (F: A's momentum buffer; Ap·V = Fp·V = 0)
    B = U·M + Bp,    H = U·Mh + Hp        (H: B's momentum buffer; Uᵀ·Bp = Uᵀ·Hp = 0)

so ``N = AV``, ``M = UᵀB`` (THEORY §7's overlaps) and the state of the reduced dynamics is
``N, Nf`` (r×k), ``M, Mh`` (k×r) and the Gram matrices of the orthogonal parts
``Pp = Ap·Apᵀ, Kp = Ap·Fpᵀ, Rp = Fp·Fpᵀ`` and ``Qp = Bpᵀ·Bp, Jp = Bpᵀ·Hp, Tp = Hpᵀ·Hp``
(r×r). THEORY §7's ``P = AAᵀ = N·Nᵀ + Pp`` and ``Q = BᵀB = Mᵀ·M + Qp``. With the core
residual ``Ec = s·M·N − Sg`` (k×k) the residual is a sum of four mutually orthogonal pieces,

    E = sBA − Δ⋆ = U·Ec·Vᵀ + s·U·M·Ap + s·Bp·N·Vᵀ + s·Bp·Ap,

so ``‖E‖² = ‖Ec‖² + s²tr(MᵀM·Pp) + s²tr(Qp·NNᵀ) + s²tr(Qp·Pp)`` is a sum of non-negative
terms (no cancellation as L → 0).

One step (derived here, then verified against the dense step): with
``g_N = sλ(MᵀEc + s·Qp·N) + wd·N``, ``g_M = sλ(Ec·Nᵀ + s·M·Pp) + wd·M``,
``DA = s²λQ + wd·I``, ``DB = s²λP + wd·I``, and the SGD step ``c_g·g + c_f·buf`` with
``c_g = 1 + νμ``, ``c_f = μ(1 − ν + νμ)`` (``ea = η_A c_g``, ``fa = η_A c_f``, ``eb``,
``fb`` likewise with η_B):

    N' = N − (ea·g_N + fa·Nf),   Nf' = μ·Nf + g_N,   [Ap'; Fp'] = [[I − ea·DA, −fa·I], [DA, μI]]·[Ap; Fp]
    M' = M − (eb·g_M + fb·Mh),   Mh' = μ·Mh + g_M,   [Bp', Hp'] = [Bp, Hp]·[[I − eb·DB, DB], [−fb·I, μI]]

and the Gram matrices follow (``Pp' = CA·Pp·CAᵀ − fa(CA·Kp + Kpᵀ·CAᵀ) + fa²Rp`` …): a step
costs O(r²(r + k) + k²r) whatever d and m. Gradient flow (η → 0; momentum μ rescales time by
1/(1 − μ)): ``Ṅ = −c_A·g_N``, ``Ṗp = −c_A(DA·Pp + Pp·DA)``, ``Ṁ = −c_B·g_M``,
``Q̇p = −c_B(DB·Qp + Qp·DB)``, and with wd = 0 it conserves ``λ_r·AAᵀ − BᵀB`` (λ_r =
c_B/c_A); one GD step changes it by exactly ``λ_r·ΔAΔAᵀ − ΔBᵀΔB = O(η²)``.

Verification: every identity is checked on words (sums of matrix products, valid for all
sizes) after the orthonormality rules ``VᵀV = UᵀU = I``, ``Ap·V = 0``, ``Uᵀ·Bp = 0`` (and the
same for Fp, Hp, dAp, dBp), and numerically in float64 against the dense step with random
orthonormal U, V.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import sympy as sp
from sympy.matrices.expressions import (Identity, MatAdd, MatMul, MatPow, MatrixSymbol,
                                        Transpose, ZeroMatrix)

from ._algebra import Word, WordSum, _letter, factorise, to_sympy, transpose_word
from ._common import Derivation, Result, d, k, m, r, rel_err, s

TITLE = "exact overlap dynamics (isotropic Σ, full-batch SGD), gradient flow, balancedness (THEORY §7)"

# --------------------------------------------------------------------------- symbols
#: Σ = lam·I (isotropic; lam = 1 for the config's mean-1 spectrum with β = 0).
lam = sp.Symbol("lam", positive=True)
wd, mu, nu = sp.symbols("wd mu nu", nonnegative=True)
eta_A, eta_B, ratio = sp.symbols("eta_A eta_B ratio", positive=True)
#: Step coefficients: ea = η_A·c_g, fa = η_A·c_f, eb = η_B·c_g, fb = η_B·c_f.
ea, fa, eb, fb = sp.symbols("ea fa eb fb")
#: Gradient-flow rates of A and B (η_A = ε·c_A, η_B = ε·c_B as ε → 0); the flow engine uses
#: c_A = 1, c_B = λ_r in the time τ = Σ lr/(1 − μ).
c_A, c_B = sp.symbols("c_A c_B", positive=True)

#: Momentum coefficients of torch's SGD step ``c_g·g + c_f·buf`` (buf before the step).
C_G = 1 + nu * mu
C_F = mu * (1 - nu + nu * mu)

SHAPES: dict[str, tuple] = {
    # split factors and buffers
    "N": (r, k), "Nf": (r, k), "Ap": (r, d), "Fp": (r, d), "V": (d, k),
    "M": (k, r), "Mh": (k, r), "Bp": (m, r), "Hp": (m, r), "U": (m, k),
    "Sg": (k, k), "Ec": (k, k),
    # split optimiser step (records)
    "dN": (r, k), "dAp": (r, d), "dM": (k, r), "dBp": (m, r),
    # Gram matrices of the orthogonal parts (state and step)
    "Pp": (r, r), "Kp": (r, r), "Rp": (r, r), "Qp": (r, r), "Jp": (r, r), "Tp": (r, r),
    "dApAp": (r, r), "dApdAp": (r, r), "dBpBp": (r, r), "dBpdBp": (r, r),
}


def L(name: str) -> MatrixSymbol:
    """The letter ``name`` with its shape from :data:`SHAPES`."""
    return MatrixSymbol(name, *SHAPES[name])


N, Nf, Ap, Fp, V = (L(x) for x in ("N", "Nf", "Ap", "Fp", "V"))
M, Mh, Bp, Hp, U = (L(x) for x in ("M", "Mh", "Bp", "Hp", "U"))
Sg, Ec = L("Sg"), L("Ec")
dN, dAp, dM, dBp = (L(x) for x in ("dN", "dAp", "dM", "dBp"))
Pp, Kp, Rp, Qp, Jp, Tp = (L(x) for x in ("Pp", "Kp", "Rp", "Qp", "Jp", "Tp"))
Ir, Ik = Identity(r), Identity(k)

#: Gram matrices (name -> definition in the split letters).
GRAMS: dict[str, sp.MatrixExpr] = {
    "Pp": Ap * Ap.T, "Kp": Ap * Fp.T, "Rp": Fp * Fp.T,
    "Qp": Bp.T * Bp, "Jp": Bp.T * Hp, "Tp": Hp.T * Hp,
    "dApAp": dAp * Ap.T, "dApdAp": dAp * dAp.T, "dBpBp": dBp.T * Bp, "dBpdBp": dBp.T * dBp,
}
#: The core residual (k×k).
EC_DEF = s * M * N - Sg


# --------------------------------------------------------------------------- words
def expand(expr) -> dict[Word, sp.Expr]:
    """Distribute a matrix expression into ``{word: coefficient}`` (Identity = empty word)."""
    if isinstance(expr, MatrixSymbol):
        return {(_letter(expr.name, False),): sp.S.One}
    if isinstance(expr, Identity):
        return {(): sp.S.One}
    if isinstance(expr, ZeroMatrix):
        return {}
    if isinstance(expr, Transpose):
        return {transpose_word(w): c for w, c in expand(expr.arg).items()}
    if isinstance(expr, MatAdd):
        out: dict[Word, sp.Expr] = {}
        for a in expr.args:
            for w, c in expand(a).items():
                out[w] = out.get(w, sp.S.Zero) + c
        return out
    if isinstance(expr, MatMul):
        scal = sp.Mul(*[a for a in expr.args if not getattr(a, "is_Matrix", False)])
        acc: dict[Word, sp.Expr] = {(): scal}
        for a in expr.args:
            if not getattr(a, "is_Matrix", False):
                continue
            nxt: dict[Word, sp.Expr] = {}
            for w1, c1 in acc.items():
                for w2, c2 in expand(a).items():
                    nxt[w1 + w2] = nxt.get(w1 + w2, sp.S.Zero) + c1 * c2
            acc = nxt
        return acc
    if isinstance(expr, MatPow) and expr.exp.is_Integer and expr.exp > 0:
        return expand(MatMul(*([expr.base] * int(expr.exp))))
    raise TypeError(f"cannot expand {expr!r}")


#: Orthonormality rules: a pair of adjacent letters that is the identity or zero.
_ID_PAIRS = {(("V", True), ("V", False)), (("U", True), ("U", False))}
_ZERO_PAIRS = set()
for _x in ("Ap", "Fp", "dAp"):
    _ZERO_PAIRS |= {((_x, False), ("V", False)), (("V", True), (_x, True))}
for _x in ("Bp", "Hp", "dBp"):
    _ZERO_PAIRS |= {(("U", True), (_x, False)), ((_x, True), ("U", False))}


def reduce_word(word: Word, cyclic: bool) -> Word | None:
    """Apply ``VᵀV = UᵀU = I`` and ``Ap·V = Uᵀ·Bp = 0`` (…); ``None`` if the word is zero.
    ``cyclic``: the word is under a trace, so its last and first letters are adjacent too."""
    w = list(word)
    while True:
        n = len(w)
        hit = None
        for i in range(n if cyclic and n > 1 else n - 1):
            pair = (w[i], w[(i + 1) % n])
            if pair in _ZERO_PAIRS:
                return None
            if pair in _ID_PAIRS:
                hit = i
                break
        if hit is None:
            return tuple(w)
        if hit == n - 1:  # the pair wraps around the trace
            w = w[1:n - 1]
        else:
            del w[hit:hit + 2]
        if cyclic and not w:
            raise ValueError(f"tr({word}) reduces to the trace of an identity")


def reduced_words(expr, *, trace: bool = False, defs: dict | None = None) -> WordSum:
    """Words of ``expr`` (its trace if ``trace``) after ``defs`` and the orthonormality rules."""
    if defs:
        expr = expr.xreplace(defs)
    pairs = []
    if not getattr(expr, "is_Matrix", False):  # a scalar: Σ c·tr(X)
        assert trace, "a scalar expression is a trace sum"
        return WordSum.build([(w, c) for w, c in _trace_terms(expr)], True)
    for w, c in expand(expr).items():
        red = reduce_word(w, trace)
        if red is not None:
            pairs.append((red, c))
    return WordSum.build(pairs, trace)


def _trace_terms(expr) -> list:
    """``[(reduced word, coefficient)]`` of a scalar sum of coefficients times traces."""
    out = []
    for term in sp.Add.make_args(sp.expand(expr)):
        coeff, traces = sp.S.One, []
        for f in sp.Mul.make_args(term):
            if isinstance(f, sp.Trace):
                traces.append(f)
            else:
                coeff = coeff * f
        if len(traces) != 1:
            raise TypeError(f"cannot read {term!r} as c·tr(X)")
        for w, c in expand(traces[0].arg).items():
            red = reduce_word(w, True)
            if red is not None:
                out.append((red, coeff * c))
    return out


def _split_defs() -> dict:
    """Gram symbols and Ec -> their definitions in the split letters."""
    out = {L(name): expr for name, expr in GRAMS.items()}
    out[Ec] = EC_DEF
    return out


# --------------------------------------------------------------------------- dense model
def dense_factors():
    """A, F, B, H and Δ⋆ in the split letters (module docstring)."""
    A = N * V.T + Ap
    F = Nf * V.T + Fp
    B = U * M + Bp
    H = U * Mh + Hp
    return A, F, B, H, U * Sg * V.T


def dense_step():
    """One SGD step with torch.optim's semantics, dense (m×d residual), in split letters.

    ``g ← ∇ + wd·p``; ``buf' = μ·buf + g`` (a zero buffer gives torch's ``buf = g`` at the
    first step); ``step = ν(g + μ·buf') + (1 − ν)·buf'``; ``p' = p − η·step``.
    Returns a dict of the new A, F, B, H and the steps ΔA, ΔB.
    """
    A, F, B, H, Dstar = dense_factors()
    G = lam * (s * B * A - Dstar)
    gA = s * B.T * G + wd * A
    gB = s * G * A.T + wd * B
    F1 = mu * F + gA
    H1 = mu * H + gB
    stepA = nu * (gA + mu * F1) + (1 - nu) * F1
    stepB = nu * (gB + mu * H1) + (1 - nu) * H1
    return {"A1": A - eta_A * stepA, "F1": F1, "B1": B - eta_B * stepB, "H1": H1,
            "dA": -eta_A * stepA, "dB": -eta_B * stepB, "A": A, "B": B}


def _perp_in(X):
    """Input-side orthogonal part X(I − VVᵀ)."""
    return X - X * V * V.T


def _perp_out(X):
    """Output-side orthogonal part (I − UUᵀ)X."""
    return X - U * U.T * X


def dense_outputs() -> dict[str, sp.MatrixExpr]:
    """Every output of the reduced step, defined from the dense step."""
    st = dense_step()
    A1p, F1p = _perp_in(st["A1"]), _perp_in(st["F1"])
    B1p, H1p = _perp_out(st["B1"]), _perp_out(st["H1"])
    dAp_, dBp_ = _perp_in(st["dA"]), _perp_out(st["dB"])
    return {
        "N1": st["A1"] * V, "Nf1": st["F1"] * V, "M1": U.T * st["B1"], "Mh1": U.T * st["H1"],
        "Pp1": A1p * A1p.T, "Kp1": A1p * F1p.T, "Rp1": F1p * F1p.T,
        "Qp1": B1p.T * B1p, "Jp1": B1p.T * H1p, "Tp1": H1p.T * H1p,
        "dN": st["dA"] * V, "dM": U.T * st["dB"],
        "dApAp": dAp_ * Ap.T, "dApdAp": dAp_ * dAp_.T,
        "dBpBp": dBp_.T * Bp, "dBpdBp": dBp_.T * dBp_,
    }


# --------------------------------------------------------------------------- programs
@dataclass(frozen=True)
class Program:
    """A straight-line program of small-matrix assignments: a generated kernel.

    ``steps`` are ``(name, expression)`` in order; an expression uses the ``args`` and the
    names assigned before it; ``outputs`` are returned as a tuple.
    """

    name: str
    args: tuple[str, ...]
    steps: tuple[tuple[str, sp.Expr], ...]
    outputs: tuple[str, ...]
    doc: str

    def symbols(self) -> dict[str, sp.Expr]:
        """Name -> MatrixSymbol of each assigned name (shape of its expression)."""
        return {name: MatrixSymbol(name, *expr.shape) for name, expr in self.steps}

    def inline(self) -> dict[str, sp.Expr]:
        """Each output as an expression of the arguments only."""
        env: dict = {}
        for name, expr in self.steps:
            env[MatrixSymbol(name, *expr.shape)] = expr.xreplace(env)
        return {o: env[MatrixSymbol(o, *dict(self.steps)[o].shape)] for o in self.outputs}


def _sym(name: str, shape) -> MatrixSymbol:
    return MatrixSymbol(name, *shape)


@functools.cache
def step_program(momentum: bool) -> Program:
    """The reduced SGD step (module docstring); without momentum the buffers are dropped
    (μ = 0: ``fa = fb = 0``, the step is ``−η·g``)."""
    P = _sym("P", (r, r))
    Q = _sym("Q", (r, r))
    E = _sym("E", (k, k))
    gN, gM = _sym("gN", (r, k)), _sym("gM", (k, r))
    DA, DB, CA, CB = (_sym(x, (r, r)) for x in ("DA", "DB", "CA", "CB"))
    dN_, dM_ = _sym("dN", (r, k)), _sym("dM", (k, r))
    steps = [
        ("E", s * M * N - Sg),
        ("P", N * N.T + Pp),
        ("Q", M.T * M + Qp),
        ("gN", s * lam * (M.T * E + s * Qp * N) + wd * N),
        ("gM", s * lam * (E * N.T + s * M * Pp) + wd * M),
        ("DA", s**2 * lam * Q + wd * Ir),
        ("DB", s**2 * lam * P + wd * Ir),
        ("CA", Ir - ea * DA),
        ("CB", Ir - eb * DB),
    ]
    if momentum:
        steps += [
            ("dN", -(ea * gN + fa * Nf)),
            ("dM", -(eb * gM + fb * Mh)),
            ("N1", N + dN_), ("Nf1", mu * Nf + gN), ("M1", M + dM_), ("Mh1", mu * Mh + gM),
            ("Pp1", CA * Pp * CA.T - fa * (CA * Kp + Kp.T * CA.T) + fa**2 * Rp),
            ("Kp1", (CA * Pp - fa * Kp.T) * DA.T + mu * (CA * Kp - fa * Rp)),
            ("Rp1", DA * Pp * DA.T + mu * (DA * Kp + Kp.T * DA.T) + mu**2 * Rp),
            ("Qp1", CB.T * Qp * CB - fb * (CB.T * Jp + Jp.T * CB) + fb**2 * Tp),
            ("Jp1", (CB.T * Qp - fb * Jp.T) * DB + mu * (CB.T * Jp - fb * Tp)),
            ("Tp1", DB.T * Qp * DB + mu * (DB.T * Jp + Jp.T * DB) + mu**2 * Tp),
            ("dApAp", -(ea * DA * Pp + fa * Kp.T)),
            ("dApdAp", ea**2 * DA * Pp * DA.T + ea * fa * (DA * Kp + Kp.T * DA.T) + fa**2 * Rp),
            ("dBpBp", -(eb * DB.T * Qp + fb * Jp.T)),
            ("dBpdBp", eb**2 * DB.T * Qp * DB + eb * fb * (DB.T * Jp + Jp.T * DB) + fb**2 * Tp),
        ]
        args = ("s", "lam", "wd", "mu", "ea", "fa", "eb", "fb", "N", "Nf", "Pp", "Kp", "Rp",
                "M", "Mh", "Qp", "Jp", "Tp", "Sg")
        outputs = ("N1", "Nf1", "Pp1", "Kp1", "Rp1", "M1", "Mh1", "Qp1", "Jp1", "Tp1",
                   "dN", "dApAp", "dApdAp", "dM", "dBpBp", "dBpdBp", "CA", "DA", "CB", "DB")
        doc = ("One SGD step with momentum on the overlaps (THEORY §7): new state, the "
               "step's Gram matrices (records) and the transfer blocks CA, DA, CB, DB")
        name = "step_momentum"
    else:
        steps += [
            ("dN", -ea * gN),
            ("dM", -eb * gM),
            ("N1", N + dN_), ("M1", M + dM_),
            ("Pp1", CA * Pp * CA.T),
            ("Qp1", CB.T * Qp * CB),
            ("dApAp", -ea * DA * Pp),
            ("dApdAp", ea**2 * DA * Pp * DA.T),
            ("dBpBp", -eb * DB.T * Qp),
            ("dBpdBp", eb**2 * DB.T * Qp * DB),
        ]
        args = ("s", "lam", "wd", "ea", "eb", "N", "Pp", "M", "Qp", "Sg")
        outputs = ("N1", "Pp1", "M1", "Qp1", "dN", "dApAp", "dApdAp", "dM", "dBpBp",
                   "dBpdBp", "CA", "CB")
        doc = ("One SGD step without momentum on the overlaps (THEORY §7): new state, the "
               "step's Gram matrices (records) and the transfer blocks CA, CB")
        name = "step_sgd"
    return Program(name, args, tuple(steps), outputs, doc)


@functools.cache
def flow_program() -> Program:
    """Gradient flow on the overlaps: the time derivatives (module docstring)."""
    P = _sym("P", (r, r))
    Q = _sym("Q", (r, r))
    E = _sym("E", (k, k))
    gN, gM = _sym("gN", (r, k)), _sym("gM", (k, r))
    DA, DB = _sym("DA", (r, r)), _sym("DB", (r, r))
    steps = (
        ("E", s * M * N - Sg),
        ("P", N * N.T + Pp),
        ("Q", M.T * M + Qp),
        ("gN", s * lam * (M.T * E + s * Qp * N) + wd * N),
        ("gM", s * lam * (E * N.T + s * M * Pp) + wd * M),
        ("DA", s**2 * lam * Q + wd * Ir),
        ("DB", s**2 * lam * P + wd * Ir),
        ("dN", -c_A * gN),
        ("dPp", -c_A * (DA * Pp + Pp * DA.T)),
        ("dM", -c_B * gM),
        ("dQp", -c_B * (DB.T * Qp + Qp * DB)),
    )
    return Program("flow_field", ("s", "lam", "wd", "c_A", "c_B", "N", "Pp", "M", "Qp", "Sg"),
                   steps, ("dN", "dPp", "dM", "dQp"),
                   "Gradient-flow vector field on the overlaps (THEORY §7): dN/dτ, dPp/dτ, "
                   "dM/dτ, dQp/dτ")


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class RecordKernel:
    """A record as a trace of the split quantities: name, arguments, dense form, doc."""

    name: str
    args: tuple[str, ...]
    dense: sp.MatrixExpr
    doc: str


@functools.cache
def record_kernels() -> tuple[RecordKernel, ...]:
    """‖E‖², ‖S‖², ‖D‖², ⟨S, D⟩, ⟨E, S⟩, ⟨E, D⟩ (THEORY §3) in the split letters."""
    A = N * V.T + Ap
    B = U * M + Bp
    dA = dN * V.T + dAp
    dB = U * dM + dBp
    E = s * B * A - U * (s * M * N - Ec) * V.T  # Δ⋆ = U·Sg·Vᵀ with Sg = s·M·N − Ec
    S = s * (dB * A + B * dA)
    D = s * dB * dA
    return (
        RecordKernel("residual_norm_sq", ("s", "Ec", "M", "Pp", "N", "Qp"), E.T * E,
                     "‖E‖², E = sBA − Δ⋆ (loss L = ½λ‖E‖²; THEORY §2)"),
        RecordKernel("signal_norm_sq", ("s", "N", "Pp", "M", "Qp", "dN", "dApAp", "dApdAp",
                                        "dM", "dBpBp", "dBpdBp"),
                     S.T * S, "‖S‖², S = s(ΔB·A + B·ΔA) (THEORY §3)"),
        RecordKernel("drift_norm_sq", ("s", "dN", "dApdAp", "dM", "dBpdBp"), D.T * D,
                     "‖D‖², D = sΔB·ΔA (THEORY §3)"),
        RecordKernel("signal_drift_inner", ("s", "N", "M", "dN", "dApAp", "dApdAp", "dM",
                                            "dBpBp", "dBpdBp"),
                     S.T * D, "⟨S, D⟩ (THEORY §3)"),
        RecordKernel("residual_signal_inner", ("s", "Ec", "N", "Pp", "M", "Qp", "dN",
                                               "dApAp", "dM", "dBpBp"),
                     E.T * S, "⟨E, S⟩ (descent_signal = λ⟨E, S⟩; THEORY §3)"),
        RecordKernel("residual_drift_inner", ("s", "Ec", "N", "M", "dN", "dApAp", "dM",
                                              "dBpBp"),
                     E.T * D, "⟨E, D⟩ (descent_drift = λ⟨E, D⟩; THEORY §3)"),
    )


def _token_defs(args) -> dict:
    out = {}
    for a in args:
        if a in GRAMS:
            out[a] = tuple(expand(GRAMS[a]))[0]
        elif a in SHAPES:
            out[a] = ((a, False),)
    return out


@functools.cache
def record_words(kernel: RecordKernel) -> WordSum:
    """The record as a trace word sum over its arguments (factorised)."""
    dense = reduced_words(kernel.dense, trace=True)
    return factorise(dense, _token_defs(kernel.args))


def record_terms(kernel: RecordKernel) -> list:
    """The terms of the factorised record, one SymPy expression each, in sorted order."""
    ws = record_words(kernel)
    return [to_sympy(WordSum((t,), True), SHAPES) for t in ws.terms]


def record_expr(kernel: RecordKernel):
    return to_sympy(record_words(kernel), SHAPES)


# --------------------------------------------------------------------------- derivation
def _subs_coefficients(expr, *, momentum: bool):
    """Program scalars -> optimiser settings (ea = η_A c_g, fa = η_A c_f, …)."""
    if momentum:
        rep = {ea: eta_A * C_G, fa: eta_A * C_F, eb: eta_B * C_G, fb: eta_B * C_F}
    else:
        rep = {ea: eta_A, eb: eta_B}
    return expr.xreplace(rep)


def _dense_momentum_free(expr):
    """The dense expression with μ = 0 (so ν drops) and zero buffers."""
    zero = {mu: 0, Nf: ZeroMatrix(*SHAPES["Nf"]), Fp: ZeroMatrix(*SHAPES["Fp"]),
            Mh: ZeroMatrix(*SHAPES["Mh"]), Hp: ZeroMatrix(*SHAPES["Hp"])}
    return expr.xreplace(zero)


def derive() -> Derivation:
    """Derive and verify the reduced step, the records, the flow and balancedness."""
    der = Derivation("reduced", TITLE)
    defs = _split_defs()
    dense = dense_outputs()

    # Residual decomposition.
    A, F, B, H, Dstar = dense_factors()
    E_dense = s * B * A - Dstar
    E_split = (U * Ec * V.T + s * U * M * Ap + s * Bp * N * V.T + s * Bp * Ap)
    der.results.append(Result("residual in split form (Ec = s·M·N − Sg)", "E", E_split))
    der.check("E = U·Ec·Vᵀ + sU·M·Ap + sBp·N·Vᵀ + sBp·Ap (words)",
              (reduced_words(E_dense) - reduced_words(E_split, defs=defs)).is_zero())

    # The step programs.
    for momentum in (True, False):
        prog = step_program(momentum)
        inl = prog.inline()
        for name in prog.outputs:
            if name in ("CA", "DA", "CB", "DB"):
                continue
            target = dense[name]
            if not momentum:
                target = _dense_momentum_free(target)
            got = _subs_coefficients(inl[name], momentum=momentum)
            ok = (reduced_words(got, defs=defs) - reduced_words(target)).is_zero()
            der.check(f"{prog.name}: {name} = dense step (words, all sizes)", ok)
        for name, expr in prog.steps:
            if name in prog.outputs and name not in ("CA", "DA", "CB", "DB"):
                der.results.append(Result(f"{prog.name}: {name}", name, expr))

    # Records.
    for kernel in record_kernels():
        expr = record_expr(kernel)
        der.results.append(Result(f"{kernel.name}: {kernel.doc}", kernel.name, expr))
        back = reduced_words(expr, trace=True, defs={L(g): GRAMS[g] for g in GRAMS})
        der.check(f"{kernel.name}: factorised = dense (words, all sizes)",
                  (back - reduced_words(kernel.dense, trace=True)).is_zero())
    e2 = record_words(record_kernels()[0])
    nonneg = all(c.is_positive for _, c in e2.terms) and len(e2.terms) == 4
    der.check("‖E‖² = ‖Ec‖² + s²tr(MᵀM·Pp) + s²tr(Qp·NNᵀ) + s²tr(Qp·Pp): four "
              "non-negative terms (no cancellation)", nonneg,
              f"{len(e2.terms)} terms")

    _flow_checks(der, defs)
    _balance_checks(der, defs)
    _linearisation_check(der)
    _init_law_checks(der)
    _numeric_checks(der)
    return der


def _flow_checks(der, defs) -> None:
    """The flow field is the O(η) term of the step (no momentum, η_B = λ_r·η_A), and it
    conserves λ_r·AAᵀ − BᵀB when wd = 0."""
    eps = sp.Symbol("epsilon")
    step = step_program(False).inline()
    flow = flow_program().inline()
    prog = flow_program()
    for name, expr in prog.steps:
        if name in prog.outputs:
            der.results.append(Result(f"flow_field: {name}/dτ", name, expr))
    pairs = {"dN": ("N1", N), "dM": ("M1", M), "dPp": ("Pp1", Pp), "dQp": ("Qp1", Qp)}
    for out, (nxt, cur) in pairs.items():
        incr = (step[nxt] - cur).xreplace({ea: eps * c_A, eb: eps * c_B})
        ws = reduced_words(incr, defs=defs)
        first = ws.coefficient(eps, 1)
        ok = (first - reduced_words(flow[out], defs=defs)).is_zero()
        der.check(f"flow_field: {out}/dτ = [ε¹] of the step with η_A = ε·c_A, η_B = ε·c_B",
                  ok)
    bal = (c_B / c_A) * (flow["dN"] * N.T + N * flow["dN"].T + flow["dPp"]) - (
        flow["dM"].T * M + M.T * flow["dM"] + flow["dQp"])
    ok = reduced_words(bal.xreplace({wd: 0}), defs=defs).is_zero()
    der.results.append(Result("balancedness under the flow (wd = 0)",
                              "d/dτ (λ_r·AAᵀ − BᵀB)", sp.S.Zero))
    der.check("flow conserves λ_r·AAᵀ − BᵀB, λ_r = c_B/c_A (wd = 0; words)", ok)


def _balance_checks(der, defs) -> None:
    """One GD step (no momentum, wd = 0, η_B = λ_r·η_A) changes λ_r·AAᵀ − BᵀB by exactly
    λ_r·ΔAΔAᵀ − ΔBᵀΔB = O(η²)."""
    st = dense_step()
    z = {mu: 0, wd: 0, eta_B: ratio * eta_A, Nf: ZeroMatrix(r, k), Fp: ZeroMatrix(r, d),
         Mh: ZeroMatrix(k, r), Hp: ZeroMatrix(m, r)}
    A0, B0, A1, B1 = (st[x].xreplace(z) for x in ("A", "B", "A1", "B1"))
    dA_, dB_ = A1 - A0, B1 - B0
    change = ratio * (A1 * A1.T - A0 * A0.T) - (B1.T * B1 - B0.T * B0)
    exact = ratio * dA_ * dA_.T - dB_.T * dB_
    ok = (reduced_words(change) - reduced_words(exact)).is_zero()
    der.results.append(Result("balancedness drift of one GD step (μ = 0, wd = 0)",
                              "Δ(λ_r·AAᵀ − BᵀB)", "λ_r·ΔA·ΔAᵀ − ΔBᵀ·ΔB = O(η²)"))
    der.check("one GD step: Δ(λ_r·AAᵀ − BᵀB) = λ_r·ΔAΔAᵀ − ΔBᵀΔB (words)", ok)
    first = reduced_words(change).coefficient(eta_A, 1)
    der.check("its O(η) term vanishes (words)", first.is_zero())


def _linearisation_check(der) -> None:
    """At B = 0 (M = 0) with Pp = p·I, r = k = 1: the step's Jacobian in (M, N) is
    I − diag(η_B, η_A)·H₀, H₀ = [[s²μ, −s·g], [−s·g, 0]], μ = λp, g = λσ⋆ (THEORY §4):
    the unstable growth factor per step is 1 − η·ν₋ with ν₋ the negative eigenvalue."""
    mm, nn, p, sig = sp.symbols("m n p sigma", real=True)
    E = s * mm * nn - sig
    gN = s * lam * (mm * E) + wd * nn  # Qp = 0 at B = 0
    gM = s * lam * (E * nn + s * mm * p) + wd * mm
    M1 = mm - eta_B * gM
    N1 = nn - eta_A * gN
    J = sp.Matrix([[sp.diff(M1, mm), sp.diff(M1, nn)], [sp.diff(N1, mm), sp.diff(N1, nn)]])
    J0 = J.subs({mm: 0, nn: 0, wd: 0})
    mu_, g_ = lam * p, lam * sig
    H0 = sp.Matrix([[s**2 * mu_, -s * g_], [-s * g_, 0]])
    target = sp.eye(2) - sp.diag(eta_B, eta_A) * H0
    der.results.append(Result("linearised step at B = 0, per task direction (r = k = 1)",
                              "J", J0))
    der.check("Jacobian at B = 0 = I − diag(η_B, η_A)·H₀ (THEORY §4 block)",
              sp.simplify(J0 - target) == sp.zeros(2, 2))
    lam_minus = (s**2 * mu_ - sp.sqrt(s**4 * mu_**2 + 4 * s**2 * g_**2)) / 2
    ok = sp.simplify((H0 - lam_minus * sp.eye(2)).det()) == 0
    der.check("THEORY §4: λ₋ = (s²μ − √(s⁴μ² + 4s²g²))/2 is an eigenvalue of H₀", ok)


def _init_law_checks(der) -> None:
    """PEFT's U(−a, a), a = 1/√d: E x² = 1/(3d), Var x² = 4/(45d²), so P = A₀A₀ᵀ has
    E P = I/3, Var P_ii = 4/(45d), Var P_ij = 1/(9d) (i ≠ j): the moment-matched law used
    to sample P when d is too large to draw A₀."""
    x, dd = sp.symbols("x d", positive=True)
    a = 1 / sp.sqrt(dd)
    m2 = sp.integrate(x**2 / (2 * a), (x, -a, a))
    m4 = sp.integrate(x**4 / (2 * a), (x, -a, a))
    var_diag = sp.simplify(dd * (m4 - m2**2))
    var_off = sp.simplify(dd * m2**2)
    der.results += [Result("PEFT init: Var P_ii (P = A₀A₀ᵀ)", "Var(P_ii)", var_diag),
                    Result("PEFT init: Var P_ij, i ≠ j", "Var(P_ij)", var_off)]
    der.check("E P_ii = 1/3, Var P_ii = 4/(45d), Var P_ij = 1/(9d) (PEFT, exact)",
              sp.simplify(dd * m2 - sp.Rational(1, 3)) == 0
              and sp.simplify(var_diag - sp.Rational(4, 45) / dd) == 0
              and sp.simplify(var_off - sp.Rational(1, 9) / dd) == 0)


# --------------------------------------------------------------------------- numeric
def _orthonormal(rng, n: int, q: int) -> np.ndarray:
    qm, rm = np.linalg.qr(rng.standard_normal((n, q)))
    return qm * np.sign(np.diag(rm))


def numeric_point(seed: int, sizes=(7, 9, 3, 2)) -> dict:
    """Seeded dense factors, buffers, orthonormal U, V and settings (float64)."""
    mm_, dd_, rr, kk = sizes
    rng = np.random.default_rng(seed)
    v = {
        "A": rng.standard_normal((rr, dd_)), "F": rng.standard_normal((rr, dd_)),
        "B": rng.standard_normal((mm_, rr)), "H": rng.standard_normal((mm_, rr)),
        "U": _orthonormal(rng, mm_, kk), "V": _orthonormal(rng, dd_, kk),
        "Sg": np.diag(rng.uniform(0.5, 2.0, kk)),
        "s": float(rng.uniform(0.5, 2.0)), "lam": float(rng.uniform(0.5, 2.0)),
        "wd": float(rng.uniform(0.0, 0.1)), "mu": float(rng.uniform(0.1, 0.9)),
        "eta_A": float(rng.uniform(0.01, 0.2)), "ratio": float(rng.uniform(0.5, 4.0)),
    }
    return v


def dense_numeric_step(v: dict, nesterov: bool) -> dict:
    """The dense torch SGD step in NumPy (an independent implementation)."""
    A, F, B, H, U_, V_ = v["A"], v["F"], v["B"], v["H"], v["U"], v["V"]
    Dstar = U_ @ v["Sg"] @ V_.T
    G = v["lam"] * (v["s"] * B @ A - Dstar)
    gA = v["s"] * B.T @ G + v["wd"] * A
    gB = v["s"] * G @ A.T + v["wd"] * B
    out = {}
    for p, g, buf, lr, key in ((A, gA, F, v["eta_A"], "A"),
                               (B, gB, H, v["eta_A"] * v["ratio"], "B")):
        nb = v["mu"] * buf + g
        step = g + v["mu"] * nb if nesterov else nb
        out[key + "1"] = p - lr * step
        out[key + "buf1"] = nb
    return out


def split_numeric(v: dict) -> dict:
    """The reduced state of a dense numeric point."""
    U_, V_ = v["U"], v["V"]
    PV = np.eye(V_.shape[0]) - V_ @ V_.T
    PU = np.eye(U_.shape[0]) - U_ @ U_.T
    Ap_, Fp_ = v["A"] @ PV, v["F"] @ PV
    Bp_, Hp_ = PU @ v["B"], PU @ v["H"]
    return {"N": v["A"] @ V_, "Nf": v["F"] @ V_, "M": U_.T @ v["B"], "Mh": U_.T @ v["H"],
            "Pp": Ap_ @ Ap_.T, "Kp": Ap_ @ Fp_.T, "Rp": Fp_ @ Fp_.T,
            "Qp": Bp_.T @ Bp_, "Jp": Bp_.T @ Hp_, "Tp": Hp_.T @ Hp_, "Sg": v["Sg"]}


def run_program(prog: Program, values: dict) -> dict:
    """Evaluate a program with NumPy (SymPy's NumPy printer, line by line)."""
    from ._common import EvalPrinter

    env = dict(values)
    rr = values["N"].shape[0]
    for name, expr in prog.steps:
        mats = sorted(expr.atoms(MatrixSymbol), key=str)
        scal = sorted((x for x in expr.free_symbols
                       if not isinstance(x, MatrixSymbol) and str(x) not in ("r", "k")),
                      key=str)
        e = expr.xreplace({Ir: MatrixSymbol("I_r", r, r)})
        mats = sorted(e.atoms(MatrixSymbol), key=str)
        fn = sp.lambdify(mats + scal, e, modules="numpy", printer=EvalPrinter)
        env["I_r"] = np.eye(rr)
        env[name] = np.asarray(fn(*(env[str(a)] for a in mats + scal)), dtype=float)
    return env


def _numeric_checks(der) -> None:
    for nesterov in (False, True):
        v = numeric_point(7 + int(nesterov))
        dense = dense_numeric_step(v, nesterov)
        cg = 1 + v["mu"] if nesterov else 1.0
        cf = v["mu"] ** 2 if nesterov else v["mu"]
        etaB = v["eta_A"] * v["ratio"]
        vals = {**split_numeric(v), "s": v["s"], "lam": v["lam"], "wd": v["wd"],
                "mu": v["mu"], "ea": v["eta_A"] * cg, "fa": v["eta_A"] * cf,
                "eb": etaB * cg, "fb": etaB * cf}
        env = run_program(step_program(True), vals)
        after = split_numeric({**v, "A": dense["A1"], "F": dense["Abuf1"], "B": dense["B1"],
                               "H": dense["Bbuf1"]})
        err = max(rel_err(env[o + "1"], after[o]) for o in
                  ("N", "Nf", "M", "Mh", "Pp", "Kp", "Rp", "Qp", "Jp", "Tp"))
        der.check(f"step_momentum = dense torch SGD step (nesterov={nesterov}), float64 "
                  f"(rtol 1e-12)", err < 1e-12, f"{err:.1e}")
    v = numeric_point(9)
    v0 = {**v, "F": 0 * v["F"], "H": 0 * v["H"], "mu": 0.0}
    dense = dense_numeric_step(v0, False)
    vals = {**split_numeric(v0), "s": v["s"], "lam": v["lam"], "wd": v["wd"],
            "ea": v["eta_A"], "eb": v["eta_A"] * v["ratio"]}
    env = run_program(step_program(False), vals)
    after = split_numeric({**v0, "A": dense["A1"], "B": dense["B1"]})
    err = max(rel_err(env[o + "1"], after[o]) for o in ("N", "M", "Pp", "Qp"))
    der.check("step_sgd = dense SGD step, float64 (rtol 1e-12)", err < 1e-12, f"{err:.1e}")
    # Records against their dense definitions.
    split = split_numeric(v0)
    dA_, dB_ = dense["A1"] - v0["A"], dense["B1"] - v0["B"]
    S_ = v["s"] * (dB_ @ v0["A"] + v0["B"] @ dA_)
    D_ = v["s"] * dB_ @ dA_
    E_ = v["s"] * v0["B"] @ v0["A"] - v["U"] @ v["Sg"] @ v["V"].T
    ref = {"residual_norm_sq": np.sum(E_ * E_), "signal_norm_sq": np.sum(S_ * S_),
           "drift_norm_sq": np.sum(D_ * D_), "signal_drift_inner": np.sum(S_ * D_),
           "residual_signal_inner": np.sum(E_ * S_), "residual_drift_inner": np.sum(E_ * D_)}
    vals_r = {**split, "s": v["s"], "Ec": v["s"] * split["M"] @ split["N"] - v["Sg"],
              "dN": env["dN"], "dM": env["dM"], "dApAp": env["dApAp"],
              "dApdAp": env["dApdAp"], "dBpBp": env["dBpBp"], "dBpdBp": env["dBpdBp"]}
    from ._common import evaluate
    worst = 0.0
    for kernel in record_kernels():
        got = float(evaluate(record_expr(kernel), vals_r))
        worst = max(worst, abs(got - ref[kernel.name]) / max(abs(ref[kernel.name]), 1e-300))
    der.check("record kernels = dense ‖E‖², ‖S‖², ‖D‖², ⟨S,D⟩, ⟨E,S⟩, ⟨E,D⟩, float64 "
              "(rtol 1e-11)", worst < 1e-11, f"{worst:.1e}")
    # Flow against a centred difference in η of the dense step (Pp, Qp are quadratic in η,
    # so the centred difference is exact up to rounding).
    env_f = run_program(flow_program(), {**split, "s": v["s"], "lam": v["lam"], "wd": v["wd"],
                                         "c_A": 1.0, "c_B": v["ratio"]})
    h = 1e-6
    outs = []
    for sign in (1.0, -1.0):
        d1 = dense_numeric_step({**v0, "eta_A": sign * h}, False)
        outs.append(split_numeric({**v0, "A": d1["A1"], "B": d1["B1"]}))
    err = max(rel_err((outs[0][o] - outs[1][o]) / (2 * h), env_f["d" + o])
              for o in ("N", "M", "Pp", "Qp"))
    der.check("flow_field = centred difference of the dense step in η (h = 1e-6, rtol 1e-7)",
              err < 1e-7, f"{err:.1e}")


# --------------------------------------------------------------------------- codegen
GENERATED_NAME = "reduced.py"
HEADER = ("# Generated by derivations/reduced.py (signaldrift._derivations.reduced);\n"
          "# regenerate with `signaldrift derive --write`. Do NOT modify by hand.\n")


def _printer():
    from ._codegen import KernelPrinter

    class ProgramPrinter(KernelPrinter):
        """KernelPrinter plus identities (``I_r``) and parenthesised sums inside products."""

        def _print_Identity(self, expr) -> str:
            return f"I_{expr.shape[0]}"

        def _print_chain(self, mats) -> str:
            wrapped = []
            for x in mats:
                wrapped.append(x)
            text = super()._print_chain(wrapped)
            return text

        def _print(self, expr, **kwargs) -> str:
            if isinstance(expr, MatAdd) and getattr(self, "_in_product", False):
                return "(" + super()._print(expr, **kwargs) + ")"
            return super()._print(expr, **kwargs)

        def _print_MatMul(self, expr) -> str:
            coeff, mats = expr.as_coeff_matrices()
            prev = getattr(self, "_in_product", False)
            self._in_product = len(mats) > 1 or coeff != 1
            try:
                prod = self._print_chain(mats)
            finally:
                self._in_product = prev
            if coeff == 1:
                return prod
            if coeff == -1:
                return f"-{prod}" if len(mats) == 1 else f"-({prod})"
            c = self._print(coeff)
            if isinstance(coeff, sp.Add):
                c = f"({c})"
            return f"{c}*" + (f"({prod})" if len(mats) > 1 else prod)

    return ProgramPrinter()


def _render_program(prog: Program) -> str:
    pr = _printer()
    lines = [f"\n\n@njit(cache=True)\ndef {prog.name}({', '.join(prog.args)}):\n",
             f'    """{prog.doc}."""\n']
    text = "".join(pr.doprint(e) for _, e in prog.steps)
    if "I_r" in text:
        first = "N" if "N" in prog.args else prog.args[0]
        lines.append(f"    I_r = numpy.eye({first}.shape[0])\n")
    for name, expr in prog.steps:
        lines.append(f"    {name} = {pr.doprint(expr)}\n")
    lines.append(f"    return {', '.join(prog.outputs)}\n")
    return "".join(lines)


def _render_record(kernel: RecordKernel) -> str:
    from ._codegen import _body

    terms = record_terms(kernel)
    used = {str(x) for t in terms for x in t.free_symbols}
    unknown = used - set(kernel.args) - {"m", "d", "r", "k"}
    if unknown:
        raise ValueError(f"{kernel.name} uses {sorted(unknown)} outside its arguments")
    return (f"\n\n@njit(cache=True)\ndef {kernel.name}({', '.join(kernel.args)}):\n"
            f'    """{kernel.doc}."""\n' + _body(terms))


def _docstring() -> str:
    return (
        '"""Reduced (overlap) dynamics of THEORY.md §7: isotropic Σ = lam·I, full-batch SGD.\n'
        "\n"
        "Derived and verified in ``signaldrift derive reduced``. Notation: A = N·Vᵀ + Ap,\n"
        "B = U·M + Bp (Ap·V = 0, Uᵀ·Bp = 0); momentum buffers F = Nf·Vᵀ + Fp, H = U·Mh + Hp;\n"
        "Pp = Ap·Apᵀ, Kp = Ap·Fpᵀ, Rp = Fp·Fpᵀ, Qp = Bpᵀ·Bp, Jp = Bpᵀ·Hp, Tp = Hpᵀ·Hp (r×r);\n"
        "N, Nf (r×k); M, Mh (k×r); Sg = diag(σ⋆); Ec = s·M·N − Sg (k×k); the step\n"
        "ΔA = dN·Vᵀ + dAp, ΔB = U·dM + dBp with dApAp = dAp·Apᵀ, dApdAp = dAp·dApᵀ,\n"
        "dBpBp = dBpᵀ·Bp, dBpdBp = dBpᵀ·dBp. Step coefficients ea = η_A·c_g, fa = η_A·c_f,\n"
        "eb = η_B·c_g, fb = η_B·c_f with c_g = 1 + νμ, c_f = μ(1 − ν + νμ) (ν = Nesterov);\n"
        "flow rates c_A, c_B of A and B (the flow engine: c_A = 1, c_B = λ_r, time\n"
        "τ = Σ lr/(1 − μ)).\n"
        '"""\n')


def render() -> str:
    """Source of ``signaldrift/_generated/reduced.py``."""
    chunks = [HEADER, _docstring(), "import numpy\nfrom numba import njit\n"]
    chunks += [_render_program(step_program(True)), _render_program(step_program(False)),
               _render_program(flow_program())]
    chunks += [_render_record(kernel) for kernel in record_kernels()]
    return "".join(chunks)


__all__ = ["TITLE", "derive", "render", "step_program", "flow_program", "record_kernels",
           "record_expr", "record_terms", "reduced_words", "expand", "SHAPES", "GRAMS",
           "run_program", "numeric_point", "split_numeric", "dense_numeric_step"]
