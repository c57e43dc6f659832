"""Model generality (THEORY.md §1–§3): feature basis, user tasks and factors, inits with
B₀ ≠ 0, LoRA+, fixed training sets, snapshots, and the loss with no rounding floor.

Every new setting is checked against the dense NumPy reference (``simulate_reference``,
which works in the feature basis with a dense Σ = Q diag(λ) Qᵀ and its own optimiser),
and against exact identities.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import signaldrift as sd
from signaldrift._basis import Basis
from signaldrift._kernels import RECORD_NAMES

# Small, anisotropic, noisy: every term of the dynamics is exercised.
BASE = sd.SimConfig(d=24, m=20, task_rank=3, rank=4, spectrum=1.0, noise=0.1, steps=200,
                    lr=1e-2, optimizer="adam")


def _rel_dev(x, y):
    """max |x − y| / max |y| over the entries finite in the reference."""
    x, y = np.asarray(x), np.asarray(y)
    ok = np.isfinite(y)
    assert np.array_equal(np.isfinite(x), ok)
    if not ok.any():
        return 0.0
    return float(np.max(np.abs(x[ok] - y[ok])) / max(np.max(np.abs(y[ok])), 1e-300))


def _assert_matches_reference(cfg, tol=1e-10, **kw):
    fast, ref = sd.simulate(cfg, **kw), sd.simulate_reference(cfg, **kw)
    assert not fast.diverged and not ref.diverged
    assert fast.records.keys() == ref.records.keys()
    for name in fast.records:
        assert _rel_dev(fast.records[name], ref.records[name]) <= tol, name
    assert _rel_dev(fast.A, ref.A) <= tol and _rel_dev(fast.B, ref.B) <= tol
    return fast, ref


# --------------------------------------------------------------------------- reference
NEW_SETTINGS = [
    dict(basis="random"),
    dict(basis="eigen"),
    dict(optimizer="sgd", lr=0.05, basis="random"),
    dict(optimizer="sgd", lr=0.02, momentum=0.9, nesterov=True, basis="random"),
    dict(optimizer="adamw", weight_decay=0.1, loraplus_lr_ratio=4.0, eps_b=1e-6),
    dict(optimizer="sgd", lr=0.02, loraplus_lr_ratio=8.0),
    dict(init="lora-one", init_gamma=16.0, optimizer="sgd", lr=0.01),
    dict(init="lora-one", init_gamma=16.0, train_size=64),
    dict(init="gaussian-b"),
    dict(train_size=64),
    dict(train_size=64, batch=12),
    dict(train_size=30, batch=7, optimizer="sgd", lr=0.02),
    dict(batch=8, basis="random"),
    dict(model="full", basis="random"),
    dict(model="full", train_size=30, batch=7),
]


@pytest.mark.parametrize("changes", NEW_SETTINGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_new_settings_match_dense_reference(changes):
    # THEORY §1–§3: the factorised kernels (eigen-coordinates, rotated for Adam) against
    # the dense feature-basis reference, 200 steps, every record and the final factors.
    _assert_matches_reference(BASE.replace(**changes))


def test_user_task_with_full_sigma_and_user_factors_match_reference():
    # A task given as a dense Σ (its own eigenbasis, a dense Q) and a dense Δ⋆, with user
    # A₀ and B₀ ≠ 0 (THEORY §2 "other initialisations").
    rng = np.random.default_rng(5)
    d, m, r = 12, 9, 3
    Z = rng.standard_normal((d, d))
    task = sd.Task.from_arrays(sigma=Z @ Z.T / d, delta_star=0.3 * rng.standard_normal((m, d)),
                               noise=0.05)
    cfg = sd.SimConfig(d=d, m=m, task_rank=task.k, rank=r, noise=0.05, lr=5e-3, steps=200,
                       batch=6)
    A0 = 0.2 * rng.standard_normal((r, d))
    B0 = 0.1 * rng.standard_normal((m, r))
    fast, _ = _assert_matches_reference(cfg, task=task, A0=A0, B0=B0)
    assert fast.task_source == "user"
    np.testing.assert_array_equal(fast.A0, A0)
    np.testing.assert_array_equal(fast.B0, B0)


# --------------------------------------------------------------------------- basis
def test_basis_is_orthogonal_dense_and_inverts():
    # The structured rotation of _basis.Basis.random: QᵀQ = I to rounding, every entry of Q
    # non-zero (the rotation mixes every eigen-direction into every feature), and
    # to_eigen ∘ to_features = id; also for d not a power of two.
    for d in (1, 7, 64, 100):
        b = Basis.random(d, seed=3)
        Q = b.matrix()
        np.testing.assert_allclose(Q.T @ Q, np.eye(d), atol=1e-13)
        if d > 1:
            assert np.min(np.abs(Q)) > 0.0
        X = np.random.default_rng(0).standard_normal((3, d))
        np.testing.assert_allclose(b.to_eigen(b.to_features(X)), X, atol=1e-13)
        np.testing.assert_allclose(b.to_features(X), X @ Q.T, atol=1e-13)


def _same_problem_in_both_bases(optimizer: str, lr: float):
    """One physical run in the random basis and the same run written in the eigenbasis:
    the same task (U, σ⋆, V relative to Σ's eigenvectors) and the same initial A (A₀ in
    the features, A₀Q in the eigen-coordinates)."""
    cfg = BASE.replace(optimizer=optimizer, lr=lr, steps=300, basis="random")
    task = sd.make_task(cfg)
    A0, B0 = sd.init_adapter(cfg, task)
    rand = sd.simulate(cfg, A0=A0, B0=B0)
    eig = sd.simulate(cfg.replace(basis="eigen"), A0=task.basis.to_eigen(A0), B0=B0)
    return rand, eig


def test_sgd_is_the_same_in_every_basis():
    # THEORY §1: SGD is rotation-equivariant, so the loss curve and every record are those of
    # the same run written in the eigenbasis, to rounding (1e-10 relative).
    rand, eig = _same_problem_in_both_bases("sgd", 0.05)
    for name in ("loss", *RECORD_NAMES):
        assert _rel_dev(rand.records[name], eig.records[name]) <= 1e-10, name


def test_adam_depends_on_the_basis():
    # THEORY §1: Adam's per-coordinate normalisation is not rotation-equivariant: the same
    # physical run differs between the bases (here by far more than rounding, > 1%).
    rand, eig = _same_problem_in_both_bases("adam", 1e-2)
    assert _rel_dev(rand.records["loss"], eig.records["loss"]) > 1e-2


# --------------------------------------------------------------------------- LoRA+
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_alpha_is_the_learning_rate_of_B(optimizer):
    # THEORY §3 (derivation `equivalence`): (scale c·s, lr η) equals (scale s, η_A = η,
    # η_B = c²η) under SGD, and (s, η_B = c·η, ε_B = ε/c) under Adam, in function space at
    # every step: W = c·s·B₁A₁ = s·B₂A₂. Tolerances: 1e-12 (SGD), 1e-10 (Adam).
    c, s = 4.0, 0.5
    lr = 0.02 if optimizer == "sgd" else 1e-3
    base = BASE.replace(optimizer=optimizer, lr=lr, rule="fixed", scale=s, steps=150,
                        basis="random")
    one = sd.simulate(base.replace(scale=c * s))
    if optimizer == "sgd":
        two = sd.simulate(base.replace(scale=s, loraplus_lr_ratio=c**2))
        tol = 1e-12
    else:
        two = sd.simulate(base.replace(scale=s, loraplus_lr_ratio=c, eps_b=base.eps / c))
        tol = 1e-10
    W1, W2 = c * s * one.B @ one.A, s * two.B @ two.A
    assert np.max(np.abs(W1 - W2)) <= tol * np.max(np.abs(W1))
    assert _rel_dev(one.records["loss"], two.records["loss"]) <= tol
    np.testing.assert_allclose(one.A, two.A, rtol=0, atol=tol * np.max(np.abs(one.A)))


# --------------------------------------------------------------------------- data
def test_full_batch_on_a_fixed_set_is_population_gd_on_its_covariance():
    # THEORY §2 "Data": full-batch GD on a fixed set of N > d samples is population GD with
    # Σ̂ = XᵀX/N and the shifted target Δ̂⋆ = Δ⋆ + (NᵀX/N)Σ̂⁻¹ (so that (W − Δ̂⋆)Σ̂ = Ĝ);
    # the training loss differs from that population loss by a constant. The second run
    # goes through a user task with a dense Σ̂ — a different code path; Adam acts in the same
    # feature coordinates in both runs, so even Adam agrees (1e-9 relative).
    cfg = BASE.replace(d=10, m=8, train_size=40, steps=150, optimizer="adam", lr=1e-2)
    fixed = sd.simulate(cfg)
    X, Nz = fixed.train["X_train"], fixed.train["noise_train"]
    n = X.shape[0]
    S_hat = X.T @ X / n
    D_hat = fixed.task.delta_star() + (Nz.T @ X / n) @ np.linalg.inv(S_hat)
    task = sd.Task.from_arrays(sigma=S_hat, delta_star=D_hat)
    pop = sd.simulate(cfg.replace(train_size=0, noise=0.0, task_rank=task.k), task=task,
                      A0=fixed.A0, B0=fixed.B0)
    # constant: train loss − ½tr((W − Δ̂⋆)Σ̂(W − Δ̂⋆)ᵀ), at W = 0
    const = 0.5 * np.sum((X @ fixed.task.delta_star().T + Nz) ** 2) / n \
        - 0.5 * np.sum((D_hat @ S_hat) * D_hat)
    assert _rel_dev(fixed.records["train_loss"], pop.records["loss"] + const) <= 1e-9
    W1, W2 = fixed.scale * fixed.B @ fixed.A, pop.scale * pop.B @ pop.A
    assert np.max(np.abs(W1 - W2)) <= 1e-9 * np.max(np.abs(W1))


def test_training_set_and_generalisation_gap_are_recorded():
    # With label noise and few samples the student fits the noise: the training loss ends
    # below the noise floor ½mσ² that a population-optimal student would pay (overfitting),
    # and the test (population) excess loss stays above zero.
    cfg = BASE.replace(d=16, m=12, rank=8, task_rank=3, train_size=20, noise=0.3,
                       steps=1500, lr=2e-2)
    res = sd.simulate(cfg)
    assert res.train["X_train"].shape == (20, 16) and res.train["noise_train"].shape == (20, 12)
    assert res.noise_floor == pytest.approx(0.5 * 12 * 0.3**2, rel=1e-15)
    assert res.records["train_loss"][-1] < res.noise_floor
    assert res.records["loss"][-1] > 1e-3


# --------------------------------------------------------------------------- snapshots
def test_snapshots_store_the_factors():
    # snapshot_steps: A_t, B_t (feature basis) at t = 0 (= A₀, B₀), an inner step (= the
    # reference's state there) and t = steps (= the final factors).
    cfg = BASE.replace(steps=50, snapshot_steps=(0, 17, 50), init="gaussian-b")
    res, ref = sd.simulate(cfg), sd.simulate_reference(cfg)
    np.testing.assert_array_equal(res.snapshots["step"], [0, 17, 50])
    np.testing.assert_allclose(res.snapshots["A"][0], res.A0, atol=1e-15)
    np.testing.assert_array_equal(res.snapshots["B"][0], res.B0)
    np.testing.assert_allclose(res.snapshots["A"][2], res.A, atol=1e-15)
    np.testing.assert_array_equal(res.snapshots["B"][2], res.B)
    assert _rel_dev(res.snapshots["A"][1], ref.snapshots["A"][1]) <= 1e-10
    assert _rel_dev(res.snapshots["B"][1], ref.snapshots["B"][1]) <= 1e-10


# --------------------------------------------------------------------------- split, floor
@pytest.mark.parametrize("changes", [dict(), dict(optimizer="sgd", lr=0.05),
                                     dict(init="gaussian-b", batch=8)])
def test_loss_change_split_sums_to_the_loss_change(changes):
    # THEORY §3: L_{t+1} − L_t = ⟨G,S⟩ + ⟨G,D⟩ + ½‖S‖²_Σ + ⟨S,D⟩_Σ + ½‖D‖²_Σ exactly; and
    # descent = ⟨G,S⟩ + ⟨G,D⟩, curvature = the three Σ-terms. Tolerance 1e-12·L₀.
    res = sd.simulate(BASE.replace(steps=100, **changes))
    r = res.records
    split = (r["descent_signal"] + r["descent_drift"] + r["curvature_signal"]
             + r["curvature_cross"] + r["curvature_drift"])
    L = r["loss"]
    assert np.max(np.abs(np.diff(L) - split)) <= 1e-12 * L[0]
    assert np.max(np.abs(r["descent"] - r["descent_signal"] - r["descent_drift"])) <= 1e-12 * L[0]
    assert np.all(r["curvature_signal"] >= 0) and np.all(r["curvature_drift"] >= 0)


def test_loss_has_no_rounding_floor():
    # The example: the trace form recorded −1.1e-16 here. The recorded loss and every
    # recorded norm stay ≥ 0 down to 1e-30, and agree with the dense reference to 1e-6
    # wherever the reference's loss exceeds 1e-18·L₀ (below that a dense E = sBA − Δ⋆ carries
    # a relative error of ~1e-16·√(L₀/L) in L and cannot judge).
    cfg = sd.SimConfig(d=8, m=8, task_rank=1, rank=1, rule="fixed", scale=1.0,
                       optimizer="sgd", lr=0.5, steps=3000)
    fast, ref = sd.simulate(cfg), sd.simulate_reference(cfg)
    L = fast.records["loss"]
    assert np.all(L >= 0.0) and L.min() <= 1e-30
    for name in ("grad_norm", "signal_norm", "drift_norm", "update_norm", "curvature",
                 "curvature_signal", "curvature_drift", "adapter_norm"):
        assert np.all(fast.records[name] >= 0.0), name
    Lr = ref.records["loss"]
    judge = Lr > 1e-18 * Lr[0]
    assert judge.sum() >= 20  # the first 41 steps here
    np.testing.assert_allclose(L[judge], Lr[judge], rtol=1e-6)


# --------------------------------------------------------------------------- archive
def test_user_run_archive_replays(tmp_path):
    # The archive of a user-given run stores the task (with its dense basis), A₀, B₀ and the
    # training set; replaying from it gives the same records, bit for bit.
    rng = np.random.default_rng(2)
    d, m = 10, 6
    task = sd.Task.from_arrays(lam=np.linspace(2.0, 0.2, d),
                               basis=np.linalg.qr(rng.standard_normal((d, d)))[0],
                               delta_star=rng.standard_normal((m, d)))
    cfg = sd.SimConfig(d=d, m=m, task_rank=task.k, rank=2, steps=40, train_size=15, batch=5)
    res = sd.simulate(cfg, task=task, A0=0.1 * rng.standard_normal((2, d)))
    path = res.save(tmp_path / "run.npz")
    back = sd.SimulationResult.load(path)
    assert back.task_source == "user" and back.task.basis.kind == "dense"
    again = sd.simulate(back.config, task=back.task, A0=back.A0, B0=back.B0)
    for name in res.records:
        np.testing.assert_array_equal(again.records[name], res.records[name])
    np.testing.assert_array_equal(back.train["X_train"], res.train["X_train"])
    assert again.save(tmp_path / "again.npz").read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, fragment", [
    (dict(lam=[1.0, 2.0], sigma=np.eye(2), delta_star=np.ones((2, 2))), "sigma"),
    (dict(sigma=np.array([[1.0, 2.0], [0.0, 1.0]]), delta_star=np.ones((2, 2))), "symmetric"),
    (dict(sigma=np.array([[1.0, 0.0], [0.0, -1.0]]), delta_star=np.ones((2, 2))), "semi-definite"),
    (dict(lam=[1.0, np.nan], delta_star=np.ones((2, 2))), "lam"),
    (dict(lam=[1.0, 1.0], delta_star=np.ones((2, 3))), "delta_star"),
    (dict(lam=[1.0, 1.0], basis=np.ones((2, 2)), delta_star=np.ones((2, 2))), "basis"),
    (dict(lam=[1.0, 1.0], U=np.eye(3), sigma_star=[1, 1, 1], V=np.eye(2, 3)), "rank"),
    (dict(lam=[1.0, 1.0], U=np.ones((2, 1)), sigma_star=[1.0], V=np.eye(2, 1)), "orthonormal"),
    (dict(lam=[1.0, 1.0]), "delta_star"),
])
def test_bad_task_arrays_name_the_argument(kwargs, fragment):
    with pytest.raises(sd.ConfigError, match=fragment) as err:
        sd.Task.from_arrays(**kwargs)
    assert "\n" not in str(err.value)


def test_bad_user_factors_and_mismatched_task():
    cfg = sd.SimConfig(d=6, m=5, task_rank=2, rank=2, steps=3)
    with pytest.raises(sd.ConfigError, match="A0"):
        sd.simulate(cfg, A0=np.zeros((3, 6)))
    with pytest.raises(sd.ConfigError, match="B0"):
        sd.simulate(cfg, B0=np.full((5, 2), np.inf))
    task = sd.Task.from_arrays(lam=np.ones(7), delta_star=np.ones((5, 7)))
    with pytest.raises(sd.ConfigError, match="d = 7"):
        sd.simulate(cfg, task=task)
    with pytest.raises(sd.ConfigError, match="SimConfig"):
        sd.simulate("x")


@pytest.mark.parametrize("args, fragment", [
    (["--train-size", "5", "--batch", "10"], "batch"),
    (["--basis", "haar"], "basis"),
    (["--init", "pissa"], "init"),
    (["--loraplus-lr-ratio", "0"], "loraplus_lr_ratio"),
    (["--model", "full", "--loraplus-lr-ratio", "2"], "loraplus_lr_ratio"),
    (["--snapshot-steps", "0,99"], "snapshot_steps"),
])
def test_cli_refuses_bad_new_settings(tmp_path, args, fragment):
    out = tmp_path / "run.npz"
    proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "simulate", "--steps", "5",
                           "--d", "8", "--m", "8", "--rank", "2", "--task-rank", "2",
                           *args, "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert fragment in proc.stderr and proc.stderr.count("\n") == 1
    assert "Traceback" not in proc.stderr and not out.exists()


def test_cli_and_toml_take_the_new_settings(tmp_path):
    # The same run from flags and from a TOML file gives the same archive bytes.
    toml = tmp_path / "run.toml"
    toml.write_text('basis = "eigen"\ntrain-size = 16\nbatch = 4\nloraplus_lr_ratio = 2.0\n'
                    'init = "gaussian-b"\nsnapshot_steps = [0, 5]\n')
    common = ["--steps", "5", "--d", "8", "--m", "8", "--rank", "2", "--task-rank", "2"]
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    for extra, out in ((["--config", str(toml)], a),
                       (["--basis", "eigen", "--train-size", "16", "--batch", "4",
                         "--loraplus-lr-ratio", "2", "--init", "gaussian-b",
                         "--snapshot-steps", "0,5"], b)):
        proc = subprocess.run([sys.executable, "-m", "signaldrift._cli", "simulate", *common,
                               *extra, "--out", str(out)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert a.read_bytes() == b.read_bytes()
    res = sd.SimulationResult.load(a)
    assert res.config.loraplus_lr_ratio == 2.0 and res.snapshots["A"].shape == (2, 2, 8)
