"""Cost of each mode of the model-generality issue, as ratios to the eigenbasis baseline.

For d = m ∈ {256, 1024, 4096} (r = k = 8, λ ∝ 1/i, population Adam, 200 steps), the time
per step of: the random feature basis (the structured rotation of signaldrift._basis,
O(r·d·log d) per Adam step), a dense user basis (O(r·d²)), SGD in the random basis (no
rotation: SGD is equivariant), LoRA+ (free), a fixed training set of N = 4·d samples (full
batch: O(N·(m + d)·(r + k)) per step), minibatches drawn from it, and recording every step
(the cancellation-free QR norms) against recording at t = 0 only. Compile time excluded
(one warm-up run per mode), best of 3.

    python benchmarks/bench_modes.py [--sizes 256 1024]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import signaldrift as sd


def _time(cfg, repeat=3, **kw) -> float:
    sd.simulate(cfg.replace(steps=2), **kw)  # compile / warm
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        sd.simulate(cfg, **kw)
        best = min(best, time.perf_counter() - t0)
    return best / cfg.steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    args = p.parse_args(argv)
    print("time per step relative to the eigenbasis (population Adam, records at t = 0 only)")
    print(f"{'d = m':>6} {'eigen ms':>9} {'random':>7} {'dense Q':>8} {'sgd rnd':>8} "
          f"{'LoRA+':>6} {'N=4d full':>10} {'N=4d mb32':>10} {'rec every':>10}")
    with threadpool_limits(limits=1, user_api="blas"):
        for d in args.sizes:
            base = sd.SimConfig(d=d, m=d, rank=8, task_rank=8, spectrum=1.0, steps=200,
                                record_every=200, basis="eigen", lr=1e-3)
            t_eig = _time(base)
            t_rnd = _time(base.replace(basis="random"))
            rng = np.random.default_rng(0)
            task = sd.make_task(base)
            dense = sd.Task(lam=task.lam, U=task.U, sigma_star=task.sigma_star, V=task.V,
                            noise=0.0,
                            basis=sd._basis.Basis.from_matrix(
                                np.linalg.qr(rng.standard_normal((d, d)))[0]))
            t_dense = _time(base, task=dense) if d <= 1024 else float("nan")
            t_sgd = _time(base.replace(basis="random", optimizer="sgd", lr=0.05))
            t_plus = _time(base.replace(loraplus_lr_ratio=4.0))
            t_full = _time(base.replace(train_size=4 * d, steps=50, record_every=50), repeat=1)
            t_mb = _time(base.replace(train_size=4 * d, batch=32))
            t_rec = _time(base.replace(record_every=1))
            print(f"{d:>6} {1e3 * t_eig:>9.3f} {t_rnd / t_eig:>7.2f} {t_dense / t_eig:>8.2f} "
                  f"{t_sgd / t_eig:>8.2f} {t_plus / t_eig:>6.2f} {t_full / t_eig:>10.1f} "
                  f"{t_mb / t_eig:>10.2f} {t_rec / t_eig:>10.2f}")


if __name__ == "__main__":
    main()
