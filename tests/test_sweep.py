"""Tests of the sweep engine, the sweep Dataset, its netCDF archive and ``signaldrift sweep``.

Engine tests (call counting, interruption, failures) replace ``signaldrift.simulate`` with a
cheap deterministic fake returning a real ``SimulationResult``; the fake is inherited by
fork-context workers. Determinism across worker counts, divergence and the GD threshold use
the real simulator on tiny settings (d = m = 16, ≤ 50 steps).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import signaldrift
from signaldrift import ConfigError, SimConfig
from signaldrift._analysis import divergence_threshold
from signaldrift._kernels import RECORD_NAMES
from signaldrift._result import SimulationResult
from signaldrift._sweep import (
    CACHE_VERSION,
    FailedRun,
    config_at,
    config_key,
    expand_grid,
    load_dataset,
    run_configs,
    run_sweep,
    save_dataset,
)
from signaldrift._sweep_cli import add_parser

TINY = SimConfig(d=16, m=16, task_rank=2, rank=2, steps=30, lr=1e-2)


# ---------------------------------------------------------------------------- fake simulate
def fake_simulate(config: SimConfig) -> SimulationResult:
    """A deterministic stand-in: loss = ½·exp(−lr·α·t), records filled from the config."""
    step = np.arange(0, config.steps, config.record_every, dtype=np.int64)
    loss_step = np.append(step, config.steps)
    rate = config.lr * config.alpha
    loss = 0.5 * np.exp(-rate * loss_step)
    records = {"loss": loss}
    for q, name in enumerate(RECORD_NAMES):
        records[name] = (q + 1.0) * rate * np.exp(-rate * step)
    sharp_step = np.array(config.sharpness_steps, dtype=np.int64)
    r = config.rank
    return SimulationResult(
        config=config, task=signaldrift.make_task(config), scale=config.alpha / r,
        A0=np.zeros((r, config.d)), A=np.zeros((r, config.d)), B=np.zeros((config.m, r)),
        step=step, loss_step=loss_step, records=records,
        sharpness={"step": sharp_step, "lambda_max": rate * (1.0 + sharp_step),
                   "precond_lambda_max": np.full(sharp_step.size, np.nan)})


class Counter:
    """Wraps :func:`fake_simulate`; counts calls (serial runs only) and can fail."""

    def __init__(self, interrupt_after: int | None = None, fail_lr: float | None = None):
        self.calls: list[SimConfig] = []
        self.interrupt_after = interrupt_after
        self.fail_lr = fail_lr

    def __call__(self, config):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during this run
        self.calls.append(config)
        if self.fail_lr is not None and config.lr == self.fail_lr:
            raise FloatingPointError("planted failure\nsecond line")
        return fake_simulate(config)


def cache_files(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.suffix == ".npz" and not p.name.startswith("."))


# ---------------------------------------------------------------------------- keys and grids
def test_config_key_is_sha256_of_version_and_json():
    # Expected value: the documented recipe, recomputed here with hashlib.
    want = hashlib.sha256((CACHE_VERSION + "\n" + TINY.to_json()).encode()).hexdigest()
    assert config_key(TINY) == want
    assert config_key(TINY.replace(lr=2e-2)) != want


def test_expand_grid_row_major_and_normalised():
    configs, overrides = expand_grid(TINY, {"lr": [1e-3, 1e-2], "alpha": [1, 16],
                                            "rule": ["lora", "rslora"]})
    assert len(configs) == 8
    # Last name varies fastest (C order, like numpy reshape of the Dataset).
    assert [o["rule"] for o in overrides[:2]] == ["lora", "rslora"]
    assert [o["lr"] for o in overrides] == [1e-3] * 4 + [1e-2] * 4
    # alpha=16 (int) and alpha=16.0 are the same configuration and the same cache entry.
    assert config_key(configs[1]) == config_key(TINY.replace(lr=1e-3, alpha=1.0,
                                                             rule="rslora"))
    assert isinstance(configs[3].alpha, float)
    # numpy scalars (np.geomspace) are accepted for int and float settings.
    cs, _ = expand_grid(TINY, {"rank": np.array([1, 2]), "lr": np.geomspace(1e-3, 1e-2, 2)})
    assert cs[2].rank == 2 and type(cs[2].rank) is int and cs[1].lr == 1e-2


@pytest.mark.parametrize(
    "grid, match",
    [
        ({"learning_rate": [1e-3]}, "'learning_rate' is not a setting"),
        ({"lr": []}, "non-empty list"),
        ({"lr": 1e-3}, "non-empty list"),
        ({"lr": [1e-3, 1e-3]}, "repeat"),
        ({"rank": [2, 40]}, r'grid point \{"rank": 40\}: rank'),
        ({"optimizer": ["adam", "lion"]}, "optimizer: must be one of"),
        ([{"lr": 1e-3}, {"bogus": 1}], r"grid\[1\]: 'bogus' is not a setting"),
        ([], "empty"),
    ],
)
def test_invalid_grid_raises_before_running(grid, match, monkeypatch, tmp_path):
    counter = Counter()
    monkeypatch.setattr(signaldrift, "simulate", counter)
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match=match) as info:
        run_sweep(TINY, grid, cache_dir=cache, progress=False)
    assert "\n" not in str(info.value)  # one line
    assert counter.calls == [] and not cache.exists()


# ---------------------------------------------------------------------------- engine
def test_results_in_input_order_and_duplicates_run_once(monkeypatch):
    counter = Counter()
    monkeypatch.setattr(signaldrift, "simulate", counter)
    cfgs = [TINY.replace(lr=lr) for lr in (3e-2, 1e-2, 3e-2, 2e-2)]
    res = run_configs(cfgs, progress=False)
    assert [r.config.lr for r in res] == [3e-2, 1e-2, 3e-2, 2e-2]
    assert len(counter.calls) == 3  # the duplicate ran once
    assert res[0] is res[2]


def slow_first(config):
    """The first configurations take longest, so workers finish them last."""
    time.sleep(max(0.0, 0.2 - 40 * config.lr))
    return fake_simulate(config)


def test_parallel_results_in_input_order_not_completion_order(monkeypatch):
    monkeypatch.setattr(signaldrift, "simulate", slow_first)
    lrs = [1e-3, 2e-3, 3e-3, 4e-3, 5e-3, 6e-3]
    res = run_configs([TINY.replace(lr=lr) for lr in lrs], workers=2, progress=False)
    assert [r.config.lr for r in res] == lrs


def test_progress_bar_on_stderr(monkeypatch, capsys):
    # A tqdm bar: "sweep: 100%|…| 3/3 […, cached=0, diverged=0, failed=0]".
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    run_configs([TINY.replace(lr=lr) for lr in (1e-3, 2e-3, 3e-3)], progress=True)
    err = capsys.readouterr().err
    assert "sweep: 100%" in err and "3/3" in err and "failed=0" in err
    run_configs([TINY], progress=False)
    assert capsys.readouterr().err == ""


def test_progress_group_is_one_bar_across_sweeps(monkeypatch, capsys):
    # `signaldrift figures` runs several sweeps inside one group: one bar whose total grows
    # to every run of every sweep (2 + 3 = 5 here), not one bar per sweep.
    from signaldrift._progress import GroupLog, progress_group

    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    with progress_group("figures") as group:
        log = GroupLog(group, 2)
        print("[figures] F1 spectral_suppression ...", file=log)
        run_configs([TINY.replace(lr=lr) for lr in (1e-3, 2e-3)], progress=True)
        print("[figures] F1 done in 0.1 s", file=log)
        print("[figures] F2 optimisation_gap ...", file=log)
        run_configs([TINY.replace(lr=lr) for lr in (3e-3, 4e-3, 5e-3)], progress=True)
    err = capsys.readouterr().err
    assert "sweep:" not in err  # no bar of its own
    assert "figures F2 (2/2): 100%" in err and "5/5" in err
    assert "[figures] F1 done in 0.1 s" in err  # log lines are printed above the bar


def test_workers_give_bitwise_identical_results(tmp_path):
    # Real simulator, minibatch SGD (the sample stream is used) and Adam; no cache, so both
    # sweeps really run. Expected: identical bytes in every array.
    base = TINY.replace(batch=4)
    grid = {"lr": [1e-2, 5e-2], "optimizer": ["sgd", "adam"], "seed": [0, 1]}
    ds1 = run_sweep(base, grid, workers=1, progress=False)
    ds2 = run_sweep(base, grid, workers=2, progress=False)
    assert set(ds1.variables) == set(ds2.variables)
    for name in ds1.variables:
        a, b = ds1[name].values, ds2[name].values
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), name
    assert ds1.attrs == ds2.attrs
    assert np.isfinite(ds1.final_loss.values).all()


def test_resume_after_interrupt_runs_only_the_rest(monkeypatch, tmp_path):
    cfgs = [TINY.replace(lr=lr, alpha=a) for lr in (1e-3, 1e-2, 1e-1) for a in (1.0, 4.0)]
    cache = tmp_path / "cache"
    first = Counter(interrupt_after=4)
    monkeypatch.setattr(signaldrift, "simulate", first)
    with pytest.raises(KeyboardInterrupt):
        run_configs(cfgs, cache_dir=cache, progress=False)
    assert len(first.calls) == 4
    assert len(cache_files(cache)) == 4  # every finished run is kept
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporaries
    second = Counter()
    monkeypatch.setattr(signaldrift, "simulate", second)
    res = run_configs(cfgs, cache_dir=cache, progress=False)
    assert second.calls == cfgs[4:]  # only the remaining configurations ran
    # Cached and fresh results are the same as an uninterrupted run's.
    for c, r in zip(cfgs, res):
        want = fake_simulate(c)
        assert r.config == c
        np.testing.assert_array_equal(r.records["loss"], want.records["loss"])
    third = Counter()
    monkeypatch.setattr(signaldrift, "simulate", third)
    run_configs(cfgs, cache_dir=cache, progress=False)
    assert third.calls == []


def test_parallel_workers_fill_the_cache(monkeypatch, tmp_path):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    cfgs = [TINY.replace(lr=lr) for lr in (1e-3, 2e-3, 3e-3, 4e-3, 5e-3)]
    cache = tmp_path / "cache"
    res = run_configs(cfgs, workers=2, cache_dir=cache, progress=False)
    assert len(cache_files(cache)) == 5
    never = Counter(interrupt_after=0)  # would raise if anything ran
    monkeypatch.setattr(signaldrift, "simulate", never)
    again = run_configs(cfgs, workers=2, cache_dir=cache, progress=False)
    for a, b in zip(res, again):
        np.testing.assert_array_equal(a.records["loss"], b.records["loss"])


def test_corrupt_cache_entry_is_rerun(monkeypatch, tmp_path):
    counter = Counter()
    monkeypatch.setattr(signaldrift, "simulate", counter)
    cache = tmp_path / "cache"
    run_configs([TINY], cache_dir=cache, progress=False)
    (cache / f"{config_key(TINY)}.npz").write_bytes(b"truncated")
    with pytest.warns(RuntimeWarning, match="unreadable"):
        res = run_configs([TINY], cache_dir=cache, progress=False)
    assert len(counter.calls) == 2 and res[0].final_loss == fake_simulate(TINY).final_loss



def test_unwritable_cache_entry_warns_keeps_the_result_and_no_temporary(monkeypatch,
                                                                        tmp_path):
    # A folder where the archive should go: it is unreadable as a cached run, and
    # SimulationResult.save writes its temporary, then os.replace fails (IsADirectoryError).
    # The sweep warns of both, still returns the run's
    # result (fake_simulate's, the expected value), and no temporary file is left behind.
    monkeypatch.setattr(signaldrift, "simulate", Counter())
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / f"{config_key(TINY)}.npz" / "blocker").mkdir(parents=True)
    with pytest.warns(RuntimeWarning) as caught:  # reading the folder, then writing
        res = run_configs([TINY], cache_dir=cache, progress=False)
    said = [str(w.message) for w in caught]
    assert any("unreadable" in m for m in said) and any("could not write" in m for m in said)
    assert res[0].final_loss == fake_simulate(TINY).final_loss
    assert [p.name for p in cache.iterdir()] == [f"{config_key(TINY)}.npz"]
    with pytest.raises(OSError):  # and save itself raises, leaving nothing either
        fake_simulate(TINY).save(cache / f"{config_key(TINY)}.npz")
    assert [p.name for p in cache.iterdir()] == [f"{config_key(TINY)}.npz"]

@pytest.mark.parametrize("workers", [1, 2])
def test_failing_config_does_not_lose_the_others(monkeypatch, tmp_path, workers):
    monkeypatch.setattr(signaldrift, "simulate", Counter(fail_lr=2e-2))
    cache = tmp_path / "cache"
    ds = run_sweep(TINY, {"lr": [1e-2, 2e-2, 3e-2], "alpha": [1.0, 2.0]}, workers=workers,
                   cache_dir=cache, progress=False)
    assert ds.failed.values.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert ds.diverged.values.tolist() == [[0, 0], [1, 1], [0, 0]]
    assert np.isnan(ds.final_loss.sel(lr=2e-2)).all()
    assert np.isnan(ds.loss.sel(lr=2e-2)).all()
    # The others are intact: loss = ½·exp(−lr·α·t) from the fake.
    want = 0.5 * np.exp(-3e-2 * 2.0 * TINY.steps)
    assert float(ds.final_loss.sel(lr=3e-2, alpha=2.0)) == pytest.approx(want, rel=1e-12)
    errors = json.loads(ds.attrs["errors"])
    assert len(errors) == 2
    assert errors[0]["error"] == "FloatingPointError: planted failure second line"
    assert errors[0]["config"]["lr"] == 2e-2
    assert len(cache_files(cache)) == 4  # failures are not cached: they are retried


def test_failed_run_stands_in_for_a_result():
    f = FailedRun(config=TINY, error="X: y")
    assert f.diverged and f.failed and np.isnan(f.final_loss) and f.diverged_step == -1


def test_diverged_runs_are_kept():
    # Real simulator: SGD at lr = 1e4 blows up at once, lr = 1e-2 converges.
    base = TINY.replace(optimizer="sgd")
    ds = run_sweep(base, {"lr": [1e-2, 1e4]}, progress=False)
    assert ds.diverged.values.tolist() == [0, 1]
    ok, bad = ds.sel(lr=1e-2), ds.sel(lr=1e4)
    assert np.isfinite(ok.final_loss) and np.isinf(bad.final_loss)
    k = int(bad.diverged_step)
    assert 0 <= k <= base.steps
    assert np.isnan(bad.loss.sel(loss_step=slice(k, None))).all()
    assert np.isfinite(bad.loss.sel(loss_step=0))  # the record before divergence is kept


def test_gd_divergence_threshold_is_two_over_lambda_max():
    # Full fine-tuning with exact-gradient SGD on an isotropic task (Σ = I, λ_max = 1): the
    # error contracts by |1 − lr| per step, so runs diverge iff lr > 2/λ_max = 2
    # (THEORY §4). At lr = 2.2, 1.2^(2·50) ≈ 8e7 times the initial loss exceeds the bound.
    base = TINY.replace(model="full", optimizer="sgd", batch=0, steps=50)
    lrs = [1.0, 1.5, 1.9, 2.2, 3.0]
    ds = run_sweep(base, {"lr": lrs}, progress=False)
    res = divergence_threshold(ds.lr.values, ds.diverged.values)
    assert res.monotone
    assert (res.lr_converged, res.lr_diverged) == (1.9, 2.2)


# ---------------------------------------------------------------------------- dataset
def test_dataset_layout(monkeypatch):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    base = TINY.replace(record_every=5, sharpness_steps=(0, 10))
    grid = {"lr": [1e-2, 2e-2], "rule": ["lora", "rslora"], "seed": [0, 1, 2]}
    ds = run_sweep(base, grid, progress=False)
    assert ds.loss.dims == ("lr", "rule", "seed", "loss_step")
    assert ds.grad_norm.dims == ("lr", "rule", "seed", "step")
    assert ds.lambda_max.dims == ("lr", "rule", "seed", "sharpness_step")
    assert ds.final_loss.dims == ("lr", "rule", "seed")
    assert ds.step.values.tolist() == [0, 5, 10, 15, 20, 25]
    assert ds.loss_step.values.tolist() == [0, 5, 10, 15, 20, 25, 30]
    assert ds.diverged.dtype == np.int8
    assert set(RECORD_NAMES) <= set(ds.data_vars)
    # Each cell holds the run of its own configuration (fake: loss = ½·exp(−lr·α·t)).
    cell = ds.sel(lr=2e-2, rule="rslora", seed=1)
    np.testing.assert_allclose(cell.loss, 0.5 * np.exp(-2e-2 * 16.0 * ds.loss_step),
                               rtol=1e-12)
    assert float(cell.scale) == 16.0 / 2
    # The Dataset carries its full configuration.
    assert SimConfig.from_dict(json.loads(ds.attrs["base_config"])) == base
    assert json.loads(ds.attrs["grid"]) == grid
    assert config_at(ds, lr=2e-2, rule="rslora", seed=1) == base.replace(
        lr=2e-2, rule="rslora", seed=1)


def test_union_of_step_axes(monkeypatch):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    ds = run_sweep(TINY, {"steps": [10, 20]}, progress=False)
    assert ds.loss_step.size == 21
    assert np.isnan(ds.loss.sel(steps=10, loss_step=slice(11, None))).all()
    assert np.isfinite(ds.loss.sel(steps=20)).all()
    assert float(ds.final_loss.sel(steps=10)) == float(ds.loss.sel(steps=10, loss_step=10))


def test_list_mode(monkeypatch):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    points = [{"lr": 1e-2}, {"rank": 4, "alpha": 8}, {"lr": 3e-2, "rule": "rslora"}]
    ds = run_sweep(TINY, points, progress=False)
    assert ds.final_loss.dims == ("config",)
    assert ds.lr.values.tolist() == [1e-2, 1e-2, 3e-2]  # base value where not overridden
    assert ds["rank"].values.tolist() == [2, 4, 2]
    assert ds.rule.values.tolist() == ["lora", "lora", "rslora"]
    assert config_at(ds, config=1) == TINY.replace(rank=4, alpha=8.0)


def test_netcdf_round_trip(monkeypatch, tmp_path):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    base = TINY.replace(sharpness_steps=(0, 5), optimizer="sgd", momentum=0.5)
    grid = {"rule": ["lora", "rslora"], "nesterov": [False, True], "rank": [1, 2],
            "task_seed": [None, 7]}
    ds = run_sweep(base, grid, progress=False)
    path = save_dataset(ds, tmp_path / "sweep.nc")
    assert path.read_bytes()[:3] == b"CDF"  # a classic netCDF (3) file
    back = load_dataset(path)
    xr.testing.assert_identical(back, ds)
    for name in ds.variables:
        assert back[name].dtype == ds[name].dtype, name
    assert back.nesterov.dtype == bool and back["rank"].dtype == np.int64
    assert back.task_seed.attrs["encoding"] == "json"
    assert config_at(back, rule="rslora", nesterov=True, rank=1, task_seed="7").task_seed == 7
    assert [p.name for p in tmp_path.iterdir()] == ["sweep.nc"]  # no temporary left


# ---------------------------------------------------------------------------- CLI
def run_cli(argv):
    parser = argparse.ArgumentParser(prog="signaldrift")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["sweep", *argv])
    return args.func(args)


def test_cli_sweep_writes_netcdf_and_summary(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    out = tmp_path / "o.nc"
    rc = run_cli(["--d", "16", "--m", "16", "--task-rank", "2", "--rank", "2", "--steps", "20",
                  "--lr", "1e-3,1e-2", "--alpha", "1,16", "--out", str(out), "--workers", "1",
                  "--no-progress"])
    assert rc == 0
    ds = load_dataset(out)
    assert ds.final_loss.dims == ("lr", "alpha") and ds.alpha.dtype == np.float64
    assert SimConfig.from_dict(json.loads(ds.attrs["base_config"])).steps == 20
    text = capsys.readouterr().out
    # Fake loss ½·exp(−lr·α·T) is smallest at the largest lr·α.
    assert "4 configurations (0 from cache, 4 run), 0 diverged, 0 failed" in text
    assert "at lr=0.01, alpha=16" in text
    assert (tmp_path / ".sweep-cache").is_dir()
    run_cli(["--d", "16", "--m", "16", "--task-rank", "2", "--rank", "2", "--steps", "20",
             "--lr", "1e-3,1e-2", "--alpha", "1,16", "--out", str(out), "--no-progress"])
    assert "(4 from cache, 0 run)" in capsys.readouterr().out


def test_cli_toml_config(monkeypatch, tmp_path):
    monkeypatch.setattr(signaldrift, "simulate", fake_simulate)
    toml = tmp_path / "s.toml"
    toml.write_text('[base]\nd = 16\nm = 16\ntask_rank = 2\nrank = 2\nsteps = 10\nalpha = 4\n'
                    '[grid]\nlr = [1e-3, 1e-2]\nseed = [0, 1, 2]\n')
    out = tmp_path / "t.nc"
    # The flag sets a single value (overrides the file) and sweeps nothing new.
    assert run_cli(["--config", str(toml), "--steps", "12", "--out", str(out),
                    "--no-cache", "--no-progress", "--workers", "1"]) == 0
    ds = load_dataset(out)
    assert ds.final_loss.dims == ("lr", "seed")
    base = SimConfig.from_dict(json.loads(ds.attrs["base_config"]))
    assert base.steps == 12 and base.alpha == 4.0
    assert not (tmp_path / ".sweep-cache").exists()


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--lr", "1e-3,abc"], "--lr: could not read 'abc' as float"),
        (["--rank", "2,99"], "rank: must be an integer"),
        (["--lr", "1e-3", "--lr", "1e-2"], "given twice"),
        (["--workers", "0"], "--workers"),
        (["--optimizer", "adam,lion"], "optimizer: must be one of"),
        (["--nesterov", "maybe"], "--nesterov: could not read"),
    ],
)
def test_cli_bad_input_writes_nothing(argv, match, monkeypatch, tmp_path):
    counter = Counter()
    monkeypatch.setattr(signaldrift, "simulate", counter)
    out = tmp_path / "sub" / "o.nc"
    with pytest.raises(ConfigError, match=match):
        run_cli(["--d", "16", "--m", "16", *argv, "--out", str(out), "--no-progress"])
    assert counter.calls == [] and not (tmp_path / "sub").exists()


def test_cli_bad_toml(tmp_path):
    toml = tmp_path / "s.toml"
    toml.write_text("[base]\nlr = [1e-3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        run_cli(["--config", str(toml), "--out", str(tmp_path / "o.nc")])
    toml.write_text("[base]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match="'learning_rate' is not a setting"):
        run_cli(["--config", str(toml), "--out", str(tmp_path / "o.nc")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.toml"]


def test_cache_key_changes_with_the_simulator_code(monkeypatch):
    # A cache written by other simulator code must not be read back: the key folds in a hash
    # of the simulator's sources, so editing any of them changes every key.
    import signaldrift._sweep as sweep

    before = sweep.simulator_fingerprint()
    real = sweep.Path.read_bytes
    monkeypatch.setattr(sweep.Path, "read_bytes",
                        lambda self: real(self) + (b"# edit" if self.name == "_kernels.py" else b""))
    assert sweep.simulator_fingerprint() != before
    assert sweep.CACHE_VERSION.endswith(before)


def test_the_fingerprint_covers_every_module_a_simulation_imports():
    # Every module that the simulating code imports is either hashed into the cache key or
    # is infrastructure that does not change what a run returns (listed here on purpose):
    # a new kernel module (e.g. _gemm, _lanczos) left out would let a stale cache be read.
    import subprocess
    import sys

    from signaldrift._sweep import _SIMULATOR_SOURCES

    code = ("import sys, signaldrift._simulate, signaldrift._sharpness, signaldrift._reduced, "
            "signaldrift._flow; print(' '.join(m for m in sys.modules "
            "if m.startswith('signaldrift.')))")
    mods = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split()
    infrastructure = {"_compile", "_jit_cache", "_memory", "_paths", "_pool", "_progress",
                      "_sweep", "_generated"}
    files = {m.split(".", 1)[1].replace(".", "/") + ".py" for m in mods
             if m.split(".", 1)[1] not in infrastructure}
    assert files <= set(_SIMULATOR_SOURCES), sorted(files - set(_SIMULATOR_SOURCES))


def test_cli_cache_and_no_cache_conflict(tmp_path):
    with pytest.raises(ConfigError, match="--cache c and --no-cache conflict"):
        run_cli(["--lr", "1e-3,1e-2", "--cache", "c", "--no-cache",
                 "--out", str(tmp_path / "o.nc")])
    assert list(tmp_path.iterdir()) == []
