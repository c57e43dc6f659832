"""Seeded random streams: one seed, independent named streams (task, init, samples)."""

from __future__ import annotations

import zlib

import numpy as np

__all__ = ["rng_for"]


def rng_for(seed: int, stream: str) -> np.random.Generator:
    """An independent PCG64 generator for ``(seed, stream)``.

    The stream name is hashed (CRC-32, stable across runs and platforms) into the
    ``SeedSequence`` entropy, so the task, the initialisation and the sample streams never
    share random numbers and each is reproducible on its own.
    """
    key = zlib.crc32(stream.encode("utf-8"))
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), key])))
