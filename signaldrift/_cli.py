"""The ``signaldrift`` command line: ``simulate`` here; other subcommands register
themselves through ``add_parser(subparsers)`` (docs/CONTRACTS.md).

Bad input never prints a traceback: it prints one line ``signaldrift: error: …`` and exits
with status 2, having written nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from ._config import ConfigError, SimConfig

__all__ = ["main", "build_parser", "config_from_args"]

_CHOICES = {
    "align": ("random", "aligned"),
    "model": ("lora", "full"),
    "rule": ("lora", "rslora", "lora-alpha", "fixed"),
    "init": ("peft", "gaussian", "lora-one", "gaussian-b"),
    "basis": ("random", "eigen"),
    "engine": ("full", "reduced"),
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
    "engine": "full: factorised kernels; reduced: exact overlap dynamics (isotropic SGD)",
}

# Subcommand modules that register themselves (docs/CONTRACTS.md); missing ones are skipped.
_SUBCOMMAND_MODULES = ("_derive", "_sweep_cli", "_figures_cli", "crosscheck")


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
    """Settings from a TOML file: top-level keys are ``SimConfig`` fields (``-`` or ``_``)."""
    p = Path(path)
    try:
        with p.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {p}")
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {p} is not valid TOML ({exc})")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """Defaults, overridden by ``--config FILE.toml``, overridden by the given flags."""
    settings: dict[str, Any] = {}
    if getattr(args, "config", None):
        settings.update(read_toml(args.config))
    names = SimConfig.field_names()
    settings.update({k: v for k, v in vars(args).items() if k in names})
    return SimConfig.from_dict(settings)


def _check_out_path(out: str | None, suffix: str) -> Path | None:
    if out is None:
        return None
    p = Path(out)
    if p.suffix != suffix:
        raise ConfigError(f"out: must be a path ending in {suffix}, got {out!r}")
    if not p.parent.exists():
        raise ConfigError(f"out: folder {str(p.parent)!r} does not exist")
    return p


def _simulate_handler(args: argparse.Namespace) -> int:
    from ._simulate import simulate

    config = config_from_args(args)
    out = _check_out_path(args.out, ".npz")
    result = simulate(config)
    summary = result.summary()
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        status = f"DIVERGED at step {result.diverged_step}" if result.diverged else "converging"
        print(f"{config.model} rule={config.rule} r={config.rank} s={result.scale:.6g} "
              f"{config.optimizer} lr={config.lr:g} steps={config.steps} "
              f"batch={config.batch or 'population'}")
        print(f"initial loss {summary['initial_loss']:.6g}  final loss "
              f"{summary['final_loss']:.6g}  mean drift ratio "
              f"{summary['mean_drift_ratio']:.4g}  {status}")
    if out is not None:
        result.save(out)
        print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The full ``signaldrift`` parser with every available subcommand."""
    parser = _Parser(prog="signaldrift", description=(
        "Simulate LoRA training dynamics in the Signal-Drift framework "
        "(scaling factor α, rank r, learning rate η)."))
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sim = sub.add_parser("simulate", help="run one simulation and print a summary",
                         description="Run one simulation (THEORY.md §1–§3).")
    add_config_arguments(sim)
    sim.add_argument("--config", metavar="FILE.toml", help="settings file (flags override)")
    sim.add_argument("--out", metavar="PATH.npz", help="write the .npz archive here")
    sim.add_argument("--json", action="store_true", help="print the summary as JSON")
    sim.set_defaults(func=_simulate_handler)
    for name in _SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(f"signaldrift.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"signaldrift.{name}":
                raise
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``signaldrift`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"signaldrift: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("signaldrift: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
