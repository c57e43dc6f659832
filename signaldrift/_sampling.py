"""The minibatch sample stream (THEORY.md §1–§2).

Samples are drawn from two independent seeded streams, inputs and label noise, so the
stream does not depend on how the steps are chunked: drawing steps [0, t₁) then [t₁, t₂)
gives the same numbers as drawing [0, t₂) at once (numpy's ``Generator.standard_normal``
fills its output in order).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ._config import SimConfig
from ._seeding import rng_for

__all__ = ["SampleStream"]


class SampleStream:
    """Fresh Gaussian minibatches, step after step, from a seeded stream.

    Step t draws inputs ``X_t = Z_t Σ^½`` (rows are samples, ``Z_t`` iid N(0, 1) of shape
    (n, d)) and label noise ``N_t = σ·Ξ_t`` (n, m); the targets' residual is
    ``R = X Eᵀ − N`` (THEORY §2, ``Ĝ = (1/n) Rᵀ X``).

    Args:
        config: settings (``batch`` n > 0, ``d``, ``m``, ``noise``, ``seed``).
        lam: (d,) eigenvalues of Σ.
    """

    def __init__(self, config: SimConfig, lam: np.ndarray) -> None:
        if config.batch < 1:
            raise ValueError("batch: a sample stream needs batch >= 1")
        self.n, self.d, self.m = config.batch, config.d, config.m
        self.noise = float(config.noise)
        self._sqrt_lam = np.sqrt(np.asarray(lam, dtype=np.float64))
        self._rng_x = rng_for(config.seed, "inputs")
        self._rng_e = rng_for(config.seed, "noise")

    def draw(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``steps`` minibatches: X (steps, n, d) and N (steps, n, m)."""
        X = self._rng_x.standard_normal((steps, self.n, self.d))
        X *= self._sqrt_lam[None, None, :]
        if self.noise > 0.0:
            N = self._rng_e.standard_normal((steps, self.n, self.m))
            N *= self.noise
        else:
            N = np.zeros((steps, self.n, self.m))
        return X, N

    def chunks(self, total: int, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield :meth:`draw` results of at most ``chunk`` steps until ``total`` steps."""
        done = 0
        while done < total:
            c = min(chunk, total - done)
            yield self.draw(c)
            done += c
