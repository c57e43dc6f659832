"""Speed of the in-kernel Gaussian sampler: ``_rng.minibatch`` against the version-2 one.

Version 2 of the sample streams (copied below as the baseline) evaluated the Box–Muller
transform with libm's log, sin and cos, one pair at a time; version 3
(:mod:`signaldrift._rng`) uses branch-free IEEE polynomials that LLVM vectorises. Both
draw the same uniforms and apply the same transform, so the samples agree to rounding:
this script checks |new − old| ≤ 1e−14·|old| for every draw it times (and exits non-zero
otherwise), then reports, best of ``--rounds`` rounds (old and new rounds interleaved, so
that a change in the machine's load hits both), on one thread:

- ``minibatch`` (n = 32 rows; d = m = 128 and d = m = 512; σ > 0, so 2·n·d normals);
- where the time goes: SplitMix64 uniforms alone, √(−2 ln u) alone, sin + cos alone
  (old: libm; new: the polynomials), and the Λ^½ scaling loop;
- with ``--step``, the time per step of a minibatch run (n = 32, d = m = 128, rank 8, Adam,
  records every 50 steps) and the share of it that sampling takes now.

Run: ``python benchmarks/bench_rng.py [--rounds 31] [--step] [--json PATH]``. Quote the
ratios, not the absolute times, which depend on the machine (and the load average, which
is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from numba import njit, uint64

from signaldrift import _rng
from signaldrift._rng import minibatch, normals, stream_key

# ------------------------------------------------------------ version 2 (the baseline)
_PHI = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_PI = 2.0 * np.pi
_INV_2_53 = 1.0 / 9007199254740992.0


@njit(cache=True)
def _mix_v2(key, counter):
    z = key + uint64(counter) * _PHI
    z = (z ^ (z >> uint64(30))) * _M1
    z = (z ^ (z >> uint64(27))) * _M2
    return z ^ (z >> uint64(31))


@njit(cache=True)
def _uniform_v2(key, counter):
    return (float(_mix_v2(key, counter) >> uint64(11)) + 1.0) * _INV_2_53


@njit(cache=True)
def normals_v2(key, start, out):
    """Version 2's ``normals``: libm Box–Muller, one pair per iteration."""
    flat = out.ravel()
    n = flat.size
    i = 0
    if n > 0 and start % 2 == 1:
        u1, u2 = _uniform_v2(key, start - 1), _uniform_v2(key, start)
        flat[0] = np.sqrt(-2.0 * np.log(u1)) * np.sin(_TWO_PI * u2)
        i = 1
    while i < n:
        pos = start + i
        u1, u2 = _uniform_v2(key, pos), _uniform_v2(key, pos + 1)
        rad = np.sqrt(-2.0 * np.log(u1))
        flat[i] = rad * np.cos(_TWO_PI * u2)
        if i + 1 < n:
            flat[i + 1] = rad * np.sin(_TWO_PI * u2)
        i += 2


@njit(cache=True)
def minibatch_v2(key_x, key_e, t, sqrt_lam, noise, X, N):
    """Version 2's ``minibatch``."""
    n, d = X.shape
    m = N.shape[1]
    normals_v2(key_x, t * n * d, X)
    for i in range(n):
        for j in range(d):
            X[i, j] *= sqrt_lam[j]
    if noise > 0.0:
        normals_v2(key_e, t * n * m, N)
        for i in range(n):
            for j in range(m):
                N[i, j] *= noise
    else:
        N[...] = 0.0


# ------------------------------------------------------------ the parts, for the profile
@njit(cache=True)
def _uniforms_v2(key, out):
    for i in range(out.size):
        out[i] = _uniform_v2(key, i)


@njit(cache=True, error_model="numpy")
def _uniforms_v3(key, out):
    for i in range(out.size):
        out[uint64(i)] = (float(_rng._mix(key, i) >> uint64(11)) + 1.0) * _INV_2_53


@njit(cache=True)
def _radius_v2(u, out):
    for i in range(u.size):
        out[i] = np.sqrt(-2.0 * np.log(u[i]))


@njit(cache=True, error_model="numpy")
def _radius_v3(u, out):
    for i in range(u.size):
        out[uint64(i)] = _rng._sqrt(-2.0 * _rng._log(u[uint64(i)]))


@njit(cache=True)
def _sincos_v2(u, s, c):
    for i in range(u.size):
        s[i] = np.sin(_TWO_PI * u[i])
        c[i] = np.cos(_TWO_PI * u[i])


@njit(cache=True, error_model="numpy")
def _sincos_v3(u, s, c):
    for i in range(u.size):
        s[uint64(i)], c[uint64(i)] = _rng._sincos(_TWO_PI * u[uint64(i)])


@njit(cache=True)
def _scale(X, sqrt_lam):
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            X[i, j] *= sqrt_lam[j]


# ------------------------------------------------------------ measurement
def best_pair(old, new, old_args, new_args, reps: int, rounds: int) -> tuple[float, float]:
    """Best-of-``rounds`` seconds per call of ``old`` and ``new`` (rounds interleaved)."""
    old(*old_args), new(*new_args)  # compile / load the cache
    best_old = best_new = float("inf")
    for _ in range(rounds):
        for fn, args, which in ((old, old_args, 0), (new, new_args, 1)):
            t0 = time.perf_counter()
            for _ in range(reps):
                fn(*args)
            dt = (time.perf_counter() - t0) / reps
            if which == 0:
                best_old = min(best_old, dt)
            else:
                best_new = min(best_new, dt)
    return best_old, best_new


def check_agreement(n: int, d: int, steps: int = 20) -> float:
    """Max of |new − old|/|old| per draw over ``steps`` consecutive minibatches and a few far
    ones (σ > 0, so both streams); exits above 1e−14."""
    key_x, key_e = stream_key(1, "inputs"), stream_key(1, "noise")
    sqrt_lam = np.sqrt(np.linspace(1.0, 0.01, d))
    worst = 0.0
    for t in (1000, 10**6, 10**9) + tuple(range(steps)):
        Xo, No, Xn, Nn = (np.empty((n, d)) for _ in range(4))
        minibatch_v2(key_x, key_e, t, sqrt_lam, 0.5, Xo, No)
        minibatch(key_x, key_e, t, sqrt_lam, 0.5, Xn, Nn)
        for old, new in ((Xo, Xn), (No, Nn)):
            dev = np.abs(new - old)
            if not np.all(dev <= 1e-14 * np.abs(old)):
                raise SystemExit(f"d = {d}, t = {t}: version 3 deviates from version 2 by "
                                 f"more than 1e-14 relative (max {np.max(dev):.3g})")
            with np.errstate(invalid="ignore", divide="ignore"):
                rel = np.where(old != 0.0, dev / np.abs(old), 0.0)
            worst = max(worst, float(np.max(rel)))
    return worst


def step_time(rounds: int) -> dict:
    """µs per step of a minibatch run and the share of it the sampler (``minibatch``) takes."""
    import signaldrift as sd

    n, d = 32, 128
    cfg = sd.SimConfig(d=d, m=d, rank=8, task_rank=8, optimizer="adam", lr=1e-3, batch=n,
                       noise=0.1, steps=3000, record_every=50)
    sd.simulate(cfg.replace(steps=2))
    best = float("inf")
    for _ in range(max(3, rounds // 3)):
        t0 = time.perf_counter()
        sd.simulate(cfg)
        best = min(best, time.perf_counter() - t0)
    per_step = best / cfg.steps * 1e6
    X, N = np.empty((n, d)), np.empty((n, d))
    key_x, key_e = stream_key(0, "inputs"), stream_key(0, "noise")
    sqrt_lam = np.ones(d)
    _, sample = best_pair(minibatch, minibatch, (key_x, key_e, 3, sqrt_lam, 0.1, X, N),
                          (key_x, key_e, 3, sqrt_lam, 0.1, X, N), 500, rounds)
    return {"step_us": per_step, "sample_us": sample * 1e6,
            "sample_share": sample * 1e6 / per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=31, help="best of this many rounds")
    parser.add_argument("--step", action="store_true", help="also time a whole run's step")
    parser.add_argument("--json", help="also write the measurements here")
    args = parser.parse_args()
    out = {"load_average_before": os.getloadavg(), "rows": []}
    print(f"load average (1, 5, 15 min): {out['load_average_before']}")
    n = 32
    key_x, key_e = stream_key(0, "inputs"), stream_key(0, "noise")
    for d in (128, 512):
        worst = check_agreement(n, d)
        reps = 100 * 128 // d  # short rounds, many of them: the best finds a quiet moment
        X, N = np.empty((n, d)), np.empty((n, d))
        sqrt_lam = np.sqrt(np.linspace(1.0, 0.01, d))
        mb = (key_x, key_e, 5, sqrt_lam, 0.5, X, N)
        t_old, t_new = best_pair(minibatch_v2, minibatch, mb, mb, reps, args.rounds)
        row = {"n": n, "d": d, "m": d, "normals": 2 * n * d, "old_us": t_old * 1e6,
               "new_us": t_new * 1e6, "ratio": t_old / t_new, "max_rel_dev": worst}
        # the parts, per (n, d) matrix: its n·d uniforms, then √(−2 ln u) and (sin, cos) of
        # 2πu for its n·d/2 pairs, and the whole ``normals``
        u = np.empty(n * d)
        _uniforms_v3(key_x, u)
        pairs = u[: n * d // 2].copy()
        o1, o2 = np.empty_like(pairs), np.empty_like(pairs)
        parts = {
            "uniforms": best_pair(_uniforms_v2, _uniforms_v3, (key_x, u), (key_x, u), reps,
                                  args.rounds),
            "radius": best_pair(_radius_v2, _radius_v3, (pairs, o1), (pairs, o1), reps,
                                args.rounds),
            "sincos": best_pair(_sincos_v2, _sincos_v3, (pairs, o1, o2), (pairs, o1, o2),
                                reps, args.rounds),
            "normals": best_pair(normals_v2, normals, (key_x, 0, X), (key_x, 0, X), reps,
                                 args.rounds),
        }
        scale = best_pair(_scale, _scale, (X, sqrt_lam), (X, sqrt_lam), reps, args.rounds)[1]
        row["parts_us_old_new_per_matrix"] = {k: (a * 1e6, b * 1e6) for k, (a, b) in
                                              parts.items()}
        row["scale_us_per_matrix"] = scale * 1e6
        out["rows"].append(row)
        print(f"n = {n}, d = m = {d}: minibatch ({2 * n * d} normals) "
              f"old {t_old * 1e6:7.1f} µs, new {t_new * 1e6:6.1f} µs, "
              f"speed-up {t_old / t_new:4.1f}x; max relative deviation per draw {worst:.2g}")
        for k, (a, b) in parts.items():
            print(f"    per matrix ({n}×{d}) {k:9s} old {a * 1e6:7.2f} µs  "
                  f"new {b * 1e6:6.2f} µs  ({a / b:4.1f}x)")
        print(f"    per matrix ({n}×{d}) Λ^½ scaling      {scale * 1e6:6.2f} µs")
    if args.step:
        out["step"] = step_time(args.rounds)
        s = out["step"]
        print(f"minibatch run (n = 32, d = m = 128, rank 8, Adam, record_every = 50): "
              f"{s['step_us']:.1f} µs per step, of which sampling {s['sample_us']:.1f} µs "
              f"({100 * s['sample_share']:.0f} %)")
    out["load_average_after"] = os.getloadavg()
    print(f"load average (1, 5, 15 min): {out['load_average_after']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)


if __name__ == "__main__":
    main()
