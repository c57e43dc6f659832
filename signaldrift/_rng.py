"""Counter-based random numbers for the kernels (minibatches and epochs drawn in Numba).

Every random number of a run's data stream is a pure function of (key, counter): the
SplitMix64 output function (Steele, Lea & Flood 2014; the finaliser of ``java.util.
SplittableRandom``) applied to ``key + counter·φ`` (φ = 0x9E3779B97F4A7C15), which is the
SplitMix64 sequence itself, read at any position. Uniforms take the top 53 bits; normals come
in Box–Muller pairs. So the samples of step t do not depend on which steps were drawn before,
on how configurations are blocked, or on the thread that runs them: the batched kernels and
the single-run path give the same bits. The same functions, called from Python, feed the
dense reference and the PyTorch cross-check.

Streams (``stream_key(seed, name)``): ``"inputs"`` and ``"noise"`` (fresh minibatches),
``"epochs"`` (permutations of a fixed training set). Version ``SAMPLE_STREAM_VERSION`` is
recorded in archives; it changed from NumPy's PCG64 streams (version 1) to this (2).
"""

from __future__ import annotations

import zlib

import numpy as np
from numba import njit, uint64

__all__ = ["SAMPLE_STREAM_VERSION", "stream_key", "normals", "minibatch", "epoch_indices"]

SAMPLE_STREAM_VERSION = 2

_PHI = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi
_INV_2_53 = 1.0 / 9007199254740992.0


def stream_key(seed: int, name: str) -> np.uint64:
    """The 64-bit key of stream ``name`` of seed ``seed`` (CRC-32 of the name, mixed)."""
    x = (int(seed) * 0x100000001B3 + zlib.crc32(name.encode("utf-8"))) % 2**64
    return np.uint64(_mix_py(x))


def _mix_py(x: int) -> int:
    mask = 2**64 - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


@njit(cache=True)
def _mix(key, counter):
    z = key + uint64(counter) * _PHI
    z = (z ^ (z >> uint64(30))) * _M1
    z = (z ^ (z >> uint64(27))) * _M2
    return z ^ (z >> uint64(31))


@njit(cache=True)
def _uniform(key, counter):
    """A uniform in (0, 1]: the top 53 bits of the counter's SplitMix64 output, plus one."""
    return (float(_mix(key, counter) >> uint64(11)) + 1.0) * _INV_2_53


@njit(cache=True)
def normals(key, start, out):
    """Fill ``out`` (flat, C order) with the standard normals at positions
    ``start, start + 1, …`` of stream ``key`` (Box–Muller: positions 2j and 2j + 1 share
    the uniforms at counters 2j and 2j + 1; ``start`` may be odd)."""
    flat = out.ravel()
    n = flat.size
    i = 0
    if n > 0 and start % 2 == 1:  # the second half of a pair first
        u1, u2 = _uniform(key, start - 1), _uniform(key, start)
        flat[0] = np.sqrt(-2.0 * np.log(u1)) * np.sin(_TWO_PI * u2)
        i = 1
    while i < n:
        pos = start + i
        u1, u2 = _uniform(key, pos), _uniform(key, pos + 1)
        rad = np.sqrt(-2.0 * np.log(u1))
        flat[i] = rad * np.cos(_TWO_PI * u2)
        if i + 1 < n:
            flat[i + 1] = rad * np.sin(_TWO_PI * u2)
        i += 2


@njit(cache=True)
def minibatch(key_x, key_e, t, sqrt_lam, noise, X, N):
    """Step t's fresh minibatch in place: ``X = Z Λ^½`` (n×d, Σ's eigen-coordinates) and
    ``N = σ·Ξ`` (n×m), Z and Ξ standard normals at positions ``t·n·d…`` and ``t·n·m…``."""
    n, d = X.shape
    m = N.shape[1]
    normals(key_x, t * n * d, X)
    for i in range(n):
        for j in range(d):
            X[i, j] *= sqrt_lam[j]
    if noise > 0.0:
        normals(key_e, t * n * m, N)
        for i in range(n):
            for j in range(m):
                N[i, j] *= noise
    else:
        N[...] = 0.0


@njit(cache=True)
def _epoch_permutation(key, epoch, size, out):
    """Fisher–Yates permutation of 0..size−1 for ``epoch`` (counters epoch·size + i)."""
    for i in range(size):
        out[i] = i
    for i in range(size - 1, 0, -1):
        u = _uniform(key, epoch * size + i)
        j = min(int(u * (i + 1)), i)
        tmp = out[i]
        out[i] = out[j]
        out[j] = tmp


@njit(cache=True)
def epoch_indices(key, t, n, size, perm, idx):
    """The n training-set indices of step t in place: epochs are permutations of
    0..size−1, concatenated; step t takes positions t·n … t·n + n − 1 (a minibatch may
    straddle two epochs). ``perm`` (size,) is scratch space."""
    start = t * n
    epoch = -1
    for i in range(n):
        pos = start + i
        e = pos // size
        if e != epoch:
            _epoch_permutation(key, e, size, perm)
            epoch = e
        idx[i] = perm[pos - e * size]
