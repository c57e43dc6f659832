"""Memory estimates: refuse a run (or a sweep) that would not fit, before it starts.

A run's peak memory follows from its settings alone. :func:`estimate_bytes` counts the
float64 arrays the simulator holds at its peak (the interpreter itself, about 250 MB per
process, is not counted); :func:`check_memory` raises :class:`ConfigError` when that is
above the limit, which is ``SIGNALDRIFT_MAX_MEMORY`` gigabytes (10⁹ bytes; default
:data:`DEFAULT_LIMIT_GB`; ``inf`` lifts it). A sweep (:func:`check_sweep_memory`) also
holds every finished result in the parent process and runs ``workers`` configurations at
once.

What is counted (P = r·(d + m), the size of one pair of LoRA factors; k = task rank):

- task: λ, U (m×k), V (d×k), VᵀΣ and their temporaries: 4d + 3mk + 4dk;
- the feature basis ``random`` (a structured rotation): 10·d·⌈log₂ d⌉ (its Givens
  rotations: not negligible, 2.3 GB at d = 10⁷);
- LoRA (engine ``full``): A₀, A, B, the optimiser's two moments, the factors in feature
  coordinates and the per-step temporaries (gradients, the new factors, the recorded
  differences): 16·P + r·d;
- full fine-tuning: Δ, Δ⋆, the two moments and per-step temporaries (error, gradient,
  update, recorded differences): 12·m·d;
- minibatches: one chunk of samples (``_simulate._CHUNK_FLOATS`` = 4·10⁶ floats, or one
  step's n·(d + m) if larger) and the per-step residuals n·(m + r + k);
- a fixed training set (``train_size`` N): N·(2d + m + k) (inputs in both bases, noise,
  their projection on V);
- sharpness (``sharpness_steps``): Lanczos vectors (at most 120, full
  reorthogonalisation) and the Hessian operator's work arrays, 136·P;
- snapshots (``snapshot_steps``): one A and one B per snapshot;
- records: 13 per-step series of steps/record_every floats, and the learning rates;
- the ``reduced`` engine holds no d- or m-sized array: (r + k)² work arrays and the
  records only.

The coefficients were measured (the rise of the peak resident memory during a run) and
rounded up: LoRA runs of the block kernels (d = 2·10⁵, m = 10⁵, r = 8 and 16, population
and minibatch, eigen and random bases) peak at 11–13·P beside the task and the basis, about
60·P more with sharpness (d = m = 40000: Lanczos converged in ~50 steps; 120 is its cap); full fine-tuning at d = m = 1500 and 3000 at 8–9·m·d.
``tests/test_paths_memory.py`` checks that the estimate bounds the measured peak within 4×.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

from ._config import ConfigError

__all__ = [
    "DEFAULT_LIMIT_GB",
    "LIMIT_ENV",
    "estimate_bytes",
    "result_bytes",
    "memory_limit",
    "check_memory",
    "estimate_sweep_bytes",
    "check_sweep_memory",
]

#: The environment variable holding the limit, in GB (10⁹ bytes).
LIMIT_ENV = "SIGNALDRIFT_MAX_MEMORY"
#: The limit when ``SIGNALDRIFT_MAX_MEMORY`` is not set, in GB.
DEFAULT_LIMIT_GB = 8.0

_F = 8  # bytes per float64
_CHUNK_FLOATS = 4_000_000  # as signaldrift._simulate._CHUNK_FLOATS
_N_RECORDS = 13  # the loss and the 12 per-step records (signaldrift._kernels.RECORD_NAMES)


def _get(config: Any, name: str, default: Any) -> Any:
    """A setting, or ``default`` for one this version of SimConfig does not have."""
    return getattr(config, name, default)


def _records_floats(config: Any) -> int:
    n_rec = config.steps // config.record_every + 2
    return _N_RECORDS * n_rec + 3 * n_rec + config.steps  # records, step axes, lrs


def estimate_bytes(config: Any) -> int:
    """Peak bytes of the arrays of one run of ``config`` (module docstring).

    **Arguments:**
    - `config`: a :class:`~signaldrift.SimConfig`.

    **Returns:** the estimate in bytes (an upper estimate: the measured peaks are
    0.4–0.8 of it).
    """
    d, m, r, k = config.d, config.m, config.rank, config.task_rank
    n = config.batch
    N = int(_get(config, "train_size", 0) or 0)
    n_snap = len(_get(config, "snapshot_steps", ()) or ())
    floats = _records_floats(config)
    if _get(config, "engine", "full") == "reduced":
        q = r + k
        floats += 64 * q * q + 8 * q + n_snap * 2 * q * q + N * 2 * q
        return int(floats * _F)
    floats += 4 * d + 3 * m * k + 4 * d * k
    if _get(config, "basis", "eigen") == "random":
        # The structured rotation: two rounds of d·⌈log₂ d⌉ Givens rotations, each an index
        # pair and (cos, sin): 8·d·⌈log₂ d⌉ floats, and its construction.
        floats += 10 * d * max(1, math.ceil(math.log2(max(d, 2))))
    if config.model == "full":
        floats += 12 * m * d
        P = m * d
    else:
        P = r * (d + m)
        floats += 16 * P + r * d
        if config.sharpness_steps:
            # Lanczos's basis: up to _sharpness._LANCZOS_KMAX = 120 vectors of P floats
            # (the pages of the vectors it uses), and the operator's work arrays.
            floats += 136 * P
    if n > 0:
        floats += max(_CHUNK_FLOATS, n * (d + m)) + 3 * n * m + n * (r + k)
        if config.model == "full":
            floats += n * d
    if N > 0:  # inputs in eigen and in feature coordinates, label noise, X·V
        floats += N * (2 * d + m + k)
    floats += n_snap * r * (d + m)
    return int(floats * _F)


def result_bytes(config: Any) -> int:
    """Bytes of the :class:`~signaldrift.SimulationResult` of ``config`` once the run is
    over (what a sweep keeps in memory for every configuration)."""
    d, m, r, k = config.d, config.m, config.rank, config.task_rank
    n_snap = len(_get(config, "snapshot_steps", ()) or ())
    floats = _records_floats(config)
    if _get(config, "engine", "full") == "reduced":
        q = r + k
        return int((floats + 8 * q * q + n_snap * 2 * q * q) * _F)
    floats += d + (m + d) * k + n_snap * r * (d + m)
    if config.model == "full":
        floats += m * d + r * d
    else:
        floats += 3 * r * d + m * r
    return int(floats * _F)


def memory_limit() -> float:
    """The limit in bytes: ``SIGNALDRIFT_MAX_MEMORY`` GB, or :data:`DEFAULT_LIMIT_GB`.

    Raises :class:`ConfigError` if the variable is set to anything but a number > 0.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_GB * 1e9
    try:
        gb = float(text)
    except ValueError:
        gb = float("nan")
    if not gb > 0:
        raise ConfigError(f"{LIMIT_ENV}: must be a number of GB > 0 (or inf), got {text!r}")
    return gb * 1e9


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB"


def _round_up(x: float) -> float:
    """The smallest number with two significant digits that is >= x (x > 0)."""
    step = 10.0 ** (math.floor(math.log10(x)) - 1)
    return math.ceil(x / step - 1e-9) * step


def _how_to_raise(need: float) -> str:
    gb = _round_up(max(need / 1e9, 1.0))
    return (f"set {LIMIT_ENV}={gb:g} (GB) to allow it if the machine has that much memory")


def _limit_text(limit: float) -> str:
    default = "" if os.environ.get(LIMIT_ENV, "").strip() else " (the default)"
    return f"{_gb(limit)}{default}"


def _describe(config: Any) -> str:
    what = f"model={config.model}, d={config.d}, m={config.m}"
    if config.model != "full":
        what += f", rank={config.rank}"
    if config.batch:
        what += f", batch={config.batch}"
    return what


def check_memory(config: Any) -> None:
    """Raise :class:`ConfigError` if one run of ``config`` needs more than the limit.

    The message is one line: the estimate, the limit and how to raise it.
    """
    need = estimate_bytes(config)
    limit = memory_limit()
    if need > limit:
        raise ConfigError(
            f"memory: this run ({_describe(config)}) needs about {_gb(need)}, above the "
            f"limit of {_limit_text(limit)}; reduce d, m, rank or batch, or "
            + _how_to_raise(need))


def estimate_sweep_bytes(configs: Sequence[Any], workers: int, *,
                         per_worker: int = 1) -> int:
    """Peak bytes of a sweep: the ``workers × per_worker`` largest runs at once (a worker
    running a block of configurations holds them all), every finished result (kept until
    the sweep ends) and the Dataset gathered from them (three copies of the records while
    it is built and written)."""
    peaks = sorted((estimate_bytes(c) for c in configs), reverse=True)
    running = sum(peaks[:max(1, int(workers) * max(1, int(per_worker)))])
    kept = sum(result_bytes(c) for c in configs)
    dataset = 3 * sum(_records_floats(c) for c in configs) * _F
    return int(running + kept + dataset)


def check_sweep_memory(configs: Sequence[Any], workers: int, *, per_worker: int = 1) -> None:
    """Raise :class:`ConfigError` if a run of ``configs`` or the whole sweep needs more
    than the limit (one line: the estimate, the limit, how to raise it).

    **Arguments:**
    - `configs`: the distinct configurations to run.
    - `workers`: processes running side by side.
    - `per_worker`: configurations each process holds at once (a block's size).
    """
    configs = list(configs)
    if not configs:
        return
    for c in configs:
        check_memory(c)
    need = estimate_sweep_bytes(configs, workers, per_worker=per_worker)
    limit = memory_limit()
    if need > limit:
        raise ConfigError(
            f"memory: this sweep of {len(configs)} configurations on {workers} worker(s) "
            f"needs about {_gb(need)} (runs side by side and the results it keeps), above "
            f"the limit of {_limit_text(limit)}; use fewer configurations or workers, or "
            + _how_to_raise(need))
