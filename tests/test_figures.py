"""The figures (signaldrift.figures): layout, data contract, legibility, and the command.

Every figure runs end to end once in ``mode="test"`` (a documented smoke size: d = 32, tens
of steps, 2–12 seeds; its numbers mean nothing, only shapes, contracts and drawing are
checked here; the numbers that matter are checked in test_predictions.py and
test_findings.py). Each figure is then redrawn from its saved netCDF, which is what users do.
"""

from __future__ import annotations

import json
import struct
import sys
import warnings

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.text import Text

import signaldrift
from signaldrift import _plotting as P
from signaldrift._analysis import loglog_slope
from signaldrift._figures import FIGURES, resolve_names, run_figures, settings
from signaldrift.figures import _common

PLOTS = {"F1": P.plot_spectral_suppression, "F2": P.plot_optimisation_gap,
         "F3": P.plot_signal_drift, "F4": P.plot_landscape, "F5": P.plot_rank_stability,
         "F6": P.plot_rank_law, "F7": P.plot_rule_comparison, "F8": P.plot_rank_law_widths}


@pytest.fixture(scope="module")
def test_run(tmp_path_factory):
    """All figures in mode="test" (about 40 s on two shared cores), once for this module."""
    out = tmp_path_factory.mktemp("figs")
    summary = run_figures(None, mode="test", out_dir=out, workers=2, progress=False, log=None)
    return out, summary


def _nc(out, fid):
    stem = FIGURES[fid][0]
    return xr.load_dataset(out / f"{fid}_{stem}.nc")


# ----------------------------------------------------------------------------- layout
def test_one_module_per_figure_and_registry():
    from signaldrift import figures

    # F1–F8 live in signaldrift.figures; a registered F9 (another module) is allowed after.
    assert list(FIGURES)[:8] == [f"F{i}" for i in range(1, 9)]
    for fid, (stem, fn) in list(FIGURES.items())[:8]:
        mod = getattr(figures, f"f{fid[1:]}_{stem}")
        assert fn is getattr(mod, f"figure_{fid}")
        assert callable(mod.settings) and callable(mod.plot)
        assert PLOTS[fid] is mod.plot  # the old names in _plotting are the modules' plots


def test_resolve_names_aliases_and_unknown():
    assert resolve_names(None) == list(FIGURES)
    assert resolve_names(None)[:8] == [f"F{i}" for i in range(1, 9)]
    assert resolve_names(["f3", "rank_law", "F3", "rank_law_widths"]) == ["F3", "F6", "F8"]
    with pytest.raises(signaldrift.ConfigError, match="unknown figure 'F99'"):
        resolve_names(["F3", "F99"])


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
    # Finding 3: at least 16 seeds for the rank law in --full.
    assert len(f["F6"]["seeds"]) >= 16
    # Finding 1: enough seeds for a standard error of the measured mean below 2% (relative
    # sd of λ_max(A₀ΣA₀ᵀ) is ≈ 21% at r ≤ 8 for λ ∝ 1/i, measured in the derivation's grid).
    assert q["F1"]["init_seeds"] >= (0.21 / 0.02) ** 2
    # Finding 8: at least three widths in --quick, five in --full; β < 1.
    assert len(q["F8"]["widths"]) >= 3 and len(f["F8"]["widths"]) >= 5
    assert f["F8"]["widths"][-1] == 4096 and q["F8"]["spectrum"] < 1
    assert f["F8"]["budgets"] == [100, 400, 1600]
    assert {"k=r", "k=8"} == set(f["F8"]["k_protocols"])
    for mode in ("test", "quick", "full"):
        assert settings(mode)["dpi"] >= 150


def test_figure_configs_never_combine_conflicting_settings():
    # SimConfig refuses scale with a rule other than "fixed" and momentum with Adam: every
    # figure config must pass its validation (they are built in each mode's settings).
    for mode in ("test", "quick", "full"):
        settings(mode)
        _common.base_config(mode, optimizer="sgd")
        _common.base_config(mode, rule="lora-alpha", coef=64.0)


# ----------------------------------------------------------------------------- contract
def test_summary_contract(test_run):
    out, s = test_run
    on_disk = json.loads((out / "summary.json").read_text())
    for summary in (s, on_disk):
        for key in ("gamma", "c"):
            lo, hi = summary[key]["ci"]
            assert isinstance(summary[key]["value"], float) and lo <= summary[key]["value"] <= hi
        assert "Student-t" in summary["gamma_method"] and "residuals" in summary["gamma_method"]
        assert summary["lack_of_fit_p"] is None or 0.0 <= summary["lack_of_fit_p"] <= 1.0
        # Finding 2: the brackets THEORY §5 derives, per optimiser.
        assert summary["brackets"] == {"adam": [0.0, 0.5], "sgd": [0.5, 0.75]}
        for opt in ("adam", "sgd"):
            assert summary["figures"]["F6"]["rank_law"][opt]["bracket"] == summary["brackets"][opt]
        assert "gamma_per_width" in summary
    assert "[0.5, 1]" not in json.dumps(on_disk["figures"]["F6"])  # the old, underived bracket


def test_F1_netcdf_holds_measured_and_derived_sharpness(test_run):
    out, s = test_run
    ds = _nc(out, "F1")
    for name in ("lambda_max_init", "lambda_max_init_theory"):
        assert ds[name].dims == ("rank", "alpha", "seed")
    assert np.isfinite(ds["lambda_max_init"]).all()
    # The check of the Hessian code: Lanczos equals the closed form with the run's own μ.
    assert s["figures"]["F1"]["hessian_check_max_rel_error"] < 1e-8
    assert s["figures"]["F1"]["psi_isotropic"]["derived"] > 0


def test_F6_netcdf_and_brackets(test_run):
    out, _ = test_run
    ds = _nc(out, "F6")
    np.testing.assert_array_equal(ds["bracket"].sel(optimizer="adam").values, [0.0, 0.5])
    np.testing.assert_array_equal(ds["bracket"].sel(optimizer="sgd").values, [0.5, 0.75])
    assert ds["alpha_star"].dims == ("optimizer", "rank")


def test_F8_summary_holds_gamma_per_width_and_time_estimate(test_run):
    _, s = test_run
    f8 = s["figures"]["F8"]
    widths = settings("test")["F8"]["widths"]
    for key, per in f8["gamma_per_width"].items():
        for d in widths:
            assert "gamma" in per[f"d={d}"] and len(per[f"d={d}"]["ci"]) == 2
    assert f8["timing"]["estimated_serial_seconds"]["full"] > 0


def test_t_intervals_in_summaries(test_run):
    _, s = test_run
    assert "Student-t" in s["figures"]["F7"]["ci_method"]
    assert "Student-t" in s["figures"]["F2"]["loraplus"]["ci_method"]
    assert "Student-t" in s["figures"]["F1"]["ci_method"]


# ----------------------------------------------------------------------------- drawing
def _visible_texts(fig: Figure):
    """Every drawn, non-empty text of ``fig`` (tick labels only inside the view)."""
    fig.canvas.draw()
    ren = fig.canvas.get_renderer()
    texts = []
    for ax in fig.axes:
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = min(lim), max(lim)
            for ticks in (axis.get_major_ticks(), axis.get_minor_ticks()):
                for tk in ticks:
                    if lo - 1e-12 * abs(lo) <= tk.get_loc() <= hi + 1e-12 * abs(hi):
                        texts += [tk.label1, tk.label2]
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label]
        texts += list(ax.texts)
        leg = ax.get_legend()
        if leg is not None:
            texts += list(leg.get_texts())
    texts += list(fig.texts)
    if fig._suptitle is not None:
        texts.append(fig._suptitle)
    out, seen = [], set()
    for t in texts:
        if id(t) in seen:
            continue
        seen.add(id(t))
        if isinstance(t, Text) and t.get_visible() and t.get_text().strip():
            bb = t.get_window_extent(ren)
            if bb.width > 0 and bb.height > 0:
                out.append((t, bb))
    return out, ren


@pytest.mark.parametrize("fid", list(PLOTS))
def test_plot_redraws_from_netcdf_and_is_legible(test_run, fid, tmp_path):
    out, _ = test_run
    fig = PLOTS[fid](_nc(out, fid))
    assert isinstance(fig, Figure)
    assert not any(tmp_path.iterdir())  # nothing written without save_to
    texts, ren = _visible_texts(fig)
    # Finding 7: text ≥ 8 pt.
    small = [(t.get_text(), t.get_fontsize()) for t, _ in texts if t.get_fontsize() < 8.0 - 1e-9]
    assert not small, small
    # No label overlaps another (1 px tolerance).
    boxes = [(t.get_text(), bb.shrunk(0.98, 0.9)) for t, bb in texts]
    clash = [(a, b) for i, (a, ba) in enumerate(boxes) for b, bb in boxes[i + 1:]
             if ba.overlaps(bb)]
    assert not clash, clash[:5]
    # Legends are off the data: no plotted point lies inside a legend's box.
    for ax in fig.axes:
        leg = ax.get_legend()
        if leg is None:
            continue
        lb = leg.get_window_extent(ren)
        for other in fig.axes:
            for ln in other.get_lines():
                if ln.get_transform() != other.transData:
                    continue
                xy = np.column_stack([ln.get_xdata(), ln.get_ydata()]).astype(float)
                xy = xy[np.isfinite(xy).all(axis=1)]
                if xy.size == 0:
                    continue
                disp = other.transData.transform(xy)
                inside = ((disp[:, 0] > lb.x0) & (disp[:, 0] < lb.x1)
                          & (disp[:, 1] > lb.y0) & (disp[:, 1] < lb.y1))
                assert not inside.any(), (fid, ln.get_label())
    # Finding 7: PNGs at ≥ 150 dpi; both formats written.
    PLOTS[fid](_nc(out, fid), save_to=tmp_path / "both")
    png = (tmp_path / "both.png").read_bytes()
    assert png[:4] == b"\x89PNG" and (tmp_path / "both.pdf").read_bytes()[:4] == b"%PDF"
    width_px = struct.unpack(">I", png[16:20])[0]
    assert width_px >= 150 * fig.get_figwidth() - 1


def _plot_of(fid):
    if fid in PLOTS:
        return PLOTS[fid]
    from signaldrift.figures import f9_large_width

    return f9_large_width.plot_large_width


@pytest.mark.parametrize("fid", [*PLOTS, "F9"])
def test_drawing_twice_writes_the_same_bytes_and_lays_out_once(test_run, fid, tmp_path,
                                                               monkeypatch):
    # Reference: the first drawing. The same figure drawn again from the same data (in the
    # same process: warm text and font caches) gives the same PNG and PDF bytes. Constrained
    # layout runs once per drawing (twice at most, if a legend placed below its axes has to
    # move after the first pass), not once per saved file: savefig runs none.
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    out, _ = test_run
    calls = []
    real = ConstrainedLayoutEngine.execute
    monkeypatch.setattr(ConstrainedLayoutEngine, "execute",
                        lambda self, fig: calls.append(1) or real(self, fig))
    files = []
    for k in range(2):
        calls.clear()
        fig = _plot_of(fid)(_nc(out, fid), save_to=tmp_path / f"d{k}")
        assert 1 <= len(calls) <= 2, (fid, len(calls))
        files.append([(tmp_path / f"d{k}.{ext}").read_bytes() for ext in ("png", "pdf")])
    assert files[0][0] == files[1][0], "PNG bytes differ"
    assert files[0][1] == files[1][1], "PDF bytes differ"
    # The layout stays frozen: drawing again moves no axes and lays nothing out.
    before = [tuple(ax.get_position().bounds) for ax in fig.axes]
    calls.clear()
    fig.canvas.draw()
    assert not calls and [tuple(ax.get_position().bounds) for ax in fig.axes] == before


def test_diverged_runs_drawn_outside_the_loss_axis(test_run):
    # Finding 7: a diverged run is a marker above the axis (axes y > 1), never at a fake
    # height inside the loss range.
    ax_fig = Figure()
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(ax_fig)
    ax = ax_fig.subplots()
    ax.plot([1, 2, 3], [1e-3, 2e-3, 3e-3])
    _common.mark_diverged(ax, [1, 2, 3], [False, True, True], row=1)
    crosses = [ln for ln in ax.get_lines() if ln.get_marker() == "x"]
    assert crosses and all(np.all(np.asarray(c.get_ydata()) > 1.0) for c in crosses)
    assert all(not c.get_clip_on() for c in crosses)


def test_plotting_leaks_no_pyplot_figures(test_run):
    import matplotlib.pyplot as plt

    out, _ = test_run
    before = plt.get_fignums()
    P.plot_rank_law(_nc(out, "F6"))
    assert plt.get_fignums() == before


def test_figures_scripts_import_script_main():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for fid, (stem, _) in list(FIGURES.items())[:8]:
        text = (repo / "figures" / f"f{fid[1:]}_{stem}.py").read_text()
        assert f'script_main("{fid}"' in text


# ----------------------------------------------------------------------------- statistics
def _bits(a) -> np.ndarray:
    return np.asarray(a, np.float64).view(np.int64)


@pytest.mark.parametrize("case", range(40))
def test_boot_slopes_is_the_loop_over_resamples_bit_for_bit(case):
    # Reference: the straightforward loop slope_boot ran before (one _slope per resample;
    # the resamples it rejects are left out). Random grids and seeds, NaN, zero, negative
    # and infinite means, a bad or single distinct x, a strided x: the vectorised path must
    # give the same bits, not merely close values.
    rng = np.random.default_rng(case)
    nx, S = int(rng.integers(1, 14)), 2 + case % 15  # from 8 seeds numpy sums pairwise
    x = np.exp(3 * rng.normal(size=nx))
    if case % 7 == 3:
        x[0] = [0.0, -1.0, np.nan][case % 3]
    if case % 11 == 5:
        x[:] = x[0]  # one distinct x: every resample is rejected
    Y = np.exp(rng.uniform(0.1, 4) * rng.normal(size=(nx, S))) * 10.0 ** rng.uniform(-6, 6)
    if case % 3 == 1:
        Y[rng.random((nx, S)) < 0.15] = np.nan
    if case % 5 == 2:
        Y[rng.random((nx, S)) < 0.1] = rng.choice([0.0, -2.0, np.inf])
    picks = rng.integers(0, S, size=(300, S))
    ref = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for p in picks:
            try:
                ref.append(_common._slope(x, np.nanmean(Y[:, p], axis=1)))
            except ValueError:
                continue
        strided = np.repeat(x, 2)[::2] if case % 2 else x
        got = _common.boot_slopes(strided, Y, picks)
    assert got.shape == (len(ref),)
    np.testing.assert_array_equal(_bits(got), _bits(ref))


def test_slope_boot_draws_the_same_resamples_as_one_draw_per_resample():
    # slope_boot draws every resample at once; numpy's Generator.integers gives the same
    # stream as n_boot draws of S (checked here, since the CI depends on it).
    a = np.random.default_rng(7)
    b = np.random.default_rng(7)
    loop = np.array([a.integers(0, 6, size=6) for _ in range(500)])
    np.testing.assert_array_equal(b.integers(0, 6, size=(500, 6)), loop)
    assert a.bit_generator.state == b.bit_generator.state
    x = 2.0 ** np.arange(6)
    Y = np.exp(np.random.default_rng(3).normal(size=(6, 6))) * x[:, None] ** 0.5
    out = _common.slope_boot(x, Y, 0.5, 0.1, n_boot=400, seed=11)
    rng = np.random.default_rng(11)
    boots = [_common._slope(x, np.nanmean(Y[:, rng.integers(0, 6, size=6)], axis=1))
             for _ in range(400)]
    assert out["ci"] == np.percentile(boots, [2.5, 97.5]).tolist()
    assert out["value"] == loglog_slope(x, Y.mean(axis=1)).slope


def test_ctx_finals_match_run_and_skip_the_runs_already_seen(tmp_path, monkeypatch):
    # Reference: final() of run_configs without any cache. Ctx.finals must give the same
    # tuples (duplicates and a diverged run included), and run only what this process has
    # not seen in the same cache folder.
    from signaldrift import SimConfig
    from signaldrift._sweep import run_configs

    monkeypatch.setattr(_common, "_FINALS", {})
    base = SimConfig(d=8, m=8, task_rank=2, rank=2, steps=6, record_every=6, optimizer="sgd")
    cfgs = [base.replace(lr=lr, seed=s) for lr in (0.05, 1e4) for s in (0, 1)]
    cfgs.append(cfgs[1])
    ref = [_common.final(r) for r in run_configs(cfgs, cache_dir=None, progress=False)]
    assert ref[2][1] == 1 and ref[0][1] == 0  # one diverged, one converged

    ctx = _common.Ctx(tmp_path / "a", 1, False)
    assert ctx.finals(cfgs) == ref
    asked = []
    real = _common.Ctx.run
    monkeypatch.setattr(_common.Ctx, "run", lambda self, c: asked.append(list(c)) or real(self, c))
    new = base.replace(lr=0.02)
    again = _common.Ctx(tmp_path / "a", 1, False).finals([new, *cfgs])
    assert asked == [[new]] and again[1:] == ref
    assert _common.Ctx(tmp_path / "b", 1, False).finals(cfgs) == ref  # another folder: runs
    assert len(asked[-1]) == 4


def test_preload_drawing_leaves_nothing_for_drawing_children_to_import(tmp_path):
    # Reference: the modules a fresh process imports to draw and write a figure (PNG, PDF,
    # netCDF) with _common.write. After _preload_drawing, drawing imports none of the
    # heavy ones (what each forked drawing child would otherwise import for itself).
    import subprocess
    import sys

    script = f"""
import sys
import numpy as np, xarray as xr
from pathlib import Path
from signaldrift.figures import _common
if sys.argv[1] == "preload":
    _common._preload_drawing()
before = set(sys.modules)
fig, axes = _common.new_figure(1, 1)
axes[0, 0].plot([1, 2, 4], [3, 1, 2], "o-", label="α = 1")
_common.set_axes(axes[0, 0], xscale="log", yscale="log", title="t")
_common.legend_outside(axes[0, 0], where="below")
_common.finish(fig)
ds = xr.Dataset({{"y": ("x", np.arange(3.0))}}, attrs={{"d": {{"a": 1}}, "b": True}})
_common.write(ds, fig, Path({str(tmp_path)!r}), "f" + sys.argv[1])
heavy = ("dask", "distributed", "fontTools", "PIL", "matplotlib.backends.backend_pdf")
print(sorted(m for m in set(sys.modules) - before if m.startswith(heavy)))
"""
    def new_modules(arg):
        out = subprocess.run([sys.executable, "-c", script, arg], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    assert "fontTools" in new_modules("plain")  # the reference imports them while drawing
    assert new_modules("preload") == "[]"
    assert (tmp_path / "fpreload.png").read_bytes() == (tmp_path / "fplain.png").read_bytes()
    assert (tmp_path / "fpreload.pdf").read_bytes() == (tmp_path / "fplain.pdf").read_bytes()
    assert (tmp_path / "fpreload.nc").read_bytes() == (tmp_path / "fplain.nc").read_bytes()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="background drawing: Linux")
def test_background_drawing_keeps_two_children_and_writes_the_same_files(tmp_path):
    # Reference: the same figures drawn and written in this process. In the background at
    # most _MAX_BACKGROUND (2) children draw at once, and the files are the same bytes.
    ds = xr.Dataset({"y": ("x", np.array([3.0, 1.0, 2.0]))}, attrs={"flag": True})

    def plot(d):
        fig, axes = _common.new_figure(1, 1)
        axes[0, 0].plot([1, 2, 4], d["y"].values, "o-", label="y")
        _common.legend_outside(axes[0, 0], where="below")
        return _common.finish(fig)

    bg, fg = tmp_path / "bg", tmp_path / "fg"
    bg.mkdir()
    fg.mkdir()
    alive = []
    with _common.background_drawing(True):
        for i in range(4):
            _common.draw_and_write(plot, ds, bg, f"f{i}")
            alive.append(len(_common._BACKGROUND))
    assert alive == [1, 2, 2, 2] and _common._BACKGROUND is None
    for i in range(4):
        _common.write(ds, plot(ds), fg, f"f{i}")
    names = sorted(p.name for p in fg.iterdir())
    assert names == sorted(p.name for p in bg.iterdir()) and len(names) == 12
    for n in names:
        assert (bg / n).read_bytes() == (fg / n).read_bytes(), n


def test_F5_predicted_stability_in_workers_is_the_loop_over_ranks():
    # Reference: the loop predicted_stability ran before (μ of each in-domain rank in this
    # process, then F1's closed form); with two forked workers, the same bits.
    from signaldrift._derivations.init_sharpness import expected_lambda_max, in_domain
    from signaldrift.figures import f5_rank_stability as f5

    F = f5.settings("test")
    ranks = [1, 2, 4, 64]  # 64 > d = 32: outside the domain, NaN
    got = f5.predicted_stability("test", F["rules"], ranks, workers=2)
    cfg = _common.base_config("test", task_seed=0, optimizer="sgd")
    task = signaldrift.make_task(cfg)
    g, eta, var = f5.g_task(task), _common.sgd_lr_std(task), 1.0 / (3.0 * cfg.d)
    ref = np.full((len(F["rules"]), len(ranks)), np.nan)
    for k, r in enumerate(ranks):
        if in_domain(d=cfg.d, rank=r, beta=cfg.spectrum):
            mu = expected_lambda_max(task.lam, r, var)
            for j, (rule, spec) in enumerate(F["rules"].items()):
                ref[j, k] = 0.5 * eta * float(f5.closed_form(f5.scale_of(rule, spec, r), mu, g))
    assert np.isnan(ref[:, -1]).all() and np.isfinite(ref[:, :-1]).all()
    np.testing.assert_array_equal(_bits(got), _bits(ref))


@pytest.mark.parametrize("rc", ["figure.constrained_layout.use", "figure.autolayout"])
def test_a_frozen_layout_survives_saving_under_an_automatic_layout_rc(rc, tmp_path):
    # savefig sets the layout engine back through set_layout_engine(None), which reads the
    # rcParams: a matplotlibrc asking for automatic layout must not lay a frozen figure out
    # again between its PNG and its PDF (the axes would move).
    import matplotlib as mpl
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    with mpl.rc_context({rc: True}):
        fig = Figure(layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        ax.plot([1, 2])
        ax.set_xlabel("a long label " * 3)
        _common.freeze_layout(fig)
        before = ax.get_position().bounds
        _common.save_figure(fig, tmp_path / "x")
        assert fig.get_layout_engine() is None
        assert ax.get_position().bounds == before
