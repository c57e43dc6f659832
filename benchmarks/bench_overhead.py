"""The Python-side overhead of sweeps (issue #10): in-process threads against worker processes.

Grid: ``_jax_peer.sweep_grid(d=128)`` (lr 8 × α 4 × seed 4 = 128 configurations, d = m = 128,
r = k = 8, Adam, 200 steps, population gradient, records at t = 0), no cache, no progress
bar. Timed, best of ``--repeats`` (compile excluded: one warm-up sweep first):

- ``kernel``: ``simulate_block`` over the whole grid in one call on one thread, the
  kernel's share (the Python work of ``simulate_block`` included);
- ``run_configs(workers=1)`` and ``run_configs(workers=2)`` as they run now (the
  in-process engine: blocks of the block kernels on 1 or 2 Numba threads);
- ``processes, 2 workers``: the previous engine, kept callable: forked worker processes,
  blocks of at most 16 configurations, a task drawn per configuration (``_FORCE_ENGINE =
  "processes"`` and the task cache off);
- ``serial, old``: the previous one-process path (blocks of ≤ 16 in this thread, no task
  cache).

Prints each time and the ratios; ``--json PATH`` writes them. The machine is shared: quote
ratios from one run, not absolute times.

Measured on the shared 2-core development machine (load average ~1.5 from other developers'
jobs), 7 rounds: kernel 0.505 s; new workers=1 0.486 s, workers=2 0.283 s (1.72×); old
serial 0.534 s, old 2 processes 0.324 s (1.65×, and 16% more CPU). At load ~3 the variants
were within noise of each other. Details: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cpu() -> float:
    """CPU seconds of this process and its reaped children (user + system)."""
    import resource

    me, ch = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime + ch.ru_utime + ch.ru_stime


def _best(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def _timed(fn) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    t, c = time.perf_counter(), _cpu()
    fn()
    return time.perf_counter() - t, _cpu() - c


@contextlib.contextmanager
def _old_engine(engine: str):
    """The engine before this change: ``engine`` forced, no task cache."""
    from signaldrift import _sweep

    saved = _sweep._FORCE_ENGINE, _sweep.task_cache
    _sweep._FORCE_ENGINE = engine
    _sweep.task_cache = contextlib.nullcontext
    try:
        yield
    finally:
        _sweep._FORCE_ENGINE, _sweep.task_cache = saved


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--batch", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)

    from _jax_peer import sweep_grid

    from signaldrift._simulate import simulate_block
    from signaldrift._sweep import run_configs

    configs = sweep_grid(d=a.d, batch=a.batch)
    run_configs(configs, workers=2, progress=False)  # compile or load the kernels

    def rc(workers, engine=None):
        def go():
            if engine is None:
                run_configs(configs, workers=workers, progress=False)
            else:
                with _old_engine(engine):
                    run_configs(configs, workers=workers, progress=False)
        return go

    variants = {"kernel": lambda: simulate_block(configs),
                "run_configs(workers=1)": rc(1),
                "run_configs(workers=2)": rc(2),
                "processes, 2 workers (old)": rc(2, "processes"),
                "serial, 1 process (old)": rc(1, "serial")}
    # Rounds of every variant in turn, best of the rounds: other jobs on a shared machine
    # come and go, and taking turns spreads them over all variants.
    samples = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    for _ in range(a.repeats):
        for k, fn in variants.items():
            wall, c = _timed(fn)
            samples[k].append(wall)
            cpu[k].append(c)
    times = {k: min(v) for k, v in samples.items()}
    cpus = {k: min(v) for k, v in cpu.items()}
    print("wall (best of rounds) and CPU seconds (process and workers, best):")
    for k in variants:
        print(f"{k:32s} wall {times[k]:.3f} s  cpu {cpus[k]:.3f} s")
    w1, w2 = times["run_configs(workers=1)"], times["run_configs(workers=2)"]
    ratios = {
        "workers=1 / kernel (overhead factor)": w1 / times["kernel"],
        "speed-up of 2 workers over 1": w1 / w2,
        "old 2 processes / new workers=2": times["processes, 2 workers (old)"] / w2,
        "old serial / new workers=1": times["serial, 1 process (old)"] / w1,
        "CPU: old 2 processes / new workers=2": (cpus["processes, 2 workers (old)"]
                                                 / cpus["run_configs(workers=2)"]),
        "CPU: new workers=1 / kernel": cpus["run_configs(workers=1)"] / cpus["kernel"],
    }
    for k, v in ratios.items():
        print(f"{k:40s} {v:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"seconds": times, "cpu_seconds": cpus, "ratios": ratios}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
