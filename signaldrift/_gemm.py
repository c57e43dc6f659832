"""Small dense products of the step kernels, ``C = X·Y``, with register-blocked micro-kernels
(THEORY §2 "Cost": every product of a step is thin, (r + k) × d or m × (r + k)).

OpenBLAS is built for large matrices: on a step's shapes (16 × 128 by 128 × 8 at
d = m = 128, r = k = 8) a call reaches 9–18 GFLOP/s, a third of one core's dgemm rate, the
rest going to argument checks, packing and edge handling. :func:`matmul` writes C in tiles of
``MR`` rows × 8 (or 4) columns held in <4 x double> registers: for each l it loads row l of
Y's tile (one or two vectors), broadcasts X[i, l] of each tile row and accumulates
``acc += X[i, l]·Y[l, j:j+8]`` with ``llvm.fmuladd`` (a fused multiply–add where the
processor has one). Each C[i, j] is therefore the sum over l in increasing order, one
rounding per fused step: a fixed order that depends neither on the thread count nor on
the block of configurations, so runs are reproducible bit for bit on one machine (as with
BLAS, another processor may round differently).

X may be any 2-D view (``A.T`` included: its strides are read in the micro-kernel); Y and C
need contiguous rows, at any row stride: a view of a buffer padded past a power-of-two
width keeps the rows of a tile's operands out of the same L1 cache sets (at d = 4096 the
16 rows of H that ``C_A·H`` reads sit 32 KiB apart, and the product ran at half speed).

Products with fewer than four columns go to BLAS (``np.dot``), whose calls cost little
there, whatever the layouts (strided operands passed as C arrays: the same bits as without
padding); columns past the last multiple of four are summed in plain loops in the same
order, with a multiply and an add (two roundings where the tiles round once): which
columns those are depends only on N, so a run's bits still do not depend on how it is
blocked.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._vector_ir import F64 as _F64, LANES as _LANES, VEC as _VEC
from ._vector_ir import i64 as _i64, splat as _splat

__all__ = ["matmul", "transpose_into"]

#: Rows of a tile: MR·NV accumulators, NV vectors of Y and one broadcast fit in 16 registers.
MR = 4
#: Panel of l: the tiles of a row block sweep l in panels of KB, so Y's panel (KB × 8
#: doubles, 16 KiB) stays in the L1 cache while every row tile reads it. A tile resumes
#: from the values it stored (exact), so the sums are the same bits as one sweep.
KB = 256


def _is_f64_2d(a):
    return isinstance(a, types.Array) and a.ndim == 2 and a.dtype == types.float64


def _make_tile(mr, nv):
    """The micro-kernel ``C[i0+t, j0:j0+4·nv] (+)= Σ_l X[i0+t, l]·Y[l, j0:j0+4·nv]``,
    t < mr, k0 ≤ l < k1, summed in increasing l with ``llvm.fmuladd``, from zero
    (``first``) or from the tile's current values (a later panel of l)."""

    @intrinsic
    def tile(typingctx, C, X, Y, i0, j0, k0, k1, first):
        if not (_is_f64_2d(C) and _is_f64_2d(X) and _is_f64_2d(Y)
                and isinstance(first, types.Boolean)):
            return None
        sig = types.void(C, X, Y, types.int64, types.int64, types.int64, types.int64,
                         types.boolean)

        def codegen(context, builder, sig, args):
            C_, X_, Y_, i0_, j0_, k0_, k1_, first_ = args
            c = context.make_array(sig.args[0])(context, builder, C_)
            x = context.make_array(sig.args[1])(context, builder, X_)
            y = context.make_array(sig.args[2])(context, builder, Y_)
            sx0, sx1 = cgutils.unpack_tuple(builder, x.strides, 2)
            # Row strides of Y and C in bytes (their rows are contiguous: checked by
            # matmul), so a view of a padded buffer works as well as a C array.
            sy0 = cgutils.unpack_tuple(builder, y.strides, 2)[0]
            sc0 = cgutils.unpack_tuple(builder, c.strides, 2)[0]
            i8p = ir.IntType(8).as_pointer()
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fmuladd.v4f64")
            zero = ir.Constant(_VEC, [0.0] * _LANES)
            cbase = builder.bitcast(builder.gep(c.data, [j0_]), i8p)
            cptr = [[builder.bitcast(builder.gep(builder.bitcast(builder.gep(cbase, [
                        builder.mul(builder.add(i0_, _i64(t)), sc0)]), _F64.as_pointer()),
                        [_i64(4 * v)]), _VEC.as_pointer())
                     for v in range(nv)] for t in range(mr)]
            first_bit = context.cast(builder, first_, sig.args[7], types.boolean)
            acc = []
            for t in range(mr):
                for v in range(nv):
                    a = cgutils.alloca_once_value(builder, zero)
                    with builder.if_then(builder.not_(first_bit)):
                        builder.store(builder.load(cptr[t][v], align=8), a)
                    acc.append(a)
            xbase = builder.bitcast(x.data, ir.IntType(8).as_pointer())
            xrows = [builder.gep(xbase, [builder.mul(builder.add(i0_, _i64(t)), sx0)])
                     for t in range(mr)]
            ybase = builder.bitcast(builder.gep(y.data, [j0_]), i8p)
            with cgutils.for_range(builder, builder.sub(k1_, k0_)) as loop:
                ell = builder.add(loop.index, k0_)
                yrow = builder.bitcast(builder.gep(ybase, [builder.mul(ell, sy0)]),
                                       _F64.as_pointer())
                yv = [builder.load(builder.bitcast(builder.gep(yrow, [_i64(4 * v)]),
                                                   _VEC.as_pointer()), align=8)
                      for v in range(nv)]
                off = builder.mul(ell, sx1)
                for t in range(mr):
                    xp = builder.bitcast(builder.gep(xrows[t], [off]), _F64.as_pointer())
                    xs = _splat(builder, builder.load(xp))
                    for v in range(nv):
                        a = acc[t * nv + v]
                        builder.store(builder.call(fma, [xs, yv[v], builder.load(a)]), a)
            for t in range(mr):
                for v in range(nv):
                    builder.store(builder.load(acc[t * nv + v]), cptr[t][v], align=8)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_T4x8, _T3x8, _T2x8, _T1x8 = (_make_tile(m, 2) for m in (4, 3, 2, 1))
_T4x4, _T3x4, _T2x4, _T1x4 = (_make_tile(m, 1) for m in (4, 3, 2, 1))


def _as_blas(a):
    """``a`` itself where NumPy's dot takes it as it is (C or F layout), else a C array:
    no copy when the view is contiguous at run time (Numba checks), else a copy."""


@overload(_as_blas, jit_options={"cache": True})
def _as_blas_impl(a):
    if a.layout in "CF":
        return lambda a: a
    return lambda a: np.ascontiguousarray(a)


def _dot_narrow(X, Y, C):
    """``C = X·Y`` for N < 4 columns by BLAS (``np.dot``), whatever the layouts: a strided
    X or Y is passed as a C array (:func:`_as_blas`: the same values, so the same bits as
    BLAS on contiguous arrays), a C that is not C-contiguous receives BLAS's result
    through a temporary (Numba's dot writes only into a C-contiguous output)."""


@overload(_dot_narrow, jit_options={"cache": True})
def _dot_narrow_impl(X, Y, C):
    if C.layout == "C":
        def impl(X, Y, C):
            np.dot(_as_blas(X), _as_blas(Y), C)
    else:
        def impl(X, Y, C):
            T = np.empty((C.shape[0], C.shape[1]))
            np.dot(_as_blas(X), _as_blas(Y), T)
            C[:, :] = T
    return impl


@njit(cache=True)
def _rows_tail(C, X, Y, i0, j0, nv, k0, k1, first):
    """The tiles of rows i0… (fewer than MR left) at column j0 (nv vectors wide)."""
    left = C.shape[0] - i0
    if nv == 2:
        if left == 3:
            _T3x8(C, X, Y, i0, j0, k0, k1, first)
        elif left == 2:
            _T2x8(C, X, Y, i0, j0, k0, k1, first)
        elif left == 1:
            _T1x8(C, X, Y, i0, j0, k0, k1, first)
    else:
        if left == 3:
            _T3x4(C, X, Y, i0, j0, k0, k1, first)
        elif left == 2:
            _T2x4(C, X, Y, i0, j0, k0, k1, first)
        elif left == 1:
            _T1x4(C, X, Y, i0, j0, k0, k1, first)


@njit(cache=True)
def matmul(X, Y, C):
    """``C = X·Y`` in place (X: (M, K), any layout; Y: (K, N), C: (M, N), rows contiguous).

    Tiles of MR × 8 columns (then one of MR × 4) by the <4 x double> micro-kernels, each
    entry summed over l in increasing order with fused multiply–adds (in panels of
    :data:`KB` values of l, resumed exactly); the last N mod 4 columns in plain loops in
    the same order (multiply, then add); N < 4 by BLAS (:func:`_dot_narrow`, any
    layouts). K = 0 gives zeros.

    Args:
        X: (M, K) float64. Y: (K, N) float64 and C: (M, N) float64 with contiguous rows
            (C-contiguous, or a view of the first columns of a wider C array); C
            not overlapping X or Y.

    Raises:
        ValueError: if the shapes do not match (the micro-kernels do not check bounds), or
            (N ≥ 4) a row of Y or C is not contiguous.
    """
    M, K = X.shape
    N = Y.shape[1]
    if Y.shape[0] != K or C.shape[0] != M or C.shape[1] != N:
        raise ValueError("matmul: shapes of X (M, K), Y (K, N) and C (M, N) do not match")
    if N < _LANES:
        _dot_narrow(X, Y, C)
        return
    if (K > 0 and Y.strides[1] != 8) or (M > 0 and C.strides[1] != 8):
        raise ValueError("matmul: the rows of Y and C must be contiguous")
    n8 = N - N % 8
    n4 = N - N % 4
    m4 = M - M % MR
    for k0 in range(0, max(K, 1), KB):
        k1 = min(K, k0 + KB)
        first = k0 == 0
        for i0 in range(0, m4, MR):
            for j0 in range(0, n8, 8):
                _T4x8(C, X, Y, i0, j0, k0, k1, first)
            if n4 > n8:
                _T4x4(C, X, Y, i0, n8, k0, k1, first)
        if m4 < M:
            for j0 in range(0, n8, 8):
                _rows_tail(C, X, Y, m4, j0, 2, k0, k1, first)
            if n4 > n8:
                _rows_tail(C, X, Y, m4, n8, 1, k0, k1, first)
    for i in range(M):
        for j in range(n4, N):
            C[i, j] = 0.0
        for ell in range(K):
            x = X[i, ell]
            for j in range(n4, N):
                C[i, j] += x * Y[ell, j]


@njit(cache=True)
def transpose_into(Y, Yt):
    """``Yt[...] = Yᵀ`` (Y: (N, K), Yt: (K, N)): the operand a product ``X·Yᵀ`` of two
    row-major factors needs for :func:`matmul`."""
    N, K = Y.shape
    # Row by row of Yt: each of its lines is written once, while Y's N rows are read
    # as N sequential streams (the other order wrote every line of Yt N times).
    for ell in range(K):
        for j in range(N):
            Yt[ell, j] = Y[j, ell]
