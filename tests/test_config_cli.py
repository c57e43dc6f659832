"""Settings validation, the `simulate` CLI, the archive schema and determinism."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import signaldrift as sd
from signaldrift import ConfigError, SimConfig
from signaldrift._cli import main

SMALL = ["--d", "16", "--m", "12", "--task-rank", "3", "--rank", "2", "--steps", "20"]

INVALID = [
    ({"rank": 0}, "rank"),
    ({"rank": 300}, "rank"),  # r > min(m, d) = 256
    ({"task_rank": 257}, "task_rank"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"rule": "lora2"}, "rule"),
    ({"optimizer": "rmsprop"}, "optimizer"),
    ({"noise": -0.1}, "noise"),
    ({"batch": -1}, "batch"),
    ({"steps": 0}, "steps"),
    ({"d": 0}, "d"),
    ({"alpha": 0.0}, "alpha"),
    ({"coef": -2.0}, "coef"),
    ({"rule": "fixed"}, "scale"),  # fixed needs scale
    ({"scale": -1.0, "rule": "fixed"}, "scale"),
    ({"momentum": 1.0}, "momentum"),
    ({"beta2": 1.0}, "beta2"),
    ({"eps": -1.0}, "eps"),
    ({"eps": 0.0}, "eps"),
    ({"weight_decay": -0.5}, "weight_decay"),
    ({"schedule": "step"}, "schedule"),
    ({"warmup": 500}, "warmup"),  # > steps
    ({"init": "xavier"}, "init"),
    ({"init_std": 0.0, "init": "gaussian"}, "init_std"),
    ({"record_every": 0}, "record_every"),
    ({"seed": -1}, "seed"),
    ({"spectrum": -1.0}, "spectrum"),
    ({"align": "top"}, "align"),
    ({"model": "dora"}, "model"),
    ({"nesterov": True}, "nesterov"),  # needs sgd with momentum
    ({"sharpness_steps": (0, 500)}, "sharpness_steps"),
    ({"divergence_bound": 0.0}, "divergence_bound"),
    ({"rank": 2.5}, "rank"),
]


@pytest.mark.parametrize("settings,name", INVALID)
def test_invalid_setting_names_itself_in_one_line(settings, name):
    with pytest.raises(sd.ConfigError) as info:
        sd.SimConfig(**settings)
    msg = str(info.value)
    assert msg.startswith(f"{name}: must be"), msg
    assert "\n" not in msg


def test_unknown_setting_in_a_mapping():
    with pytest.raises(sd.ConfigError, match=r"^colour: unknown setting"):
        sd.SimConfig.from_dict({"colour": "red"})


def test_config_json_round_trip():
    cfg = sd.SimConfig(rank=4, alpha=8.0, sharpness_steps=(0, 5), task_seed=3)
    assert sd.SimConfig.from_dict(json.loads(cfg.to_json())) == cfg


@pytest.mark.parametrize("rule,expected", [
    ("lora", 16.0 / 4),            # α / r
    ("rslora", 16.0 / 2),          # α / √r
    ("lora-alpha", 6.0 / 2),       # c / √r with c = 6
    ("fixed", 0.7),                # given
])
def test_scaling_rules(rule, expected):
    cfg = sd.SimConfig(rank=4, alpha=16.0, coef=6.0, rule=rule,
                       scale=0.7 if rule == "fixed" else None)
    assert sd.scale_factor(cfg) == expected


def test_peft_initialisation_bounds_and_variance():
    # PEFT's default lora_A: U(−1/√d, 1/√d), variance 1/(3d) (THEORY §2).
    cfg = sd.SimConfig(d=400, rank=50, m=64, task_rank=4)
    A0, B0 = sd.init_adapter(cfg)
    assert A0.shape == (50, 400) and B0.shape == (64, 50) and not B0.any()
    assert np.abs(A0).max() <= 1 / np.sqrt(400)
    # 20 000 samples: the sample variance is within 3% of 1/(3d) (its relative sd is 0.9%).
    assert A0.var() == pytest.approx(1 / (3 * 400), rel=0.03)
    g, _ = sd.init_adapter(cfg.replace(init="gaussian", init_std=0.2))
    assert g.std() == pytest.approx(0.2, rel=0.03)


@pytest.mark.parametrize("init", ["peft", "gaussian", "gaussian-b"])
def test_repeated_initialisation_is_the_same_draw_and_a_fresh_copy(init):
    # init_adapter keeps the random factors it drew (a sweep over lr or α asks for the
    # same seed's again): the answer must equal a fresh draw from the stream
    # (seed, "init"), bit for bit, and be the caller's own copy.
    from signaldrift import _init

    cfg = sd.SimConfig(d=32, m=24, rank=4, task_rank=2, init=init, seed=7)
    A1, B1 = sd.init_adapter(cfg)
    A0, B0 = _init._random_init(cfg, 4, 32, 24)  # uncached
    np.testing.assert_array_equal(A1, A0)
    np.testing.assert_array_equal(B1, B0)
    A1 += 1.0
    B1 += 1.0  # mutating a returned copy must not reach the next caller
    A2, B2 = sd.init_adapter(cfg)
    np.testing.assert_array_equal(A2, A0)
    np.testing.assert_array_equal(B2, B0)
    A3, _ = sd.init_adapter(cfg.replace(seed=8))
    assert not np.array_equal(A3, A2) or init == "gaussian-b"  # another seed, another draw


def test_schedules():
    base = sd.SimConfig(lr=1.0, steps=10, warmup=2)
    np.testing.assert_allclose(sd.learning_rates(base), [0.5, 1, 1, 1, 1, 1, 1, 1, 1, 1])
    # linear: (T − t)/(T − w) after warm-up.
    lin = sd.learning_rates(base.replace(schedule="linear"))
    np.testing.assert_allclose(lin[2:], (10 - np.arange(2, 10)) / 8)
    cos = sd.learning_rates(base.replace(schedule="cosine"))
    np.testing.assert_allclose(cos[2:], 0.5 * (1 + np.cos(np.pi * np.arange(8) / 8)))


# --------------------------------------------------------------------------- determinism
def test_same_settings_give_bit_identical_archives(tmp_path):
    cfg = sd.SimConfig(d=16, m=12, task_rank=3, rank=2, steps=30, batch=4, noise=0.2)
    a = sd.simulate(cfg).save(tmp_path / "a.npz")
    b = sd.simulate(cfg).save(tmp_path / "b.npz")
    assert a.read_bytes() == b.read_bytes()
    c = sd.simulate(cfg.replace(seed=1)).save(tmp_path / "c.npz")
    assert a.read_bytes() != c.read_bytes()
    assert not np.array_equal(np.load(a)["A0"], np.load(c)["A0"])


def _every_kind_of_member() -> dict:
    """A run's archive arrays (records, snapshots, sharpness, training set) and every
    other kind of member: 0-d strings and bools, ints, empty and Fortran-ordered arrays."""
    cfg = sd.SimConfig(d=16, m=12, task_rank=3, rank=2, steps=20, batch=4, train_size=10,
                       snapshot_steps=(0, 20), sharpness_steps=(0,))
    arrays = sd.simulate(cfg).to_arrays()
    arrays.update(fortran=np.asfortranarray(np.arange(12.0).reshape(3, 4)),
                  empty=np.zeros((0, 3)), ints=np.arange(5, dtype=np.int32),
                  flag=np.array(True), text=np.array("ünïcode"))
    return arrays


def test_archive_bytes_are_zipfiles_and_numpys(tmp_path):
    # The archive writer assembles the zip by hand (speed: a sweep writes one per run); its
    # bytes must be exactly those of zipfile (ZIP_STORED, fixed dates, mode 0o644) with
    # np.lib.format.write_array members: the independent reference here. Every kind of
    # member is covered: 0-d strings and bools, ints, empty and Fortran-ordered arrays.
    import io
    import zipfile

    from signaldrift._result import npz_bytes

    arrays = _every_kind_of_member()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for key in sorted(arrays):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[key]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue())
    assert npz_bytes(arrays) == buf.getvalue()
    back = np.load(io.BytesIO(npz_bytes(arrays)))
    for key, value in arrays.items():
        np.testing.assert_array_equal(back[key], value)


def test_fast_archive_reader_returns_what_np_load_returns(tmp_path, monkeypatch):
    # read_npz parses the stored archives npz_bytes writes (and falls back to np.load for
    # anything else); np.load is the independent reference: the same keys, dtypes, shapes,
    # memory order and bytes, and writable arrays, for every kind of member (0-d strings
    # and bools, ints, empty and Fortran-ordered arrays) and for a compressed archive and
    # one with a comment (the fallback).
    import zipfile

    from signaldrift._result import npz_bytes, read_npz

    arrays = _every_kind_of_member()
    stored = tmp_path / "stored.npz"
    stored.write_bytes(npz_bytes(arrays))
    compressed = tmp_path / "compressed.npz"
    np.savez_compressed(compressed, **arrays)
    commented = tmp_path / "commented.npz"
    commented.write_bytes(npz_bytes(arrays))
    with zipfile.ZipFile(commented, "a") as zf:
        zf.comment = b"a comment"
    load = np.load
    for path in (stored, compressed, commented):
        if path is stored:  # parsed here, never handed to np.load
            monkeypatch.setattr(np, "load", None)
        got = read_npz(path)
        monkeypatch.setattr(np, "load", load)
        with np.load(path, allow_pickle=False) as z:
            assert sorted(got) == sorted(z.files)
            for key in z.files:
                want = z[key]
                assert got[key].dtype == want.dtype and got[key].shape == want.shape
                assert got[key].tobytes(order="A") == want.tobytes(order="A")
                assert got[key].flags.f_contiguous == want.flags.f_contiguous
                assert got[key].flags.writeable


def test_archive_round_trip(tmp_path):
    cfg = sd.SimConfig(d=16, m=12, task_rank=3, rank=2, steps=12, optimizer="sgd", lr=0.05)
    res = sd.simulate(cfg)
    back = sd.SimulationResult.load(res.save(tmp_path / "r.npz"))
    assert back.config == cfg and back.scale == res.scale
    for name, arr in res.records.items():
        np.testing.assert_array_equal(back.records[name], arr)
    np.testing.assert_array_equal(back.A, res.A)


# --------------------------------------------------------------------------- CLI
def test_cli_writes_the_documented_archive(tmp_path, capsys):
    out = tmp_path / "run.npz"
    assert main(["simulate", *SMALL, "--alpha", "8", "--optimizer", "sgd", "--lr", "0.05",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "final loss" in text and "mean drift ratio" in text
    z = np.load(out)
    steps = 20
    assert z["lam"].shape == (16,) and z["U"].shape == (12, 3) and z["V"].shape == (16, 3)
    assert z["sigma_star"].shape == (3,) and z["A0"].shape == (2, 16)
    assert float(z["scale"]) == 8 / 2  # lora: α / r
    assert z["loss"].shape == (steps + 1,)
    for key in ("signal_norm", "drift_norm", "drift_ratio", "progress", "curvature"):
        assert z[key].shape == (steps,), key
    config = json.loads(str(z["config"]))
    for key in ("alpha", "rank", "lr", "rule", "optimizer"):
        assert key in config
    assert config["alpha"] == 8.0 and config["optimizer"] == "sgd"


def test_cli_config_file_and_flag_override(tmp_path, capsys):
    toml = tmp_path / "run.toml"
    toml.write_text('d = 16\nm = 12\ntask-rank = 3\nrank = 2\nsteps = 10\nlr = 0.01\n'
                    'optimizer = "sgd"\n')
    assert main(["simulate", "--config", str(toml), "--json"]) == 0
    from_file = json.loads(capsys.readouterr().out)
    assert main(["simulate", *SMALL[:8], "--steps", "10", "--lr", "0.01", "--optimizer", "sgd",
                 "--json"]) == 0
    from_flags = json.loads(capsys.readouterr().out)
    assert from_file == from_flags
    assert main(["simulate", "--config", str(toml), "--steps", "5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 5


@pytest.mark.parametrize("argv,name", [
    (["--rank", "0"], "rank"),
    (["--lr", "-1"], "lr"),
    (["--lr", "nan"], "lr"),
    (["--rule", "bogus"], "--rule"),
    (["--optimizer", "lion"], "--optimizer"),
    (["--steps", "0"], "steps"),
    (["--noise", "-1"], "noise"),
    (["--batch", "-2"], "batch"),
    (["--rank", "x"], "--rank"),
    (["--task-rank", "99"], "task_rank"),
    (["--out", "nofolder/x.npz"], "out"),
    (["--out", "x.txt"], "out"),
    (["--config", "missing.toml"], "config"),
])
def test_cli_bad_input_exits_2_one_line_nothing_written(tmp_path, monkeypatch, argv, name):
    monkeypatch.chdir(tmp_path)
    args = ["simulate", *SMALL, *argv]
    if "--out" not in argv:
        args += ["--out", "result.npz"]
    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", *args],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    err = proc.stderr.strip()
    assert err.startswith("signaldrift: error:") and name in err, err
    assert "\n" not in err and "Traceback" not in proc.stderr
    assert proc.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_cli_bad_toml_key(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("rnak = 3\n")
    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "simulate", "--config",
                           str(toml)], capture_output=True, text=True)
    assert proc.returncode == 2 and "rnak: unknown setting" in proc.stderr


def test_package_imports_without_torch():
    # torch is an optional extra: importing signaldrift must not import it.
    code = "import sys, signaldrift; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- status and JSON
def _strict_json(text):
    """Parse as standard JSON: NaN and Infinity (Python's extensions) are errors."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def run(capsys):
    """``signaldrift simulate *argv`` in this process; returns its stdout."""
    def run_(argv):
        assert main(["simulate", *argv]) == 0
        return capsys.readouterr().out
    return run_


FULL_GD = ["--model", "full", "--optimizer", "sgd", "--d", "16", "--m", "12",
           "--task-rank", "3"]


def test_json_of_a_diverged_run_is_valid_json_with_a_status(run):
    # SGD at lr = 100 blows up within a few steps (the loss passes 10⁶).
    s = _strict_json(run([*SMALL, "--optimizer", "sgd", "--lr", "100", "--json"]))
    assert s["status"] == "diverged" and s["diverged"] is True
    assert s["final_loss"] is None  # was Infinity, which is not JSON
    assert s["diverged_step"] >= 0 and s["diverged_loss"] > 1e6
    assert s["initial_loss"] == pytest.approx(0.5, rel=1e-12)  # the task's normalisation


def test_divergence_at_step_0_reports_the_initial_loss(run):
    # Every task starts at excess loss ½ (THEORY §1); a bound of 0.1 stops it at step 0.
    text = run([*SMALL, "--divergence-bound", "0.1"])
    assert "initial loss 0.5 " in text and "nan" not in text
    assert "DIVERGED at step 0 (loss 0.5 above the bound 0.1)" in text
    s = _strict_json(run([*SMALL, "--divergence-bound", "0.1", "--json"]))
    assert s["initial_loss"] == pytest.approx(0.5, rel=1e-12) and s["status"] == "diverged"


def test_a_rising_loss_is_not_called_converging(run):
    # Full fine-tuning, isotropic Σ, exact gradient: the error scales by |1 − lr| = 1.05
    # per step, so after 70 steps the loss is ½·1.05^140 ≈ 463: rising, below the bound.
    text = run([*FULL_GD, "--lr", "2.05", "--steps", "70"])
    assert "not improving (the loss rose from 0.5 to 463)" in text, text
    assert "converg" not in text
    s = _strict_json(run([*FULL_GD, "--lr", "2.05", "--steps", "70", "--json"]))
    assert s["status"] == "not improving"
    assert s["final_loss"] == pytest.approx(0.5 * 1.05 ** 140, rel=1e-9)


@pytest.mark.parametrize("argv, status", [
    (["--lr", "1.0", "--steps", "5"], "converged"),  # lr = 1/λ: the error is 0 after 1 step
    (["--lr", "0.01", "--steps", "20"], "improving"),  # (1 − 0.01)^40: still falling 2%/step
])
def test_status_from_what_happened(run, argv, status):
    s = _strict_json(run([*FULL_GD, *argv, "--json"]))
    assert s["status"] == status


def test_toml_giving_a_setting_twice_is_an_error(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text("task-rank = 3\ntask_rank = 4\n")
    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "simulate", "--config",
                           str(toml)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "'task-rank' and 'task_rank'" in proc.stderr and "\n" not in proc.stderr.strip()


# ----------------------------------------------------------------------------- issue 13: API
def test_unknown_keyword_is_a_config_error_naming_it():
    # A dataclass would raise TypeError; SimConfig names the setting.
    with pytest.raises(ConfigError, match=r"^foo: unknown setting") as err:
        SimConfig(foo=1)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="by name"):
        SimConfig(64)


def test_numpy_scalars_are_accepted_and_stored_as_python_scalars():
    cfg = SimConfig(d=np.int64(64), m=np.int32(32), rank=np.int64(4), lr=np.float32(0.5),
                    nesterov=np.bool_(False), sharpness_steps=[np.int64(0)], steps=3)
    assert cfg.d == 64 and type(cfg.d) is int and type(cfg.lr) is float
    assert cfg.sharpness_steps == (0,) and type(cfg.sharpness_steps[0]) is int
    assert cfg == SimConfig(d=64, m=32, rank=4, lr=float(np.float32(0.5)), sharpness_steps=(0,),
                            steps=3)


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(rule="lora", scale=0.5), "scale: used only with rule 'fixed'"),
    (dict(optimizer="adam", momentum=0.9), "momentum: used only with optimizer 'sgd'"),
    (dict(optimizer="adamw", momentum=0.5), "momentum: used only with optimizer 'sgd'"),
])
def test_conflicting_settings_name_both(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        SimConfig(**kwargs)


@pytest.mark.parametrize("argv, fragment", [
    (["--scale", "0.5"], "scale"),
    (["--optimizer", "adam", "--momentum", "0.9"], "momentum"),
])
def test_cli_conflicting_settings_exit_2(tmp_path, argv, fragment):
    out = tmp_path / "r.npz"
    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "simulate", "--steps", "3",
                           *argv, "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2 and fragment in proc.stderr
    assert proc.stderr.count("\n") == 1 and not out.exists()
