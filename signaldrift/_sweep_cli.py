"""``signaldrift sweep``: run a grid of simulations and write them to one netCDF file.

Settings come from flags generated from :class:`SimConfig`'s fields (``--lr 1e-3,3e-3``,
``--task-rank 4``: a comma list sweeps that setting, a single value sets it for every run)
and/or a TOML file ``--config FILE.toml`` with a ``[base]`` table (single values) and a
``[grid]`` table (lists of values; or ``[[grid]]`` tables, one per configuration, for a list
of configurations). Flags override the file. Everything is validated before anything runs
(settings, every grid point, the output and cache paths, the memory the sweep needs): bad
input raises :class:`ConfigError` (one line), and the CLI exits 2 having written nothing.
Finished runs are cached (``.sweep-cache`` next to the output, or ``--cache DIR``), so a
rerun after Ctrl-C or SIGTERM (exit 130 / 143 within seconds) resumes. See
:func:`signaldrift._sweep.run_sweep` for the output's layout.

Example::

    signaldrift sweep --d 64 --m 64 --steps 200 --lr 1e-3,3e-3,1e-2 --alpha 1,4,16,64 \\
        --seed 0,1,2 --out landscape.nc --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ._config import ConfigError, SimConfig
from ._dask_guard import dask_hidden_from_xarray
from ._paths import check_output_dir, check_output_file
from ._sweep import (_normalise, _parse_grid, _run_sweep, check_memory_of_sweep, expand_grid,
                     save_dataset)

__all__ = ["add_parser", "handler", "parse_settings"]

_FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}
_DEFAULTS = SimConfig()


class _Setting(argparse.Action):
    """Collect ``(field, raw text)`` in command-line order into ``namespace.settings``."""

    def __call__(self, parser, namespace, values, option_string=None):
        items = getattr(namespace, "settings", None) or []
        items.append((self.dest[len("setting_"):], values, option_string))
        namespace.settings = items


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_value(name: str, text: str, flag: str) -> Any:
    """One value of field ``name`` from text, by the field's annotation."""
    ftype = str(_FIELDS[name].type)
    t = text.strip()
    optional = "None" in ftype
    if optional and t.lower() in ("none", "null"):
        return None
    try:
        if ftype.startswith("int"):
            return int(t)
        if ftype.startswith("float"):
            return float(t)
        if ftype == "bool":
            low = t.lower()
            if low in ("true", "yes", "1"):
                return True
            if low in ("false", "no", "0"):
                return False
            raise ValueError
        if ftype.startswith("tuple"):
            return tuple(int(p) for p in t.split(",") if p.strip())
    except ValueError:
        kind = ftype.replace(" | None", " or none")
        raise ConfigError(f"{flag}: could not read {t!r} as {kind}") from None
    return t


def _parse_flag(name: str, raw: str, flag: str) -> list[Any]:
    """The values of a flag: a comma list, except for list-valued settings (one value)."""
    if str(_FIELDS[name].type).startswith("tuple"):
        return [_parse_value(name, raw, flag)]
    parts = [p for p in raw.split(",")]
    if any(not p.strip() for p in parts):
        raise ConfigError(f"{flag}: empty item in {raw!r}; give a comma list like 1e-3,3e-3")
    return [_parse_value(name, p, flag) for p in parts]


def _load_toml(path: str) -> tuple[dict[str, Any], Any]:
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"base", "grid"})
    if extra:
        raise ConfigError(f"--config: unknown table {extra[0]!r} in {path}; "
                          "use [base] and [grid]")
    base = doc.get("base", {})
    if not isinstance(base, dict):
        raise ConfigError(f"--config: [base] in {path} must be a table")
    grid = doc.get("grid", {})
    return dict(base), grid


def parse_settings(args: argparse.Namespace) -> tuple[SimConfig, Any]:
    """The base :class:`SimConfig` and the grid from the TOML file and the flags.

    Raises :class:`ConfigError` (one line) for anything invalid, including every point of
    the grid (via :func:`signaldrift._sweep.expand_grid`).
    """
    base: dict[str, Any] = {}
    grid: Any = {}
    if args.config is not None:
        base, grid = _load_toml(args.config)
    seen: set[str] = set()
    for name, raw, flag in getattr(args, "settings", None) or []:
        if name in seen:
            raise ConfigError(f"{flag}: given twice; give one comma list")
        seen.add(name)
        values = _parse_flag(name, raw, flag)
        if len(values) == 1:
            base[name] = values[0]
            if isinstance(grid, dict):
                grid.pop(name, None)
        else:
            if not isinstance(grid, dict):
                raise ConfigError(f"{flag}: cannot sweep a flag when the file gives a list of "
                                  "configurations ([[grid]]); give a single value")
            grid[name] = values
    unknown = sorted(set(base) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"[base]: {unknown[0]!r} is not a setting; allowed settings are "
                          + ", ".join(sorted(_FIELDS)))
    base = {k: _normalise(k, v) for k, v in base.items()}
    try:
        cfg = SimConfig.from_dict(base)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[base]: {exc}") from None
    if isinstance(grid, list):
        grid = [dict(g) for g in grid]
    _parse_grid(grid)
    expand_grid(cfg, grid)
    return cfg, grid


def add_parser(subparsers) -> None:
    """Add the ``sweep`` subcommand (flags from every :class:`SimConfig` field)."""
    p = subparsers.add_parser(
        "sweep",
        help="run a grid of simulations and write them to a netCDF file",
        description=(
            "Run a grid of simulations (any setting: a comma list sweeps it, a single value "
            "sets it) and write every record to one netCDF file. Finished runs are cached, "
            "so an interrupted sweep resumes where it stopped."),
        epilog="Example: signaldrift sweep --d 64 --m 64 --lr 1e-3,1e-2 --alpha 1,16 "
               "--seed 0,1 --out sweep.nc",
    )
    p.add_argument("--config", metavar="FILE.toml", default=None,
                   help="TOML file with a [base] table and a [grid] table (lists) or "
                        "[[grid]] tables (one per configuration); flags override it")
    p.add_argument("--out", metavar="PATH.nc", required=True, help="netCDF file to write")
    p.add_argument("--workers", type=str, default=None,
                   help=f"processes (default: all cores, {os.cpu_count()})")
    p.add_argument("--cache", metavar="DIR", default=None,
                   help="cache folder (default: .sweep-cache next to the output); a rerun "
                        "reuses every run found there")
    p.add_argument("--no-cache", action="store_true",
                   help="do not cache runs (conflicts with --cache)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="run on a Dask distributed cluster (e.g. tcp://host:8786); results, "
                        "cache and resume as locally (needs the dask extra; conflicts with "
                        "--workers)")
    g = p.add_argument_group(
        "simulation settings",
        "Any SimConfig field; a comma list (1e-3,3e-3) sweeps it, one value sets it. "
        "sharpness-steps takes one comma list (it is a list-valued setting).")
    try:  # the one-line descriptions of `signaldrift simulate`, if present
        from ._cli import _HELP as described
    except ImportError:
        described = {}
    for name, f in _FIELDS.items():
        default = getattr(_DEFAULTS, name)
        what = described.get(name)
        text = f"{what} ({f.type}, default {default!r})" if what else \
            f"{f.type}, default {default!r}"
        g.add_argument(_flag(name), dest=f"setting_{name}", action=_Setting, metavar="V",
                       default=argparse.SUPPRESS, help=text.replace("%", "%%"))
    p.set_defaults(func=handler, settings=None)


def _workers(text: str | None) -> int:
    if text is None:
        return os.cpu_count() or 1
    try:
        n = int(text)
    except ValueError:
        raise ConfigError(f"--workers: must be an integer >= 1, got {text!r}") from None
    if n < 1:
        raise ConfigError(f"--workers: must be an integer >= 1, got {n}")
    return n


def _connect(address: str):
    """A ``distributed.Client`` for ``address``; ConfigError (one line) if Dask is missing
    or the scheduler cannot be reached."""
    try:
        from distributed import Client
    except ImportError:
        raise ConfigError("--scheduler: needs Dask; install it with "
                          "pip install 'signaldrift[dask]'") from None
    try:
        return Client(address, timeout="5s")
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"--scheduler: cannot reach a Dask scheduler at {address!r} "
                          f"({' '.join(str(exc).split())})") from None


def handler(args: argparse.Namespace) -> int:
    """Validate, run the sweep, write the netCDF, print a summary. Returns the exit code
    (0; 1 if some configuration failed — its results are still written).

    Everything is checked before any run and before anything is written: the settings and
    every grid point, the output file and the cache folder (paths, writable), and the
    memory the sweep needs (:mod:`signaldrift._memory`).
    """
    if args.no_cache and args.cache is not None:
        raise ConfigError(f"--cache {args.cache} and --no-cache conflict; give one")
    out = check_output_file(args.out, flag="--out", suffix=".nc", create_folder=True)
    if args.scheduler is not None and args.workers is not None:
        raise ConfigError("--scheduler and --workers conflict: the cluster's workers run "
                          "the sweep; give one")
    workers = 1 if args.scheduler is not None else _workers(args.workers)
    base, grid = parse_settings(args)
    cache = None
    if not args.no_cache:
        cache = Path(args.cache) if args.cache is not None else out.parent / ".sweep-cache"
        check_output_dir(cache, flag="--cache")
    configs, _ = expand_grid(base, grid)
    check_memory_of_sweep(configs, workers)
    client = _connect(args.scheduler) if args.scheduler is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    # Run locally, no Dask object can exist: spare xarray its Dask imports (0.5 s).
    hide = dask_hidden_from_xarray() if client is None else contextlib.nullcontext()
    with hide:
        try:
            ds, stats = _run_sweep(base, grid, workers=workers, cache_dir=cache,
                                   progress=not args.no_progress, client=client)
        finally:
            if client is not None:
                client.close()
        save_dataset(ds, out)
        print(_summary(ds, stats, out))
    if stats.failed:
        errors = json.loads(ds.attrs["errors"])
        print(f"signaldrift: {stats.failed} configuration(s) failed; first: "
              f"{errors[0]['error']}", file=sys.stderr)
        return 1
    return 0


def _summary(ds, stats, out: Path) -> str:
    n_div = int(ds["diverged"].values.sum()) - int(ds["failed"].values.sum())
    lines = [f"sweep: {stats.total} configurations ({stats.cached} from cache, "
             f"{stats.ran} run), {n_div} diverged, {stats.failed} failed"]
    fl = ds["final_loss"].values
    finite = np.isfinite(fl)
    if finite.any():
        idx = np.unravel_index(np.argmin(np.where(finite, fl, np.inf)), fl.shape)
        point = ds["final_loss"][idx]
        names = json.loads(ds.attrs["swept"])
        parts = []
        for name in names:
            if name in point.coords:
                v = point.coords[name].values.item()
                parts.append(f"{name}={v:g}" if isinstance(v, float) else f"{name}={v}")
        where = " at " + ", ".join(parts) if parts else ""
        lines.append(f"best final loss {fl[idx]:.6g}{where}")
    else:
        lines.append("no configuration converged")
    lines.append(f"wrote {out}")
    return "\n".join(lines)
