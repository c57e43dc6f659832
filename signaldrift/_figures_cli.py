"""``signaldrift figures``: run the seven figures and write their images, data and summary.

Example::

    signaldrift figures --quick --out figures/out            # all seven, a few minutes
    signaldrift figures --full --only F6 --workers 8          # publication quality, one figure

Writes ``<out>/F<n>_<name>.png``, ``.pdf`` and ``.nc`` (the plotted data) per figure, and
``<out>/summary.json`` (one entry per figure, plus top-level ``gamma`` and ``c`` of the rank
law from F6). Simulations are cached in ``<out>/.cache``, so a rerun only redraws. An unknown
``--only`` name, or an ``--out`` that is a file or not writable, raises :class:`ConfigError`
before anything is written (exit 2). Ctrl-C or SIGTERM stops within seconds (exit 130 or
143); the finished simulations stay in the cache.
See :mod:`signaldrift._figures` for every setting of each mode.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from ._compile import announce_compile
from ._config import ConfigError
from ._dask_guard import dask_hidden_from_xarray
from ._paths import check_output_dir
from ._progress import GroupLog, progress_group

__all__ = ["add_parser", "handler"]


def add_parser(subparsers) -> None:
    """Add the ``figures`` subcommand to ``subparsers`` (sets ``func=handler``)."""
    p = subparsers.add_parser(
        "figures",
        help="run the seven figures (quick or full) and write PNG/PDF, netCDF data and summary.json",
        description=__doc__.split("\n\n")[0],
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick",
                   help="main job: all figures in a few minutes on 2 cores (default)")
    g.add_argument("--full", dest="mode", action="store_const", const="full",
                   help="publication quality: larger d, finer grids, more seeds")
    p.set_defaults(mode="quick")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None,
                   help="run only these figures: F1…F7 or their names "
                        "(spectral_suppression, optimisation_gap, signal_drift, landscape, "
                        "rank_stability, rank_law, rule_comparison)")
    p.add_argument("--out", default=os.path.join("figures", "out"),
                   help="output folder (default figures/out)")
    p.add_argument("--workers", type=int, default=None,
                   help="worker processes (default: all cores)")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="do not print progress bars")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Validate the arguments, run the figures, print where everything went; return 0.

    The figure names, the mode, ``--workers`` and the output folder (a folder, or one that
    can be created, that we can write in) are checked before anything runs. The progress
    of every figure's sweeps is one bar (tqdm) on stderr.
    """
    from ._figures import resolve_names, run_figures, settings

    names = resolve_names(args.only)  # ConfigError before anything is written
    settings(args.mode)
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers: must be an integer >= 1, got {args.workers}")
    check_output_dir(args.out, flag="--out")
    progress = getattr(args, "progress", True)
    t0 = time.time()
    announce_compile()
    with dask_hidden_from_xarray(), progress_group("figures", enabled=progress) as group:
        log = GroupLog(group, len(names)) if group is not None else sys.stderr
        summary = run_figures(names, mode=args.mode, out_dir=args.out, workers=args.workers,
                              progress=progress, log=log)
    g = summary.get("gamma")
    line = f"wrote {len(names)} figure(s) to {args.out} in {time.time() - t0:.1f} s"
    if isinstance(g, dict) and g.get("value") is not None:
        ci = g.get("ci") or [None, None]
        c = summary.get("c") or {}
        line += (f"; rank law gamma = {g['value']:.3f} [{_f(ci[0])}, {_f(ci[1])}], "
                 f"c = {_f(c.get('value'))} [{_f((c.get('ci') or [None, None])[0])}, "
                 f"{_f((c.get('ci') or [None, None])[1])}]")
    print(line, file=sys.stdout)
    return 0


def _f(x) -> str:
    return "nan" if x is None else f"{x:.3g}"
