"""The sweep engine's choices (threads or processes, block sizes) and the shared task cache.

Every expected value here is exact: the engine only changes how configurations are grouped
and where they run, never a result's bits (each run is seeded by its configuration alone).
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from signaldrift import SimConfig, make_task, simulate
from signaldrift import _sweep
from signaldrift._sweep import (_engine, _interleave, _thread_block_size, estimate_run_seconds,
                                run_configs)
from signaldrift._task import task_cache

SMALL = SimConfig(d=16, m=16, task_rank=2, rank=2, steps=20, record_every=5, spectrum=1.0)


def _grid(n_lr=4, n_seed=3, **kw):
    base = SMALL.replace(**kw)
    return [base.replace(lr=float(lr), seed=s) for lr in np.geomspace(1e-3, 1e-1, n_lr)
            for s in range(n_seed)]


def _same(a, b) -> bool:
    return (a.config == b.config and np.array_equal(a.A, b.A) and np.array_equal(a.B, b.B)
            and all(np.array_equal(a.records[k], b.records[k], equal_nan=True)
                    for k in a.records) and a.diverged == b.diverged)


# ------------------------------------------------------------------ task cache
def test_task_cache_returns_the_same_task_for_the_same_task_settings():
    cfg = SimConfig(d=32, m=24, task_rank=4, spectrum=1.0, basis="random", seed=3)
    plain = make_task(cfg)
    with task_cache():
        t1 = make_task(cfg)
        t2 = make_task(cfg.replace(lr=0.5, alpha=4.0, rank=2))  # student settings only
        t3 = make_task(cfg.replace(seed=4))                    # another task seed
    assert t1 is t2 and t3 is not t1
    for name in ("lam", "U", "sigma_star", "V"):
        assert np.array_equal(getattr(t1, name), getattr(plain, name))
    assert np.array_equal(t1.basis.cs, plain.basis.cs)
    with task_cache():  # emptied when the block ended
        assert make_task(cfg) is not t1
    assert make_task(cfg) is not make_task(cfg)  # no cache outside a block


def test_task_cache_key_is_every_setting_make_task_reads():
    base = SimConfig(d=16, m=16, task_rank=2, seed=0)
    with task_cache():
        t0 = make_task(base)
        for change in ({"spectrum": 1.0}, {"decay": 1.0}, {"noise": 0.1}, {"basis": "eigen"},
                       {"align": "aligned"}, {"task_seed": 5}, {"m": 12}, {"task_rank": 3}):
            assert make_task(base.replace(**change)) is not t0, change


# ------------------------------------------------------------------ engine choice
def test_engine_threads_for_short_runs_processes_for_long_ones():
    short = _grid()
    # The runs of tests/test_interrupts.py (about 1 s each): they need worker processes.
    long = [SimConfig(d=48, m=48, task_rank=4, rank=4, steps=6000, batch=8, seed=s)
            for s in range(2)]
    assert estimate_run_seconds(long[0]) > _sweep._FORK_ABOVE_SECONDS
    assert estimate_run_seconds(short[0]) < _sweep._FORK_ABOVE_SECONDS
    assert _engine(short, 2) == "threads"
    assert _engine(short, 1) == "threads"
    assert _engine(long, 2) == "processes"
    assert _engine(long, 1) == "threads"
    assert _engine([c.replace(engine="reduced", spectrum=0.0, optimizer="sgd", lr=0.1)
                    for c in short], 2) == "processes"


def test_estimate_grows_with_the_work():
    e = estimate_run_seconds
    assert e(SMALL.replace(steps=40)) > e(SMALL)
    assert e(SMALL.replace(d=64, m=64)) > e(SMALL)
    assert e(SMALL.replace(batch=32)) > e(SMALL)
    assert e(SMALL.replace(record_every=1)) > e(SMALL)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_block_sizes_are_multiples_of_threads_and_cover_the_rest(threads):
    for seconds in (1e-5, 1e-3, 0.05, 10.0):
        for remaining in (1, 2, 5, 17, 300):
            n = _thread_block_size(seconds, threads, remaining, cap=64)
            assert 1 <= n <= min(remaining, 64)
            assert n == remaining or n % threads == 0
            assert remaining - n == 0 or remaining - n >= threads or n > 64 - threads


def test_interleave_is_a_permutation():
    keys = [str(i) for i in range(11)]
    for t in (1, 2, 3):
        out = _interleave(keys, t)
        assert sorted(out) == sorted(keys)
    assert _interleave(keys[:6], 2) == ["0", "2", "4", "1", "3", "5"]


# ------------------------------------------------------------------ results
@pytest.mark.parametrize("batch", [0, 4])
def test_threads_engine_is_bit_identical_to_single_runs(batch):
    configs = _grid(batch=batch)
    singles = [simulate(c) for c in configs]
    for workers in (1, 2):
        for r, s in zip(run_configs(configs, workers=workers, progress=False), singles):
            assert _same(r, s)


def test_threads_engine_caches_and_resumes(tmp_path):
    configs = _grid()
    first = run_configs(configs, workers=2, cache_dir=tmp_path, progress=False)
    assert len([p for p in tmp_path.iterdir() if p.suffix == ".npz"]) == len(configs)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    again = run_configs(configs, workers=2, cache_dir=tmp_path, progress=False)
    assert all(_same(a, b) for a, b in zip(first, again))


@pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs signals")
def test_ctrl_c_in_the_threads_engine_returns_and_the_next_sweep_runs():
    # Enough runs that the signal lands mid-sweep (about 1 ms a run, blocks of ~0.15 s).
    configs = _grid(n_lr=60, n_seed=20, steps=200)
    assert _engine(configs, 2) == "threads"
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt) as info:
        run_configs(configs, workers=2, progress=False)
        time.sleep(5)  # the sweep finished before the signal: let it land here
    assert time.monotonic() - t0 < 5.5
    assert "runs had finished" in getattr(info.value, "detail", "runs had finished")
    timer.join()
    # The engine thread of the interrupted sweep finishes its block and releases the
    # kernels; the next sweep waits for it and gives the same bits as single runs.
    few = configs[:4]
    for r, c in zip(run_configs(few, workers=2, progress=False), few):
        assert _same(r, simulate(c))
