"""The minibatch sample stream and the fixed training set (THEORY.md §1–§2).

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

__all__ = ["SampleStream", "EpochStream", "draw_training_set"]


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


def draw_training_set(config: SimConfig, lam: np.ndarray) -> dict[str, np.ndarray]:
    """The fixed training set of THEORY §2 "Data": ``train_size`` samples, seeded.

    Inputs in Σ's eigen-coordinates, ``X = Z Λ^½`` (Z iid N(0, 1), stream
    ``"train-inputs"``), label noise ``σ·Ξ`` (stream ``"train-noise"``); the feature-basis
    inputs are ``X Qᵀ``. Returns ``{"X": (N, d), "noise": (N, m)}``.
    """
    N, d, m = config.train_size, config.d, config.m
    X = rng_for(config.seed, "train-inputs").standard_normal((N, d))
    X *= np.sqrt(np.asarray(lam, dtype=np.float64))[None, :]
    noise = np.zeros((N, m))
    if config.noise > 0.0:
        noise = float(config.noise) * rng_for(config.seed, "train-noise").standard_normal((N, m))
    return {"X": X, "noise": noise}


class EpochStream:
    """Minibatch indices into a fixed training set: seeded epochs (THEORY §2 "Data").

    Each epoch is a random permutation of 0..N−1 (stream ``"epochs"``); the epochs are
    concatenated and step t takes the next n indices, so every sample is seen once per
    epoch and, when n does not divide N, a minibatch may straddle two epochs. Drawing is
    chunk-independent, like :class:`SampleStream`.
    """

    def __init__(self, config: SimConfig) -> None:
        self.N, self.n = config.train_size, config.batch
        self._rng = rng_for(config.seed, "epochs")
        self._buffer = np.zeros(0, dtype=np.int64)

    def draw(self, steps: int) -> np.ndarray:
        """Indices of the next ``steps`` minibatches, (steps, n) int64."""
        need = steps * self.n
        parts = [self._buffer]
        have = self._buffer.size
        while have < need:
            perm = self._rng.permutation(self.N).astype(np.int64)
            parts.append(perm)
            have += perm.size
        flat = np.concatenate(parts)
        self._buffer = flat[need:]
        return flat[:need].reshape(steps, self.n)
