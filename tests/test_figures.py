"""Plot functions, figure summaries and the ``figures`` command (issue 4b).

Plot functions are fed tiny hand-made Datasets (the layouts documented in
``signaldrift._plotting``); F6 runs end to end in ``mode="test"`` (a documented smoke size:
d = 32, 30 steps, 3 seeds; its numbers mean nothing, only the summary's shape is checked).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

import signaldrift
from signaldrift import _plotting as P
from signaldrift._figures import resolve_names, run_figures, settings

RNG = np.random.default_rng(0)


def _pos(*shape):
    return np.exp(RNG.normal(size=shape))


def fake_F1():
    ranks, alphas = [2, 8], [4.0, 16.0, 64.0]
    s = np.array([[a / r for a in alphas] for r in ranks])
    lam = 0.5 * (s**2 / 3 + np.sqrt(s**4 / 9 + 4 * s**2))
    return xr.Dataset(
        {"lambda_init": (("rank", "alpha"), lam), "lambda_closed": (("rank", "alpha"), lam),
         "scale": (("rank", "alpha"), s),
         "theory_lambda": (("theory_s",), np.linspace(1, 10, 5)),
         "lambda_train": (("case", "sharp_step"), _pos(2, 3)),
         "precond_lambda_train": (("case", "sharp_step"), _pos(2, 3) * 1e4),
         "case_label": (("case",), np.array(["a", "b"])),
         "div_pred": (("div_case",), np.array([0.1, 1.0])),
         "div_lo": (("div_case",), np.array([0.09, np.nan])),
         "div_hi": (("div_case",), np.array([0.12, 1.1]))
         , "div_label": (("div_case",), np.array(["x", "full"]))},
        coords={"rank": ranks, "alpha": alphas, "theory_s": np.geomspace(0.1, 40, 5),
                "sharp_step": [0, 5, 9]},
        attrs={"lambda_sigma": 5.0, "eta_std_sgd": 0.2, "adam_threshold": 38000.0})


def fake_landscape():
    opts, alphas, facs, seeds = ["sgd", "adam"], [1.0, 4.0, 16.0, 32.0], [0.5, 1.0, 2.0], [0, 1]
    fl = _pos(2, 4, 3, 2) * 1e-2
    dv = np.zeros(fl.shape, np.int8)
    dv[0, -1, -1, 0] = 1  # one diverged seed: the cell must show as diverged
    fl[0, -1, -1, 0] = np.inf
    return xr.Dataset(
        {"final_loss": (("optimizer", "alpha", "lr_factor", "seed"), fl),
         "diverged": (("optimizer", "alpha", "lr_factor", "seed"), dv),
         "lr": (("optimizer", "lr_factor"), np.array([[0.01, 0.02, 0.04], [5e-4, 1e-3, 2e-3]]))},
        coords={"optimizer": opts, "alpha": alphas, "lr_factor": facs, "seed": seeds},
        attrs={"rank": 16, "alpha_std": 16.0, "lr_std_sgd": 0.02, "lr_std_adam": 1e-3})


def fake_F3():
    opts, q, v = ["sgd", "adam"], ["rho", "rhoB", "signal"], ["eta", "s"]
    th = np.array([[[2, 2], [1, 1], [1, 2]], [[1, 0], [np.nan, np.nan], [1, 1]]], float)
    return xr.Dataset(
        {f"{a}_{b}": (("optimizer", dim, "seed"), _pos(2, 3, 2))
         for a in ("rho", "rhoB", "signal") for b, dim in (("eta", "lr_index"), ("alpha", "alpha"))}
        | {"lr": (("optimizer", "lr_index"), np.array([[1e-4, 2e-4, 4e-4], [1e-5, 2e-5, 4e-5]])),
           "scale": (("alpha",), np.array([0.25, 1.0, 4.0])),
           "slope_theory": (("optimizer", "quantity", "variable"), th)},
        coords={"optimizer": opts, "alpha": [2.0, 8.0, 32.0], "seed": [0, 1], "quantity": q,
                "variable": v},
        attrs={"plot_step": 1})


def fake_F5():
    opts, rules, ranks = ["sgd", "adam"], ["lora", "rslora"], [1, 2, 4]
    dv = np.zeros((2, 2, 3, 1), np.int8)
    dv[0, 1] = 1  # every sgd/rslora run diverged
    fl = np.where(dv > 0, np.inf, _pos(2, 2, 3, 1))
    return xr.Dataset(
        {"progress1": (("optimizer", "rule", "rank", "seed"), _pos(2, 2, 3, 2)),
         "signal1": (("optimizer", "rule", "rank", "seed"), _pos(2, 2, 3, 2)),
         "final_loss": (("optimizer", "rule", "rank", "seed_budget"), fl),
         "diverged": (("optimizer", "rule", "rank", "seed_budget"), dv),
         "slope_theory": (("optimizer", "rule", "quantity"), np.zeros((2, 2, 2)))},
        coords={"optimizer": opts, "rule": rules, "rank": ranks, "seed": [0, 1],
                "seed_budget": [0], "quantity": ["progress", "signal"]},
        attrs={"steps": 10})


def fake_F6():
    ranks, alphas = [4, 8, 16], [1.0, 4.0, 16.0, 64.0]
    fl = _pos(3, 4, 2)
    fl[0, 0] = np.nan  # not run at that α for r = 4
    return xr.Dataset(
        {"final_loss": (("rank", "alpha", "seed"), fl),
         "diverged": (("rank", "alpha", "seed"), np.where(np.isnan(fl), np.nan, 0.0)),
         "alpha_star": (("rank",), np.array([4.0, 8.0, 16.0])),
         "alpha_star_lo": (("rank",), np.array([3.0, 6.0, 12.0])),
         "alpha_star_hi": (("rank",), np.array([5.0, 10.0, 20.0])),
         "at_edge": (("rank",), np.array([0, 0, 1], np.int8))},
        coords={"rank": ranks, "alpha": alphas, "seed": [0, 1]},
        attrs={"gamma": 1.0, "gamma_lo": 0.9, "gamma_hi": 1.1, "c": 1.0, "c_lo": 0.8,
               "c_hi": 1.2, "bracket": "γ = 1", "optimizer": "adam", "lr": 1e-3, "steps": 10})


def fake_F7():
    fl = _pos(2, 3, 2, 3)
    dv = np.zeros(fl.shape, np.int8)
    dv[0, 2, 0, 1] = 1
    return xr.Dataset(
        {"final_loss": (("optimizer", "rule", "rank", "seed"), np.where(dv > 0, np.inf, fl)),
         "diverged": (("optimizer", "rule", "rank", "seed"), dv)},
        coords={"optimizer": ["sgd", "adam"], "rule": ["lora", "rslora", "lora-alpha"],
                "rank": [2, 4], "seed": [0, 1, 2]},
        attrs={"steps": 10, "rule_settings": "lora: alpha=16"})


CASES = [
    (P.plot_spectral_suppression, fake_F1),
    (P.plot_optimisation_gap, fake_landscape),
    (P.plot_signal_drift, fake_F3),
    (P.plot_landscape, fake_landscape),
    (P.plot_rank_stability, fake_F5),
    (P.plot_rank_law, fake_F6),
    (P.plot_rule_comparison, fake_F7),
]


@pytest.mark.parametrize("plot, make", CASES, ids=[c[0].__name__ for c in CASES])
def test_plot_returns_figure_and_saves(plot, make, tmp_path):
    fig = plot(make())
    assert isinstance(fig, Figure)
    assert not any(tmp_path.iterdir())  # nothing written without save_to
    fig = plot(make(), save_to=tmp_path / "both")
    for suffix, magic in ((".png", b"\x89PNG"), (".pdf", b"%PDF")):
        f = tmp_path / f"both{suffix}"
        assert f.read_bytes()[:4] == magic
    plot(make(), save_to=tmp_path / "one.png")
    assert (tmp_path / "one.png").exists() and not (tmp_path / "one.pdf").exists()


def test_plotting_leaks_no_pyplot_figures():
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    P.plot_rank_law(fake_F6())
    assert plt.get_fignums() == before


def test_resolve_names_aliases_and_unknown():
    assert resolve_names(None) == [f"F{i}" for i in range(1, 8)]
    assert resolve_names(["f3", "rank_law", "F3"]) == ["F3", "F6"]
    with pytest.raises(signaldrift.ConfigError, match="unknown figure 'F9'"):
        resolve_names(["F3", "F9"])


def test_cli_unknown_only_is_one_line_error_and_writes_nothing(tmp_path, capsys):
    from signaldrift._cli import main

    out = tmp_path / "out"
    assert main(["figures", "--only", "F1", "nope", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("signaldrift: error:") and "nope" in err[0]
    assert not out.exists()


def test_settings_modes():
    with pytest.raises(signaldrift.ConfigError):
        settings("fast")
    q, f = settings("quick"), settings("full")
    assert f["common"]["d"] > q["common"]["d"]
    assert len(f["F6"]["seeds"]) > len(q["F6"]["seeds"])


def test_F6_summary_has_gamma_and_c_with_intervals(tmp_path):
    # mode="test" is the smoke size (d = 32, 30 steps, 3 seeds): shapes only, not numbers.
    s = run_figures(["F6"], mode="test", out_dir=tmp_path, workers=1, progress=False, log=None)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for summary in (s, on_disk, on_disk["figures"]["F6"]):
        for key in ("gamma", "c"):
            entry = summary[key]
            assert isinstance(entry["value"], float)
            lo, hi = entry["ci"]
            assert lo <= hi
    assert "[0.5, 1]" in on_disk["figures"]["F6"]["bracket"]
    for suffix in (".png", ".pdf", ".nc"):
        assert (tmp_path / f"F6_rank_law{suffix}").exists()
    ds = xr.open_dataset(tmp_path / "F6_rank_law.nc")
    assert set(ds["alpha_star"].dims) == {"rank"}
    assert ds.attrs["gamma"] == pytest.approx(s["gamma"]["value"])
    ds.close()
