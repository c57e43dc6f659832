"""Bad output paths and runs too large for memory are refused before any work (issue #13):
exit 2, one line, nothing written, and fast, since no simulation starts.

To show that the check comes first, most commands here would run for many minutes if it
did not (``--steps 10000000``: some 100 s at d = 16, and a record array of 1 GB, still
under the memory limit), and each must fail within :data:`BEFORE_ANY_WORK_S`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import signaldrift
from signaldrift import ConfigError, SimConfig
from signaldrift._sharpness import _LANCZOS_KMAX
from signaldrift._memory import (
    DEFAULT_LIMIT_GB,
    LIMIT_ENV,
    check_memory,
    check_sweep_memory,
    estimate_bytes,
    estimate_sweep_bytes,
    memory_limit,
)
from signaldrift._paths import check_output_dir, check_output_file
from signaldrift._sweep import run_configs, run_sweep

# Starting Python, importing the package and parsing: ~2 s; a computation would be minutes.
BEFORE_ANY_WORK_S = 30.0
LONG = ["--d", "16", "--m", "16", "--task-rank", "2", "--rank", "2", "--steps", "10000000"]
IS_ROOT = getattr(os, "geteuid", lambda: -1)() == 0
TINY = SimConfig(d=16, m=16, task_rank=2, rank=2, steps=20)


def cli(args, cwd, env=None, timeout=BEFORE_ANY_WORK_S):
    full_env = dict(os.environ, **(env or {}))
    return subprocess.run([sys.executable, "-m", "signaldrift._cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def assert_one_line_error(proc, *words):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    err = proc.stderr.strip()
    assert err.startswith("signaldrift: error:") and "\n" not in err, err
    for w in words:
        assert w in err, err
    assert proc.stdout == ""


def snapshot(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.fixture
def readonly_dir(tmp_path):
    """A folder nobody can write in: chmod 555 (not for root, who ignores it: then /proc,
    where not even root can create a file)."""
    if IS_ROOT:
        if not Path("/proc").is_dir():
            pytest.skip("root ignores permissions and there is no /proc")
        yield Path("/proc")
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    yield d
    d.chmod(0o755)


# ----------------------------------------------------------------------------- paths
@pytest.mark.parametrize("case", ["readonly", "existing_folder", "config_folder"])
def test_simulate_bad_paths_fail_before_running(tmp_path, readonly_dir, case):
    (tmp_path / "dir.npz").mkdir()
    (tmp_path / "cfgdir").mkdir()
    argv, word = {
        "readonly": (["--out", str(readonly_dir / "r.npz")], "--out"),
        "existing_folder": (["--out", "dir.npz"], "is a folder"),
        "config_folder": (["--config", "cfgdir"], "--config: 'cfgdir' is a folder"),
    }[case]
    before = snapshot(tmp_path)
    assert_one_line_error(cli(["simulate", *LONG, *argv], tmp_path), word)
    assert snapshot(tmp_path) == before  # nothing written, no .tmp left behind


def test_sweep_out_in_readonly_folder(tmp_path, readonly_dir):
    proc = cli(["sweep", *LONG, "--lr", "1e-3,1e-2", "--out", str(readonly_dir / "s.nc")],
               tmp_path)
    assert_one_line_error(proc, "--out")
    assert snapshot(tmp_path) == []


def test_sweep_cache_that_is_a_file(tmp_path):
    (tmp_path / "c").write_text("")
    proc = cli(["sweep", *LONG, "--lr", "1e-3,1e-2", "--cache", "c", "--out", "s.nc"],
               tmp_path)
    assert_one_line_error(proc, "--cache", "not a folder")
    assert snapshot(tmp_path) == ["c"]


@pytest.mark.parametrize("case", ["file", "readonly"])
def test_figures_out_checked_first(tmp_path, readonly_dir, case):
    (tmp_path / "f").write_text("")
    out = "f" if case == "file" else str(readonly_dir / "figs")
    proc = cli(["figures", "--only", "F1", "--out", out], tmp_path)
    assert_one_line_error(proc, "--out")
    assert snapshot(tmp_path) == ["f"]


def test_crosscheck_json_into_missing_folder_fails_first(tmp_path):
    # Without the check, the 90-configuration run finished and then lost its verdict.
    proc = cli(["crosscheck", "--json", "nodir/r.json"], tmp_path)
    assert_one_line_error(proc, "--json", "does not exist")
    assert snapshot(tmp_path) == []


def test_run_sweep_cache_dir_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(ConfigError, match=r"^cache_dir: .* is not a folder"):
        run_sweep(TINY, {"lr": [1e-3]}, cache_dir=f, progress=False)


def test_path_checks_unit(tmp_path):
    (tmp_path / "sub").mkdir()
    assert check_output_file(tmp_path / "a.npz", suffix=".npz") == tmp_path / "a.npz"
    with pytest.raises(ConfigError, match="ending in .npz"):
        check_output_file(tmp_path / "a.txt", suffix=".npz")
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_file(tmp_path / "no" / "a.npz")
    # A missing folder is fine where the writer creates it, if it can be created.
    assert check_output_file(tmp_path / "no" / "a.nc", create_folder=True)
    (tmp_path / "plain").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        check_output_file(tmp_path / "plain" / "x" / "a.nc", create_folder=True)
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    with pytest.raises(ConfigError, match="not a folder"):
        check_output_dir(tmp_path / "plain")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain", "sub"]  # probes removed


# ----------------------------------------------------------------------------- memory
@pytest.mark.parametrize("argv, words", [
    (["simulate", "--d", "1000000000"], ["needs about", "GB", LIMIT_ENV]),
    (["simulate", "--model", "full", "--d", "100000", "--m", "100000"],
     ["model=full", "needs about 960 GB", LIMIT_ENV]),
    (["sweep", "--d", "1000000000", "--lr", "1e-3,1e-2", "--out", "s.nc"],
     ["needs about", LIMIT_ENV]),
])
def test_too_large_runs_are_refused_with_the_estimate(tmp_path, argv, words):
    # Before: a MemoryError traceback, or a sweep grown to 22 GB before the OOM killer.
    # Expected 960 GB: full fine-tuning counts 12 m×d float64 arrays (signaldrift._memory),
    # 12 · 10¹⁰ · 8 bytes.
    proc = cli(argv, tmp_path, env={LIMIT_ENV: ""})
    assert_one_line_error(proc, *words)
    assert snapshot(tmp_path) == []


def test_sweep_total_memory_counts_workers_and_kept_results(tmp_path):
    # Each run fits (about 1.5 GB at d = m = 4000 full fine-tuning) but 100 of them keep
    # their final Δ (128 MB each) in memory until the Dataset is written: 13 GB, refused.
    proc = cli(["sweep", "--model", "full", "--d", "4000", "--m", "4000", "--optimizer", "sgd",
                "--seed", ",".join(str(i) for i in range(100)), "--steps", "100000",
                "--out", "s.nc"], tmp_path, env={LIMIT_ENV: "8"})
    assert_one_line_error(proc, "this sweep of 100 configurations", LIMIT_ENV)
    assert snapshot(tmp_path) == []


def test_limit_from_the_environment(monkeypatch):
    big = SimConfig(model="full", d=20000, m=20000, steps=10)  # 12·4·10⁸·8 B = 38.4 GB
    monkeypatch.delenv(LIMIT_ENV, raising=False)
    assert memory_limit() == DEFAULT_LIMIT_GB * 1e9
    with pytest.raises(ConfigError, match=r"needs about 38.4 GB, above the limit of 8 GB "
                                          r"\(the default\).*SIGNALDRIFT_MAX_MEMORY=39"):
        check_memory(big)
    monkeypatch.setenv(LIMIT_ENV, "40")
    check_memory(big)  # raised limit: accepted
    monkeypatch.setenv(LIMIT_ENV, "inf")
    check_memory(big.replace(d=10**7))
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ConfigError, match=f"^{LIMIT_ENV}: must be a number of GB"):
        check_memory(TINY)


def test_run_configs_checks_memory_before_running(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(signaldrift, "simulate", lambda c: calls.append(c))
    monkeypatch.setenv(LIMIT_ENV, "1")
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="memory: this run"):
        run_configs([TINY, TINY.replace(model="full", d=20000, m=20000)], cache_dir=cache,
                    progress=False)
    assert calls == [] and not cache.exists()


def test_estimate_scales_as_documented():
    # Hand-derived from the counts in signaldrift._memory's docstring (eigen basis where
    # SimConfig has the setting, so that the basis term stays out of the differences).
    kw = {"basis": "eigen"} if "basis" in SimConfig.field_names() else {}
    lora = SimConfig(d=100000, m=50000, rank=8, steps=10, **kw)
    P = 8 * 150000
    assert estimate_bytes(lora) > 16 * P * 8
    # Doubling r adds 16 P + r·d floats.
    assert estimate_bytes(lora.replace(rank=16)) - estimate_bytes(lora) == (
        16 * P + 8 * 100000) * 8
    full = SimConfig(model="full", d=3000, m=2000, steps=10, **kw)
    assert estimate_bytes(full) == pytest.approx(12 * 3000 * 2000 * 8, rel=0.01)
    # Sharpness adds the Lanczos vectors (at most _sharpness._LANCZOS_KMAX = 120) and the
    # operator's work arrays: 136 P.
    sharp = lora.replace(sharpness_steps=(5,))
    assert estimate_bytes(sharp) - estimate_bytes(lora) == (_LANCZOS_KMAX + 16) * P * 8
    # A sweep: the `workers` largest runs at once, plus every result kept.
    configs = [lora.replace(seed=s) for s in range(4)]
    one = estimate_sweep_bytes(configs[:1], 1)
    assert estimate_sweep_bytes(configs, 2) > 2 * estimate_bytes(lora)
    assert estimate_sweep_bytes(configs, 4) > estimate_sweep_bytes(configs, 1) > one
    # 2 workers each holding a block of 2 configurations: 4 runs at once.
    assert estimate_sweep_bytes(configs, 2, per_worker=2) == estimate_sweep_bytes(configs, 4)
    check_sweep_memory(configs, 2)


def test_random_basis_rotations_are_counted():
    # 10·d·⌈log₂ d⌉ floats: at d = 2¹⁰, 10·1024·10.
    base = dict(TINY.to_dict(), d=1024, m=64, engine="full", train_size=0,
                snapshot_steps=())
    eigen = estimate_bytes(types.SimpleNamespace(**dict(base, basis="eigen")))
    rand = estimate_bytes(types.SimpleNamespace(**dict(base, basis="random")))
    assert rand - eigen == 10 * 1024 * 10 * 8


def test_reduced_engine_estimate_does_not_grow_with_d_or_m():
    # The `reduced` engine holds only (r + k)-sized arrays (THEORY; engine added in
    # parallel): its estimate must not depend on d or m. A stand-in config with the
    # settings SimConfig is gaining (engine, train_size, snapshot_steps, basis).
    def cfg(d, m):
        return types.SimpleNamespace(**dict(TINY.to_dict(), d=d, m=m, steps=1000,
                                            engine="reduced", train_size=0,
                                            snapshot_steps=(), basis="eigen"))
    small, huge = estimate_bytes(cfg(64, 64)), estimate_bytes(cfg(10**9, 10**9))
    assert small == huge < 10**7
    full = types.SimpleNamespace(**vars(cfg(10**9, 10**9)))
    full.engine = "full"
    assert estimate_bytes(full) > 10**11  # the full engine: 10·r·(d + m) floats and more


def test_new_settings_are_counted():
    # train_size N keeps N samples; each snapshot one A (r×d) and one B (m×r).
    # (The set in eigen and in feature coordinates, its noise and its projection on V:
    # N·(2d + m + k).)
    base = dict(TINY.to_dict(), d=1000, m=500, engine="full", basis="eigen")

    def est(**kw):
        return estimate_bytes(types.SimpleNamespace(**dict(base, **kw)))

    plain = est(train_size=0, snapshot_steps=())
    assert est(train_size=100, snapshot_steps=()) - plain == 100 * (2000 + 500 + 2) * 8
    assert est(train_size=0, snapshot_steps=(1, 2, 3)) - plain == 3 * 2 * 1500 * 8


_PEAK = """
import json, sys
import signaldrift as sd
from signaldrift._memory import estimate_bytes

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024

cfg = sd.SimConfig.from_dict(json.loads(sys.argv[1]))
sd.simulate(cfg.replace(d=8, m=8, task_rank=2, rank=2))  # compile (or load) the kernels
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current resident size (Linux >= 4.0)
before = status("VmRSS")
sd.simulate(cfg)
print(json.dumps({"measured": status("VmHWM") - before, "estimate": estimate_bytes(cfg)}))
"""


@pytest.mark.slow
@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc")
@pytest.mark.parametrize("settings", [
    {"model": "full", "d": 1500, "m": 1500, "steps": 3, "batch": 16, "noise": 0.1},
    {"d": 100000, "m": 50000, "rank": 8, "steps": 3, "batch": 8},
    {"d": 40000, "m": 40000, "rank": 8, "steps": 3, "sharpness_steps": [1]},
], ids=["full", "lora-minibatch", "lora-sharpness"])
def test_estimate_bounds_the_measured_peak(settings):
    # Measured: the rise of the process's peak resident memory (VmHWM, reset after a
    # compile on small sizes) during the run. The estimate must be an upper bound, and not
    # a wild one (within 4× of the measurement).
    proc = subprocess.run([sys.executable, "-c", _PEAK, json.dumps(settings)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["measured"] <= r["estimate"] <= 4 * r["measured"], r
    assert np.isfinite(r["estimate"])
