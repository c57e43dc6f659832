"""Single-run speed against JAX and dense NumPy (issue #10), on one core.

Steps per second of one population-Adam run (r = k = 8, λ ∝ 1/i, records at t = 0 only,
basis ``eigen``) at d = m ∈ {128, 256, 512, 1024, 2048, 4096}, for:

- signaldrift (``signaldrift.simulate``: the factorised Numba kernel, one thread);
- JAX: the same factorised dynamics, ``jit`` + ``lax.scan`` (``benchmarks/_jax_peer.py``),
  XLA on one core (the process is pinned, and ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``);
- dense NumPy: the plain loop a NumPy user would write (W = sBA and G = (W − Δ⋆)Σ formed,
  m×d; ``_jax_peer.dense_numpy_run``), BLAS limited to one thread, fewer steps at large d.

The whole process is pinned to CPU 0 (``os.sched_setaffinity``) before JAX, Numba or BLAS
start, so every peer has one core. Each peer's losses (t = 0 and the end) are checked
against signaldrift's before it is timed.

Then: the fraction of one core's dgemm rate (NumPy, 1 thread, n = 2048) that the kernel
reaches at d = 4096, counting the kernel's matrix-product flops per population step as
``4·r·(r + k)·(m + d)`` (the four GEMMs on stacked factors: the Gram products
``[AΣ; VᵀΣ]·Aᵀ``, ``[B, U]ᵀ·B`` and the gradients ``[B, U]·C_B``, ``C_A·[AΣ; VᵀΣ]``;
Adam's ~15 elementwise flops per parameter, ``15·r·(m + d)``, are reported beside it).

And (``--profile``, on by default) a breakdown of the kernel's step: the kernel's own
building blocks (``signaldrift._kernels``) cut after the stacked Gram products and the
trace loss, after the two gradient GEMMs, and after the fused Adam steps (the full step),
beside ``simulate``'s whole run per step, timed at each d.

    python benchmarks/bench_single_vs_jax.py [--sizes 128 1024 4096] [--repeats 3]
        [--no-profile] [--json PATH]

Default run: about 4 minutes on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# One core for every peer: pin before any thread pool starts.
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
# (``intra_op_parallelism_threads=1`` is not an XLA_FLAGS flag in jax 0.10: the pinning
# is what limits XLA to one core; the flags are _jax_peer.SAFE_XLA_FLAGS.)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_cpu_multi_thread_eigen=false"
                           " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()
os.environ.setdefault("JAX_ENABLE_X64", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _jax_peer as jp  # noqa: E402

STEPS = {128: 4000, 256: 3000, 512: 2000, 1024: 1000, 2048: 500, 4096: 250}
DENSE_STEPS = {128: 1000, 256: 400, 512: 100, 1024: 30, 2048: 8, 4096: 3}
R = K = 8


def config(d: int, steps: int):
    import signaldrift as sd

    return sd.SimConfig(d=d, m=d, rank=R, task_rank=K, spectrum=1.0, optimizer="adam",
                        lr=1e-3, alpha=16.0, basis="eigen", steps=steps, record_every=steps,
                        seed=0)


def best(fn, repeats: int) -> float:
    t = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def matmul_flops(d: int, m: int) -> int:
    return 4 * R * (R + K) * (m + d)


def dgemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    a @ b
    return 2.0 * n**3 / best(lambda: a @ b, repeats) / 1e9


# --------------------------------------------------------------------------- profile
def _profile_kernels():
    """The kernel's population step cut after each stage (the same calls as
    ``signaldrift._kernels.lora_run``), each over T steps: the stacked Gram products and
    the trace loss; + the two gradient GEMMs; + the fused Adam steps (= the kernel's
    step without the divergence branch)."""
    from numba import njit

    from signaldrift._basis import BASIS_EIGEN
    from signaldrift._kernels import (
        _population_grads,
        _population_grams,
        _trace_loss,
        optimizer_step,
        padded_rows,
        stacked_factor_pad,
    )

    def make(stage):
        @njit(cache=False)
        def run(T, A, B, lam, U, VtS, sig, c_loss, s, lr, mA, vA, mB, vB):
            r, d = A.shape
            m, k = U.shape
            H = padded_rows(r + k, d, stacked_factor_pad(r, d))
            H[r:] = VtS
            F = np.empty((m, r + k))
            F[:, r:] = U
            P, Gm = np.empty((r + k, r)), np.empty((r + k, r))
            Ca, Cb = np.empty((r, r + k)), np.empty((r + k, r))
            gA, gB = np.empty((r, d)), np.empty((m, r))
            At = np.empty((d, r))
            no = np.zeros((0, 0))
            pairs = np.zeros((0, 2), dtype=np.int64)
            acc = 0.0
            for t in range(T):
                _population_grams(A, B, lam, H, F, P, Gm, At)
                acc += _trace_loss(s, P, Gm, sig, c_loss, r)
                if stage >= 1:
                    _population_grads(s, sig, H, F, P, Gm, Ca, Cb, gA, gB)
                    acc += gA[0, 0] + gB[0, 0]
                if stage >= 2:
                    optimizer_step(A, gA, mA, vA, t, lr, 1, 0.0, False, 0.9, 0.999, 1e-8,
                                   0.0, BASIS_EIGEN, pairs, no, no)
                    optimizer_step(B, gB, mB, vB, t, lr, 1, 0.0, False, 0.9, 0.999, 1e-8,
                                   0.0, BASIS_EIGEN, pairs, no, no)
            return acc
        return run

    return {"Gram products + loss": make(0), "+ gradients": make(1),
            "+ Adam (= the kernel's step)": make(2)}


def profile(sizes, repeats) -> list[dict]:
    """Time per step of each stage and of the real kernel (``simulate``)."""
    import signaldrift as sd
    from signaldrift._init import init_adapter
    from signaldrift._scaling import scale_factor
    from signaldrift._task import make_task

    kernels = _profile_kernels()
    rows = []
    for d in sizes:
        T = STEPS[d]
        cfg = config(d, T)
        task = make_task(cfg)
        A0, B0 = init_adapter(cfg, task)
        s = scale_factor(cfg)
        VtS = np.ascontiguousarray((task.V * task.lam[:, None]).T)
        c_loss = task.initial_loss() * 2.0
        row = {"d": d}
        for name, fn in kernels.items():
            def go():
                A, B = A0.copy(), B0.copy()
                return fn(T, A, B, task.lam, task.U, VtS, task.sigma_star, c_loss, s, 1e-3,
                          np.zeros_like(A), np.zeros_like(A), np.zeros_like(B),
                          np.zeros_like(B))

            go()
            row[name] = best(go, repeats) / T * 1e6
        # check: the staged step is the kernel's step (its final loss, 200 steps)
        A, B = A0.copy(), B0.copy()
        kernels["+ Adam (= the kernel's step)"](
            200, A, B, task.lam, task.U, VtS, task.sigma_star, c_loss, s, 1e-3,
            np.zeros_like(A), np.zeros_like(A), np.zeros_like(B), np.zeros_like(B))
        final = sd.simulate(config(d, 200)).final_loss
        mine = float(sd._kernels.lora_loss(s, A, B, task.lam, task.U, task.sigma_star,
                                           task.V))
        row["staged_check_rel_dev"] = abs(mine - final) / abs(final)
        row["kernel (simulate)"] = best(lambda: sd.simulate(cfg), repeats) / T * 1e6
        rows.append(row)
        cols = [k for k in row if k not in ("d", "staged_check_rel_dev")]
        print(f"  d = m = {d:5d}: " + " | ".join(f"{k} {row[k]:8.1f}" for k in cols)
              + f"  (µs/step; the staged step's final loss agrees with simulate's to "
              f"{row['staged_check_rel_dev']:.0e})", flush=True)
    return rows


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(STEPS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    jax = jp.require_jax()
    from threadpoolctl import threadpool_limits

    import signaldrift as sd

    threadpool_limits(limits=1)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    load = os.getloadavg()[0]
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores SHARED with other "
          f"developers (1-min load {load:.1f}); this process pinned to CPU {cpus}; "
          "best-of-N; quote the ratios")
    print(f"peers: signaldrift (Numba, 1 thread) | jax {jax.__version__} factorised "
          f"jit+scan, XLA_FLAGS='{os.environ['XLA_FLAGS'].strip()}' | dense NumPy loop "
          "(1 BLAS thread); population Adam, r = k = 8, basis 'eigen', records at t = 0")
    print("ratios: signaldrift steps/s over the peer's (> 1: signaldrift is faster)")
    rows = []
    for d in args.sizes:
        T, Td = STEPS[d], DENSE_STEPS[d]
        cfg = config(d, T)
        # The check runs 200 steps (fewer for dense at large d): over thousands of steps
        # Adam near convergence amplifies rounding (both sides are then correct, and differ).
        Tc, Tdc = min(T, 200), min(Td, 200)
        res = sd.simulate(config(d, Tc))  # warm (Numba cache) and the reference losses
        out = jp.block(jax.jit(jp.build(Tc, 0, "t0"))(jp.to_device(jp.problem(config(d, Tc)))))
        dev_jax = jp.rel_dev(np.asarray(out["loss"]), res.records["loss"])
        assert dev_jax <= 1e-12, dev_jax
        dense_ref = sd.simulate(config(d, Tdc)).records["loss"]
        dev_dense = jp.rel_dev(jp.dense_numpy_run(config(d, Tdc)), dense_ref)
        assert dev_dense <= 1e-10, dev_dense
        run = jax.jit(jp.build(T, 0, "t0"))
        p = jp.to_device(jp.problem(cfg))
        jp.block(run(p))  # compile
        t_sd, t_jax, t_dense = [], [], []
        for _ in range(args.repeats):  # side by side, one repetition each
            t0 = time.perf_counter()
            sd.simulate(cfg)
            t_sd.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jp.block(run(p))
            t_jax.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            jp.dense_numpy_run(config(d, Td))
            t_dense.append(time.perf_counter() - t0)
        sps = {"signaldrift": T / min(t_sd), "jax": T / min(t_jax),
               "dense_numpy": Td / min(t_dense)}
        row = {"d": d, "steps": T, "dense_steps": Td, "steps_per_s": sps,
               "ratio_vs_jax": sps["signaldrift"] / sps["jax"],
               "ratio_vs_dense": sps["signaldrift"] / sps["dense_numpy"],
               "jax_loss_rel_dev": dev_jax, "dense_loss_rel_dev": dev_dense}
        rows.append(row)
        print(f"  d = m = {d:5d}: signaldrift/JAX {row['ratio_vs_jax']:6.2f}x | "
              f"signaldrift/dense NumPy {row['ratio_vs_dense']:8.1f}x | losses agree "
              f"({Tc} steps): JAX {dev_jax:.1e}, dense ({Tdc} steps) {dev_dense:.1e}",
              flush=True)
    report = {"single": rows}
    if 4096 in args.sizes:
        rate = dgemm_gflops()
        row = next(r for r in rows if r["d"] == 4096)
        f_mm, f_adam = matmul_flops(4096, 4096), 15 * R * (4096 + 4096)
        frac = f_mm * row["steps_per_s"]["signaldrift"] / (rate * 1e9)
        frac_all = (f_mm + f_adam) * row["steps_per_s"]["signaldrift"] / (rate * 1e9)
        frac_jax = f_mm * row["steps_per_s"]["jax"] / (rate * 1e9)
        report["dgemm"] = {"dgemm_gflops_1thread": rate, "matmul_flops_per_step": f_mm,
                           "adam_flops_per_step": f_adam, "fraction_matmul": frac,
                           "fraction_with_adam": frac_all, "jax_fraction_matmul": frac_jax}
        print(f"dgemm fraction at d = m = 4096: the kernel reaches {100 * frac:.1f}% of one "
              f"core's dgemm rate counting 4r(r+k)(m+d) = {f_mm / 1e6:.2f} Mflop/step "
              f"({100 * frac_all:.1f}% with Adam's 15r(m+d)); JAX {100 * frac_jax:.1f}%")
    if not args.no_profile:
        print("profile of the kernel's population step (µs per step, one thread):")
        report["profile"] = profile(args.sizes, args.repeats)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
