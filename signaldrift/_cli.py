"""The ``signaldrift`` command line: ``simulate`` here; other subcommands register
themselves through ``add_parser(subparsers)`` (docs/CONTRACTS.md).

Bad input never prints a traceback: it prints one line ``signaldrift: error: …`` and exits
with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import importlib
import json
import math
import os
import signal
import sys
import threading
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import numpy as np

from ._compile import announce_compile
from ._config import ConfigError, SimConfig
from ._memory import check_memory
from ._paths import check_input_file, check_output_file
from ._pool import raise_on_signals

__all__ = ["main", "build_parser", "config_from_args", "run_status", "run_report"]

_CHOICES = {
    "align": ("random", "aligned"),
    "model": ("lora", "full"),
    "rule": ("lora", "rslora", "lora-alpha", "fixed"),
    "init": ("peft", "gaussian", "lora-one", "gaussian-b"),
    "basis": ("random", "eigen"),
    "engine": ("full", "reduced", "flow"),
    "overlap_init": ("auto", "factors", "sampled"),
    "optimizer": ("sgd", "adam", "adamw"),
    "schedule": ("constant", "linear", "cosine"),
}

_HELP = {
    "d": "input dimension d",
    "m": "output dimension m",
    "task_rank": "rank k of the task update Δ⋆",
    "spectrum": "input spectrum exponent β (λ_i ∝ i^-β, mean 1)",
    "decay": "task singular-value decay δ (σ⋆_j ∝ j^-δ)",
    "noise": "label noise standard deviation σ",
    "align": "task right factor V: Haar-random or aligned with Σ's top directions",
    "task_seed": "seed of the task (default: --seed)",
    "basis": "feature basis of Σ: a seeded random rotation, or Σ's eigenbasis (flatters Adam)",
    "batch": "minibatch size n; 0 = full batch (population gradient, or the whole training set)",
    "train_size": "size N of a fixed training set; 0 = fresh samples every step",
    "model": "LoRA adapter or the full fine-tuning baseline",
    "rank": "LoRA rank r",
    "alpha": "LoRA α (rules lora: s = α/r, rslora: s = α/√r)",
    "rule": "scaling rule",
    "coef": "coefficient c of lora-alpha (s = c/√r)",
    "scale": "s for rule fixed",
    "init": "initialisation: peft/gaussian (B₀ = 0), lora-one (spectral), gaussian-b (A₀ = 0)",
    "init_std": "σ of the gaussian inits (default 1/√(3d) for A, 1/√(3r) for B)",
    "init_gamma": "γ of lora-one: s·B₀A₀ = (s/γ)·[−G₀]_r",
    "optimizer": "optimiser (torch.optim semantics)",
    "lr": "learning rate η",
    "momentum": "SGD momentum μ",
    "nesterov": "Nesterov momentum (SGD)",
    "beta1": "Adam β₁",
    "beta2": "Adam β₂",
    "eps": "Adam ε",
    "weight_decay": "weight decay (L2 for sgd/adam, decoupled for adamw)",
    "loraplus_lr_ratio": "LoRA+ ratio λ: η_B = λ·η (η_A = η)",
    "eps_b": "Adam ε of B (default: --eps)",
    "schedule": "learning-rate schedule after warm-up",
    "warmup": "linear warm-up steps",
    "steps": "number of optimiser steps",
    "seed": "seed of the initialisation and sample stream",
    "record_every": "record the per-step terms every this many steps",
    "divergence_bound": "a loss above this ends the run as diverged",
    "sharpness_steps": "comma-separated steps at which to measure λ_max of the Hessian",
    "snapshot_steps": "comma-separated steps at which to store A and B (steps = the end)",
    "engine": "full: factorised kernels; reduced: exact overlap dynamics (isotropic SGD); "
              "flow: its gradient-flow limit (ODE)",
    "overlap_init": "reduced/flow: initial overlaps from drawn factors, sampled from their "
                    "law, or auto (factors when they fit in 64 MiB)",
    "flow_rtol": "flow: relative tolerance of solve_ivp",
    "flow_atol": "flow: absolute tolerance of solve_ivp",
}

# Subcommand modules that register themselves (docs/CONTRACTS.md); missing ones are skipped.
class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit 2."""

    def error(self, message: str) -> typing.NoReturn:  # noqa: D102
        self.exit(2, f"signaldrift: error: {message}\n")


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")


def _base_type(tp: Any) -> Any:
    """int / float / str / bool / tuple for a (possibly Optional) field annotation."""
    if isinstance(tp, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0]
    origin = typing.get_origin(tp)
    return origin or tp


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One ``--flag`` per :class:`SimConfig` field (``task_rank`` → ``--task-rank``).

    Defaults are suppressed, so :func:`config_from_args` can tell given flags from absent
    ones and layer them over a ``--config`` file.
    """
    hints = typing.get_type_hints(SimConfig)
    for f in dataclasses.fields(SimConfig):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        help_ = _HELP.get(f.name, f.name)
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=help_, **kw)
        elif kind is tuple:
            parser.add_argument(flag, type=_int_list, metavar="T1,T2,...", help=help_, **kw)
        elif f.name in _CHOICES:
            parser.add_argument(flag, choices=_CHOICES[f.name], help=help_, **kw)
        else:
            parser.add_argument(flag, type=kind, help=f"{help_} (default {f.default})", **kw)


def read_toml(path: str | Path) -> dict[str, Any]:
    """Settings from a TOML file: top-level keys are ``SimConfig`` fields (``-`` or ``_``).

    Raises :class:`ConfigError` (one line) if the file is missing, a folder, unreadable or
    not TOML, or if it gives one setting twice (``task-rank`` and ``task_rank``).
    """
    p = check_input_file(path, flag="--config")
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {str(p)!r} ({exc.strerror or exc})")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config: {p} is not valid TOML ({' '.join(str(exc).split())})")
    out: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name in out:
            raise ConfigError(f"--config: {spelled[name]!r} and {key!r} in {p} are the same "
                              "setting; give it once")
        out[name] = value
        spelled[name] = str(key)
    return out


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Defaults, overridden by ``--config FILE.toml``, overridden by the given flags."""
    settings: dict[str, Any] = {}
    if getattr(args, "config", None):
        settings.update(read_toml(args.config))
    names = SimConfig.field_names()
    settings.update({k: v for k, v in vars(args).items() if k in names})
    return SimConfig.from_dict(settings)


def _json_safe(value: Any) -> Any:
    """``value`` with NumPy scalars made Python and non-finite floats made None (JSON has
    no NaN or Infinity)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _initial_loss(result: Any) -> float:
    """The loss at step 0: the first record, or the loss at which the run stopped if it
    diverged at step 0 (records at and after divergence are NaN)."""
    first = float(result.records["loss"][0])
    if not math.isfinite(first) and result.diverged and result.diverged_step == 0:
        return float(result.diverged_loss)
    return first


#: ``status`` of a run (``--json`` and the summary line), decided from what happened.
STATUSES = ("converged", "improving", "not improving", "diverged")


def run_status(result: Any) -> tuple[str, str]:
    """``(status, explanation)`` of a run, one of :data:`STATUSES`:

    - ``diverged``: the loss became non-finite or exceeded ``divergence_bound``;
    - ``not improving``: the final loss is not below the initial loss;
    - ``converged``: it is below, and over the last tenth of the steps it fell by less than
      1% (a plateau), or it is below 10⁻⁸ of the initial loss;
    - ``improving``: it is below and still falling by more than that.
    """
    c = result.config
    if result.diverged:
        lost = float(result.diverged_loss)
        why = (f"loss {lost:.3g} above the bound {c.divergence_bound:g}"
               if math.isfinite(lost) else "loss not finite")
        return "diverged", f"at step {result.diverged_step} ({why})"
    loss = np.asarray(result.records["loss"], dtype=float)
    steps = np.asarray(result.loss_step)
    initial, final = _initial_loss(result), float(loss[-1])
    if not final < initial:
        verb = "rose" if final > initial else "did not change"
        return "not improving", f"the loss {verb} from {initial:.3g} to {final:.3g}"
    # The last record at or before 90% of the run (step 0 at least: it is always recorded).
    earlier = np.flatnonzero((steps <= c.steps - max(1, c.steps // 10)) & np.isfinite(loss))
    at = int(earlier[-1]) if earlier.size else 0
    ref = float(loss[at]) if earlier.size else initial
    if final <= 1e-8 * initial or ref - final <= 0.01 * ref:
        return "converged", ""
    return "improving", f"still falling: {ref:.3g} at step {int(steps[at])}"


def run_report(result: Any) -> dict[str, Any]:
    """The JSON summary of a run: ``SimulationResult.summary()`` with the initial loss
    taken from what happened, ``status`` (:func:`run_status`), ``diverged_loss``, and
    ``null`` for every non-finite number."""
    summary = dict(result.summary())
    summary["initial_loss"] = _initial_loss(result)
    summary["status"] = run_status(result)[0]
    summary["diverged_loss"] = float(result.diverged_loss)
    return {k: _json_safe(v) for k, v in summary.items()}


def _g(x: float, spec: str = ".6g") -> str:
    return format(x, spec) if math.isfinite(x) else "n/a"


def _simulate_handler(args: argparse.Namespace) -> int:
    from ._simulate import simulate

    config = config_from_args(args)
    out = None
    if args.out is not None:
        out = check_output_file(args.out, flag="--out", suffix=".npz")
    check_memory(config)
    announce_compile({config.model})
    result = simulate(config)
    if args.json:
        print(json.dumps(run_report(result), sort_keys=True))
    else:
        status, why = run_status(result)
        summary = result.summary()
        print(f"{config.model} rule={config.rule} r={config.rank} s={result.scale:.6g} "
              f"{config.optimizer} lr={config.lr:g} steps={config.steps} "
              f"batch={config.batch or 'population'}")
        if status == "diverged":
            tail = f"DIVERGED {why}"
        else:
            tail = (f"final loss {_g(summary['final_loss'])}  mean drift ratio "
                    f"{_g(summary['mean_drift_ratio'], '.4g')}  {status}"
                    + (f" ({why})" if why else ""))
        print(f"initial loss {_g(_initial_loss(result))}  {tail}")
    if out is not None:
        result.save(out)
        print(f"wrote {out}")
    return 0


#: Subcommand name → module (besides ``simulate``), for :func:`build_parser`.
_SUBCOMMAND_NAMES = {"derive": "_derive", "sweep": "_sweep_cli", "figures": "_figures_cli",
                     "crosscheck": "crosscheck"}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The ``signaldrift`` parser with every available subcommand; given the command line
    ``argv`` whose subcommand is known, only that one (importing a subcommand's module,
    e.g. xarray for ``sweep``, is most of a short command's start-up)."""
    parser = _Parser(prog="signaldrift", description=(
        "Simulate LoRA training dynamics in the Signal-Drift framework "
        "(scaling factor α, rank r, learning rate η)."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv else None
    only = chosen if chosen in _SUBCOMMAND_NAMES or chosen == "simulate" else None
    if only in (None, "simulate"):
        sim = sub.add_parser("simulate", help="run one simulation and print a summary",
                             description="Run one simulation (THEORY.md §1–§3).")
        add_config_arguments(sim)
        sim.add_argument("--config", metavar="FILE.toml",
                         help="settings file (flags override)")
        sim.add_argument("--out", metavar="PATH.npz", help="write the .npz archive here")
        sim.add_argument("--json", action="store_true", help="print the summary as JSON")
        sim.set_defaults(func=_simulate_handler)
    for command, name in _SUBCOMMAND_NAMES.items():
        if only is not None and only != command:
            continue
        try:
            module = importlib.import_module(f"signaldrift.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"signaldrift.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``signaldrift`` command; returns the exit status.

    Bad input (:class:`ConfigError`): one line, exit 2. SIGINT (Ctrl-C) or SIGTERM: the
    work stops (a sweep kills its workers and keeps its cache), one line, exit 130 or 143.
    A file that cannot be written after all (disk full): one line, exit 1. As the
    program (``argv`` None) the process ends on return, without the interpreter's
    teardown (:func:`_end_process`).
    """
    status = _main(argv)
    if argv is None:
        _end_process(status)
    return status


def _main(argv: list[str] | None) -> int:
    parser = build_parser(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(argv)
    try:
        with raise_on_signals():
            return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"signaldrift: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        # A second Ctrl-C while exiting must not print a traceback. As the program
        # (argv None) the process ends here; called from Python, the caller's handlers
        # come back.
        old = _ignore_stop_signals()
        status = int(getattr(exc, "exit_status", 128 + signal.SIGINT))
        name = signal.Signals(status - 128).name if status > 128 else "SIGINT"
        detail = getattr(exc, "detail", "")
        print(f"signaldrift: interrupted ({name})" + (f"; {detail}" if detail else ""),
              file=sys.stderr, flush=True)
        if argv is None:
            # Nothing is left to do: exit now, without joining helper threads (a worker
            # pool's, tqdm's) at interpreter shutdown, which could only delay the exit.
            sys.stdout.flush()
            os._exit(status)
        for sig, handler in old.items():
            signal.signal(sig, handler)
        return status
    except OSError as exc:
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"signaldrift: error: cannot write{where}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1


def _end_process(status: int) -> None:
    """As the program, with its work done: end the process with ``status`` now.

    The atexit handlers run and the standard streams are flushed, but the interpreter's
    teardown is skipped: freeing Numba's compiled code and every module takes 0.2–0.4 s,
    a fifth of a short ``sweep``, and there is nothing left to write (every output file
    is closed and renamed into place before its handler returns). Only when no other
    thread is alive; otherwise (or without ``atexit._run_exitfuncs``) the normal exit.
    """
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    if run_exitfuncs is None or threading.active_count() > 1:
        return
    run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _ignore_stop_signals() -> dict:
    """Ignore SIGINT and SIGTERM (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
