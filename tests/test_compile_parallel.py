"""compile_in_parallel: groups run in forked children first, then all of them here."""

from __future__ import annotations

import os
import sys

import pytest

from signaldrift._compile import compile_in_parallel

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def _marker(folder, name):
    def fn():
        (folder / f"{name}.{os.getpid()}").write_text("")
    return fn


def test_cold_runs_the_other_groups_in_children_and_everything_here(tmp_path):
    groups = [_marker(tmp_path, "a"), _marker(tmp_path, "b"), _marker(tmp_path, "c")]
    compile_in_parallel(groups, cold=True)
    me = os.getpid()
    ran = sorted(p.name for p in tmp_path.iterdir())
    # Here: every group once. In children: b and c once each, under other pids.
    assert sorted(n for n in ran if n.endswith(f".{me}")) == [f"a.{me}", f"b.{me}", f"c.{me}"]
    others = sorted(n.split(".")[0] for n in ran if not n.endswith(f".{me}"))
    assert others == ["b", "c"]


def test_warm_runs_everything_here_only(tmp_path):
    compile_in_parallel([_marker(tmp_path, "a"), _marker(tmp_path, "b")], cold=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"a.{os.getpid()}", f"b.{os.getpid()}"]


def test_a_failing_child_is_redone_here(tmp_path):
    me = os.getpid()

    def fails_in_child():
        if os.getpid() != me:
            raise RuntimeError("child only")
        (tmp_path / "done").write_text("")

    compile_in_parallel([_marker(tmp_path, "a"), fails_in_child], cold=True)
    assert (tmp_path / "done").exists()
    sys.stdout.flush()


def test_the_figures_warm_up_covers_their_sharpness_kernels():
    # F1 (and any figure with sharpness steps) measures λ_max by Lanczos at B = 0 and
    # B ≠ 0, with and without Adam's preconditioner, on random-basis tasks of its own
    # sizes. warm_sharpness, run by the warm-up's forked child, must compile (or load)
    # every specialisation those calls need, or each figure worker would compile its own.
    # In a fresh interpreter: earlier tests of this process have loaded the kernels. The
    # kernels checked are the ones called from Python: a kernel loaded from Numba's disk
    # cache carries its callees' code, so its callees are then never compiled or loaded.
    import subprocess

    code = """
import numpy as np
import signaldrift as sd
from signaldrift import _basis, _lanczos
from signaldrift._sharpness import sharpness
from signaldrift._compile import warm_sharpness

kernels = (_lanczos.lanczos_max, _basis.to_eigen)
assert all(not k.signatures for k in kernels), "loaded before the warm-up"
warm_sharpness()
before = [set(k.signatures) for k in kernels]
assert all(before), "the warm-up missed a kernel"
cfg = sd.SimConfig(d=40, m=30, task_rank=4, rank=3, seed=5)
task = sd.make_task(cfg)
A, B = sd.init_adapter(cfg)
for B_at in (B, B + 0.05):
    sharpness(task, 2.0, A, B_at, seed=1)
    sharpness(task, 2.0, A, B_at, precond_A=np.full(A.shape, 3.0),
              precond_B=np.full(B.shape, 2.0), seed=1)
assert [set(k.signatures) for k in kernels] == before, "compiled after the warm-up"
print("covered")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["covered"]


@pytest.mark.parametrize("with_sharpness", [False, True])
def test_a_sweep_in_worker_processes_warms_the_sharpness_kernels_it_needs(monkeypatch,
                                                                         with_sharpness):
    # Forked workers inherit what the parent compiled; a sweep whose runs measure λ_max
    # must therefore warm the sharpness kernels before forking (else every worker
    # compiles Lanczos on a cold cache). The cold check and the warm-up are recorded.
    import signaldrift as sd
    from signaldrift import _sweep

    asked, warmed = [], []
    monkeypatch.setattr(_sweep, "_FORCE_ENGINE", "processes")
    monkeypatch.setattr(_sweep, "kernels_cold", lambda models: asked.append(set(models)) or True)
    monkeypatch.setattr(_sweep, "warm_up", lambda models: warmed.append(set(models)))
    base = sd.SimConfig(d=8, m=8, task_rank=2, rank=2, steps=3, record_every=3,
                        sharpness_steps=(0,) if with_sharpness else ())
    results = _sweep.run_configs([base, base.replace(seed=1)], workers=2, progress=False)
    assert len(results) == 2 and not any(r.diverged for r in results)
    want = {"lora", "sharpness"} if with_sharpness else {"lora"}
    assert asked == [want] and warmed == [want]
