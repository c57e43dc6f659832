# PLACEHOLDER (hand-written contract; to be replaced by derivations/factorised.py output).
"""Factorised Signal-Drift quantities (THEORY.md §2–§4) as traces of small Gram matrices.

Notation: s scale; Sg = diag(σ⋆) (k×k); Σ = diag(λ).
Grams: BtB = BᵀB, AAt = AAᵀ, ASAt = AΣAᵀ, AS2At = AΣ²Aᵀ (r×r); UtB = UᵀB, VSAt = VᵀΣAᵀ,
VS2At = VᵀΣ²Aᵀ (k×r); thin: AS = AΣ (r×d), VtS = VᵀΣ (k×d).
Step grams: dBtdB = ΔBᵀΔB, dAdAt = ΔAΔAᵀ, dBtB = ΔBᵀB, dAAt = ΔA Aᵀ, ASdAt = AΣΔAᵀ,
dASdAt = ΔAΣΔAᵀ (r×r); dBtU = ΔBᵀU (r×k); VSdAt = VᵀΣΔAᵀ (k×r).
"""
import numpy
from numba import njit


@njit(cache=True)
def excess_loss(s, BtB, ASAt, UtB, VSAt, Sg, c_loss):
    return 0.5*s**2*numpy.trace(BtB @ ASAt) - s*numpy.trace(Sg @ UtB @ VSAt.T) + 0.5*c_loss


@njit(cache=True)
def grad_norm_sq(s, BtB, AS2At, UtB, VS2At, Sg, c_grad):
    return s**2*numpy.trace(BtB @ AS2At) - 2*s*numpy.trace(Sg @ UtB @ VS2At.T) + c_grad


@njit(cache=True)
def grad_B(s, B, U, Sg, ASAt, VSAt):
    return s*(s*(B @ ASAt) - U @ Sg @ VSAt)


@njit(cache=True)
def grad_A(s, BtB, UtB, Sg, AS, VtS):
    return s*(s*(BtB @ AS) - UtB.T @ Sg @ VtS)


@njit(cache=True)
def batch_residual(s, B, XA, U, Sg, XV, N):
    return s*(XA @ B.T) - XV @ Sg @ U.T - N


@njit(cache=True)
def batch_grad_B(s, n, R, XA):
    return (s/n)*(R.T @ XA)


@njit(cache=True)
def batch_grad_A(s, n, R, B, X):
    return (s/n)*((R @ B).T @ X)


@njit(cache=True)
def signal_norm_sq(s, dBtdB, AAt, dBtB, dAAt, BtB, dAdAt):
    return s**2*(numpy.trace(dBtdB @ AAt) + 2*numpy.trace(dBtB @ dAAt) + numpy.trace(BtB @ dAdAt))


@njit(cache=True)
def drift_norm_sq(s, dBtdB, dAdAt):
    return s**2*numpy.trace(dBtdB @ dAdAt)


@njit(cache=True)
def signal_drift_inner(s, dBtdB, dAAt, dBtB, dAdAt):
    return s**2*(numpy.trace(dBtdB @ dAAt) + numpy.trace(dBtB.T @ dAdAt))


@njit(cache=True)
def descent(s, dBtB, dBtU, BtB, UtB, Sg, ASAt, VSAt, ASdAt, VSdAt):
    return s*(s*numpy.trace(dBtB @ ASAt) - numpy.trace(dBtU @ Sg @ VSAt)
              + s*numpy.trace(BtB @ ASdAt) - numpy.trace(UtB.T @ Sg @ VSdAt)
              + s*numpy.trace(dBtB @ ASdAt) - numpy.trace(dBtU @ Sg @ VSdAt))


@njit(cache=True)
def curvature(s, dBtdB, dBtB, BtB, ASAt, ASdAt, dASdAt):
    return 0.5*s**2*(numpy.trace(dBtdB @ (ASAt + ASdAt + ASdAt.T + dASdAt))
                     + 2*numpy.trace(dBtB @ (ASdAt.T + dASdAt))
                     + numpy.trace(BtB @ dASdAt))


@njit(cache=True)
def hvp_B(s, tB, B, U, Sg, ASAt, AStAt, VStAt):
    return s**2*(tB @ ASAt + B @ (AStAt + AStAt.T)) - s*(U @ Sg @ VStAt)


@njit(cache=True)
def hvp_A(s, BttB, BtB, AS, tAS, tBtU, Sg, VtS):
    return s**2*((BttB + BttB.T) @ AS + BtB @ tAS) - s*(tBtU @ Sg @ VtS)
