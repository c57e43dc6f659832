"""Feature bases of the input space (THEORY.md §1): ``Σ = Q diag(λ) Qᵀ``.

The simulator keeps the input-side factor in Σ's eigen-coordinates (``Ã = A Q``), where Σ
is diagonal and every factorised quantity of THEORY §2 is cheap. The feature basis only
matters where an operation is not rotation-equivariant: Adam's per-coordinate moments act
on the feature coordinates ``A = Ã Qᵀ`` (SGD, momentum and weight decay are equivariant, so
they never rotate). A row vector ``x`` of eigen-coordinates has feature coordinates
``x Qᵀ`` (:func:`to_features`) and back ``x Q`` (:func:`to_eigen`).

Three kinds of Q:

- ``eigen``: Q = I (features are Σ's eigen-directions; a diagonal Σ flatters Adam).
- ``givens``: a seeded structured random rotation, the product of two rounds of random
  butterflies: each round relabels the coordinates by a random permutation π and applies
  ⌈log₂ d⌉ layers of Givens rotations with uniform random angles on the pairs
  ``(π(p), π(p xor 2^ℓ))`` (every d, not only powers of two). It is orthogonal, dense
  (every feature mixes every eigen-direction) but not Haar; applying it to an r×d matrix
  costs ``O(r·d·log d)`` (6 flops per rotation, d·⌈log₂ d⌉ rotations), against ``O(r·d²)``
  for a dense Q. This is what ``basis = "random"`` uses.
- ``dense``: any orthogonal Q (d×d) given by the user (e.g. the eigenvectors of a full Σ);
  ``O(r·d²)`` per application.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numba import njit

from ._seeding import rng_for

__all__ = ["Basis", "BASIS_EIGEN", "BASIS_GIVENS", "BASIS_DENSE", "to_features", "to_eigen"]

BASIS_EIGEN, BASIS_GIVENS, BASIS_DENSE = 0, 1, 2
_KINDS = {"eigen": BASIS_EIGEN, "givens": BASIS_GIVENS, "dense": BASIS_DENSE}


@njit(cache=True)
def _givens(X, pairs, cs, forward):
    """Apply the Givens rotations to every row of X (in order, or the inverse: reversed
    and transposed). Works on the transpose (d × r), so each rotation updates two
    contiguous r-vectors (vectorisable) instead of two scattered entries per row."""
    Xt = np.ascontiguousarray(X.T)
    r = Xt.shape[1]
    G = pairs.shape[0]
    for h in range(G):
        g = h if forward else G - 1 - h
        i, j = pairs[g, 0], pairs[g, 1]
        c, s = cs[g, 0], cs[g, 1]
        if not forward:
            s = -s
        xi, xj = Xt[i], Xt[j]
        for q in range(r):
            a, b = xi[q], xj[q]
            xi[q] = c * a - s * b
            xj[q] = s * a + c * b
    return np.ascontiguousarray(Xt.T)


@njit(cache=True)
def to_features(X, code, pairs, cs, Q):
    """Feature coordinates ``X Qᵀ`` of the rows of ``X`` (eigen-coordinates), a new array
    (``X`` itself for the eigenbasis)."""
    if code == BASIS_EIGEN:
        return X
    if code == BASIS_DENSE:
        return X @ Q.T
    return _givens(X, pairs, cs, True)


@njit(cache=True)
def to_eigen(X, code, pairs, cs, Q):
    """Eigen-coordinates ``X Q`` of the rows of ``X`` (feature coordinates), a new array
    (``X`` itself for the eigenbasis)."""
    if code == BASIS_EIGEN:
        return X
    if code == BASIS_DENSE:
        return X @ Q
    return _givens(X, pairs, cs, False)


@dataclass(frozen=True)
class Basis:
    """An orthogonal feature basis Q of R^d (columns: Σ's eigenvectors in feature
    coordinates). Build it with :meth:`eigen`, :meth:`random` or :meth:`from_matrix`.

    Attributes:
        kind: ``"eigen"``, ``"givens"`` or ``"dense"``.
        d: the dimension.
        pairs: (G, 2) int64 coordinate pairs of the Givens rotations (``givens``).
        cs: (G, 2) their (cos θ, sin θ).
        Q: (d, d) the matrix (``dense``), else (0, 0).
    """

    kind: str
    d: int
    pairs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    cs: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    Q: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))

    @classmethod
    def eigen(cls, d: int) -> "Basis":
        """Q = I."""
        return cls(kind="eigen", d=int(d))

    @classmethod
    def random(cls, d: int, seed: int) -> "Basis":
        """The seeded structured rotation of the module docstring (stream ``"basis"``)."""
        rng = rng_for(seed, "basis")
        layers = max(1, math.ceil(math.log2(d))) if d > 1 else 0
        pairs, angles = [], []
        p = np.arange(d)
        for _ in range(2):
            perm = rng.permutation(d)
            for ell in range(layers):
                partner = p ^ (1 << ell)
                keep = (partner > p) & (partner < d)
                pairs.append(np.stack([perm[p[keep]], perm[partner[keep]]], axis=1))
                angles.append(rng.uniform(0.0, 2.0 * np.pi, size=int(keep.sum())))
        if pairs:
            pr = np.ascontiguousarray(np.concatenate(pairs), dtype=np.int64)
            th = np.concatenate(angles)
        else:
            pr, th = np.zeros((0, 2), dtype=np.int64), np.zeros(0)
        cs = np.ascontiguousarray(np.stack([np.cos(th), np.sin(th)], axis=1))
        return cls(kind="givens", d=int(d), pairs=pr, cs=cs)

    @classmethod
    def from_matrix(cls, Q: np.ndarray) -> "Basis":
        """A dense orthogonal Q (d×d); the caller checks orthogonality."""
        Q = np.ascontiguousarray(Q, dtype=np.float64)
        return cls(kind="dense", d=Q.shape[0], Q=Q)

    @property
    def code(self) -> int:
        return _KINDS[self.kind]

    def kernel_args(self) -> tuple:
        """``(code, pairs, cs, Q)``, the arguments of :func:`to_features`/:func:`to_eigen`."""
        return self.code, self.pairs, self.cs, self.Q

    def to_features(self, X: np.ndarray) -> np.ndarray:
        """Feature coordinates ``X Qᵀ`` of the rows of ``X`` (a copy)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        Y = to_features(X.reshape(-1, self.d) if X.ndim == 1 else X, *self.kernel_args())
        return np.array(Y, copy=True).reshape(X.shape)

    def to_eigen(self, X: np.ndarray) -> np.ndarray:
        """Eigen-coordinates ``X Q`` of the rows of ``X`` (a copy)."""
        X = np.ascontiguousarray(X, dtype=np.float64)
        Y = to_eigen(X.reshape(-1, self.d) if X.ndim == 1 else X, *self.kernel_args())
        return np.array(Y, copy=True).reshape(X.shape)

    def matrix(self) -> np.ndarray:
        """The dense Q (d×d); O(d²) memory, for references and tests."""
        if self.kind == "dense":
            return self.Q.copy()
        return self.to_features(np.eye(self.d)).T.copy()

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Archive keys ``basis_kind`` and, for ``givens``/``dense``, its arrays."""
        out = {"basis_kind": np.array(self.kind)}
        if self.kind == "givens":
            out.update(basis_pairs=self.pairs, basis_cs=self.cs)
        elif self.kind == "dense":
            out["basis_Q"] = self.Q
        return out

    @classmethod
    def from_arrays(cls, a: dict, d: int) -> "Basis":
        kind = str(a.get("basis_kind", "eigen"))
        if kind == "givens":
            return cls(kind=kind, d=d, pairs=np.ascontiguousarray(a["basis_pairs"]),
                       cs=np.ascontiguousarray(a["basis_cs"]))
        if kind == "dense":
            return cls.from_matrix(a["basis_Q"])
        return cls.eigen(d)
