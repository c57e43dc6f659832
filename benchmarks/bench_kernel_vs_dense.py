"""Steps per second of the factorised Numba kernel against the dense NumPy reference.

Issue 2's benchmark: population Adam, r = 16, k = 64, at d = m = 2048 and d = m = 256,
both engines recording every per-step term (record_every = 1), measured in one process
after a warm-up run (Numba compilation excluded). Target: ≥ 20× at d = m = 2048.

The kernel always runs with one BLAS thread (see ``signaldrift.simulate``). The dense
reference is timed twice: with one BLAS thread (like for like) and with BLAS's default
thread count (all cores), and both ratios are reported.

Run: ``python benchmarks/bench_kernel_vs_dense.py [--json PATH]``. Quote the ratios, not
the absolute times, which depend on the machine.
"""

from __future__ import annotations

import argparse
import json
import time

from threadpoolctl import threadpool_limits

import signaldrift as sd


def steps_per_second(engine, config: sd.SimConfig, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        engine(config)
        best = min(best, time.perf_counter() - t0)
    return config.steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the measurements here")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for dim, fast_steps, dense_steps in ((256, 2000, 200), (2048, 400, 10)):
        base = sd.SimConfig(d=dim, m=dim, task_rank=64, rank=16, optimizer="adam", lr=1e-4,
                            steps=fast_steps)
        sd.simulate(base.replace(steps=2))  # compile / load the Numba cache
        fast = steps_per_second(sd.simulate, base, args.repeats)
        dense_cfg = base.replace(steps=dense_steps)
        with threadpool_limits(limits=1, user_api="blas"):
            dense1 = steps_per_second(sd.simulate_reference, dense_cfg, args.repeats)
        dense_all = steps_per_second(sd.simulate_reference, dense_cfg, args.repeats)
        rows.append({"d": dim, "m": dim, "r": 16, "k": 64, "kernel_steps_per_s": fast,
                     "dense_1thread_steps_per_s": dense1, "dense_steps_per_s": dense_all,
                     "ratio_1thread": fast / dense1, "ratio": fast / dense_all})
        print(f"d = m = {dim:5d}: kernel {fast:9.1f} steps/s | dense 1 thread "
              f"{dense1:8.2f} steps/s, ratio {fast / dense1:6.1f}x | dense all threads "
              f"{dense_all:8.2f} steps/s, ratio {fast / dense_all:6.1f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
