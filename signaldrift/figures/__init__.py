"""The project's figures, one module per figure (settings, experiment, analysis and plot).

=====  ==============================  ==============================================
 id     module                          what it shows
=====  ==============================  ==============================================
 F1     ``f1_spectral_suppression``     λ_max(H₀) at init against the derived closed form
 F2     ``f2_optimisation_gap``         the optimisation gap; α vs η_B (LoRA+) vs lr tuning
 F3     ``f3_signal_drift``             first-step slopes; ρ_t and the drift's share over a run
 F4     ``f4_landscape``                the (η, α) landscape with lines of constant η_B
 F5     ``f5_rank_stability``           first-step slopes in r; loss after the budget
 F6     ``f6_rank_law``                 α*(r) = c·r^γ with lack of fit, against the brackets
 F7     ``f7_rule_comparison``          LoRA-α vs LoRA vs rsLoRA over ranks and lrs
 F8     ``f8_rank_law_widths``          the rank law across widths (convergence in d)
=====  ==============================  ==============================================

Each module has ``settings(mode)``, ``figure_F<n>(mode, out_dir, *, workers, progress) ->
dict`` (runs the simulations through the cached sweep engine, writes
``<out_dir>/F<n>_<stem>.png``, ``.pdf`` and the plotted data as ``.nc``, and returns a
JSON-serialisable summary) and ``plot(ds, *, save_to, dpi) -> Figure`` (redraws from the
saved data). What they share is in :mod:`._common`. :func:`run_figures` runs several and
writes ``summary.json``; :func:`script_main` is the entry point of ``figures/*.py``.

Modes (every setting fixed a priori, never tuned to a published result): ``"quick"`` (the
main job, ``signaldrift figures --quick``), ``"full"`` (publication quality), ``"test"``
(a smoke size for the test suite; its numbers mean nothing).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._config import ConfigError, SimConfig
from . import (f1_spectral_suppression, f2_optimisation_gap, f3_signal_drift, f4_landscape,
               f5_rank_stability, f6_rank_law, f7_rule_comparison, f8_rank_law_widths)
from ._common import (ADAM_LR_STD, ALPHA_STD, MODES, background_drawing, base_config, check_mode,
                      common_settings, jsonable)
from .f1_spectral_suppression import figure_F1
from .f2_optimisation_gap import figure_F2
from .f3_signal_drift import figure_F3
from .f4_landscape import figure_F4
from .f5_rank_stability import figure_F5
from .f6_rank_law import figure_F6
from .f7_rule_comparison import figure_F7
from .f8_rank_law_widths import figure_F8

__all__ = ["MODES", "FIGURES", "settings", "base_config", "figure_F1", "figure_F2", "figure_F3",
           "figure_F4", "figure_F5", "figure_F6", "figure_F7", "figure_F8", "run_figures",
           "resolve_names", "script_main", "ADAM_LR_STD", "ALPHA_STD"]

#: The registry: id -> (stem, figure function). Output files are ``<id>_<stem>.*``.
FIGURES: dict[str, tuple[str, Callable[..., dict]]] = {
    "F1": ("spectral_suppression", figure_F1),
    "F2": ("optimisation_gap", figure_F2),
    "F3": ("signal_drift", figure_F3),
    "F4": ("landscape", figure_F4),
    "F5": ("rank_stability", figure_F5),
    "F6": ("rank_law", figure_F6),
    "F7": ("rule_comparison", figure_F7),
    "F8": ("rank_law_widths", figure_F8),
}

#: Settings of each figure (id -> ``settings(mode)``), collected by :func:`settings`.
_SETTINGS: dict[str, Callable[[str], dict]] = {
    "F1": f1_spectral_suppression.settings, "F2": f2_optimisation_gap.settings,
    "F3": f3_signal_drift.settings, "F4": f4_landscape.settings,
    "F5": f5_rank_stability.settings, "F6": f6_rank_law.settings,
    "F7": f7_rule_comparison.settings, "F8": f8_rank_law_widths.settings,
}

# F9, the large-width limit (reduced engine, THEORY §7)
from . import f9_large_width  # noqa: E402
from .f9_large_width import figure_F9  # noqa: E402

FIGURES["F9"] = ("large_width", figure_F9)
_SETTINGS["F9"] = f9_large_width.settings


def settings(mode: str) -> dict[str, Any]:
    """Every experimental setting of every figure in ``mode`` (a plain dict, for the docs
    and ``summary.json``): ``common`` and one entry per figure id.

    Raises :class:`ConfigError` for an unknown mode.
    """
    check_mode(mode)
    out: dict[str, Any] = {"common": common_settings(mode)}
    for fid in FIGURES:
        if fid in _SETTINGS:
            out[fid] = _SETTINGS[fid](mode)
    out["dpi"] = out["common"]["dpi"]
    return out


def resolve_names(names: Sequence[str] | None) -> list[str]:
    """Figure ids for ``names`` (ids or names, any case; None: all).

    Raises :class:`ConfigError` (one line) for an unknown name, before anything runs.
    """
    if not names:
        return list(FIGURES)
    lookup = {}
    for fid, (stem, _) in FIGURES.items():
        for alias in (fid, stem, f"{fid}_{stem}"):
            lookup[alias.lower()] = fid
    out = []
    for n in names:
        fid = lookup.get(str(n).strip().lower())
        if fid is None:
            raise ConfigError(f"--only: unknown figure {n!r}; choose from "
                              + ", ".join(f"{k} ({v[0]})" for k, v in FIGURES.items()))
        if fid not in out:
            out.append(fid)
    return out


def _warm_up() -> None:
    """Compile (or load) the Numba kernels once in this process before any worker forks,
    so that forked workers inherit them instead of each compiling its own copy. From a
    cold cache the work is split in two halves of about equal compile time
    (:func:`~signaldrift._compile.compile_in_parallel`): the LoRA block kernel here; the
    reduced engine's (F9), the sharpness kernels
    (:func:`~signaldrift._compile.warm_sharpness`) and full fine-tuning's block kernel in
    a forked child.

    The child's order matters: it starts with the reduced recursion on sampled overlaps,
    which needs no feature basis, so that by the time it needs the basis transforms
    (``to_eigen``, ``_givens``: about 7 s), the LoRA kernel's compile here has written
    them to the cache, and the child loads them instead of compiling them a second
    time (the cold warm-up took 64 s, now 61 s)."""
    from .._compile import compile_in_parallel, kernels_cold, warm_sharpness
    from .._simulate import simulate

    tiny = SimConfig(d=8, m=8, task_rank=2, rank=2, steps=2, record_every=1)
    red = tiny.replace(spectrum=0.0, optimizer="sgd", lr=0.1, engine="reduced")

    def here() -> None:
        for kw in ({"optimizer": "sgd"}, {"optimizer": "adam", "batch": 2}):
            simulate(tiny.replace(**kw))

    def child() -> None:
        # F9's reduced recursion (sampled overlaps first: no basis; then from factors,
        # momentum) and gradient flow.
        for kw in ({"overlap_init": "sampled"}, {}, {"momentum": 0.9},
                   {"engine": "flow", "steps": 4}):
            simulate(red.replace(**kw))
        warm_sharpness()
        simulate(tiny.replace(model="full", optimizer="sgd"))

    compile_in_parallel([here, child], cold=kernels_cold(("lora", "full", "sharpness")))


def run_figures(names: Sequence[str] | None, *, mode: str = "quick", out_dir="figures/out",
                workers: int | None = None, progress: bool = True, log=sys.stderr) -> dict:
    """Run the figures ``names`` (all when None) and write ``<out_dir>/summary.json``.

    The summary has one entry per figure; from F6 the top-level ``gamma`` and ``c`` (Adam,
    the headline) with intervals, ``gamma_method``, ``lack_of_fit_p`` and ``brackets``
    (per optimiser); from F8 ``gamma_per_width``. An existing ``summary.json`` in ``out_dir``
    is updated, so ``--only`` runs keep the others.

    **Returns:** the summary dict written.
    """
    fids = resolve_names(names)
    check_mode(mode)  # before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "summary.json"
    summary: dict[str, Any] = {}
    if path.exists():
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            summary = {}
    if summary.get("mode") not in (None, mode):
        summary = {}
    summary["mode"] = mode
    summary.setdefault("figures", {})
    t_all = time.time()
    _warm_up()
    n_workers = int(workers) if workers else (os.cpu_count() or 1)
    with background_drawing(n_workers > 1):
        _run_each(fids, summary, mode=mode, out=out, workers=workers, progress=progress,
                  log=log)
    summary.setdefault("gamma", None)
    summary.setdefault("c", None)
    summary["settings"] = jsonable(settings(mode))
    summary["seconds_last_run"] = time.time() - t_all
    tmp = path.with_name(f".summary.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(jsonable(summary), indent=1, sort_keys=False))
    os.replace(tmp, path)
    return summary


def _run_each(fids, summary, *, mode, out, workers, progress, log) -> None:
    """Run the figures ``fids`` in order, filling ``summary``; with more than one worker
    each figure is drawn in the background while the next one computes
    (:func:`~._common.background_drawing`)."""
    for fid in fids:
        stem, fn = FIGURES[fid]
        t0 = time.time()
        if log is not None:
            print(f"[figures] {fid} {stem} ...", file=log, flush=True)
        summary["figures"][fid] = fn(mode, out, workers=workers, progress=progress)
        if log is not None:
            print(f"[figures] {fid} done in {time.time() - t0:.1f} s", file=log, flush=True)
        if fid == "F6":
            f6 = summary["figures"]["F6"]
            for key in ("gamma", "c", "gamma_method", "lack_of_fit_p", "brackets"):
                summary[key] = f6.get(key)
            summary["gamma_bracket"] = (f6.get("rank_law", {}).get("adam", {})
                                        .get("where_gamma_falls"))
        if fid == "F8":
            summary["gamma_per_width"] = summary["figures"]["F8"]["gamma_per_width"]


def script_main(fid: str, argv: Sequence[str] | None = None) -> int:
    """Entry point of the thin scripts in ``figures/``: ``--quick``/``--full``, ``--out``,
    ``--workers``. Prints the figure's summary as JSON."""
    import argparse

    stem, fn = FIGURES[fid]
    p = argparse.ArgumentParser(description=f"{fid}: {stem.replace('_', ' ')} "
                                            f"({(fn.__doc__ or '').splitlines()[0]})")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick")
    g.add_argument("--full", dest="mode", action="store_const", const="full")
    p.set_defaults(mode="quick")
    p.add_argument("--out", default="figures/out")
    p.add_argument("--workers", type=int, default=None)
    a = p.parse_args(argv)
    s = run_figures([fid], mode=a.mode, out_dir=a.out, workers=a.workers)
    print(json.dumps(s["figures"][fid], indent=1))
    return 0
