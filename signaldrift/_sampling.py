"""The minibatch sample stream and the fixed training set (THEORY.md §1–§2).

Fresh samples come from the counter-based streams of :mod:`signaldrift._rng` (the ones the
kernels draw from), so they do not depend on how the steps are chunked. The fixed training
set is drawn once with NumPy's PCG64 (streams ``"train-inputs"``, ``"train-noise"``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from ._config import SimConfig
from ._rng import epoch_indices, minibatch, stream_key
from ._seeding import rng_for

__all__ = ["SampleStream", "EpochStream", "draw_training_set"]


class SampleStream:
    """Fresh Gaussian minibatches, step after step, from the kernels' counter-based streams.

    Step t draws inputs ``X_t = Z_t Σ^½`` in Σ's eigen-coordinates (rows are samples,
    ``Z_t`` iid N(0, 1) of shape (n, d); the feature-basis inputs are ``X_t Qᵀ``) and label
    noise ``N_t = σ·Ξ_t`` (n, m); the targets' residual is ``R = X Eᵀ − N`` (THEORY §2,
    ``Ĝ = (1/n) Rᵀ X``). These are exactly the numbers the kernels draw in Numba
    (:func:`signaldrift._rng.minibatch`, streams ``"inputs"`` and ``"noise"``), for the
    dense reference and the PyTorch cross-check.

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
        self._key_x = stream_key(config.seed, "inputs")
        self._key_e = stream_key(config.seed, "noise")
        self._t = 0

    def draw(self, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """The next ``steps`` minibatches: X (steps, n, d) and N (steps, n, m)."""
        X = np.empty((steps, self.n, self.d))
        N = np.empty((steps, self.n, self.m))
        for i in range(steps):
            minibatch(self._key_x, self._key_e, self._t, self._sqrt_lam, self.noise, X[i],
                      N[i])
            self._t += 1
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
    epoch and, when n does not divide N, a minibatch may straddle two epochs. The same
    numbers as the kernels' :func:`signaldrift._rng.epoch_indices`.
    """

    def __init__(self, config: SimConfig) -> None:
        self.N, self.n = config.train_size, config.batch
        self._key = stream_key(config.seed, "epochs")
        self._perm = np.zeros(self.N, dtype=np.int64)
        self._t = 0

    def draw(self, steps: int) -> np.ndarray:
        """Indices of the next ``steps`` minibatches, (steps, n) int64."""
        out = np.empty((steps, self.n), dtype=np.int64)
        for i in range(steps):
            epoch_indices(self._key, self._t, self.n, self.N, self._perm, out[i])
            self._t += 1
        return out
