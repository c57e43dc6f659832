"""The reduced engine (THEORY.md §7): exact replay of the full engine, sampled overlaps at
any width, refusals, archive, sweeps, and the saddle-escape prediction (§4)."""

import math
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import signaldrift as sd
from signaldrift import ConfigError, SimConfig
from signaldrift._escape import (escape_step, expected_init_overlaps, growth_factor,
                                 plateau_coefficient, predict_escape_step)
from signaldrift._kernels import RECORD_NAMES
from signaldrift._reduced import (AUTO_FACTOR_BYTES, reduced_factor_bytes,
                                  reduced_uses_factors, sample_overlaps)

# Records that are functions of the state at step t (no optimiser step inside).
STATE_RECORDS = ("grad_norm", "adapter_norm", "A_norm", "B_norm", "subspace_overlap")

BASE = SimConfig(d=40, m=32, rank=4, task_rank=3, spectrum=0.0, optimizer="sgd", lr=0.02,
                 alpha=4.0, steps=500, record_every=1, basis="random", noise=0.1)

# Each case keeps the loss above ~2e-3 over its 500 steps, where both engines' losses are far
# above rounding (the smallest loss of each case is asserted below).
CASES = {
    "sgd": {},
    "loraplus-r6-k2": dict(loraplus_lr_ratio=4.0, rank=6, task_rank=2, alpha=6.0, lr=0.01),
    "momentum-ratio0.5": dict(momentum=0.9, loraplus_lr_ratio=0.5, lr=0.002),
    "nesterov-wd-rslora": dict(momentum=0.5, nesterov=True, weight_decay=0.01,
                               rule="rslora", alpha=3.0, lr=0.004),
    "cosine-gaussian-r2-k5": dict(schedule="cosine", warmup=10, init="gaussian", rank=2,
                                  task_rank=5),
    "fixed-linear-eigen": dict(rule="fixed", scale=0.7, lr=0.03, schedule="linear",
                               basis="eigen", record_every=7),
    "gaussian-b": dict(init="gaussian-b", lr=0.01),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def pair(request):
    cfg = BASE.replace(**CASES[request.param])
    return sd.simulate(cfg), sd.simulate(cfg.replace(engine="reduced"))


def test_reduced_replays_full_engine(pair):
    full, red = pair
    # Expected: the full engine (signaldrift.simulate, engine="full") on the same task and
    # factors; the two agree up to rounding (the reduced state is the same A, B written in
    # another basis). rtol 1e-10 while the loss stays well above rounding (>= 1e-3 here).
    assert np.nanmin(full.loss) > 1e-3
    assert full.diverged == red.diverged is False
    np.testing.assert_array_equal(full.step, red.step)
    np.testing.assert_array_equal(full.loss_step, red.loss_step)
    np.testing.assert_allclose(red.loss, full.loss, rtol=1e-10, atol=0)
    for name in STATE_RECORDS:
        np.testing.assert_allclose(red.records[name], full.records[name], rtol=1e-10,
                                   err_msg=name)
    # Step records (ΔW, S, D and the loss-change split): the full engine forms ΔA = A' − A by
    # subtraction, so its relative rounding grows like ε‖A‖/‖ΔA‖; compare normwise against
    # the largest value of each record over the run, at 1e-10.
    for name in RECORD_NAMES:
        if name in STATE_RECORDS or name == "drift_ratio":
            continue
        a, b = full.records[name], red.records[name]
        scale = np.max(np.abs(a))
        assert np.max(np.abs(a - b)) <= 1e-10 * scale, name
    sig = full.records["signal_norm"]
    big = sig > 1e-3 * sig.max()
    np.testing.assert_allclose(red.records["drift_ratio"][big],
                               full.records["drift_ratio"][big], rtol=1e-10)
    # The final factors, rebuilt from the overlaps (A = N·Vᵀ + TA·Ap₀ in the feature basis).
    np.testing.assert_allclose(red.A, full.A, rtol=0, atol=1e-12 * np.abs(full.A).max())
    np.testing.assert_allclose(red.B, full.B, rtol=0, atol=1e-12 * np.abs(full.B).max())
    np.testing.assert_allclose(red.A0, full.A0, rtol=0, atol=0)
    assert red.extras["overlap_init"] == "factors"


def test_every_record_is_filled(pair):
    _, red = pair
    assert set(red.records) == {"loss", *RECORD_NAMES}
    for name in RECORD_NAMES:
        assert np.isfinite(red.records[name]).all(), name


def _dense_replay(cfg, task, A0, B0):
    """An independent dense NumPy replay (feature basis, torch SGD semantics, per-factor
    learning rates), returning the loss at every step and the final factors."""
    s = sd.scale_factor(cfg)
    lrs = sd.learning_rates(cfg)
    Dstar = task.delta_star()
    lam = float(task.lam[0])
    A, B = A0.copy(), B0.copy()
    bA, bB = np.zeros_like(A), np.zeros_like(B)
    losses = []
    for t in range(cfg.steps):
        E = s * B @ A - Dstar
        losses.append(0.5 * lam * np.sum(E * E))
        G = lam * E
        gA = s * B.T @ G + cfg.weight_decay * A
        gB = s * G @ A.T + cfg.weight_decay * B
        for p, g, buf, lr in ((A, gA, bA, lrs[t]),
                              (B, gB, bB, lrs[t] * cfg.loraplus_lr_ratio)):
            if cfg.momentum:
                buf[...] = cfg.momentum * buf + g
                g = g + cfg.momentum * buf if cfg.nesterov else buf.copy()
            p -= lr * g
    E = s * B @ A - Dstar
    losses.append(0.5 * lam * np.sum(E * E))
    return np.array(losses), A, B


@pytest.mark.parametrize("case", ["loraplus-r6-k2", "nesterov-wd-rslora", "gaussian-b"])
def test_reduced_matches_an_independent_dense_replay(case):
    # Expected: a dense NumPy implementation of the same SGD (above), independent of both
    # engines; rtol 1e-10 on the loss at every step (loss >= 1e-3, 250 steps) and on the
    # final factors.
    cfg = BASE.replace(**CASES[case], record_every=1, steps=250).replace(engine="reduced")
    task = sd.make_task(cfg)
    rng = np.random.default_rng(3)
    A0 = rng.uniform(-0.15, 0.15, (cfg.rank, cfg.d))
    B0 = 0.1 * rng.standard_normal((cfg.m, cfg.rank))
    red = sd.simulate(cfg, task=task, A0=A0, B0=B0)
    loss, A, B = _dense_replay(cfg, task, A0, B0)
    assert loss.min() > 1e-3
    np.testing.assert_allclose(red.loss, loss, rtol=1e-10)
    np.testing.assert_allclose(red.A, A, atol=1e-12 * np.abs(A).max(), rtol=0)
    np.testing.assert_allclose(red.B, B, atol=1e-12 * np.abs(B).max(), rtol=0)
    assert red.task_source == "user"


def test_lora_one_sampled_equals_factors():
    # Expected: lora-one's start is deterministic; the sampled overlaps (M = [diag √(σ⋆/γ)];
    # N = Mᵀ) give the same run as the overlaps of the drawn factors up to a rotation
    # A → OA, B → BOᵀ, which changes no record; rtol 1e-10.
    cfg = BASE.replace(init="lora-one", engine="reduced", steps=200, init_gamma=4.0)
    a = sd.simulate(cfg.replace(overlap_init="factors"))
    b = sd.simulate(cfg.replace(overlap_init="sampled"))
    assert b.task is None and b.A is None and b.extras["overlap_init"] == "sampled"
    for name in ("loss", "signal_norm", "drift_norm", "A_norm", "B_norm", "descent"):
        np.testing.assert_allclose(b.records[name], a.records[name], rtol=1e-10,
                                   atol=1e-14, err_msg=name)


def test_divergence_matches_the_full_engine():
    # Expected: the full engine's divergence rule (loss non-finite or above the bound ends
    # the run at that step; entries at and after it are NaN), at a learning rate far above
    # GD's stability limit 2/λ_max(H).
    cfg = BASE.replace(lr=3.0, alpha=32.0, steps=200, divergence_bound=1e3)
    full = sd.simulate(cfg)
    red = sd.simulate(cfg.replace(engine="reduced"))
    assert full.diverged and red.diverged
    assert red.diverged_step == full.diverged_step
    assert np.isnan(red.loss[red.loss_step >= red.diverged_step]).all()
    assert np.isnan(red.records["signal_norm"][red.step >= red.diverged_step]).all()
    assert np.isfinite(red.loss[red.loss_step < red.diverged_step]).all()
    assert red.final_loss == math.inf


# ----------------------------------------------------------------------------- sampled
def test_sampled_overlaps_have_the_exact_moments():
    # Expected (THEORY §7; signaldrift derive reduced): PEFT init, Haar V:
    # E‖N‖² = r·k/(3d), E tr Pp = r(d − k)/(3d). Monte Carlo over 400 seeds; tolerance 5
    # standard errors of the mean (estimated from the same draws).
    cfg = SimConfig(d=50, m=40, rank=3, task_rank=4, spectrum=0.0, optimizer="sgd",
                    engine="reduced", overlap_init="sampled")
    n2, tp = [], []
    for seed in range(400):
        ov = sample_overlaps(cfg.replace(seed=seed))
        n2.append(np.sum(ov.N**2))
        tp.append(np.trace(ov.Pp))
    for x, mean in ((n2, 3 * 4 / 150), (tp, 3 * 46 / 150)):
        se = np.std(x) / np.sqrt(len(x))
        assert abs(np.mean(x) - mean) <= 5 * se, (np.mean(x), mean, se)


def test_sampled_and_factors_agree_in_law():
    # Expected: both draws of the initial overlaps have the same law, so the mean escape step
    # over 24 seeds agrees within 4 standard errors of the difference (d = 64).
    cfg = SimConfig(d=64, m=64, rank=4, task_rank=4, spectrum=0.0, optimizer="sgd",
                    lr=0.25, alpha=8.0, steps=150, engine="reduced")
    esc = {}
    for mode in ("factors", "sampled"):
        esc[mode] = [escape_step(sd.simulate(cfg.replace(overlap_init=mode, seed=s)))
                     for s in range(24)]
    a, b = np.array(esc["factors"]), np.array(esc["sampled"])
    se = math.sqrt(a.var() / a.size + b.var() / b.size)
    assert abs(a.mean() - b.mean()) <= 4 * se + 1e-9, (a.mean(), b.mean(), se)


def test_clt_branch_of_peft_gram():
    # Expected: for d > 2¹⁶ the PEFT Gram matrix is drawn from the Gaussian with the exact
    # mean and covariance: E P_ii = 1/3, Var P_ii = 4/(45d), Var P_ij = 1/(9d) (d = 2¹⁸).
    # 2000 draws; tolerance 5 standard errors for the mean, 15% for the variances (the
    # relative standard error of a sample variance is √(2/n) ≈ 3%).
    from signaldrift._reduced import _uniform_gram

    d = 2**18
    rng = np.random.default_rng(0)
    P = np.array([_uniform_gram(rng, 3, d, 1 / np.sqrt(d)) for _ in range(2000)])
    diag, off = P[:, 0, 0], P[:, 0, 1]
    assert abs(diag.mean() - 1 / 3) <= 5 * diag.std() / np.sqrt(2000)
    assert abs(diag.var() / (4 / (45 * d)) - 1) < 0.15
    assert abs(off.var() / (1 / (9 * d)) - 1) < 0.15


def test_huge_width_forms_no_factor():
    # d = m = 10⁸: a factor would take 6.4 GB; the sampled overlaps take O((r + k)²). The
    # peak of Python allocations during the run stays below 5 MB (tracemalloc).
    cfg = SimConfig(d=10**8, m=10**8, rank=4, task_rank=4, spectrum=0.0, optimizer="sgd",
                    lr=0.5, alpha=8.0, steps=300, engine="reduced")
    assert not reduced_uses_factors(cfg)
    assert reduced_factor_bytes(cfg) > 10**9
    sd.simulate(cfg.replace(steps=2))  # compile outside the measurement
    tracemalloc.start()
    res = sd.simulate(cfg)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 5 * 2**20, peak
    assert res.task is None and res.A0 is None and res.A is None and res.B is None
    assert res.extras["overlap_init"] == "sampled"
    assert res.final_loss < 0.5 * res.loss[0]


def test_auto_uses_factors_at_small_width():
    cfg = BASE.replace(engine="reduced")
    assert reduced_factor_bytes(cfg) <= AUTO_FACTOR_BYTES and reduced_uses_factors(cfg)
    assert not reduced_uses_factors(cfg.replace(d=10**7, m=10**7))
    assert reduced_uses_factors(cfg.replace(d=10**7, m=10**7, overlap_init="factors"))


# ----------------------------------------------------------------------------- archive
def test_archive_round_trip_without_factors(tmp_path):
    cfg = SimConfig(d=10**6, m=10**6, rank=4, task_rank=4, spectrum=0.0, optimizer="sgd",
                    lr=0.5, alpha=8.0, steps=40, engine="reduced", record_every=3)
    res = sd.simulate(cfg)
    path = res.save(tmp_path / "r.npz")
    with np.load(path) as z:
        assert not bool(z["arrays_stored"])
        assert "A0" not in z.files and "U" not in z.files
        assert str(z["extra_overlap_init"]) == "sampled"
    back = sd.SimulationResult.load(path)
    assert back.config == cfg and back.task is None
    for name in ("loss", *RECORD_NAMES):
        np.testing.assert_array_equal(back.records[name], res.records[name])
    np.testing.assert_array_equal(back.extras["N"], res.extras["N"])


def test_same_settings_same_result():
    cfg = SimConfig(d=10**5, m=10**5, rank=4, task_rank=4, spectrum=0.0, optimizer="sgd",
                    lr=0.5, alpha=8.0, steps=50, engine="reduced", momentum=0.5)
    a, b = sd.simulate(cfg), sd.simulate(cfg)
    np.testing.assert_array_equal(a.loss, b.loss)
    c = sd.simulate(cfg.replace(seed=1))
    assert not np.array_equal(a.loss, c.loss)


def test_sweep_accepts_the_reduced_engine():
    cfgs = [SimConfig(d=d, m=d, rank=4, task_rank=4, spectrum=0.0, optimizer="sgd", lr=0.5,
                      alpha=8.0, steps=30, engine="reduced") for d in (100, 10**7)]
    res = sd.run_configs(cfgs, workers=1, progress=False)
    assert all(isinstance(r, sd.SimulationResult) for r in res)
    np.testing.assert_array_equal(res[0].loss, sd.simulate(cfgs[0]).loss)


# ----------------------------------------------------------------------------- refusals
REFUSED = [
    (dict(optimizer="adam"), "optimizer = 'adam': Adam is per-coordinate"),
    (dict(optimizer="adamw"), "optimizer = 'adamw'"),
    (dict(spectrum=1.0), "spectrum = 1.0: an anisotropic Σ needs every power of Σ"),
    (dict(batch=8), "batch = 8: minibatches are random"),
    (dict(train_size=64), "train_size = 64"),
    (dict(model="full"), "model = 'full'"),
    (dict(sharpness_steps=(0,)), "sharpness_steps"),
    (dict(snapshot_steps=(1,)), "snapshot_steps"),
    (dict(overlap_init="sampled", d=8, rank=4, task_rank=8), "overlap_init: 'sampled' needs"),
]
_SGD = dict(optimizer="sgd", spectrum=0.0)


@pytest.mark.parametrize("engine", ["reduced", "flow"])
@pytest.mark.parametrize("changes,message", REFUSED, ids=[m[:24] for _, m in REFUSED])
def test_refused_settings_raise_one_line(engine, changes, message):
    kw = {**_SGD, **changes}
    with pytest.raises(ConfigError) as err:
        SimConfig(engine=engine, **kw)
    text = str(err.value)
    assert "\n" not in text and message in text


def test_overlap_init_needs_the_reduced_engine():
    with pytest.raises(ConfigError, match="overlap_init: used only with engine"):
        SimConfig(overlap_init="sampled")


def test_non_isotropic_user_task_is_refused():
    cfg = BASE.replace(engine="reduced")
    task = sd.make_task(cfg.replace(engine="full", spectrum=1.0))
    with pytest.raises(ConfigError, match="needs an isotropic Σ"):
        sd.simulate(cfg, task=task)
    with pytest.raises(ConfigError, match="cannot use a given task"):
        sd.simulate(cfg.replace(overlap_init="sampled"), task=sd.make_task(cfg))


def _cli(args, cwd):
    return subprocess.run([sys.executable, "-m", "signaldrift._cli", *args], cwd=cwd,
                          capture_output=True, text=True)


@pytest.mark.parametrize("flags", [
    ["--optimizer", "adam"], ["--spectrum", "1.0"], ["--batch", "8"],
    ["--optimizer", "sgd", "--spectrum", "0", "--sharpness-steps", "0"],
])
def test_cli_refusal_exits_2_and_writes_nothing(tmp_path, flags):
    base = ["simulate", "--engine", "reduced", "--spectrum", "0", "--optimizer", "sgd"]
    out = tmp_path / "r.npz"
    proc = _cli([*base, *flags, "--out", str(out)], tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("signaldrift: error: engine: 'reduced'")
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_cli_runs_the_reduced_engine_at_huge_width(tmp_path):
    out = tmp_path / "r.npz"
    proc = _cli(["simulate", "--engine", "reduced", "--d", str(10**8), "--m", str(10**8),
                 "--spectrum", "0", "--optimizer", "sgd", "--lr", "0.5", "--alpha", "8",
                 "--rank", "4", "--task-rank", "4", "--steps", "60", "--json", "--out",
                 str(out)], tmp_path)
    assert proc.returncode == 0, proc.stderr
    res = sd.SimulationResult.load(out)
    assert res.task is None and res.config.engine == "reduced" and res.config.d == 10**8


# ----------------------------------------------------------------------------- escape
def test_escape_growth_is_the_negative_root():
    # Expected: THEORY §4, no momentum, λ_r = 1: ρ = 1 − η·λ₋ with
    # λ₋ = (s²μ − √(s⁴μ² + 4s²g²))/2, μ = p (λ = 1), g = σ⋆ = 1/√k (equal σ⋆).
    cfg = SimConfig(d=10**8, m=10**8, rank=8, task_rank=8, spectrum=0.0, optimizer="sgd",
                    lr=0.25, alpha=16.0, engine="reduced")
    p = expected_init_overlaps(cfg)["p"]
    s, g = 2.0, 1 / math.sqrt(8)
    lam_minus = (s * s * p - math.sqrt(s**4 * p * p + 4 * s * s * g * g)) / 2
    assert growth_factor(cfg) == pytest.approx(1 - 0.25 * lam_minus, rel=1e-12)
    assert plateau_coefficient(cfg) == pytest.approx(1 / (2 * math.log(1 - 0.25 * lam_minus)))


@pytest.mark.parametrize("lr,alpha,momentum", [(0.25, 16.0, 0.0), (0.1, 8.0, 0.0),
                                               (0.05, 16.0, 0.8)])
def test_saddle_escape_prediction_at_large_width(lr, alpha, momentum):
    # Expected: predict_escape_step, the linearised dynamics at B = 0 (THEORY §4's H₀ block)
    # from each run's own N₀ and Pp₀. Its neglected terms (quartic loss, second-order changes
    # of P and Q) act only near the threshold, so its error is a d-independent number of
    # steps. Tolerance: half a plateau coefficient, 1/(4 ln ρ) steps (the escape of a run
    # whose initial overlap ‖N₀‖² differs by a factor √e), at d = 10⁶ and 10⁸, 3 seeds.
    cfg = SimConfig(d=10**6, m=10**6, rank=8, task_rank=8, spectrum=0.0, optimizer="sgd",
                    lr=lr, alpha=alpha, momentum=momentum, steps=2000, engine="reduced",
                    overlap_init="sampled")
    for d in (10**6, 10**8):
        c = cfg.replace(d=d, m=d)
        tol = 0.5 * plateau_coefficient(c)
        for seed in range(3):
            res = sd.simulate(c.replace(seed=seed))
            N0, Pp0 = res.extras["N0"], res.extras["Pp0"]
            pred = predict_escape_step(c, n_sq=np.sum(N0**2, axis=0),
                                       p=np.trace(Pp0) / c.rank)
            meas = escape_step(res)
            assert abs(meas - pred) <= tol, (d, seed, meas, pred, tol)


def test_plateau_grows_like_log_d():
    # Expected: from d = 10⁴ to 10⁸ the mean escape step (4 seeds) grows by
    # ln(10⁴)/(2 ln ρ) (ρ at p = 1/3, the d → ∞ limit); tolerance 5% of that increase.
    cfg = SimConfig(d=10**4, m=10**4, rank=8, task_rank=8, spectrum=0.0, optimizer="sgd",
                    lr=0.1, alpha=8.0, steps=1000, engine="reduced", overlap_init="sampled")
    mean = {}
    for d in (10**4, 10**8):
        mean[d] = np.mean([escape_step(sd.simulate(cfg.replace(d=d, m=d, seed=s)))
                           for s in range(4)])
    derived = math.log(10**4) * plateau_coefficient(cfg.replace(d=10**8), p=1 / 3)
    assert abs((mean[10**8] - mean[10**4]) - derived) <= 0.05 * derived, (mean, derived)


# ----------------------------------------------------------------------------- F9
def test_figure_f9_test_mode(tmp_path):
    import matplotlib.image as mpimg
    import xarray as xr

    from signaldrift.figures.f9_large_width import figure_F9

    out = figure_F9("test", tmp_path)
    assert out["files"] == ["F9_large_width.png", "F9_large_width.pdf", "F9_large_width.nc"]
    for name in out["files"]:
        assert (tmp_path / name).stat().st_size > 0
    # 12 × 9 inches at 150 dpi.
    assert mpimg.imread(tmp_path / "F9_large_width.png").shape[:2] == (1350, 1800)
    with xr.open_dataset(tmp_path / "F9_large_width.nc", engine="scipy") as ds:
        assert {"a_loss_full", "a_loss_reduced", "b_escape", "c_loss",
                "d_balance_drift"} <= set(ds.data_vars)
    # Panel (a) overlays the two engines (same task and A₀): rounding-level differences.
    for case in out["panels"]["a"].values():
        assert case["max_rel_diff_loss_gt_1e-8"] < 1e-9
    d = out["panels"]["d"]
    assert abs(d["slope_drift_per_step_vs_lr"]["value"] - 2.0) < 0.01
    assert d["flow_max_relative_drift"] < 1e-8


# ----------------------------------------------------------------------------- generated
def _split_point(seed):
    from signaldrift._derivations import reduced as R

    v = R.numeric_point(seed)
    vals = {**R.split_numeric(v), "s": v["s"], "lam": v["lam"], "wd": v["wd"], "mu": v["mu"],
            "ea": 0.1, "fa": 0.05, "eb": 0.2, "fb": 0.07}
    return R, vals


@pytest.mark.parametrize("momentum", [True, False])
def test_generated_step_matches_its_program(momentum):
    # Expected: the SymPy program of signaldrift derive reduced, evaluated line by line with
    # SymPy's NumPy printer (lambdify); rtol 1e-12.
    import signaldrift._generated.reduced as gen

    R, vals = _split_point(21)
    prog = R.step_program(momentum)
    env = R.run_program(prog, vals)
    got = getattr(gen, prog.name)(*(vals[a] for a in prog.args))
    for name, value in zip(prog.outputs, got):
        np.testing.assert_allclose(value, env[name], rtol=1e-12,
                                   atol=1e-12 * np.abs(env[name]).max(), err_msg=name)


def test_generated_records_match_their_expressions():
    import signaldrift._generated.reduced as gen
    from signaldrift._derivations._common import evaluate

    R, vals = _split_point(22)
    env = R.run_program(R.step_program(True), vals)
    vals.update({k: env[k] for k in ("dN", "dM", "dApAp", "dApdAp", "dBpBp", "dBpdBp")})
    vals["Ec"] = vals["s"] * vals["M"] @ vals["N"] - vals["Sg"]
    for kernel in R.record_kernels():
        expected = float(evaluate(R.record_expr(kernel), vals))
        got = getattr(gen, kernel.name)(*(vals[a] for a in kernel.args))
        assert got == pytest.approx(expected, rel=1e-12), kernel.name


def test_word_check_detects_a_wrong_recursion():
    # The derivation's word comparison is not vacuous: a doubled buffer term in N' is caught.
    from signaldrift._derivations import reduced as R

    inl = R.step_program(True).inline()["N1"]
    dense = R.reduced_words(R.dense_outputs()["N1"])
    defs = R._split_defs()
    good = R._subs_coefficients(inl, momentum=True)
    bad = R._subs_coefficients(inl - R.fa * R.Nf, momentum=True)
    assert (R.reduced_words(good, defs=defs) - dense).is_zero()
    assert not (R.reduced_words(bad, defs=defs) - dense).is_zero()
