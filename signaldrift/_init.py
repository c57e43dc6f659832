"""Adapter initialisation (THEORY.md §2)."""

from __future__ import annotations

import math

import numpy as np

from ._config import SimConfig
from ._seeding import rng_for

__all__ = ["init_adapter"]


def init_adapter(config: SimConfig) -> tuple[np.ndarray, np.ndarray]:
    """Initial factors ``(A₀, B₀)`` with ``B₀ = 0`` (THEORY §2).

    - ``peft``: ``A₀`` iid ``U(−1/√d, 1/√d)``, PEFT's default (Kaiming-uniform with a = √5
      on an (r, d) weight; variance 1/(3d)).
    - ``gaussian``: ``A₀`` iid ``N(0, σ_A²)`` with ``σ_A = config.effective_init_std``.

    Seeded by ``(config.seed, "init")``. For ``model="full"`` returns ``A₀`` of shape (0, d)
    and ``B₀`` of shape (m, 0).

    Returns:
        ``A₀`` (r, d) and ``B₀`` (m, r), float64, C-contiguous.
    """
    r = config.rank if config.model == "lora" else 0
    d, m = config.d, config.m
    rng = rng_for(config.seed, "init")
    if config.init == "peft":
        bound = 1.0 / math.sqrt(d)
        A0 = rng.uniform(-bound, bound, size=(r, d))
    else:
        A0 = rng.normal(0.0, config.effective_init_std, size=(r, d))
    return np.ascontiguousarray(A0, dtype=np.float64), np.zeros((m, r), dtype=np.float64)
