"""What every figure shares: the common task, the standard hyperparameters, running and
caching simulations, writing files, statistics of seeds, and the drawing conventions.

Drawing conventions (every figure): theory is drawn as black/grey lines (dashed = derived
slopes, solid = closed forms), simulation as markers with 95% Student-t intervals over
seeds (:data:`CI_METHOD`); losses are averaged over seeds in log space (geometric means);
diverged runs are drawn as crosses *above* the axis (outside the loss range, never at a fake
height); legends sit outside the data; PNGs at :data:`DPI` with text of at least
:data:`FONT` pt. Figures are drawn on the Agg canvas directly, never through ``pyplot``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

from .._analysis import _loglog_points, _ols, log_t_interval, loglog_slope, t_interval
from .._config import ConfigError, SimConfig
from .._task import Task, make_task

MODES = ("test", "quick", "full")

#: Standard hyperparameters: Adam lr 1e-3 (β = (0.9, 0.999), ε = 1e-8); α = 16 (PEFT
#: examples); SGD's standard lr is :func:`sgd_lr_std`.
ADAM_LR_STD = 1e-3
ALPHA_STD = 16.0

#: Every PNG is written at this resolution (all modes) and no text is smaller than FONT pt.
DPI = 150
FONT = 8.0
CI_METHOD = "95% Student-t interval over seeds (mean ± t_{0.975, n−1}·SE)"
LOG_CI_METHOD = ("geometric mean over seeds with a 95% Student-t interval on log values "
                 "(exp(mean log L ± t_{0.975, n−1}·SE))")

DIVERGED_STYLE = dict(marker="x", color="tab:red", linestyle="none", markersize=5, zorder=5)
RULE_COLORS = {"lora": "tab:blue", "rslora": "tab:orange", "lora-alpha": "tab:green"}
OPT_COLORS = {"sgd": "tab:purple", "adam": "tab:cyan", "adamw": "tab:olive"}


# =========================================================================== settings
def check_mode(mode: str) -> None:
    """Raise :class:`ConfigError` (one line) for an unknown mode."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")


def pow2(a: float, b: float, step: float = 1.0) -> list[float]:
    """``[2^a, 2^(a+step), …, 2^b]``."""
    return [float(2.0**e) for e in np.arange(a, b + 1e-9, step)]


def common_settings(mode: str) -> dict[str, Any]:
    """The common task and training setting of ``mode`` (fixed a priori, never tuned).

    - ``"quick"`` (the main job): d = m = 128, 200 steps.
    - ``"full"``: d = m = 256, 400 steps.
    - ``"test"``: a smoke size for the test suite (d = m = 32, 30 steps); numbers mean nothing.

    Σ with λ_i ∝ i^(−1) (mean 1), task rank k = 8 (4 in test), equal σ⋆, noise-free labels,
    Haar V, task per seed; minibatches of n = 32 fresh samples; random feature basis
    (THEORY §1: Adam depends on the basis; the random one is the headline).
    """
    check_mode(mode)
    test, full = mode == "test", mode == "full"
    steps = 30 if test else (400 if full else 200)
    d = 32 if test else (256 if full else 128)
    return {"d": d, "m": d, "task_rank": 4 if test else 8, "spectrum": 1.0, "decay": 0.0,
            "noise": 0.0, "batch_train": 8 if test else 32, "steps": steps,
            "basis": "random", "adam_lr": ADAM_LR_STD, "alpha_std": ALPHA_STD,
            "sgd_lr": "1/lambda_max(Sigma)", "dpi": DPI}


def base_config(mode: str, *, population: bool = False, **changes: Any) -> SimConfig:
    """The common task and student of ``mode`` (:func:`common_settings`), with ``changes``.

    ``population=True`` uses the exact population gradient (batch 0); otherwise minibatches.
    The per-step records are kept only at t = 0 (``record_every = steps``) unless changed.
    """
    c = common_settings(mode)
    kw = dict(d=c["d"], m=c["m"], task_rank=c["task_rank"], spectrum=c["spectrum"],
              decay=c["decay"], noise=c["noise"], basis=c["basis"],
              batch=0 if population else c["batch_train"], rank=8, alpha=ALPHA_STD,
              rule="lora", optimizer="adam", lr=ADAM_LR_STD, steps=c["steps"])
    kw.update(changes)
    if "record_every" not in changes:
        kw["record_every"] = kw["steps"]
    return SimConfig(**kw)


def sgd_lr_std(task: Task) -> float:
    """SGD's standard lr: ``1/λ_max(Σ)``, half of full fine-tuning's GD limit 2/λ_max(Σ)
    (what a practitioner tuned on full fine-tuning would use)."""
    return 1.0 / float(np.max(task.lam))


def task_of(mode: str, seed: int = 0, **changes: Any) -> Task:
    """The task of ``mode`` for ``seed`` (with config ``changes``)."""
    return make_task(base_config(mode, seed=seed, **changes))


def lr_std(mode: str, optimizer: str, **changes: Any) -> float:
    """The standard lr of ``optimizer`` on the task of ``mode`` (spectra are the same for
    every task seed, so the seed-0 task sets it)."""
    if optimizer == "sgd":
        return sgd_lr_std(task_of(mode, **changes))
    return ADAM_LR_STD


def rule_changes(rule: str, spec: dict) -> dict:
    """Config changes for a scaling rule and its parameters (``{"alpha": 16}``, ``{"coef": 64}``)."""
    return {"rule": rule, **spec}


# =========================================================================== running
class Ctx:
    """Where a figure writes (out dir, cache) and how it runs (workers, progress)."""

    def __init__(self, out_dir: str | os.PathLike, workers: int | None, progress: bool):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.cache = str(self.out / ".cache")
        self.workers = int(workers) if workers else (os.cpu_count() or 1)
        self.progress = progress

    def run(self, configs: Sequence[SimConfig]) -> list:
        """Results of ``configs`` (cached; run with the sweep engine's workers). Their
        :func:`final` values are remembered for :meth:`finals`."""
        from .._sweep import config_key, run_configs

        if not configs:
            return []
        configs = list(configs)
        results = run_configs(configs, workers=self.workers, cache_dir=self.cache,
                              progress=self.progress)
        where = str(Path(self.cache).resolve())
        for c, res in zip(configs, results):
            if not getattr(res, "failed", False):  # a failed run is retried, as by the cache
                _FINALS[(where, config_key(c))] = final(res)
        return results

    def finals(self, configs: Sequence[SimConfig]) -> list[tuple[float, int]]:
        """``[final(r) for r in self.run(configs)]``, without reading back the runs this
        process has already seen in this cache folder: figures share configurations (F2's
        tuning, F6 and F7 with the landscape; F7 with F5's budget runs), and reading one
        back from the cache takes 2–3 ms. The same numbers (a run depends on its config
        alone, and the cache returns it bit for bit)."""
        from .._sweep import config_key

        where = str(Path(self.cache).resolve())
        keys = [(where, config_key(c)) for c in configs]
        todo: dict[tuple[str, str], SimConfig] = {}
        for k, c in zip(keys, configs):
            if k not in _FINALS:
                todo.setdefault(k, c)
        fresh = dict(zip(todo, (final(r) for r in self.run(list(todo.values())))))
        return [_FINALS[k] if k in _FINALS else fresh[k] for k in keys]


#: (cache folder, config key) -> :func:`final` of the runs this process has seen through
#: :class:`Ctx` (a few hundred bytes per run; failed runs are left out).
_FINALS: dict[tuple[str, str], tuple[float, int]] = {}


def final(res) -> tuple[float, int]:
    """(final loss, diverged flag) of a result; a diverged or failed run gives (inf, 1)."""
    div = bool(getattr(res, "diverged", True))
    fl = float(res.final_loss) if not div else math.inf
    if not math.isfinite(fl):
        div = True
    return fl, int(div)


def rec(res, name: str, t: int) -> float:
    """Record ``name`` at step t (NaN if absent: failed or diverged before t)."""
    step = np.asarray(getattr(res, "step", []))
    hit = np.flatnonzero(step == t)
    if hit.size == 0 or name not in getattr(res, "records", {}):
        return math.nan
    return float(res.records[name][hit[0]])


def sharp0(res) -> float:
    """λ_max(H) measured at step 0 (NaN if absent)."""
    sh = getattr(res, "sharpness", {}) or {}
    st = np.asarray(sh.get("step", []))
    hit = np.flatnonzero(st == 0)
    return float(sh["lambda_max"][hit[0]]) if hit.size else math.nan


def jsonable(x: Any) -> Any:
    """Convert numpy scalars/arrays and non-finite floats (→ None) for JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    return x


def write(ds: xr.Dataset, fig, out: Path, stem: str, dpi: int = DPI) -> list[str]:
    """Write ``<stem>.png``, ``<stem>.pdf`` and ``<stem>.nc`` (netCDF3); return the names."""
    save_figure(fig, out / stem, dpi=dpi)
    ds = ds.copy()
    for k, v in list(ds.attrs.items()):
        if isinstance(v, (bool, np.bool_)):
            ds.attrs[k] = int(v)
        elif isinstance(v, (dict, list, tuple)):
            ds.attrs[k] = json.dumps(jsonable(v))
        elif v is None:
            ds.attrs[k] = "none"
    tmp = out / f".{stem}.nc.{os.getpid()}.tmp"
    ds.to_netcdf(tmp, engine="scipy")
    os.replace(tmp, out / f"{stem}.nc")
    return [f"{stem}.png", f"{stem}.pdf", f"{stem}.nc"]


# Children drawing figures while the next figure computes (see draw_and_write); None when
# drawing happens in this process.
_BACKGROUND: list[tuple] | None = None
#: Most figures drawn in the background at once. Two, not one: with one, a figure whose
#: computing is short (F3, and F4, which reuses F2's landscape) waited for the previous
#: figure's drawing before it could fork its own, and the run went on one core for ~8 s
#: (measured on 2 cores: figures --quick --only F2 … F7, 44 s -> 39 s; same files).
_MAX_BACKGROUND = 2


@contextlib.contextmanager
def background_drawing(enabled: bool = True) -> Iterator[None]:
    """Inside the block, :func:`draw_and_write` draws and writes each figure in a forked
    child process (at most :data:`_MAX_BACKGROUND` at once; the next fork waits for the
    oldest) while this one goes on with the next figure's simulations, and the block
    waits for every child when it ends. Drawing (matplotlib's layout and two renderings,
    seconds per figure) is single-threaded Python; the simulations use both cores only
    while a kernel runs, so the drawing fills the gaps. The files are the same bytes (the
    same code on the same data). A child that fails is drawn again here, so its error is
    raised as before; on an exception (e.g. Ctrl-C) the children are killed.
    """
    global _BACKGROUND
    # Linux only: forking a process that has drawn with matplotlib is unsafe on macOS.
    if not enabled or _BACKGROUND is not None or not sys.platform.startswith("linux"):
        yield
        return
    _preload_drawing()
    _BACKGROUND = []
    ok = False
    try:
        yield
        ok = True
    finally:
        pending, _BACKGROUND = _BACKGROUND, None
        if ok:
            for job in pending:
                _reap(job)
        else:
            for pid, *_ in pending:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                with contextlib.suppress(OSError):
                    os.waitpid(pid, 0)


def _preload_drawing() -> None:
    """Import here, once, what each drawing child would otherwise import for itself: the
    PDF backend and its font subsetter, PIL's image plugins, and what xarray's netCDF
    writer imports (dask and dask.array when installed, though no array here is a dask
    array). Forked children inherit them: 0.4 s here instead of 0.4 s in every child."""
    import io

    import fontTools.subset  # noqa: F401 - the PDF backend subsets fonts with it
    import matplotlib.backends.backend_pdf  # noqa: F401
    from PIL import Image

    Image.preinit()
    xr.Dataset({"x": ("i", np.zeros(1))}, attrs={"a": 1}).to_netcdf(io.BytesIO(),
                                                                     engine="scipy")


def _reap(job: tuple) -> None:
    """Wait for a drawing child; draw its figure here if it failed."""
    pid, plot, ds, out, stem, dpi = job
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        write(ds, plot(ds), out, stem, dpi)


def _child_start() -> None:
    """In a drawing child: die with the parent, and on Ctrl-C as the parent does."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .._pool import _set_parent_death_signal

    _set_parent_death_signal()


def draw_and_write(plot: Callable[[xr.Dataset], Figure], ds: xr.Dataset, out: Path,
                   stem: str, dpi: int = DPI) -> list[str]:
    """``write(ds, plot(ds), out, stem, dpi)``: in a child process inside
    :func:`background_drawing`, else here. **Returns:** the names of the files."""
    if _BACKGROUND is None:
        return write(ds, plot(ds), out, stem, dpi)
    while len(_BACKGROUND) >= _MAX_BACKGROUND:
        _reap(_BACKGROUND.pop(0))
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:  # the child: draw, write, leave without running the parent's exit code
        code = 1
        try:
            _child_start()
            if os.getppid() == parent:
                write(ds, plot(ds), out, stem, dpi)
                code = 0
        except BaseException:  # noqa: BLE001 - the parent draws it again and raises
            pass
        finally:
            os._exit(code)
    _BACKGROUND.append((pid, plot, ds, out, stem, dpi))
    return [f"{stem}.png", f"{stem}.pdf", f"{stem}.nc"]


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """``loglog_slope(x, y).slope`` (the same operations, so the same bits) without its
    t interval, whose quantile costs ten times the fit (a bootstrap refits 1000 times)."""
    u, v, _ = _loglog_points(x, y)
    return _ols(u, v)[0]


def boot_slopes(x, Y, picks) -> np.ndarray:
    """The slopes of :func:`_slope` of ``x`` against ``nanmean(Y[:, pick], axis=1)`` for each
    row ``pick`` of ``picks`` (n_boot, seeds), in order, leaving out the resamples
    :func:`_slope` rejects (fewer than 2 usable points).

    The same numbers, bit for bit, as the loop over resamples (1000 fits took 50 ms): the
    seed means of every resample in one reduction over the same axis, then every resample
    whose means are all usable is fitted at once (the same operations; each sum runs over
    one contiguous row of the same length, so numpy adds in the same order); any other
    goes through :func:`_slope` itself.
    """
    x = np.ascontiguousarray(x, float)
    Y = np.asarray(Y, float)
    picks = np.asarray(picks)
    M = np.nanmean(Y[:, picks], axis=2).T  # (n_boot, len(x)): the resampled seed means
    out = np.full(M.shape[0], np.nan)
    ok = np.zeros(M.shape[0], bool)
    full = np.all(np.isfinite(M) & (M > 0), axis=1)
    if np.all(np.isfinite(x) & (x > 0)) and np.unique(np.log(x)).size >= 2:
        u = np.log(x)
        ub = u.mean()
        du = u - ub
        suu = np.sum(du**2)
        V = np.log(np.ascontiguousarray(M[full]))
        vb = V.mean(axis=1)
        out[full] = np.sum(du * (V - vb[:, None]), axis=1) / suu
        ok[full] = True
    else:
        full[:] = False
    for b in np.flatnonzero(~full):
        try:
            out[b] = _slope(x, M[b])
            ok[b] = True
        except ValueError:
            continue
    return out[ok]


def slope_boot(x, Y, theory: float | None = None, tol: float | None = None, *,
               n_boot: int = 1000, seed: int = 0) -> dict:
    """Log-log slope of the seed mean of ``Y`` (len(x), seeds) against ``x``, with a
    percentile-bootstrap 95% CI over seeds (resample seeds, average, refit).

    Fitting the mean rather than pooling log values avoids Jensen's bias E log y < log E y,
    which differs between x values when the spread over seeds does (e.g. small ranks).
    """
    x = np.asarray(x, float)
    Y = np.asarray(Y, float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            point = loglog_slope(x, np.nanmean(Y, axis=1)).slope
        except ValueError as exc:
            return {"value": None, "ci": [None, None], "theory": theory, "note": str(exc)}
        rng = np.random.default_rng(seed)
        S = Y.shape[1]
        boots = np.empty(0)
        if S > 1:
            # One draw of every resample: the same stream as n_boot draws of S.
            boots = boot_slopes(x, Y, rng.integers(0, S, size=(int(n_boot), S)))
    ci = np.percentile(boots, [2.5, 97.5]).tolist() if boots.size else [math.nan, math.nan]
    out = {"value": point, "ci": ci, "n_x": int(x.size), "n_seeds": int(S),
           "ci_method": "percentile bootstrap over seeds"}
    if theory is not None:
        out["theory"] = theory
        if tol is not None:
            out["tolerance"] = tol
            out["agrees"] = bool(abs(point - theory) <= tol)
    return out


def seed_loss(loss: np.ndarray, diverged: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                 np.ndarray]:
    """Geometric mean of final losses over the last axis (seeds) with a 95% t interval on log
    values, and whether any seed diverged (such a cell is reported diverged: its mean is NaN;
    averaging only the survivors would hide the divergence).

    **Returns:** ``(gmean, lo, hi, anydiv)``.
    """
    loss = np.asarray(loss, float)
    div = np.asarray(np.nan_to_num(diverged, nan=0), bool) | ~np.isfinite(loss)
    anydiv = div.any(axis=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        g, lo, hi, _ = log_t_interval(np.where(div, np.nan, loss), axis=-1)
    nan = np.full_like(g, np.nan)
    return (np.where(anydiv, nan, g), np.where(anydiv, nan, lo), np.where(anydiv, nan, hi),
            anydiv)


def mean_ci(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% Student-t interval over ``axis`` (:data:`CI_METHOD`); a single seed gives
    a zero-width bar."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m, lo, hi, _ = t_interval(a, axis)
    lo = np.where(np.isfinite(lo), lo, m)
    hi = np.where(np.isfinite(hi), hi, m)
    return m, lo, hi


def gmean_ci(a: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Geometric mean and 95% Student-t interval on log values over ``axis``
    (:data:`LOG_CI_METHOD`), for positive quantities drawn on log axes (a normal interval
    on such data has negative lower ends); a single value gives a zero-width bar."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        m, lo, hi, _ = log_t_interval(a, axis)
    lo = np.where(np.isfinite(lo), lo, m)
    hi = np.where(np.isfinite(hi), hi, m)
    return m, lo, hi


# =========================================================================== drawing
def new_figure(nrows: int, ncols: int, *, width: float = 4.0, height: float = 3.2,
               **subplot_kw: Any) -> tuple[Figure, np.ndarray]:
    """A constrained-layout Figure on the Agg canvas with an (nrows, ncols) axes array, at
    :data:`DPI` (the PNGs' resolution, so the layout pass measures text at the size the PNG
    draws it, and the text caches it fills serve the PNG)."""
    fig = Figure(figsize=(width * ncols, height * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, **subplot_kw)
    return fig, axes


def save_figure(fig: Figure, save_to: str | Path | None, *, dpi: int = DPI) -> list[Path]:
    """Write ``fig``: ``x.png``/``x.pdf`` as given, or both ``x.png`` and ``x.pdf``.

    **Returns:** the paths written (empty when ``save_to`` is ``None``).
    """
    if save_to is None:
        return []
    p = Path(save_to)
    p.parent.mkdir(parents=True, exist_ok=True)
    targets = [p] if p.suffix.lower() in (".png", ".pdf") else [
        p.with_name(p.name + ".png"), p.with_name(p.name + ".pdf")]
    freeze_layout(fig)  # one layout pass for both files (savefig would lay out each)
    # savefig removes the layout engine while it writes and then sets it back with
    # set_layout_engine(None), which reads these rcParams: keep them off, or a user's
    # matplotlibrc would give the frozen figure an engine back after the first file.
    with _no_auto_layout():
        _save_targets(fig, targets, dpi)
    return targets


def _save_targets(fig: Figure, targets: list[Path], dpi: int) -> None:
    for t in targets:
        # Fixed metadata keeps PDFs byte-stable between identical runs.
        if t.suffix.lower() == ".pdf":
            fig.savefig(t, dpi=max(int(dpi), DPI), metadata={"CreationDate": None})
        else:  # zlib level 3: ~40% less time than the default 6, files ~7% larger
            fig.savefig(t, dpi=max(int(dpi), DPI), metadata={"Software": None},
                        pil_kwargs={"compress_level": 3})


def _no_auto_layout():
    """rcParams under which ``set_layout_engine(None)`` leaves a figure without an engine."""
    import matplotlib as mpl

    return mpl.rc_context({"figure.autolayout": False, "figure.constrained_layout.use": False})


def _has_positive(ax, axis: str) -> bool:
    for ln in ax.get_lines():
        if ln.get_transform() != ax.transData:
            continue
        v = np.asarray(ln.get_xdata() if axis == "x" else ln.get_ydata(), float)
        if np.any(np.isfinite(v) & (v > 0)):
            return True
    for coll in ax.collections:
        try:
            off = np.asarray(coll.get_offsets(), float)
        except Exception:  # noqa: BLE001
            continue
        if off.ndim == 2 and off.size:
            v = off[:, 0] if axis == "x" else off[:, 1]
            if np.any(np.isfinite(v) & (v > 0)):
                return True
    return False


def set_axes(ax, *, xscale: str = "linear", yscale: str = "linear", **kw: Any) -> None:
    """``ax.set`` that falls back to a linear scale (with a note) when a log axis has no
    positive data, e.g. a panel where every run diverged; labels only major log ticks."""
    empty = False
    if xscale == "log" and not _has_positive(ax, "x"):
        xscale, empty = "linear", True
    if yscale == "log" and not _has_positive(ax, "y"):
        yscale, empty = "linear", True
    ax.set(xscale=xscale, yscale=yscale, **kw)
    # Minor-tick labels of log axes overlap ("2×10⁰ 3×10⁰ …") when the axis spans decades;
    # below one decade they are the only labels, so keep them there.
    if xscale == "log" and _decades(ax.get_xlim()) > 1.0:
        ax.xaxis.set_minor_formatter(NullFormatter())
    if yscale == "log" and _decades(ax.get_ylim()) > 1.0:
        ax.yaxis.set_minor_formatter(NullFormatter())
    if empty:
        ax.text(0.5, 0.5, "no finite positive values", ha="center", va="center",
                transform=ax.transAxes, fontsize=FONT, color="tab:red")


def _decades(lim) -> float:
    lo, hi = (float(v) for v in lim)
    return math.log10(hi / lo) if lo > 0 and hi > 0 else 0.0


def rank_ticks(ax, ranks) -> None:
    """Label a log rank axis at the ranks themselves (1, 2, 4, …)."""
    ax.xaxis.set_major_locator(FixedLocator(np.asarray(ranks, float)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_locator(NullLocator())


def ref_line(ax, x: np.ndarray, slope: float, x0: float, y0: float, **kw: Any) -> None:
    """Draw ``y = y0 (x/x0)^slope`` over the range of ``x`` (a log-log reference line)."""
    xs = np.geomspace(np.nanmin(x), np.nanmax(x), 50)
    kw.setdefault("color", "k")
    kw.setdefault("linestyle", "--")
    kw.setdefault("linewidth", 1.0)
    ax.plot(xs, y0 * (xs / x0) ** slope, **kw)


def geo_center(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Geometric centre of the finite positive points (anchor for reference slopes)."""
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if not ok.any():
        return 1.0, 1.0
    return float(np.exp(np.mean(np.log(x[ok])))), float(np.exp(np.mean(np.log(y[ok]))))


def colors(n: int) -> list:
    from matplotlib import colormaps

    cm = colormaps["viridis"]
    return [cm(x) for x in np.linspace(0.05, 0.9, max(n, 1))]


def attr(ds, name: str, default: Any = None) -> Any:
    return ds.attrs.get(name, default)


#: Height (axes fraction) of one row of diverged markers above an axis.
_DIV_ROW = 0.045


def mark_diverged(ax, x, diverged, *, color: Any = None, row: int = 0,
                  label: str | None = None) -> None:
    """Crosses *above* the axis (outside the loss range) at the x of diverged points, one
    row per series (``row``); reserve the room with :func:`diverged_strip`."""
    x = np.asarray(x, float)[np.asarray(diverged, bool)]
    if x.size:
        style = dict(DIVERGED_STYLE)
        if color is not None:
            style["color"] = color
        ax.plot(x, np.full(x.size, 1.0 + _DIV_ROW * (row + 0.6)),
                transform=ax.get_xaxis_transform(), clip_on=False, label=label, **style)


def diverged_strip(ax, rows: int, title: str = "", **kw: Any) -> None:
    """Set the title of ``ax`` high enough to leave ``rows`` rows of diverged markers
    between the axis and the title (they are drawn outside the loss axis)."""
    h = ax.get_position().height * ax.figure.get_figheight() * 72.0  # points (approx.)
    pad = 4.0 + _DIV_ROW * (rows + 0.4) * max(h, 100.0)
    ax.set_title(title, pad=pad, **kw)


def legend_outside(ax, *, where: str = "right", ncol: int = 1, **kw: Any):
    """A legend outside the axes (right of it, or below it), never over the data; with
    ``where="here"`` the handles of ``kw["source"]`` fill the (switched-off) axes ``ax``."""
    kw.setdefault("fontsize", FONT)
    kw.setdefault("frameon", False)
    if where == "here":
        src = kw.pop("source")
        h, lab = src.get_legend_handles_labels()
        ax.axis("off")
        return ax.legend(h, lab, loc="center left", ncol=ncol, **kw)
    if where == "right":
        return ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                         ncol=ncol, **kw)
    leg = ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), borderaxespad=0.0,
                    ncol=ncol, **kw)
    leg._below_axes = True  # placed under the tick labels and x label by finish()
    return leg


def _layout_engine_active(fig: Figure) -> bool:
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    eng = fig.get_layout_engine()
    return eng is not None and not isinstance(eng, PlaceHolderLayoutEngine)


def freeze_layout(fig: Figure) -> Figure:
    """Run ``fig``'s layout engine (constrained layout) once, if it still has one, and keep
    that layout: the engine is removed (:func:`_freeze`), so the draws
    that follow (the PNG, the PDF, a test's ``canvas.draw()``) render without laying the
    figure out again. Matplotlib would otherwise lay it out on every draw, and the layout
    (the tight boxes of every axis, tick and label) costs more than rendering. Positions
    are those of constrained layout at ``fig.dpi`` (:data:`DPI` with :func:`new_figure`).
    Call ``fig.set_layout_engine("constrained")`` to lay a frozen figure out again."""
    if _layout_engine_active(fig):
        fig.get_layout_engine().execute(fig)
        _freeze(fig)
    return fig


def _freeze(fig: Figure) -> None:
    """Keep the layout just computed: no layout engine, and titles where it put them (an
    axes' draw would otherwise place its title again, measuring its whole y axis for an
    offset text; with the axes fixed the place is the same).

    No engine at all, not ``set_layout_engine("none")``: that leaves a placeholder engine,
    and ``savefig`` draws a figure with any engine once more, unrendered, before the draw
    it writes (a third of the time of each file). ``set_layout_engine(None)`` removes the
    engine when the rcParams ask for no automatic layout, which they are made to here (and
    in :func:`save_figure`, around ``savefig``, which sets the engine back the same way; a
    ``savefig`` of a frozen figure elsewhere under a matplotlibrc that turns on automatic
    layout lays it out again)."""
    with _no_auto_layout():
        fig.set_layout_engine(None)
    ren = fig.canvas.get_renderer()
    for ax in fig.axes:
        if getattr(ax, "_autotitlepos", False):
            ax._update_title_position(ren)  # at the axes' final position
            ax._autotitlepos = False


#: Gap between what an axes draws below itself (tick labels, x label) and a legend placed
#: under it with ``where="below"`` (inches; 3 px at 100 dpi).
_BELOW_GAP = 0.03


def _place_below(ax, leg, ren) -> float:
    """Anchor ``leg`` (made with ``where="below"``) just under ``ax``'s tick labels and x
    label, at a fixed distance in inches below the axes' bottom edge (so it stays right when
    the layout changes the axes' height). **Returns:** how far it moved (inches)."""
    from matplotlib.transforms import ScaledTranslation

    fig = ax.figure
    # What reaches below the axes: its x axis (tick labels, label), its y axis (the lowest
    # tick label, a tall y label) and its texts (the legend is drawn below all of them; the
    # axes' whole tight box would also lay out its title, ~half the cost).
    low = ax.bbox.y0
    for a in (ax.xaxis, ax.yaxis, *ax.texts):
        bb = a.get_tightbbox(ren) if a.get_visible() and a.get_in_layout() else None
        if bb is not None and math.isfinite(bb.y0) and bb.width > 0 and bb.height > 0:
            low = min(low, bb.y0)
    off = (ax.bbox.y0 - low) / fig.dpi + _BELOW_GAP
    old = getattr(leg, "_below_offset", None)
    if old is not None and abs(old - off) <= 0.005:
        return 0.0
    leg._below_offset = off
    leg.set_bbox_to_anchor((0.5, 0.0), transform=ax.transAxes
                           + ScaledTranslation(0.0, -off, fig.dpi_scale_trans))
    return math.inf if old is None else abs(old - off)


def finish(fig: Figure) -> Figure:
    """Lay the figure out and put every legend made with ``where="below"`` just under its
    axes' tick labels and x label (a fixed offset would overlap a tall x label), then keep
    that layout (:func:`freeze_layout`). Call it at the end of every plot function.

    A legend below is anchored a fixed distance (inches) under its axes' bottom edge, what
    its axes draws below that edge being measured before the layout, so one layout pass
    places everything; the distance is measured again after it, and the layout runs again
    only if it changed (tick labels changed with the axes' size). Each pass runs the layout
    engine alone (no draw: the layout measures what it needs)."""
    if not _layout_engine_active(fig):
        return fig
    engine = fig.get_layout_engine()
    ren = fig.canvas.get_renderer()
    below = [(ax, ax.get_legend()) for ax in fig.axes
             if ax.get_legend() is not None and getattr(ax.get_legend(), "_below_axes", False)]
    for ax, leg in below:
        _place_below(ax, leg, ren)
    for _ in range(3):
        engine.execute(fig)
        if not any([_place_below(ax, leg, ren) > 0.0 for ax, leg in below]):
            break
    else:  # a legend moved after the last pass: lay out once more for it
        engine.execute(fig)
    _freeze(fig)
    return fig


def note(ax, text: str, *, y: float = -0.3, **kw: Any) -> None:
    """A caption below the axes (axes coordinates), wrapped, at :data:`FONT` pt."""
    kw.setdefault("fontsize", FONT)
    ax.text(0.0, y, text, transform=ax.transAxes, va="top", ha="left", wrap=True, **kw)


def pmap(fn, items: Sequence, workers: int) -> list:
    """``[fn(x) for x in items]`` in ``workers`` forked processes (in order); for cheap
    per-item work that needs no cache (``fn`` must be a module-level function)."""
    items = list(items)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    chunk = max(1, len(items) // (4 * workers))
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
        return list(ex.map(fn, items, chunksize=chunk))
