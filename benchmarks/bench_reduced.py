"""Steps per second of the reduced engine (THEORY.md §7) against the full engine, and the
cost of a reduced run at d = 10³ and d = 10⁸.

Issue 12's benchmark: population SGD (momentum 0), isotropic Σ, r = k = 8, every per-step
term recorded (record_every = 1), one process, Numba compiled before timing.

- Steps per second at d = m ∈ {256, 4096, 65536}: the per-step cost is the difference of
  the times of two runs (``2n`` and ``n`` steps) divided by n, so the one-off set-up
  (drawing the task and A₀, computing the overlaps) is excluded for both engines; the best
  of ``--repeats`` runs.
- A whole reduced run (set-up included) of 10⁴ steps at d = m = 10³ and 10⁸, both with
  ``overlap_init = "sampled"`` (no factor formed), and the ratio of the two times: the
  cost must not grow with d.

Run: ``python benchmarks/bench_reduced.py [--json PATH]``. Quote the ratios, not the
absolute times, which depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

import signaldrift as sd

BASE = sd.SimConfig(d=256, m=256, rank=8, task_rank=8, spectrum=0.0, optimizer="sgd",
                    lr=0.05, alpha=16.0, record_every=1)


def _best_time(config: sd.SimConfig, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sd.simulate(config)
        best = min(best, time.perf_counter() - t0)
    return best


def steps_per_second(config: sd.SimConfig, n: int, repeats: int) -> float:
    """n / (t(2n steps) − t(n steps)): the per-step rate without the set-up."""
    t1 = _best_time(config.replace(steps=n), repeats)
    t2 = _best_time(config.replace(steps=2 * n), repeats)
    return n / max(t2 - t1, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for engine in ("full", "reduced"):  # compile / load the Numba caches
        sd.simulate(BASE.replace(engine=engine, steps=3))
    sd.simulate(BASE.replace(engine="reduced", momentum=0.5, steps=3))
    rows = []
    for dim, n_full, n_red in ((256, 400, 20000), (4096, 40, 20000), (65536, 4, 20000)):
        cfg = BASE.replace(d=dim, m=dim)
        full = steps_per_second(cfg, n_full, args.repeats)
        red = steps_per_second(cfg.replace(engine="reduced"), n_red, args.repeats)
        rows.append({"d": dim, "m": dim, "r": 8, "k": 8, "full_steps_per_s": full,
                     "reduced_steps_per_s": red, "ratio": red / full})
        print(f"d = m = {dim:6d}: full {full:10.1f} steps/s | reduced {red:10.1f} steps/s | "
              f"ratio {red / full:9.1f}x", flush=True)
    width = {}
    for dim in (10**3, 10**8):
        cfg = BASE.replace(d=dim, m=dim, engine="reduced", overlap_init="sampled", steps=10**4)
        width[dim] = _best_time(cfg, args.repeats)
        print(f"reduced run, 10^4 steps, d = m = {dim:.0e}: {width[dim]:.3f} s", flush=True)
    ratio = width[10**8] / width[10**3]
    print(f"time(d = 1e8) / time(d = 1e3) = {ratio:.3f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"steps_per_second": rows,
                       "reduced_run_seconds": {str(k): v for k, v in width.items()},
                       "time_ratio_1e8_over_1e3": ratio}, fh, indent=2)


if __name__ == "__main__":
    main()
