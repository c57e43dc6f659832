"""Symbols, result containers and the verifications shared by every derivation.

Besides the word-level proofs of :mod:`._algebra` (trace identities), each identity is
verified (THEORY.md §2–§5):

- symbolically, by :func:`explicit_zero`: every matrix symbol is replaced by an explicit
  matrix of small generic size (:data:`SMALL`: independent symbols per entry, Σ and
  diag(σ⋆) diagonal) and the difference is expanded to zero;
- numerically, by :func:`evaluate` at seeded random float64 points (:func:`random_point`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import sympy as sp
from sympy.matrices.expressions import MatrixSymbol
from sympy.printing.numpy import NumPyPrinter

# Dimensions (THEORY §1–§2): output m, input d, LoRA rank r, task rank k, batch n.
m, d, r, k, n = sp.symbols("m d r k n", integer=True, positive=True)
s, eta = sp.symbols("s eta", positive=True)
#: Small parameter of directional derivatives: f(θ + ε·t) = f + ε·Df[t] + ε²·….
epsilon = sp.Symbol("epsilon")

#: Base matrices: name -> shape.
SHAPES: dict[str, tuple] = {
    "A": (r, d), "B": (m, r), "U": (m, k), "V": (d, k), "Sg": (k, k), "Sigma": (d, d),
    "dA": (r, d), "dB": (m, r), "tA": (r, d), "tB": (m, r),
    "X": (n, d), "N": (n, m), "R": (n, m), "G": (m, d), "E": (m, d), "DW": (m, d),
    "PA": (r, d), "PB": (m, r),
}
#: Explicit sizes of the symbolic verification: distinct, so that shape errors show.
SMALL = {m: 3, d: 4, r: 2, k: 2, n: 2}
#: Sizes of the numeric verification.
NUMERIC = {m: 7, d: 9, r: 3, k: 2, n: 5}
DIAGONAL = frozenset({"Sigma", "Sg"})


def M(name: str) -> MatrixSymbol:
    """The base matrix symbol ``name`` with its shape from :data:`SHAPES`."""
    return MatrixSymbol(name, *SHAPES[name])


A, B, U, V, Sg, Sigma = (M(x) for x in ("A", "B", "U", "V", "Sg", "Sigma"))
dA, dB, tA, tB, X, N, R = (M(x) for x in ("dA", "dB", "tA", "tB", "X", "N", "R"))


def delta_star():
    """Δ⋆ = U diag(σ⋆) Vᵀ (THEORY §1)."""
    return U * Sg * V.T


def residual():
    """E = sBA − Δ⋆ (THEORY §2)."""
    return s * B * A - delta_star()


# --------------------------------------------------------------------------- results
@dataclass
class Check:
    """One verified identity: its name, whether it holds, and how it was checked."""

    name: str
    passed: bool
    detail: str = ""


@dataclass
class Result:
    """A derived equation ``lhs = rhs`` (SymPy objects or strings)."""

    label: str
    lhs: object
    rhs: object
    proportional: bool = False

    def text(self) -> str:
        rel = "∝" if self.proportional else "="
        return f"{self.label}:\n    {_str(self.lhs)} {rel} {_str(self.rhs)}"

    def latex(self) -> str:
        rel = r"\propto" if self.proportional else "="
        return f"% {self.label}\n{_tex(self.lhs)} {rel} {_tex(self.rhs)}"


def _str(x) -> str:
    return x if isinstance(x, str) else sp.sstr(x)


def _tex(x) -> str:
    return x if isinstance(x, str) else sp.latex(x)


@dataclass
class Derivation:
    """The results of one derivation script and the checks of its identities."""

    name: str
    title: str
    results: list[Result] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def report(self) -> str:
        """Plain text, then LaTeX, then the checks."""
        lines = [f"== {self.name}: {self.title}", "", "-- plain text"]
        lines += [res.text() for res in self.results]
        lines += ["", "-- LaTeX"]
        lines += [res.latex() for res in self.results]
        lines += ["", "-- checks"]
        lines += [f"[{'ok' if c.passed else 'FAIL'}] {c.name}" + (f": {c.detail}" if c.detail
                                                                   else "")
                  for c in self.checks]
        return "\n".join(lines)

    def check(self, name: str, passed, detail: str = "") -> None:
        self.checks.append(Check(name, bool(passed), detail))


# --------------------------------------------------------------------------- verification
def _explicit_matrix(sym: MatrixSymbol, sizes: dict) -> sp.ImmutableMatrix:
    rows, cols = (int(sp.sympify(x).subs(sizes)) for x in sym.shape)
    if sym.name in DIAGONAL:
        return sp.ImmutableMatrix(sp.diag(*sp.symbols(f"{sym.name}_0:{rows}", positive=True)))
    entries = sp.symbols(f"{sym.name}_0:{rows * cols}")
    return sp.ImmutableMatrix(rows, cols, entries)


def explicit(expr, sizes: dict = SMALL, defs: dict | None = None):
    """``expr`` with every matrix symbol an explicit matrix (``defs`` substituted first)."""
    if defs:
        expr = expr.xreplace(defs)
    env = {sym: _explicit_matrix(sym, sizes) for sym in expr.atoms(MatrixSymbol)}
    return sp.expand(expr.xreplace(env).doit())


def explicit_zero(expr, sizes: dict = SMALL, defs: dict | None = None) -> bool:
    """Whether ``expr`` (scalar or matrix) expands to exactly zero at explicit sizes."""
    val = explicit(expr, sizes, defs)
    if isinstance(val, sp.ZeroMatrix):
        return True
    if isinstance(val, sp.MatrixBase):
        return all(sp.expand(x) == 0 for x in val)
    return sp.expand(val) == 0


def random_point(seed: int, sizes: dict = NUMERIC) -> dict[str, np.ndarray]:
    """Seeded float64 values of every base matrix (Σ, diag(σ⋆) positive diagonal)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in sorted(SHAPES):
        rows, cols = (int(sp.sympify(x).subs(sizes)) for x in SHAPES[name])
        if name in DIAGONAL:
            out[name] = np.diag(rng.uniform(0.5, 2.0, rows))
        else:
            out[name] = rng.standard_normal((rows, cols))
    out["s"] = float(rng.uniform(0.5, 3.0))
    out["eta"] = float(rng.uniform(0.01, 0.5))
    out.update({str(x): int(size) for x, size in sizes.items()})
    return out


class EvalPrinter(NumPyPrinter):
    """SymPy's NumPy printer, plus ``Trace`` (which it does not print)."""

    def _print_Trace(self, expr) -> str:
        return f"numpy.trace({self._print(expr.arg)})"


def evaluate(expr, values: dict):
    """Evaluate a SymPy (matrix) expression with NumPy (SymPy's own NumPy printer)."""
    mats = sorted(expr.atoms(MatrixSymbol), key=str)
    scalars = sorted((x for x in expr.free_symbols if not isinstance(x, MatrixSymbol)), key=str)
    args = mats + scalars
    fn = sp.lambdify(args, expr, modules="numpy", printer=EvalPrinter)
    return fn(*(values[str(a)] for a in args))


def rel_err(a, b) -> float:
    """max|a − b| / max(max|b|, tiny)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def expect_iid(expr, entries, moments: dict):
    """E of a polynomial in iid symmetric entries: E[x^p] = ``moments[p]`` (0 for odd p)."""
    poly = sp.Poly(sp.expand(expr), *entries)
    out = sp.S.Zero
    for powers, c in poly.terms():
        term = c
        for p in powers:
            if p % 2:
                term = 0
                break
            if p:
                term *= moments[p]
        out += term
    return out
