"""Words: sums of products of matrices, with trace cyclicity and Gram-matrix factorisation.

A SymPy matrix expression is expanded into a :class:`WordSum`, a sum ``Σ c·M₁M₂⋯M_p`` of
scalar coefficients ``c`` times words of letters (a matrix symbol, possibly transposed).
A trace sum ``Σ c·tr(M₁⋯M_p)`` is kept in a canonical form (the least rotation of the word
or of its transpose), so that two scalar expressions equal by ``tr(XY) = tr(YX)`` and
``tr(X) = tr(Xᵀ)`` have the same terms. :func:`factorise` rewrites every word as a product
of named sub-words (the Gram matrices and thin products of THEORY.md §2 "Cost").
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.matrices.expressions import MatAdd, MatrixExpr, MatrixSymbol, Trace, Transpose

Letter = tuple[str, bool]  # (symbol name, transposed)
Word = tuple[Letter, ...]

#: Letters equal to their transpose (Σ and diag(σ⋆) are diagonal).
SYMMETRIC = frozenset({"Sigma", "Sg"})


def _letter(name: str, transposed: bool) -> Letter:
    return (name, transposed and name not in SYMMETRIC)


def transpose_word(word: Word) -> Word:
    """``(M₁⋯M_p)ᵀ = M_pᵀ⋯M₁ᵀ``."""
    return tuple(_letter(n, not t) for n, t in reversed(word))


def canonical_trace_word(word: Word) -> Word:
    """The least of the rotations of ``word`` and of its transpose (same trace)."""
    if not word:
        return word
    cands = []
    for w in (word, transpose_word(word)):
        cands.extend(w[i:] + w[:i] for i in range(len(w)))
    return min(cands)


@dataclass(frozen=True)
class WordSum:
    """``Σ coeff·word`` (``trace=False``, a matrix) or ``Σ coeff·tr(word)`` (a scalar).

    In a trace sum an empty word stands for the scalar 1 (a term ``coeff·1``).
    """

    terms: tuple[tuple[Word, sp.Expr], ...]
    trace: bool

    @classmethod
    def build(cls, pairs, trace: bool) -> "WordSum":
        """Combine like terms (canonical words for traces), drop zeros, sort."""
        acc: dict[Word, sp.Expr] = {}
        for word, coeff in pairs:
            key = canonical_trace_word(word) if trace else word
            acc[key] = acc.get(key, sp.S.Zero) + coeff
        terms = []
        for word in sorted(acc):
            c = sp.expand(acc[word])
            if c != 0:
                terms.append((word, c))
        return cls(tuple(terms), trace)

    def __add__(self, other: "WordSum") -> "WordSum":
        assert self.trace == other.trace
        return WordSum.build(self.terms + other.terms, self.trace)

    def __sub__(self, other: "WordSum") -> "WordSum":
        return self + other.scaled(-1)

    def scaled(self, c) -> "WordSum":
        return WordSum.build([(w, c * x) for w, x in self.terms], self.trace)

    def is_zero(self) -> bool:
        return not self.terms

    def coefficient(self, x: sp.Symbol, p: int) -> "WordSum":
        """The part proportional to ``x**p`` (coefficients are polynomials in x)."""
        return WordSum.build(
            [(w, sp.Poly(c, x).coeff_monomial(x**p)) for w, c in self.terms], self.trace)

    def drop(self, name: str) -> "WordSum":
        """Set the letter ``name`` to zero (drop every term that contains it)."""
        return WordSum.build(
            [(w, c) for w, c in self.terms if all(n != name for n, _ in w)], self.trace)

    def letters(self) -> set[str]:
        return {n for w, _ in self.terms for n, _ in w}


def words(expr: MatrixExpr) -> WordSum:
    """Expand a matrix expression into a (matrix) :class:`WordSum`."""
    expanded = sp.expand(expr)
    if expanded == 0 or isinstance(expanded, sp.ZeroMatrix):
        return WordSum((), False)
    pairs = []
    for term in (expanded.args if isinstance(expanded, MatAdd) else (expanded,)):
        if isinstance(term, sp.ZeroMatrix):
            continue
        coeff, mats = (term.as_coeff_matrices() if isinstance(term, sp.MatMul)
                       else (sp.S.One, [term]))
        word = []
        for mat in mats:
            if isinstance(mat, MatrixSymbol):
                word.append(_letter(mat.name, False))
            elif isinstance(mat, Transpose) and isinstance(mat.arg, MatrixSymbol):
                word.append(_letter(mat.arg.name, True))
            elif (isinstance(mat, sp.MatPow) and isinstance(mat.base, MatrixSymbol)
                  and mat.exp.is_Integer and mat.exp > 0):
                word.extend([_letter(mat.base.name, False)] * int(mat.exp))
            else:
                raise TypeError(f"cannot read {mat!r} as a letter")
        pairs.append((tuple(word), coeff))
    return WordSum.build(pairs, False)


def word_of(expr: MatrixExpr) -> Word:
    """The word of a single product (coefficient 1)."""
    ws = words(expr)
    if len(ws.terms) != 1 or ws.terms[0][1] != 1:
        raise ValueError(f"{expr} is not a single product")
    return ws.terms[0][0]


def trace(ws: WordSum) -> WordSum:
    """``tr`` of a matrix word sum."""
    assert not ws.trace
    return WordSum.build(ws.terms, True)


def inner(X: MatrixExpr, Y: MatrixExpr) -> WordSum:
    """Frobenius inner product ``⟨X, Y⟩ = tr(XᵀY)``."""
    return trace(words(X.T * Y))


def norm_sq(X: MatrixExpr) -> WordSum:
    """``‖X‖² = tr(XᵀX)``."""
    return inner(X, X)


def gradient(differential: WordSum, direction: str) -> WordSum:
    """The gradient ∇ with ``differential = ⟨∇, T⟩``, T the letter ``direction``.

    Every term must hold T exactly once; ``tr(M T) = ⟨Mᵀ, T⟩`` gives ``∇ = Σ c·Mᵀ``.
    """
    assert differential.trace
    pairs = []
    for word, c in differential.terms:
        hits = [i for i, (n, _) in enumerate(word) if n == direction]
        if len(hits) != 1:
            raise ValueError(f"term {word} is not linear in {direction}")
        if word[hits[0]][1]:
            word = transpose_word(word)
            hits = [len(word) - 1 - hits[0]]
        i = hits[0]
        rotated = word[i + 1:] + word[:i]
        pairs.append((transpose_word(rotated), c))
    return WordSum.build(pairs, False)


# --------------------------------------------------------------------------- to SymPy
def word_matrix(word: Word, shapes: dict[str, tuple]) -> MatrixExpr:
    """The SymPy product of a word's letters (``shapes``: name -> (rows, cols))."""
    mats = []
    for name, transposed in word:
        sym = MatrixSymbol(name, *shapes[name])
        mats.append(sym.T if transposed else sym)
    return sp.MatMul(*mats) if len(mats) > 1 else mats[0]


def to_sympy(ws: WordSum, shapes: dict[str, tuple], scalars: dict | None = None):
    """The SymPy expression of a word sum; letters named in ``scalars`` are scalars."""
    scalars = scalars or {}
    terms = []
    for word, c in ws.terms:
        scal = [scalars[n] for n, _ in word if n in scalars]
        mats = tuple(lt for lt in word if lt[0] not in scalars)
        c = c * sp.Mul(*scal)
        if not mats:
            terms.append(c)
        elif ws.trace:
            terms.append(c * Trace(word_matrix(mats, shapes)))
        else:
            terms.append(c * word_matrix(mats, shapes))
    if not terms:
        return sp.S.Zero
    if len(terms) == 1:
        return terms[0]
    return sp.Add(*terms) if ws.trace else sp.MatAdd(*terms)


# --------------------------------------------------------------------------- factorising
def _tokenise(word: Word, tokens: dict[Word, Letter]):
    """Cheapest split of ``word`` into known sub-words: (#tokens, #transposes, tokens)."""
    best: list = [None] * (len(word) + 1)
    best[len(word)] = (0, 0, ())
    for i in range(len(word) - 1, -1, -1):
        for j in range(i + 1, len(word) + 1):
            tok = tokens.get(word[i:j])
            if tok is None or best[j] is None:
                continue
            cand = (best[j][0] + 1, best[j][1] + tok[1], (tok,) + best[j][2])
            if best[i] is None or cand < best[i]:
                best[i] = cand
    return best[0]


def factorise(ws: WordSum, defs: dict[str, Word],
              scalar_defs: dict[str, Word] | None = None) -> WordSum:
    """Rewrite every word of ``ws`` as a product of the named sub-words ``defs``.

    ``defs`` maps a token name (a Gram matrix, a thin product, or a plain letter allowed
    as is) to its word; a token also matches its transpose. For a trace sum, every
    rotation of the word and of its transpose is tried; ``scalar_defs`` names whole traces
    (constants such as ``c_loss = tr(Δ⋆ΣΔ⋆ᵀ)``). The split with the fewest tokens, then the
    fewest transposes, then the least names is kept, so the result is deterministic.

    Raises:
        ValueError: a word cannot be written with the given tokens.
    """
    tokens: dict[Word, Letter] = {}
    for name in sorted(defs):
        w = defs[name]
        tokens.setdefault(w, (name, False))
        tokens.setdefault(transpose_word(w), (name, w != transpose_word(w)))
    consts = {canonical_trace_word(w): name for name, w in (scalar_defs or {}).items()}
    pairs = []
    for word, c in ws.terms:
        if ws.trace and word in consts:
            pairs.append((((consts[word], False),), c))
            continue
        cands = {word}
        if ws.trace:
            for w in (word, transpose_word(word)):
                cands.update(w[i:] + w[:i] for i in range(len(w)))
        found = [t for t in (_tokenise(w, tokens) for w in sorted(cands)) if t is not None]
        if not found:
            raise ValueError(f"cannot write {word} with tokens {sorted(defs)}")
        pairs.append((min(found)[2], c))
    # Token words are already canonical choices; combine equal ones without re-rotating.
    acc: dict[Word, sp.Expr] = {}
    for w, c in pairs:
        acc[w] = acc.get(w, sp.S.Zero) + c
    terms = tuple((w, sp.expand(acc[w])) for w in sorted(acc) if sp.expand(acc[w]) != 0)
    return WordSum(terms, ws.trace)


def expand_tokens(ws: WordSum, defs: dict[str, Word]) -> WordSum:
    """Inverse of :func:`factorise`: replace each token by its word."""
    pairs = []
    for word, c in ws.terms:
        out: list[Letter] = []
        for name, transposed in word:
            w = defs.get(name, ((name, False),))
            out.extend(transpose_word(w) if transposed else w)
        pairs.append((tuple(out), c))
    return WordSum.build(pairs, ws.trace)
