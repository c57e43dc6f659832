"""Symbolic derivations of THEORY.md, one module per result (run by ``signaldrift derive``).

Each module exposes ``TITLE`` and ``derive() -> Derivation``; :mod:`.factorised` and
:mod:`.reduced` also generate the kernels of :mod:`signaldrift._generated`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

#: The derivations, in reading order.
NAMES = ("signal_drift", "loss_change", "equivalence", "hessian", "init_sharpness",
         "rank_scaling", "factorised", "reduced")


def load(name: str) -> ModuleType:
    """The module of derivation ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")
