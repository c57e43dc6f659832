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

import hashlib
import math
from dataclasses import dataclass, field

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._seeding import rng_for
from ._vector_ir import I32 as _I32, LANES as _LANES, VEC as _VEC
from ._vector_ir import i64 as _i64, splat as _splat

__all__ = ["Basis", "BASIS_EIGEN", "BASIS_GIVENS", "BASIS_DENSE", "to_features", "to_eigen"]

BASIS_EIGEN, BASIS_GIVENS, BASIS_DENSE = 0, 1, 2
_KINDS = {"eigen": BASIS_EIGEN, "givens": BASIS_GIVENS, "dense": BASIS_DENSE}


# ------------------------------------------------------------------ applying a givens basis
# Basis.random stores each round's layers one after the other, layer ℓ's pairs in the order of
# the relabelled coordinate p (the p < p xor 2^ℓ < d): its h-th pair is (π(p), π(p + 2^ℓ))
# with p = h + ⌊h/2^ℓ⌋·2^ℓ, and layer 0 holds (π(2i), π(2i+1)), so π can be read off the
# pairs. Layers ℓ … ℓ+m−1 act within blocks of 2^m·2^ℓ relabelled coordinates; a block's
# 2^m coordinates (rows of the working array) are loaded once, rotated by all m·2^(m−1) of
# its rotations in registers and stored (a radix-2^m butterfly, m = 2 or 3). Rotations of
# one layer act on disjoint pairs and the rows of X are independent, so this order gives
# the same bits as applying the rotations one by one: each still computes c·a − s·b,
# s·a + c·b in float64 on the same operands (the inverse: c·a + s·b, c·b − s·a, which is
# c·a − (−s)·b, (−s)·a + c·b exactly).
#
# The working array P (d, V, 4) holds the transpose of X (coordinate-major, rows padded to
# V·4 lanes with zeros), so that one coordinate of 4 rows of X is one AVX2 vector. The
# butterflies are LLVM intrinsics on <4 x double> vectors (Numba leaves SLP vectorisation
# off, and the loop vectoriser does badly on loops of 4 or 8 iterations); they are plain
# fmul/fsub/fadd without fast-math flags, so LLVM neither contracts them into FMAs nor
# reorders them.



def _pair_elem(context, builder, aty, arr, flat):
    """Pointer to element ``flat`` (row flat // 2, column flat % 2) of a (G, 2) array."""
    a = context.make_array(aty)(context, builder, arr)
    if aty.layout == "C":
        return builder.gep(a.data, [flat])
    st0, st1 = cgutils.unpack_tuple(builder, a.strides, 2)
    off = builder.add(builder.mul(builder.ashr(flat, _i64(1)), st0),
                      builder.mul(builder.and_(flat, _i64(1)), st1))
    ptr = builder.gep(builder.bitcast(a.data, ir.IntType(8).as_pointer()), [off])
    return builder.bitcast(ptr, context.get_data_type(aty.dtype).as_pointer())


def _rotate(builder, a, b, c, s, inverse):
    """The rotation of lanes a, b by (c, s): c·a − s·b, s·a + c·b (inverse: c·a + s·b,
    c·b − s·a)."""
    if inverse:
        return (builder.fadd(builder.fmul(c, a), builder.fmul(s, b)),
                builder.fsub(builder.fmul(c, b), builder.fmul(s, a)))
    return (builder.fsub(builder.fmul(c, a), builder.fmul(s, b)),
            builder.fadd(builder.fmul(s, a), builder.fmul(c, b)))


def _is_work(P):
    return (isinstance(P, types.Array) and P.ndim == 3 and P.layout == "C"
            and P.dtype == types.float64)


def _is_pairs(a, dtype):
    return isinstance(a, types.Array) and a.ndim == 2 and a.dtype == dtype


def _make_butterfly(m, inverse):
    """The radix-2^m butterfly (layers ℓ … ℓ+m−1, s = 2^ℓ) on the rows π(p + h·s),
    h = 0 … 2^m−1, of the working array P, every lane: layer ℓ+u rotates rows h and
    h + 2^u (bit u of h clear) by cs[off_u + kb + rank·s], rank = the index of h among the
    h with bit u clear. π(q) = pairs[first + q//2, q % 2]."""
    n = 1 << m
    steps = [(u, h, ((h >> (u + 1)) << u) | (h & ((1 << u) - 1)))
             for u in range(m) for h in range(n) if not h >> u & 1]
    if inverse:
        steps.reverse()

    @intrinsic
    def butterfly(typingctx, P, cs, pairs, first, p, s, kb, offs):
        if not (_is_work(P) and _is_pairs(cs, types.float64) and _is_pairs(pairs, types.int64)
                and isinstance(offs, types.UniTuple) and len(offs) == m):
            return None
        sig = types.void(P, cs, pairs, types.int64, types.int64, types.int64, types.int64,
                         types.UniTuple(types.int64, m))

        def codegen(context, builder, sig, args):
            P_, cs_, pairs_, first_, p_, s_, kb_, offs_ = args
            work = context.make_array(sig.args[0])(context, builder, P_)
            V = cgutils.unpack_tuple(builder, work.shape, 3)[1]
            base = builder.bitcast(work.data, _VEC.as_pointer())
            ptrs, q = [], builder.add(builder.add(first_, first_), p_)
            for h in range(n):
                if h:
                    q = builder.add(q, s_)
                row = builder.load(_pair_elem(context, builder, sig.args[2], pairs_, q))
                ptrs.append(builder.gep(base, [builder.mul(row, V)]))
            cs_ptrs = []
            for u, h, rank in steps:
                k = builder.add(builder.add(builder.extract_value(offs_, u), kb_),
                                builder.mul(s_, _i64(rank)))
                k2 = builder.add(k, k)
                cs_ptrs.append((_pair_elem(context, builder, sig.args[1], cs_, k2),
                                _pair_elem(context, builder, sig.args[1], cs_,
                                           builder.add(k2, _i64(1)))))
            with cgutils.for_range(builder, V) as loop:
                at = [builder.gep(t, [loop.index]) for t in ptrs]
                x = [builder.load(t, align=8) for t in at]
                for (u, h, _), (pc, ps) in zip(steps, cs_ptrs):
                    c, sn = _splat(builder, builder.load(pc)), _splat(builder, builder.load(ps))
                    j = h + (1 << u)
                    x[h], x[j] = _rotate(builder, x[h], x[j], c, sn, inverse)
                for t, v in zip(at, x):
                    builder.store(v, t, align=8)
            return context.get_dummy_value()

        return sig, codegen
    return butterfly


_bfly4, _bfly4_inv = _make_butterfly(2, False), _make_butterfly(2, True)
_bfly8, _bfly8_inv = _make_butterfly(3, False), _make_butterfly(3, True)


def _make_rot(inverse):
    @intrinsic
    def rot(typingctx, P, cs, i, j, k):
        """Rotate rows i and j of the working array P by (c, s) = cs[k], every lane."""
        if not (_is_work(P) and _is_pairs(cs, types.float64)):
            return None
        sig = types.void(P, cs, types.int64, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            P_, cs_, i_, j_, k_ = args
            work = context.make_array(sig.args[0])(context, builder, P_)
            V = cgutils.unpack_tuple(builder, work.shape, 3)[1]
            base = builder.bitcast(work.data, _VEC.as_pointer())
            pi = builder.gep(base, [builder.mul(i_, V)])
            pj = builder.gep(base, [builder.mul(j_, V)])
            k2 = builder.add(k_, k_)
            c = _splat(builder, builder.load(_pair_elem(context, builder, sig.args[1], cs_, k2)))
            sn = _splat(builder, builder.load(
                _pair_elem(context, builder, sig.args[1], cs_, builder.add(k2, _i64(1)))))
            with cgutils.for_range(builder, V) as loop:
                qi, qj = builder.gep(pi, [loop.index]), builder.gep(pj, [loop.index])
                a, b = builder.load(qi, align=8), builder.load(qj, align=8)
                a, b = _rotate(builder, a, b, c, sn, inverse)
                builder.store(a, qi, align=8)
                builder.store(b, qj, align=8)
            return context.get_dummy_value()

        return sig, codegen
    return rot


_rot, _rot_inv = _make_rot(False), _make_rot(True)


def _transpose4(builder, rows):
    """The 4×4 transpose of four <4 x double> (shuffles only)."""
    def shuf(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(_I32, 4), mask))
    a, b, c, d = rows
    t0, t1 = shuf(a, b, [0, 4, 2, 6]), shuf(a, b, [1, 5, 3, 7])
    t2, t3 = shuf(c, d, [0, 4, 2, 6]), shuf(c, d, [1, 5, 3, 7])
    return (shuf(t0, t2, [0, 1, 4, 5]), shuf(t1, t3, [0, 1, 4, 5]),
            shuf(t0, t2, [2, 3, 6, 7]), shuf(t1, t3, [2, 3, 6, 7]))


def _make_block(to_work):
    @intrinsic
    def block(typingctx, P, X, q0, i0):
        """``to_work``: P[i0 + t, q0/4, :] = X[q0:q0+4, i0 + t] (t < 4); else the reverse
        (X[q0:q0+4, i0:i0+4] from P). X is C-contiguous (r, d), q0 a multiple of 4."""
        if not (_is_work(P) and isinstance(X, types.Array) and X.ndim == 2
                and X.layout == "C" and X.dtype == types.float64):
            return None
        sig = types.void(P, X, types.int64, types.int64)

        def codegen(context, builder, sig, args):
            P_, X_, q0_, i0_ = args
            work = context.make_array(sig.args[0])(context, builder, P_)
            V = cgutils.unpack_tuple(builder, work.shape, 3)[1]
            base = builder.bitcast(work.data, _VEC.as_pointer())
            x = context.make_array(sig.args[1])(context, builder, X_)
            d = cgutils.unpack_tuple(builder, x.shape, 2)[1]
            v = builder.ashr(q0_, _i64(2))
            wp = [builder.gep(base, [builder.add(builder.mul(builder.add(i0_, _i64(t)), V), v)])
                  for t in range(4)]
            xp = [builder.bitcast(builder.gep(x.data, [builder.add(
                      builder.mul(builder.add(q0_, _i64(t)), d), i0_)]), _VEC.as_pointer())
                  for t in range(4)]
            src, dst = (xp, wp) if to_work else (wp, xp)
            rows = [builder.load(t, align=8) for t in src]
            for t, col in zip(dst, _transpose4(builder, rows)):
                builder.store(col, t, align=8)
            return context.get_dummy_value()

        return sig, codegen
    return block


_block_in, _block_out = _make_block(True), _make_block(False)


@njit(cache=True)
def _layer_size(d, ell):
    """Number of pairs of layer ℓ: the p < d with bit ℓ clear and p + 2^ℓ < d."""
    s = 1 << ell
    full = d // (2 * s)
    tail = d - full * 2 * s - s
    return full * s + (tail if tail > 0 else 0)


@njit(cache=True)
def _n_layers(d):
    """⌈log₂ d⌉ (0 for d = 1)."""
    L = 0
    while (1 << L) < d:
        L += 1
    return L


@njit(cache=True, inline="always")
def _perm_at(pairs, first, p, n_even, last):
    """π(p) for the round whose layer 0 starts at row ``first`` of pairs: pairs[first +
    p//2, p % 2] for p < n_even = 2·⌊d/2⌋, else ``last`` (π(d−1) for odd d)."""
    if p >= n_even:
        return last
    return pairs[first + (p >> 1), p & 1]


@njit(cache=True, inline="always")
def _layer_tail(P, cs, pairs, first, n_even, last, off, ell, start, d, forward):
    """Layer ℓ (its pairs from row ``off``) on relabelled coordinates start … d−1 (start a
    multiple of 2^(ℓ+1)), one rotation at a time."""
    s = 1 << ell
    for b in range(start, d - s, 2 * s):
        k = off + (b >> 1)
        for j in range(min(s, d - b - s)):
            i0 = _perm_at(pairs, first, b + j, n_even, last)
            i1 = _perm_at(pairs, first, b + j + s, n_even, last)
            if forward:
                _rot(P, cs, i0, i1, k + j)
            else:
                _rot_inv(P, cs, i0, i1, k + j)


@njit(cache=True)
def _layer_offset(d, first, ell):
    """Row of pairs/cs where layer ℓ of the round starting at row ``first`` starts."""
    off = first
    for e in range(ell):
        off += _layer_size(d, e)
    return off


@njit(cache=True, inline="always")
def _stage(P, cs, pairs, first, n_even, last, ell, m, d, forward):
    """Layers ℓ … ℓ+m−1 (m = 2 or 3) of a round: radix-2^m butterflies on the full blocks of
    2^m·2^ℓ relabelled coordinates, then the partial last block layer by layer."""
    s = 1 << ell
    o0 = _layer_offset(d, first, ell)
    o1 = o0 + _layer_size(d, ell)
    o2 = o1 + _layer_size(d, ell + 1)
    groups = (d >> (ell + m)) << ell
    if m == 3:
        offs3 = (o0, o1, o2)
        if forward:
            for g in range(groups):
                ms = (g >> ell) << ell
                _bfly8(P, cs, pairs, first, g + 7 * ms, s, g + 3 * ms, offs3)
        else:
            for g in range(groups):
                ms = (g >> ell) << ell
                _bfly8_inv(P, cs, pairs, first, g + 7 * ms, s, g + 3 * ms, offs3)
    else:
        offs2 = (o0, o1)
        if forward:
            for g in range(groups):
                ms = (g >> ell) << ell
                _bfly4(P, cs, pairs, first, g + 3 * ms, s, g + ms, offs2)
        else:
            for g in range(groups):
                ms = (g >> ell) << ell
                _bfly4_inv(P, cs, pairs, first, g + 3 * ms, s, g + ms, offs2)
    start = (d >> (ell + m)) << (ell + m)
    if start + s < d:
        for h in range(m):
            u = h if forward else m - 1 - h
            off = o0 if u == 0 else (o1 if u == 1 else o2)
            _layer_tail(P, cs, pairs, first, n_even, last, off, ell + u, start, d, forward)


@njit(cache=True)
def _givens_generic(X, pairs, cs, forward):
    """Apply the Givens rotations to every row of X one by one, in the order stored (or
    the inverse: reversed and transposed), on the transpose (d × r). The definition of
    the rotation; :func:`_givens` uses it for (pairs, cs) not laid out as Basis.random lays
    them out."""
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
def _givens(X, pairs, cs, forward):
    """Apply the Givens rotations of a Basis.random to every row of X (in order, or the
    inverse: reversed and transposed), a new array; bit for bit :func:`_givens_generic`.

    The rounds' layers go as radix-8 stages, then radix-4 ones (L = 3·n₈ + 2·n₄; one
    radix-2 layer for d = 2), on the working array P (d, V, 4): the transpose of X, whose
    rows are the original coordinates, π read off the pairs as the butterflies go."""
    r, d = X.shape
    L = _n_layers(d)
    per_round = 0
    for ell in range(L):
        per_round += _layer_size(d, ell)
    if (pairs.shape[0] != 2 * per_round or pairs.shape[1] != 2
            or cs.shape[0] != pairs.shape[0] or cs.shape[1] != 2):
        return _givens_generic(X, pairs, cs, forward)
    if per_round == 0:
        return X.copy()
    X = np.ascontiguousarray(X)
    V = (r + _LANES - 1) // _LANES
    W = V * _LANES
    buf = np.empty(d * W + r * d)  # one allocation: the working array, then the result
    P = buf[:d * W].reshape((d, V, _LANES))
    out = buf[d * W:].reshape((r, d))
    P2 = buf[:d * W].reshape((d, W))
    r4, d4 = r - r % 4, d - d % 4
    if r4 < W:  # zeros in the padding lanes (a memset), then the last rows of X
        buf[:d * W] = 0.0
    for q0 in range(0, r4, 4):
        for i0 in range(0, d4, 4):
            _block_in(P, X, q0, i0)
    if r4 < W:
        for q in range(r4, r):
            for i in range(d):
                P2[i, q] = X[q, i]
    for i in range(d4, d):
        for q in range(r4):
            P2[i, q] = X[q, i]
    n_even = d - d % 2
    n8 = L // 3 - (1 if L % 3 == 1 else 0)
    n_stages = n8 + (L - 3 * n8) // 2
    for rnd in range(2):
        first = per_round * (rnd if forward else 1 - rnd)
        last = -1
        if d % 2 == 1:  # π(d−1), the one value that layer 0 lacks
            total = 0
            for i in range(d // 2):
                total += pairs[first + i, 0] + pairs[first + i, 1]
            last = d * (d - 1) // 2 - total
        if L == 1:
            _layer_tail(P, cs, pairs, first, n_even, last, first, 0, 0, d, forward)
            continue
        for h in range(n_stages):
            t = h if forward else n_stages - 1 - h
            m = 3 if t < n8 else 2
            ell = 3 * t if t < n8 else 3 * n8 + 2 * (t - n8)
            _stage(P, cs, pairs, first, n_even, last, ell, m, d, forward)
    for q0 in range(0, r4, 4):
        for i0 in range(0, d4, 4):
            _block_out(P, out, q0, i0)
    for q in range(r):
        for i in range(d4 if q < r4 else 0, d):
            out[q, i] = P2[i, q]
    return out


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


def _butterfly_count(d: int) -> int:
    """Number of rotations of :meth:`Basis.random` in dimension d (two rounds)."""
    return 2 * sum(_layer_size(int(d), ell) for ell in range(_n_layers(int(d))))


def _is_butterfly(pairs: np.ndarray, d: int) -> bool:
    """Whether ``pairs`` is laid out as :meth:`Basis.random` lays them out: per round, π
    read off layer 0 is a permutation and layer ℓ is (π(p), π(p + 2^ℓ)) in the order of p."""
    per_round = _butterfly_count(d) // 2
    if pairs.shape != (2 * per_round, 2):
        return False
    p = np.arange(d)
    for first in (0, per_round):
        perm = np.empty(d, dtype=np.int64)
        perm[:d - d % 2] = pairs[first:first + d // 2].ravel()
        if d % 2:
            perm[d - 1] = d * (d - 1) // 2 - int(perm[:d - 1].sum())
        if not np.array_equal(np.sort(perm), p):
            return False
        off = first
        for ell in range(_n_layers(d)):
            partner = p ^ (1 << ell)
            keep = (partner > p) & (partner < d)
            n = int(keep.sum())
            want = np.stack([perm[p[keep]], perm[partner[keep]]], axis=1)
            if not np.array_equal(pairs[off:off + n], want):
                return False
            off += n
    return True


def _is_butterfly_checked(pairs: np.ndarray, d: int) -> bool:
    """:func:`_is_butterfly`, remembered for up to 256 distinct ``(d, pairs)`` (keyed by a
    SHA-256 of the pairs' bytes): a sweep's runs and its cached archives share a few
    bases, and the check (~0.4 ms at d = 128) was a third of reading an archive back."""
    pairs = np.ascontiguousarray(pairs, dtype=np.int64)
    key = (int(d), pairs.shape, hashlib.sha256(pairs.tobytes()).digest())
    seen = _BUTTERFLY_SEEN.get(key)
    if seen is None:
        seen = _is_butterfly(pairs, d)
        if len(_BUTTERFLY_SEEN) >= 256:
            _BUTTERFLY_SEEN.clear()
        _BUTTERFLY_SEEN[key] = seen
    return seen


#: (d, shape, SHA-256 of pairs) → :func:`_is_butterfly` (see :func:`_is_butterfly_checked`).
_BUTTERFLY_SEEN: dict[tuple, bool] = {}


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

    def __post_init__(self):
        if self.kind == "givens" and _butterfly_count(self.d) == len(self.pairs) \
                and not _is_butterfly_checked(np.asarray(self.pairs), self.d):
            # the kernels would read these as Basis.random's layout (see _givens)
            raise ValueError("givens basis: pairs have Basis.random's count but not its "
                             "layout (two rounds of butterflies over a permutation)")

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
