"""Sweeps on a Dask distributed cluster (a LocalCluster of two worker processes): the same
netCDF bytes as a local run, a lost worker's block recomputed, the cache and resume as
locally, and a CLI that refuses what it cannot use."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

distributed = pytest.importorskip("distributed")

import signaldrift as sd  # noqa: E402
from signaldrift import _sweep  # noqa: E402
from signaldrift._cli import main  # noqa: E402

BASE = sd.SimConfig(d=24, m=20, rank=3, task_rank=3, spectrum=1.0, steps=60, lr=1e-2,
                    record_every=10)
GRID = {"lr": [3e-3, 1e-2, 3e-2], "alpha": [4.0, 16.0], "seed": [0, 1]}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        yield lc, client


def test_cluster_sweep_gives_the_same_netcdf_bytes(cluster, tmp_path):
    _, client = cluster
    local = sd.run_sweep(BASE, GRID, workers=1, progress=False)
    remote = sd.run_sweep(BASE, GRID, client=client, cache_dir=tmp_path / "cache",
                          progress=False)
    a = sd.save_dataset(local, tmp_path / "local.nc").read_bytes()
    b = sd.save_dataset(remote, tmp_path / "remote.nc").read_bytes()
    assert a == b
    # resume: everything is read back from the cache written on the client
    ds, stats = _sweep._run_sweep(BASE, GRID, client=client, cache_dir=tmp_path / "cache",
                                  progress=False)
    assert stats.cached == stats.unique == 12 and stats.ran == 0
    assert sd.save_dataset(ds, tmp_path / "again.nc").read_bytes() == a


def test_a_lost_worker_block_is_recomputed(cluster, tmp_path):
    # Kill one worker process (SIGKILL) while the sweep runs: Dask reruns its block on a
    # worker that lives (the nanny also restarts the dead one); the results are those of a
    # local run, and a second run resumes from the cache.
    _, client = cluster
    base = BASE.replace(d=64, m=64, steps=4000, record_every=1000)
    grid = {"lr": [1e-3, 2e-3, 3e-3, 5e-3], "seed": [0, 1, 2, 3]}
    cache = tmp_path / "c"
    out = {}

    def run():
        out["ds"] = sd.run_sweep(base, grid, client=client, cache_dir=cache, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not list(cache.glob("*.npz")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first block is back: the others are running or queued
    done_at_kill = len(list(cache.glob("*.npz")))
    pids = client.run(os.getpid)
    os.kill(next(iter(pids.values())), signal.SIGKILL)
    thread.join(timeout=240)
    assert 0 < done_at_kill < 16  # the kill landed mid-sweep
    assert not thread.is_alive() and "ds" in out
    ds = out["ds"]
    assert int(ds["failed"].sum()) == 0
    local = sd.run_sweep(base, grid, workers=1, progress=False)
    assert (sd.save_dataset(ds, tmp_path / "a.nc").read_bytes()
            == sd.save_dataset(local, tmp_path / "b.nc").read_bytes())
    _, stats = _sweep._run_sweep(base, grid, client=client, cache_dir=tmp_path / "c",
                                 progress=False)
    assert stats.cached == 16


def test_cli_sweep_on_a_scheduler(cluster, tmp_path, capsys):
    lc, _ = cluster
    out = tmp_path / "s.nc"
    code = main(["sweep", "--d", "16", "--m", "16", "--rank", "2", "--task-rank", "2",
                 "--steps", "20", "--lr", "1e-3,1e-2", "--scheduler", lc.scheduler_address,
                 "--no-progress", "--out", str(out)])
    assert code == 0 and out.exists()
    local = tmp_path / "l.nc"
    assert main(["sweep", "--d", "16", "--m", "16", "--rank", "2", "--task-rank", "2",
                 "--steps", "20", "--lr", "1e-3,1e-2", "--workers", "1", "--no-progress",
                 "--no-cache", "--out", str(local)]) == 0
    assert out.read_bytes() == local.read_bytes()


@pytest.mark.parametrize("argv, fragment", [
    (["--scheduler", "tcp://127.0.0.1:9", "--workers", "2"], "conflict"),
    (["--scheduler", "tcp://127.0.0.1:9"], "cannot reach"),
])
def test_cli_scheduler_errors_exit_2_and_write_nothing(tmp_path, capsys, argv, fragment):
    out = tmp_path / "s.nc"
    code = main(["sweep", "--d", "8", "--m", "8", "--rank", "2", "--task-rank", "2",
                 "--steps", "5", "--lr", "1e-3,1e-2", *argv, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and err.count("\n") == 1
    assert not out.exists() and not (tmp_path / ".sweep-cache").exists()


def test_client_and_workers_conflict():
    class FakeClient:
        def submit(self, *a, **k):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(sd.ConfigError, match="workers"):
        sd.run_configs([BASE], workers=2, client=FakeClient())
