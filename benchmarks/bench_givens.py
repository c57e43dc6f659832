"""Speed of the ``givens`` feature basis: :func:`signaldrift._basis.to_features` /
:func:`~signaldrift._basis.to_eigen` against the rotation-by-rotation version they replace.

The baseline (copied below) applied the 2·d·⌈log₂ d⌉ rotations one at a time on the
transpose (d × r), loading each rotation's indices and (cos, sin). The current version
(:mod:`signaldrift._basis`) fuses two or three layers per butterfly in AVX2 registers, 4 rows
of X per vector. Both give the same bits: this script checks ``np.array_equal`` for every
case it times (and exits non-zero otherwise), then reports, for r ∈ {1, 4, 8, 16, 64} and
d ∈ {32, 100, 128, 512, 4096}, the time per application (forward and inverse alternated,
as Adam does), best of ``--rounds`` rounds with old and new rounds interleaved (so that a
change in the machine's load hits both), inside one compiled loop (no dispatch overhead).

Run: ``python benchmarks/bench_givens.py [--rounds 200] [--r 1 4 8] [--d 128] [--json PATH]``.
Quote the ratios, not the absolute times, which depend on the machine and on its load
(the load average is printed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from numba import njit

from signaldrift._basis import BASIS_GIVENS, Basis, _givens_generic, to_eigen, to_features


# ------------------------------------------------------------------- the baseline
# The previous release's algorithm (one rotation at a time, in the stored order) is kept
# in the package as the generic path; it is the baseline here.
_givens_old = _givens_generic


@njit(cache=True)
def _loop_old(X, pairs, cs, n):
    acc = 0.0
    for _ in range(n):
        Y = _givens_old(X, pairs, cs, True)
        Z = _givens_old(Y, pairs, cs, False)
        acc += Y[0, 0] + Z[0, 0]
    return acc


@njit(cache=True)
def _loop_new(X, code, pairs, cs, Q, n):
    acc = 0.0
    for _ in range(n):
        Y = to_features(X, code, pairs, cs, Q)
        Z = to_eigen(Y, code, pairs, cs, Q)
        acc += Y[0, 0] + Z[0, 0]
    return acc


def measure(r: int, d: int, rounds: int, budget_s: float = 5e-5) -> dict:
    b = Basis.random(d, seed=0)
    X = np.random.default_rng(1).standard_normal((r, d))
    code, pairs, cs, Q = b.kernel_args()
    assert code == BASIS_GIVENS
    for fw in (True, False):
        new = (to_features if fw else to_eigen)(X, code, pairs, cs, Q)
        if not np.array_equal(new, _givens_old(X, pairs, cs, fw)):
            sys.exit(f"bits differ at r={r}, d={d}, forward={fw}")
    # n application pairs per timed call: about budget_s of the old version's time
    t = time.perf_counter()
    _loop_old(X, pairs, cs, 1)
    _loop_new(X, code, pairs, cs, Q, 1)
    t = time.perf_counter()
    _loop_old(X, pairs, cs, 1)
    n = max(1, int(budget_s / max(time.perf_counter() - t, 1e-7)))
    best_old = best_new = np.inf
    for _ in range(rounds):
        t = time.perf_counter()
        _loop_old(X, pairs, cs, n)
        best_old = min(best_old, time.perf_counter() - t)
        t = time.perf_counter()
        _loop_new(X, code, pairs, cs, Q, n)
        best_new = min(best_new, time.perf_counter() - t)
    return dict(r=r, d=d, old_us=best_old / (2 * n) * 1e6, new_us=best_new / (2 * n) * 1e6,
                ratio=best_old / best_new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--r", type=int, nargs="+", default=[1, 4, 8, 16, 64])
    ap.add_argument("--d", type=int, nargs="+", default=[32, 100, 128, 512, 4096])
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    print(f"load average {os.getloadavg()}; best of {args.rounds} interleaved rounds; "
          "time per application (forward and inverse alternated)")
    print(f"{'d':>5} {'r':>3} {'old µs':>10} {'new µs':>10} {'old/new':>8}")
    rows = []
    for d in args.d:
        for r in args.r:
            m = measure(r, d, args.rounds)
            rows.append(m)
            print(f"{d:5d} {r:3d} {m['old_us']:10.2f} {m['new_us']:10.2f} {m['ratio']:8.2f}",
                  flush=True)
    print(f"load average {os.getloadavg()}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(load=os.getloadavg(), rounds=args.rounds, rows=rows), f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
