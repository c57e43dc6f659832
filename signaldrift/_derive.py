"""``signaldrift derive``: print, verify and generate the symbolic derivations (THEORY.md).

- ``signaldrift derive``: list the results.
- ``signaldrift derive NAME``: print one result (plain text, LaTeX, checks).
- ``signaldrift derive [NAME] --check``: re-derive, verify every identity, regenerate the
  kernels into a temporary folder and compare with ``signaldrift/_generated``; exit 1 naming
  each failed item.
- ``signaldrift derive --write``: regenerate ``signaldrift/_generated`` in place.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from ._config import ConfigError
from ._derivations import NAMES, load

__all__ = ["add_parser", "handler", "main"]


def add_parser(subparsers) -> None:
    """Add the ``derive`` subcommand to ``subparsers``."""
    p = subparsers.add_parser(
        "derive", help="print, verify (--check) or regenerate (--write) the derivations",
        description=__doc__.split("\n\n")[0])
    p.add_argument("name", nargs="?", metavar="NAME",
                   help="one result: " + ", ".join(NAMES) + " (default: list them)")
    p.add_argument("--check", action="store_true",
                   help="verify every identity and that the generated kernels are up to date")
    p.add_argument("--write", action="store_true",
                   help="regenerate signaldrift/_generated in place")
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Run ``derive``; returns the exit code."""
    if args.name is not None and args.name not in NAMES:
        raise ConfigError(f"derive: unknown result {args.name!r}; valid names are "
                          + ", ".join(NAMES))
    if args.check and args.write:
        raise ConfigError("derive: use either --check or --write, not both")
    if args.write:
        from ._derivations import _codegen
        for path in _codegen.write():
            print(f"wrote {path}")
        return 0
    if args.check:
        return _check(NAMES if args.name is None else (args.name,))
    if args.name is None:
        for name in NAMES:
            print(f"{name:14s} {load(name).TITLE}")
        return 0
    derivation = load(args.name).derive()
    print(derivation.report())
    return 1 if derivation.failed else 0


def _check(names) -> int:
    failed = []
    for name in names:
        derivation = load(name).derive()
        bad = derivation.failed
        print(f"{name}: {len(derivation.checks) - len(bad)}/{len(derivation.checks)} checks ok")
        for c in bad:
            print(f"  FAIL {c.name}" + (f": {c.detail}" if c.detail else ""))
        failed += [f"{name}: {c.name}" for c in bad]
    if {"factorised", "reduced"} & set(names):
        from ._derivations import _codegen
        with tempfile.TemporaryDirectory() as tmp:
            _codegen.write(Path(tmp))
            diff = _codegen.compare(Path(tmp))
        if diff:
            sys.stdout.writelines(diff)
            print(f"generated kernels are out of date; regenerate with `{_codegen.REGENERATE}`")
            failed.append("generated: signaldrift/_generated differs from the derivations")
        else:
            print("generated: signaldrift/_generated is up to date")
    if failed:
        print("FAILED: " + "; ".join(failed))
        return 1
    print("all checks passed")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point (``derivations/*.py``): ``derive`` with ``argv``."""
    parser = argparse.ArgumentParser(prog="signaldrift")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["derive", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"signaldrift: error: {err}", file=sys.stderr)
        return 2
