"""LLVM IR helpers for the hand-vectorised Numba intrinsics (<4 x double> vectors).

Numba leaves SLP vectorisation off and its loop vectoriser does badly on loops of 4 or 8
iterations, so the Givens butterflies (:mod:`signaldrift._basis`) and the products'
micro-kernels (:mod:`signaldrift._gemm`) emit vector IR themselves with these.
"""

from __future__ import annotations

from llvmlite import ir

__all__ = ["LANES", "F64", "I64", "I32", "VEC", "i64", "splat"]

LANES = 4
F64 = ir.DoubleType()
I64 = ir.IntType(64)
I32 = ir.IntType(32)
VEC = ir.VectorType(F64, LANES)


def i64(v):
    """The 64-bit integer constant v."""
    return ir.Constant(I64, v)


def splat(builder, x):
    """The vector with x in every lane."""
    v = ir.Constant(VEC, ir.Undefined)
    for t in range(LANES):
        v = builder.insert_element(v, x, ir.Constant(I32, t))
    return v
