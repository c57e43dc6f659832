"""Counter-based random numbers for the kernels (minibatches and epochs drawn in Numba).

Every random number of a run's data stream is a pure function of (key, counter): the
SplitMix64 output function (Steele, Lea & Flood 2014; the finaliser of ``java.util.
SplittableRandom``) applied to ``key + counter·φ`` (φ = 0x9E3779B97F4A7C15), which is the
SplitMix64 sequence itself, read at any position. Uniforms take the top 53 bits k,
u = (k + 1)·2⁻⁵³ ∈ (0, 1]; normals come in Box–Muller pairs, positions 2j and 2j + 1 from
the uniforms u₁, u₂ at counters 2j and 2j + 1:

    z_2j = √(−2 ln u₁)·cos a,   z_2j+1 = √(−2 ln u₁)·sin a,   a = fl(2π·u₂).

So the samples of step t do not depend on which steps were drawn before, on how
configurations are blocked, or on the thread that runs them: the batched kernels and the
single-run path give the same bits. The same functions, called from Python, feed the dense
reference and the PyTorch cross-check.

ln, sin and cos are not libm's: they are branch-free IEEE 754 polynomials (fdlibm's
kernels, :func:`_log` and :func:`_sincos`) built from +, −, ×, ÷, √ and bit operations,
without fastmath or FMA contraction, so LLVM inlines and vectorises the sampling loop
(``minibatch`` ≈ 4.5× faster than with libm calls, ``benchmarks/bench_rng.py``) and the
bits are the same on every x86-64 machine, whatever its libm, vector width or the position
of a sample in the loop (vectorised body or scalar remainder). Each is within 1 ulp of
glibc's (so a sample is within ~1e−15 relative of the libm Box–Muller; ``tests/
test_rng.py``, which also compiles the sampler for SSE2 and AVX2 and compares the bits).

Streams (``stream_key(seed, name)``): ``"inputs"`` and ``"noise"`` (fresh minibatches),
``"epochs"`` (permutations of a fixed training set). Version ``SAMPLE_STREAM_VERSION`` is
recorded in archives: 1 was NumPy's PCG64 streams; 2 these counter-based streams with libm's
log/sin/cos in the Box–Muller transform; 3 (now) the same transform and uniforms with the
polynomial ln/sin/cos above, which changes the last bit of about one sample in six (the
epoch streams use no transcendental functions and are unchanged).
"""

from __future__ import annotations

import zlib

import numpy as np
from numba import njit, types, uint64
from numba.extending import intrinsic

__all__ = ["SAMPLE_STREAM_VERSION", "stream_key", "normals", "minibatch", "scale_minibatch",
           "epoch_indices"]

SAMPLE_STREAM_VERSION = 3

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


@njit(cache=True, inline="always")
def _mix(key, counter):
    z = key + uint64(counter) * _PHI
    z = (z ^ (z >> uint64(30))) * _M1
    z = (z ^ (z >> uint64(27))) * _M2
    return z ^ (z >> uint64(31))


@njit(cache=True)
def _uniform(key, counter):
    """A uniform in (0, 1]: the top 53 bits of the counter's SplitMix64 output, plus one."""
    return (float(_mix(key, counter) >> uint64(11)) + 1.0) * _INV_2_53


# ------------------------------------------------------------------ IEEE log and sincos
# Both are branch-free straight-line code (no libm, no SVML, no fastmath), so LLVM inlines
# and vectorises them and every machine gets the same bits: only +, −, ×, ÷ and √ (correctly
# rounded in IEEE 754, round-to-nearest), integer and bit operations. Without fastmath Numba
# emits fmul/fadd without LLVM's ``contract`` flag, so they are never fused into FMAs
# (tests/test_rng.py checks the machine code); the vectorised body and the scalar remainder
# of a loop then compute the same bits.

# log: fdlibm/FreeBSD e_log.c (Sun Microsystems 1993), minimax for log(1+f) in s = f/(2+f).
_LN2_HI = 6.93147180369123816490e-01  # ln 2's top 32 bits: k·_LN2_HI is exact for |k| < 2^21
_LN2_LO = 1.90821492927058770002e-10
_LG1 = 6.666666666666735130e-01
_LG2 = 3.999999999940941908e-01
_LG3 = 2.857142874366239149e-01
_LG4 = 2.222219843214978396e-01
_LG5 = 1.818357216161805012e-01
_LG6 = 1.531383769920937332e-01
_LG7 = 1.479819860511658591e-01

# sin/cos on [−π/4, π/4]: FreeBSD k_sin.c / k_cos.c (Sun Microsystems 1993), < 1 ulp.
_S1 = -1.66666666666666324348e-01
_S2 = 8.33333333332248946124e-03
_S3 = -1.98412698298579493134e-04
_S4 = 2.75573137070700676789e-06
_S5 = -2.50507602534068634195e-08
_S6 = 1.58969099521155010221e-10
_C1 = 4.16666666666666019037e-02
_C2 = -1.38888888888741095749e-03
_C3 = 2.48015872894767294178e-05
_C4 = -2.75573143513906633035e-07
_C5 = 2.08757232129817482790e-09
_C6 = -1.13596475577881948265e-11

# π/2 = _PIO2_1 + _PIO2_2 + _PIO2_3 + O(1e−37): 33 + 33 + 53 bits (fdlibm pio2_1, pio2_2,
# pio2_2t), so q·_PIO2_1 and q·_PIO2_2 are exact for the quadrants q ≤ 4 used here.
_PIO2_1 = 1.57079632673412561417e+00
_PIO2_2 = 6.07710050630396597660e-11
_PIO2_3 = 2.02226624879595063154e-21
_TWO_OVER_PI = 6.36619772367581382433e-01
_ROUND = 6755399441055744.0  # 1.5·2^52: x + _ROUND − _ROUND rounds |x| < 2^51 to an integer

_MANT_MASK = np.uint64(0x000FFFFFFFFFFFFF)
# Added to the 52 mantissa bits of 1 + f, carries into bit 52 iff 1 + f ≥ 0x1.6a09cp0 (√2 less
# 2e−6; fdlibm's 0x95f64 in the high word).
_SQRT2_OFFSET = np.uint64(0x95F6400000000)
_BIT52 = np.uint64(1 << 52)
_ONE_BITS = np.uint64(0x3FF0000000000000)


@intrinsic
def _bits(typingctx, x):
    """The IEEE 754 bit pattern of a float64 as a uint64 (an LLVM bitcast, no conversion)."""
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.uint64))
        return types.uint64(types.float64), codegen
    return None


@intrinsic
def _from_bits(typingctx, b):
    """The float64 whose IEEE 754 bit pattern is the uint64 ``b``."""
    if isinstance(b, types.Integer) and b.bitwidth == 64:
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], context.get_value_type(types.float64))
        return types.float64(b), codegen
    return None


@intrinsic
def _sqrt(typingctx, x):
    """√x as LLVM's ``llvm.sqrt.f64`` (IEEE 754 correctly rounded, vectorisable; Numba's
    ``np.sqrt`` is a libm call that the loop vectoriser does not widen)."""
    if isinstance(x, types.Float) and x.bitwidth == 64:
        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.sqrt", [args[0].type])
            return builder.call(fn, args)
        return types.float64(types.float64), codegen
    return None


@njit(cache=True, error_model="numpy", inline="always")
def _log(x):
    """ln x for a positive normal float64, branch-free (fdlibm's e_log.c kernel).

    With x = 2^k·(1 + f), 1 + f ∈ [≈√2/2, ≈√2) taken from the bits of x (f = (1 + f) − 1
    exact) and s = f/(2 + f), so that ln(1 + f) = 2s + s·R(s²) = f − (h − s·(h + R)),

        ln x = k·ln2_hi − ((h − (s·(h + R(s²)) + k·ln2_lo)) − f),   h = f²/2,

    where R(z) = Lg1·z + Lg2·z² + … + Lg7·z⁷ is fdlibm's minimax fit of
    (ln(1 + f) − 2s)/s (error < 2^−58.45) and ln2_hi + ln2_lo = ln 2 (k·ln2_hi exact).
    Within 1 ulp of glibc's log on (0, 1] (tests/test_rng.py); ln 1 = +0.

    Args:
        x: a positive normal float64 (here u ∈ [2⁻⁵³, 1]).

    Returns:
        ln x (float64).
    """
    b = _bits(x)
    m = b & _MANT_MASK
    i = (m + _SQRT2_OFFSET) & _BIT52  # 2^52 when the mantissa 1 + f ≥ √2: halve it
    k = np.int64(b >> uint64(52)) - 1023 + np.int64(i >> uint64(52))
    f = _from_bits(m | (_ONE_BITS ^ i)) - 1.0  # exact (Sterbenz)
    hfsq = 0.5 * f * f
    s = f / (2.0 + f)
    dk = float(k)
    z = s * s
    w = z * z
    t1 = w * (_LG2 + w * (_LG4 + w * _LG6))
    t2 = z * (_LG1 + w * (_LG3 + w * (_LG5 + w * _LG7)))
    r = t2 + t1
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


@njit(cache=True, error_model="numpy", inline="always")
def _sincos(a):
    """(sin a, cos a) for 0 ≤ a ≤ 8, branch-free (fdlibm's k_sin.c / k_cos.c kernels).

    Reduction: q = round(a·2/π) (the 1.5·2⁵² rounding trick; its low bits are q mod 4) and
    r = ((a − q·P1) − q·P2) − q·P3 with P1 + P2 + P3 = π/2 to 2⁻¹²² (Cody–Waite; q·P1,
    q·P2 exact and a − q·P1 exact by Sterbenz, so r keeps its relative accuracy next to the
    multiples of π/2), |r| ≤ π/4 + ε. Then, with z = r²,

        sin r = r + r·z·(S1 + z·(S2 + S3·z + S4·z² + S5·z³ + S6·z⁴)),
        cos r = w + (((1 − w) − z/2) + z²·(C1 + C2·z + … + C6·z⁵)),   w = 1 − z/2,

    (fdlibm's minimax coefficients, < 1 ulp on [−π/4, π/4]) and
    (sin a, cos a) = (s, c), (c, −s), (−s, −c), (−c, s) for q mod 4 = 0, 1, 2, 3.
    Each within 1 ulp of glibc's sin and cos on [0, 2π] (tests/test_rng.py).

    Args:
        a: the angle, 0 ≤ a ≤ 8 (here fl(2π·u) ∈ (0, 2π]).

    Returns:
        (sin a, cos a) (float64, float64).
    """
    t = a * _TWO_OVER_PI + _ROUND
    q = _bits(t)  # low bits: the quadrant
    qf = t - _ROUND
    r = ((a - qf * _PIO2_1) - qf * _PIO2_2) - qf * _PIO2_3
    z = r * r
    w = z * z
    rs = _S2 + z * (_S3 + z * _S4) + z * w * (_S5 + z * _S6)
    s = r + z * r * (_S1 + z * rs)
    rc = z * (_C1 + z * (_C2 + z * _C3)) + w * w * (_C4 + z * (_C5 + z * _C6))
    hz = 0.5 * z
    wc = 1.0 - hz
    c = wc + (((1.0 - wc) - hz) + z * rc)
    odd = (q & uint64(1)) != uint64(0)
    sin_sign = 1.0 - float(np.int64(q & uint64(2)))  # −1 in quadrants 2, 3
    cos_sign = 1.0 - float(np.int64((q + uint64(1)) & uint64(2)))  # −1 in quadrants 1, 2
    sin_a = (c if odd else s) * sin_sign
    cos_a = (s if odd else c) * cos_sign
    return sin_a, cos_a


@njit(cache=True, error_model="numpy", inline="always")
def _box_muller(u1, u2):
    """The Box–Muller transform of two uniforms in (0, 1], a = fl(2π·u₂) (as in version 2):

        (z₀, z₁) = (√(−2 ln u₁)·cos a, √(−2 ln u₁)·sin a).

    Returns:
        (z₀, z₁) (float64, float64).
    """
    rad = _sqrt(-2.0 * _log(u1))
    sin_a, cos_a = _sincos(_TWO_PI * u2)
    return rad * cos_a, rad * sin_a


@njit(cache=True, error_model="numpy", inline="always")
def _pair(key, counter):
    """The Box–Muller pair (:func:`_box_muller`) at even position ``counter`` of stream
    ``key``: the uniforms u = (k + 1)·2⁻⁵³ at counters c and c + 1 (k the top 53 bits of
    SplitMix64)."""
    u1 = (float(_mix(key, counter) >> uint64(11)) + 1.0) * _INV_2_53
    u2 = (float(_mix(key, counter + 1) >> uint64(11)) + 1.0) * _INV_2_53
    return _box_muller(u1, u2)


@njit(cache=True, error_model="numpy")
def _fill_pairs(key, first, flat, lo, npairs):
    """The vectorised loop: ``flat[lo + 2j], flat[lo + 2j + 1]`` = the pair at position
    ``first + 2j`` (even), j < npairs. Straight-line body, unsigned indices (no wrap-around
    test), so LLVM widens it to the machine's vectors; the bits do not depend on it."""
    dst = flat[lo:lo + 2 * npairs]
    for j in range(npairs):
        z0, z1 = _pair(key, first + 2 * j)
        i = uint64(2 * j)
        dst[i] = z0
        dst[i + uint64(1)] = z1


@njit(cache=True, error_model="numpy")
def normals(key, start, out):
    """Fill ``out`` with the standard normals at positions ``start, start + 1, …`` of
    stream ``key`` (Box–Muller: positions 2j and 2j + 1 share the uniforms at counters 2j
    and 2j + 1, see :func:`_pair`; ``start`` may be odd). Each value is a pure function of
    (key, position): a run of any length and start gives the same bits as a longer one.

    Args:
        key: the stream's key (:func:`stream_key`), uint64.
        start: the position of ``out``'s first element (≥ 0).
        out: a C-contiguous float64 array, filled in place in C order.
    """
    flat = out.ravel()
    n = flat.size
    i = 0
    if n > 0 and start % 2 == 1:  # the second half of a pair first
        flat[0] = _pair(key, start - 1)[1]
        i = 1
    npairs = (n - i) // 2
    _fill_pairs(key, start + i, flat, i, npairs)
    if i + 2 * npairs < n:  # the first half of the last pair
        flat[n - 1] = _pair(key, start + n - 1)[0]


@njit(cache=True)
def minibatch(key_x, key_e, t, sqrt_lam, noise, X, N):
    """Step t's fresh minibatch in place: ``X = Z Λ^½`` (n×d, Σ's eigen-coordinates) and
    ``N = σ·Ξ`` (n×m), Z and Ξ standard normals at positions ``t·n·d…`` and ``t·n·m…``
    (:func:`normals`, C order).

    Args:
        key_x, key_e: the keys of the ``"inputs"`` and ``"noise"`` streams.
        t: the step.
        sqrt_lam: (d,) √λ, Λ the eigenvalues of Σ.
        noise: σ ≥ 0 (σ = 0: N = 0, nothing drawn).
        X, N: C-contiguous (n, d) and (n, m) float64 arrays, filled in place.
    """
    n, d = X.shape
    m = N.shape[1]
    normals(key_x, t * n * d, X)
    if noise > 0.0:
        normals(key_e, t * n * m, N)
    scale_minibatch(X, N, sqrt_lam, noise, X, N)


@njit(cache=True)
def scale_minibatch(Z, Xi, sqrt_lam, noise, X, N):
    """``X = Z Λ^½`` and ``N = σ·Ξ`` (``N = 0`` when σ = 0; Ξ is then not read), from the
    standard normals Z (n×d) and Ξ (n×m); ``X``, ``N`` may be ``Z``, ``Ξ`` (in place).
    The one place these products are formed, so samples drawn once and scaled for several
    configurations (:func:`signaldrift._kernels.lora_block`) have the bits of
    :func:`minibatch`."""
    n, d = X.shape
    for i in range(n):
        for j in range(d):
            X[i, j] = Z[i, j] * sqrt_lam[j]
    if noise > 0.0:
        for i in range(n):
            for j in range(N.shape[1]):
                N[i, j] = Xi[i, j] * noise
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
