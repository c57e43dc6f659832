"""Learning-rate schedules (THEORY.md §2 "an optional learning-rate schedule")."""

from __future__ import annotations

import numpy as np

from ._config import SimConfig

__all__ = ["learning_rates"]


def learning_rates(config: SimConfig) -> np.ndarray:
    """The learning rate used at each step t = 0..steps−1.

    With w = ``warmup`` and T = ``steps``, the multiplier f(t) of ``lr`` is:

    - ``constant``: 1 after a linear warm-up ``f(t) = (t+1)/w`` for t < w;
    - ``linear``: warm-up, then ``f(t) = (T − t)/(T − w)`` (linear decay, the last step > 0);
    - ``cosine``: warm-up, then ``f(t) = ½(1 + cos(π (t − w)/(T − w)))``.

    These are the multipliers torch's ``LambdaLR`` would apply with the same functions.

    Returns:
        (steps,) float64 array.
    """
    T, w = config.steps, config.warmup
    t = np.arange(T, dtype=np.float64)
    f = np.ones(T)
    if w > 0:
        f[:w] = (t[:w] + 1.0) / w
    rest = t[w:]
    if T > w:
        if config.schedule == "linear":
            f[w:] = (T - rest) / (T - w)
        elif config.schedule == "cosine":
            f[w:] = 0.5 * (1.0 + np.cos(np.pi * (rest - w) / (T - w)))
    return float(config.lr) * f
