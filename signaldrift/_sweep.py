"""Sweeps: run many configurations, cache each one on disk, gather them in an xarray Dataset.

Engine (:func:`run_configs`): configurations that share shapes, optimiser kind, basis
kind, data mode and record layout (:func:`signaldrift._simulate.block_key`) run in blocks,
one call of the batched kernels per block (:func:`signaldrift._simulate.simulate_block`,
bit-identical to running each alone). How (:func:`_engine`): in this process, a thread
runs the blocks on ``workers`` threads (the kernels release the GIL; blocks sized to
about ``_BLOCK_SECONDS`` from :func:`estimate_run_seconds`, corrected by the measured
times) while the calling thread caches the results; or, with several workers, for runs
estimated above ``_FORK_ABOVE_SECONDS`` each (and for the reduced engines), in a
:class:`~signaldrift._pool.WorkerPool` (fork-context processes that never outlive this
one, blocks of at most ``_MAX_BLOCK``, one at a time each), which an interruption can kill
mid-run. Results come back in input order and are identical whatever the number of
workers, threads and the block size. Configurations with the same task settings share one
task (:func:`signaldrift._task.task_cache`). When ``signaldrift.simulate`` has been
replaced (tests do this) every configuration goes through it one by one. Before anything runs, every configuration,
the cache folder and the memory of the sweep (:mod:`signaldrift._memory`) are checked. With
``cache_dir`` every finished run is written at once (atomically: temporary file in the same
folder, then ``os.replace``) as ``<sha256(CACHE_VERSION + config.to_json())>.npz``, so an
interrupted sweep resumes where it stopped: SIGINT or SIGTERM kills the workers at once
(their runs in progress are lost), or leaves the in-process engine thread to finish its
block (its results dropped; a later sweep waits for it), and propagates as
``KeyboardInterrupt``. Diverged runs are
kept (``diverged``), and a run that raises an unexpected exception is recorded as a
:class:`FailedRun` (never cached, so it is retried next time) without losing the others.
Progress: a tqdm bar on stderr (:mod:`signaldrift._progress`; one bar for several sweeps
inside a ``progress_group``).

Dataset layout (:func:`run_sweep`), for a grid ``{name: values}``:

- dims: one per swept setting, in grid order (coordinate = the values), then ``step``,
  ``loss_step`` and, if any run measured sharpness, ``sharpness_step``. In list mode (grid
  given as a list of override dicts) a single ``config`` dim (0..N−1) with one
  non-dimension coordinate per overridden setting, over ``config``.
- data variables: every record of ``SimulationResult.records`` (``loss`` over
  ``loss_step``, the others over ``step``); per configuration ``final_loss``, ``diverged``
  (int8), ``diverged_step`` (int, −1 if not), ``failed`` (int8), ``scale`` (the scaling
  factor s; named ``scale_factor`` if ``scale`` is itself swept); with sharpness,
  ``lambda_max`` and ``precond_lambda_max`` over ``sharpness_step``. When configurations
  record at different steps (e.g. ``steps`` is swept) the step axes are the union and
  absent values are NaN.
- attrs: ``base_config`` (JSON of the base SimConfig), ``grid`` (JSON of the grid, or of
  the list of overrides), ``grid_mode`` (``"grid"`` or ``"list"``), ``swept`` (JSON list
  of the swept names), ``errors`` (JSON list of failed runs: index, config and message),
  ``cache_version``. Every configuration can be rebuilt from ``base_config`` and the
  coordinates (:func:`config_at`).

Coordinates that mix types (e.g. ``task_seed`` with ``None``) or hold lists are stored as
JSON strings with the attribute ``encoding="json"``.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import hashlib
import json
import os
import queue
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._compile import announce_compile, kernels_cold, warm_up
from ._config import ConfigError, SimConfig
from ._memory import check_sweep_memory, estimate_sweep_bytes, memory_limit
from ._paths import check_output_dir
from ._pool import WorkerPool, raise_on_signals
from ._progress import sweep_bar
from ._task import task_cache

__all__ = [
    "CACHE_VERSION",
    "FailedRun",
    "config_key",
    "expand_grid",
    "run_configs",
    "run_sweep",
    "config_at",
    "save_dataset",
    "load_dataset",
]

# The modules whose source determines what `simulate` returns for a config.
_SIMULATOR_SOURCES = ("_config.py", "_task.py", "_basis.py", "_rng.py", "_seeding.py",
                      "_init.py", "_scaling.py", "_schedules.py", "_sampling.py",
                      "_vector_ir.py", "_gemm.py", "_kernels.py", "_simulate.py",
                      "_result.py", "_sharpness.py", "_lanczos.py", "_reduced.py", "_flow.py",
                      "_generated/factorised.py",
                      "_generated/reduced.py")


def simulator_fingerprint() -> str:
    """SHA-256 (12 hex digits) of the simulator's source files, so that a cache written by
    other simulator code is never read back as if it were current."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for name in _SIMULATOR_SOURCES:
        h.update(name.encode() + b"\0" + (root / name).read_bytes())
    return h.hexdigest()[:12]


#: Part of every cache key: a schema version (bump it when the cache layout changes) and the
#: fingerprint of the simulator's code (which changes by itself when the code does).
CACHE_VERSION = "signaldrift-sweep-1+" + simulator_fingerprint()


@dataclass
class FailedRun:
    """Stand-in for a run whose ``simulate`` raised an unexpected exception.

    Quacks like a diverged ``SimulationResult`` with no records: ``diverged`` is True,
    ``diverged_step`` −1, ``final_loss`` NaN; ``failed`` is True and ``error`` holds
    ``"ExceptionType: message"``.
    """

    config: SimConfig
    error: str
    diverged: bool = True
    diverged_step: int = -1
    failed: bool = True
    records: dict = field(default_factory=dict)
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    loss_step: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    sharpness: dict = field(default_factory=dict)
    scale: float = float("nan")

    @property
    def final_loss(self) -> float:
        return float("nan")


def config_key(config: SimConfig) -> str:
    """The cache key of ``config``: SHA-256 hex of ``CACHE_VERSION + "\\n" + config.to_json()``."""
    text = CACHE_VERSION + "\n" + config.to_json()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------- grid
_FIELDS = {f.name: f for f in dataclasses.fields(SimConfig)}


def _normalise(name: str, value: Any) -> Any:
    """Plain Python value for SimConfig field ``name`` (numpy scalars unwrapped; ints in
    float fields made floats, so that ``alpha=16`` and ``alpha=16.0`` share a cache key)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(name, v) if isinstance(v, np.generic) else v for v in value)
    ftype = str(_FIELDS[name].type)
    if (ftype.startswith("float") and isinstance(value, int)
            and not isinstance(value, bool)):
        return float(value)
    return value


def _unknown(name: Any, where: str) -> ConfigError:
    return ConfigError(f"{where}: {name!r} is not a setting; allowed settings are "
                       + ", ".join(sorted(_FIELDS)))


def _build(base: SimConfig, overrides: dict[str, Any]) -> SimConfig:
    try:
        return base.replace(**overrides)
    except ConfigError as exc:
        raise ConfigError(f"grid point {_json(overrides)}: {exc}") from None
    except (TypeError, ValueError) as exc:  # e.g. a comparison of a str with an int
        raise ConfigError(f"grid point {_json(overrides)}: {exc}") from None


def _json(obj: Any) -> str:
    return json.dumps(obj, default=lambda o: o.item() if isinstance(o, np.generic) else list(o))


def _parse_grid(grid) -> tuple[str, list[str], list[list[Any]] | list[dict[str, Any]]]:
    """Validate the grid's shape and names: ``("grid", names, value lists)`` or
    ``("list", names in order of appearance, override dicts)``."""
    if isinstance(grid, Mapping):
        names, values = [], []
        for name, vals in grid.items():
            if name not in _FIELDS:
                raise _unknown(name, "grid")
            if isinstance(vals, (str, bytes)) or not isinstance(vals, (Sequence, np.ndarray)):
                raise ConfigError(f"grid: the values of {name!r} must be a non-empty list, "
                                  f"got {vals!r}; write [{vals!r}] for a single value")
            vals = [_normalise(name, v) for v in vals]
            if not vals:
                raise ConfigError(f"grid: the values of {name!r} must be a non-empty list, got []")
            seen = []
            for v in vals:
                if any(type(v) is type(w) and v == w for w in seen):
                    raise ConfigError(f"grid: the values of {name!r} repeat {v!r}; "
                                      "give each value once")
                seen.append(v)
            names.append(name)
            values.append(vals)
        return "grid", names, values
    if isinstance(grid, (str, bytes)) or not isinstance(grid, Sequence):
        raise ConfigError(f"grid: must be a mapping name -> list of values, or a list of "
                          f"override dicts, got {type(grid).__name__}")
    if len(grid) == 0:
        raise ConfigError("grid: the list of configurations is empty; give at least one dict")
    names, points = [], []
    for i, ov in enumerate(grid):
        if not isinstance(ov, Mapping):
            raise ConfigError(f"grid[{i}]: must be a dict of overrides, got {ov!r}")
        for name in ov:
            if name not in _FIELDS:
                raise _unknown(name, f"grid[{i}]")
            if name not in names:
                names.append(name)
        points.append({k: _normalise(k, v) for k, v in ov.items()})
    return "list", names, points


def expand_grid(base: SimConfig, grid) -> tuple[list[SimConfig], list[dict[str, Any]]]:
    """Validate ``grid`` and build every configuration, before anything runs.

    **Arguments:**
    - `base`: the :class:`SimConfig` every point starts from.
    - `grid`: an ordered mapping setting name -> non-empty list of distinct values
      (Cartesian product, last name varying fastest), or a list of override dicts.

    **Returns:** ``(configs, overrides)`` in row-major order.
    Raises :class:`ConfigError` (one line) for an unknown name, an empty or duplicated value
    list, or a value the SimConfig rejects (the message names the grid point).
    """
    if not isinstance(base, SimConfig):
        raise ConfigError(f"base: must be a SimConfig, got {type(base).__name__}")
    mode, names, values = _parse_grid(grid)
    if mode == "list":
        overrides = list(values)
    else:
        overrides = [{}]
        for name, vals in zip(names, values):
            overrides = [dict(ov, **{name: v}) for ov in overrides for v in vals]
    return [_build(base, ov) for ov in overrides], overrides


# ---------------------------------------------------------------------------- engine
@dataclass
class _Stats:
    total: int = 0
    unique: int = 0
    cached: int = 0
    ran: int = 0
    diverged: int = 0
    failed: int = 0


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.npz"


def _write_cache(result, path: Path) -> None:
    """Atomically (``SimulationResult.save`` writes a temporary file in the same folder,
    then replaces ``path``), so an interruption never leaves a partial archive under the
    final name; a failed write only warns."""
    try:
        result.save(path)
    except OSError as exc:
        warnings.warn(f"sweep cache: could not write {path}: {exc}", RuntimeWarning,
                      stacklevel=2)


def _remove_temporaries(cache_dir: Path, pids) -> None:
    """Remove the temporary files that killed workers ``pids`` were writing (names hold the
    writer's pid: see ``SimulationResult.save``, which :func:`_write_cache` calls)."""
    marks = [f".{pid}.tmp" for pid in pids]
    try:
        names = [p for p in cache_dir.iterdir() if p.name.startswith(".")]
    except OSError:
        return
    for p in names:
        if any(mark in p.name for mark in marks):
            try:
                p.unlink()
            except OSError:
                pass


def _read_cache(path: Path, config: SimConfig):
    """The cached result for ``config``, or None if absent or unreadable (then it reruns)."""
    if not path.exists():
        return None
    from ._result import SimulationResult

    try:
        res = SimulationResult.load(path)
    except Exception as exc:  # a corrupt or outdated archive: run the config again
        warnings.warn(f"sweep cache: ignoring unreadable {path.name}: {exc}", RuntimeWarning,
                      stacklevel=2)
        return None
    if res.config != config:
        return None
    return res


#: Most configurations per block in a worker process: a worker's block is lost when a sweep
#: is interrupted.
_MAX_BLOCK = 16

# In-process engine (module docstring). A block's kernel call cannot be stopped midway, so an
# in-process block aims at _BLOCK_SECONDS of wall time: an interruption returns at once, and
# the engine thread stops after at most that long.
_BLOCK_SECONDS = 0.15
#: Most configurations per in-process block.
_MAX_THREAD_BLOCK = 256
#: With several workers, runs estimated to take longer than this (one core) go to worker
#: processes instead: the fork is then cheap next to the runs, and a block of long runs in
#: this process would run on for seconds after an interruption (threads cannot be killed;
#: processes can). Below it, threads win: measured on 2 cores, F2's 1314 runs of about
#: 30 ms took 2.5× longer in two forked workers than on two threads.
_FORK_ABOVE_SECONDS = 0.5
# Cost model of the block kernels on one core (see estimate_run_seconds).
_NS_PER_FLOP = 0.2
_NS_PER_NORMAL = 20.0
_NS_PER_ROTATION = 8.0
_STEP_SECONDS = 3e-6
_RECORD_SECONDS = 150e-6


def estimate_run_seconds(config: SimConfig) -> float:
    """Rough seconds one run of ``config`` takes in the block kernels on one core.

    Per step: the Gram products, gradients and optimiser, ``2·r·(r+k)·(m+d) + 12·r·(m+d)``
    flops (``4·m·d`` for full fine-tuning); a minibatch of n, ``n·(m+d)`` normal samples
    and ``2·n·(r+k)·(m+d)`` flops (``2·n·m·d``); Adam's rotations of the random basis,
    ``r·d·log₂d`` Givens pairs; a fixed cost. Per recorded step: six thin QRs and an SVD,
    ``25·(m+d)·(r+k)²`` flops and a fixed cost. The constants were fitted on the 2-core
    development machine (d = 48 … 1024, population and minibatch, records every step or
    at t = 0; within a factor 2, mostly above). It only sizes blocks and chooses threads
    or processes.
    """
    d, m, k, steps = config.d, config.m, config.task_rank, config.steps
    n = config.batch if config.train_size == 0 else min(config.batch, config.train_size)
    normals = n * (m + d) if config.train_size == 0 else 0
    if config.model == "full":
        flops = 4.0 * m * d + 2.0 * n * m * d
        rotations = 0.0
        rec_flops = 4.0 * m * d
    else:
        r = config.rank
        flops = 2.0 * r * (r + k) * (m + d) + 12.0 * r * (m + d) + 2.0 * n * (r + k) * (m + d)
        rotations = 0.0
        if config.basis == "random" and config.optimizer != "sgd":
            rotations = r * d * max(1.0, float(np.log2(max(d, 2))))
        rec_flops = 25.0 * (m + d) * (r + k) ** 2
    per_step = (_STEP_SECONDS + 1e-9 * (flops * _NS_PER_FLOP + normals * _NS_PER_NORMAL
                                        + rotations * _NS_PER_ROTATION))
    records = -(-steps // max(1, config.record_every))
    return steps * per_step + records * (_RECORD_SECONDS + 1e-9 * rec_flops * _NS_PER_FLOP)


def _blocks(configs: dict[str, SimConfig], pending: list[str], workers: int
            ) -> list[list[str]]:
    """``pending`` keys grouped by block key (in order of first appearance), each group cut
    into blocks of at most ``_MAX_BLOCK``, and small enough that every worker gets about
    four blocks."""
    from ._simulate import block_key

    groups: dict[tuple, list[str]] = {}
    for k in pending:
        groups.setdefault(block_key(configs[k]), []).append(k)
    per_block = max(1, min(_MAX_BLOCK, -(-len(pending) // (4 * workers))))
    return [keys[i:i + per_block] for keys in groups.values()
            for i in range(0, len(keys), per_block)]


def _run_block(configs: list[SimConfig], cache_dir: str | None, threads: int = 1) -> list:
    """Run a block of configurations (one kernel call, on ``threads`` threads, when
    the real simulator is in place) and cache each result; a block that raises is rerun
    one configuration at a time, so a failure becomes the :class:`FailedRun` of the
    configuration that caused it. Configurations with the same task settings share one
    task (:func:`~signaldrift._task.task_cache`)."""
    import signaldrift

    from . import _simulate

    results = None
    with task_cache():
        if (len(configs) > 1 and signaldrift.simulate is _simulate.simulate
                and all(c.engine == "full" for c in configs)):
            try:
                results = _simulate.simulate_block(configs, threads=threads)
            except Exception:  # noqa: BLE001 - isolate the failing configuration below
                results = None
        if results is None:
            return [_run_one(c, cache_dir) for c in configs]
    if cache_dir is not None:
        for c, res in zip(configs, results):
            _write_cache(res, _cache_path(Path(cache_dir), config_key(c)))
    return results


def _run_one(config: SimConfig, cache_dir: str | None):
    """Run one config through ``signaldrift.simulate`` (looked up now, so tests can
    substitute it) and cache it; an exception becomes a :class:`FailedRun`."""
    import signaldrift

    try:
        result = signaldrift.simulate(config)
    except Exception as exc:  # noqa: BLE001 - recorded, the sweep goes on
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())
        return FailedRun(config=config, error=msg)
    if cache_dir is not None:
        _write_cache(result, _cache_path(Path(cache_dir), config_key(config)))
    return result


def _check_workers(workers: Any) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise ConfigError(f"workers: must be an integer >= 1, got {workers!r}")
    return int(workers)


def _check_cache_dir(cache_dir) -> Path | None:
    """``cache_dir`` as a Path after checking that it is (or can be made) a writable
    folder; ConfigError otherwise. Creates nothing."""
    if cache_dir is None:
        return None
    try:
        return check_output_dir(cache_dir, flag="cache_dir")
    except TypeError:
        raise ConfigError(f"cache_dir: must be a folder path or None, got "
                          f"{type(cache_dir).__name__}") from None


def _open_cache_dir(cdir: Path) -> None:
    try:
        cdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cache_dir: cannot create folder {str(cdir)!r} "
                          f"({exc.strerror or exc})") from None


def _check_client(client, workers: int):
    """``client`` must be a ``distributed.Client`` (duck-typed: ``submit``) and exclude
    ``workers`` > 1 (the cluster's workers do the work)."""
    if client is None:
        return None
    if not callable(getattr(client, "submit", None)):
        raise ConfigError(f"client: must be a dask.distributed Client, got "
                          f"{type(client).__name__}")
    if workers != 1:
        raise ConfigError(f"client: runs on the Dask cluster's workers; give workers = 1 "
                          f"(the default), got workers = {workers}")
    return client


#: "threads", "processes" or "serial" to override :func:`_engine` (benchmarks, tests).
_FORCE_ENGINE: str | None = None


def _fast_path(configs: Sequence[SimConfig]) -> bool:
    """Whether ``configs`` run through the block kernels: the real ``signaldrift.simulate``
    is in place (tests replace it) and every engine is ``"full"``."""
    import signaldrift

    from . import _simulate

    return (signaldrift.simulate is _simulate.simulate
            and all(c.engine == "full" for c in configs))


def _engine(configs: Sequence[SimConfig], workers: int, client=None) -> str:
    """How a sweep of ``configs`` runs: ``"dask"`` (a client), ``"processes"`` (worker
    processes: several workers and runs that the block kernels do not take, or that are
    estimated above ``_FORK_ABOVE_SECONDS`` each), ``"threads"`` (the block kernels in
    this process, on ``workers`` threads) or ``"serial"`` (one by one here)."""
    if client is not None:
        return "dask"
    fast = _fast_path(configs)
    if _FORCE_ENGINE is not None and (fast or _FORCE_ENGINE != "threads"):
        return _FORCE_ENGINE
    if workers > 1 and len(configs) > 1 and (
            not fast or max(estimate_run_seconds(c) for c in configs) > _FORK_ABOVE_SECONDS):
        return "processes"
    return "threads" if fast else "serial"


def _thread_block_cap(configs: Sequence[SimConfig]) -> int:
    """Most configurations of an in-process block: ``_MAX_THREAD_BLOCK``, halved (down to
    ``_MAX_BLOCK``) while the sweep's memory estimate with blocks that large is above the
    limit (:mod:`signaldrift._memory`)."""
    cap = max(1, min(_MAX_THREAD_BLOCK, len(configs)))
    if cap <= _MAX_BLOCK:
        return cap
    limit = memory_limit()
    while cap > _MAX_BLOCK and estimate_sweep_bytes(configs, 1, per_worker=cap) > limit:
        cap //= 2
    return max(cap, min(_MAX_BLOCK, len(configs)))


def _per_worker(engine: str, configs: Sequence[SimConfig], workers: int) -> tuple[int, int]:
    """``(parallel holders, configurations each holds at once)`` of a sweep run by
    ``engine``, for the memory check."""
    n = max(1, len(configs))
    if engine == "threads":
        return 1, _thread_block_cap(configs)
    return min(workers, n), min(_MAX_BLOCK, n)


def check_memory_of_sweep(configs: Sequence[SimConfig], workers: int, client=None) -> None:
    """:func:`~signaldrift._memory.check_sweep_memory` for the way :func:`run_configs`
    runs ``configs`` with ``workers`` (the engine and its block sizes)."""
    configs = list(configs)
    n_workers = workers
    if client is not None:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})) or 1)
    holders, per = _per_worker(_engine(configs, workers, client), configs, n_workers)
    check_sweep_memory(configs, holders, per_worker=per)


def _run_configs(configs, *, workers=1, cache_dir=None, progress=True, client=None):
    """:func:`run_configs` that also returns the counts (:class:`_Stats`)."""
    configs = list(configs)
    for i, c in enumerate(configs):
        if not isinstance(c, SimConfig):
            raise ConfigError(f"configs[{i}]: must be a SimConfig, got {type(c).__name__}")
    workers = _check_workers(workers)
    client = _check_client(client, workers)
    keys = [config_key(c) for c in configs]
    unique: dict[str, SimConfig] = {}
    for k, c in zip(keys, configs):
        unique.setdefault(k, c)
    # Everything is checked before anything runs or is written: the cache folder, and the
    # memory the runs side by side and the results kept need (SIGNALDRIFT_MAX_MEMORY).
    cdir = _check_cache_dir(cache_dir)
    check_memory_of_sweep(list(unique.values()), workers, client)
    stats = _Stats(total=len(configs), unique=len(unique))
    done = _from_cache(cdir, unique, stats)
    pending = [k for k in unique if k not in done]
    if pending and progress:
        announce_compile({unique[k].model for k in pending})
    engine = _engine([unique[k] for k in pending], workers, client)
    try:
        with raise_on_signals(), sweep_bar(len(unique), enabled=progress) as bar:
            bar.advance(cached=len(done), diverged=stats.diverged)

            def finish(k, res):
                done[k] = res
                failed = bool(getattr(res, "failed", False))
                div = bool(res.diverged) and not failed
                stats.ran += 1
                stats.failed += failed
                stats.diverged += div
                bar.advance(ran=1, diverged=div, failed=failed)

            if engine == "threads":
                cap = _thread_block_cap(list(unique.values()))
                _run_threads(unique, pending, workers, cdir, finish, cap)
            else:
                n_parts = workers
                if client is not None:
                    n_parts = max(1, len(client.scheduler_info().get("workers", {})) or 1)
                blocks = _blocks(unique, pending, n_parts)
                if engine == "dask":
                    _run_dask(client, unique, blocks, cdir, finish)
                elif engine == "processes" and len(blocks) > 1:
                    _run_parallel(unique, blocks, workers, cdir, finish)
                else:
                    for block in blocks:
                        results = _run_block([unique[k] for k in block],
                                             None if cdir is None else str(cdir))
                        for k, res in zip(block, results):
                            finish(k, res)
    except KeyboardInterrupt as exc:
        if cdir is not None:  # a cache file this process was writing
            _remove_temporaries(cdir, [os.getpid()])
        exc.detail = _what_was_kept(stats, cdir)
        raise
    return [done[k] for k in keys], stats


# Held by the in-process engine's thread while it runs blocks: a sweep interrupted in this
# process leaves its thread to finish the block in progress, and the next one waits for it.
_ENGINE_LOCK = threading.Lock()


def _interleave(keys: list[str], threads: int) -> list[str]:
    """``keys`` reordered so that grid neighbours, which cost alike (e.g. the large
    learning rates that diverge early), are spread over the block: the threads of
    :func:`signaldrift.simulate_block` take configurations in order, so every thread gets
    its share of each kind."""
    if threads <= 1:
        return keys
    return [k for j in range(threads) for k in keys[j::threads]]


def _thread_block_size(seconds: float, threads: int, remaining: int,
                       cap: int = _MAX_THREAD_BLOCK) -> int:
    """Configurations of the next in-process block: about ``_BLOCK_SECONDS`` of wall time
    on ``threads`` threads for runs of ``seconds`` each, a multiple of ``threads``, at most
    ``cap``."""
    per_thread = max(1, int(_BLOCK_SECONDS / max(seconds, 1e-9)))
    n = threads * per_thread
    if n > cap:
        n = cap - cap % threads if cap >= threads else cap
    if remaining - n < threads and remaining <= cap:  # no straggler block below `threads`
        n = remaining
    return max(1, min(n, remaining))


def _run_threads(unique, pending, threads, cdir, finish, cap=_MAX_THREAD_BLOCK) -> None:
    """Run ``pending`` in this process: a thread runs blocks of configurations that share
    a block key through the block kernels on ``threads`` threads (one call per
    block; the kernels release the GIL), while this thread caches the results and calls
    ``finish(key, result)``. Blocks are sized from :func:`estimate_run_seconds`, corrected
    by the time the previous blocks took, to about ``_BLOCK_SECONDS`` each. On an
    interruption this thread returns at once; the engine thread finishes its block (its
    results are dropped) and stops."""
    from ._simulate import block_key

    groups: dict[tuple, list[str]] = {}
    for k in pending:
        groups.setdefault(block_key(unique[k]), []).append(k)
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    end = object()

    def engine() -> None:
        try:
            with _ENGINE_LOCK, task_cache():
                ratio = 1.0  # measured / estimated time of the last block
                for keys in groups.values():
                    est = estimate_run_seconds(unique[keys[0]])
                    i = 0
                    while i < len(keys) and not stop.is_set():
                        n = _thread_block_size(est * ratio, threads, len(keys) - i, cap)
                        block = _interleave(keys[i:i + n], threads)
                        i += n
                        t0 = time.perf_counter()
                        results = _run_block([unique[k] for k in block], None, threads)
                        took = time.perf_counter() - t0
                        ratio = min(50.0, max(0.02, took / (est * -(-n // threads))))
                        if not stop.is_set():
                            out.put((block, results))
        except BaseException as exc:  # noqa: BLE001 - raised again in the sweep's thread
            out.put((None, exc))
        finally:
            out.put(end)

    thread = threading.Thread(target=engine, name="signaldrift-sweep", daemon=True)
    thread.start()
    try:
        while True:
            try:
                item = out.get(timeout=1.0)
            except queue.Empty:
                if not thread.is_alive() and out.empty():
                    break
                continue
            if item is end:
                break
            block, results = item
            if block is None:
                raise results
            for k, res in zip(block, results):
                if cdir is not None and not getattr(res, "failed", False):
                    _write_cache(res, _cache_path(cdir, k))
                finish(k, res)
    finally:
        stop.set()


def _from_cache(cdir: Path | None, unique: dict[str, SimConfig], stats: _Stats) -> dict:
    """The cached results among ``unique`` (key -> result), counted in ``stats``; creates
    the cache folder."""
    done: dict[str, Any] = {}
    if cdir is None:
        return done
    _open_cache_dir(cdir)
    for k, c in unique.items():
        res = _read_cache(_cache_path(cdir, k), c)
        if res is not None:
            done[k] = res
            stats.cached += 1
            stats.diverged += bool(res.diverged)
    return done


def _what_was_kept(stats: _Stats, cdir: Path | None) -> str:
    """One clause for the interruption message: how many runs are kept, and where."""
    n_done = stats.cached + stats.ran - stats.failed
    if cdir is None:
        return f"{n_done} of {stats.unique} runs had finished (no cache: they are lost)"
    return (f"{n_done} of {stats.unique} runs finished, kept in the cache {cdir}; run the "
            "same command again to resume")


def _run_parallel(unique, blocks, workers, cdir, finish) -> None:
    """Run ``blocks`` (lists of keys) in a :class:`~signaldrift._pool.WorkerPool`;
    ``finish(key, result)`` as each block completes. An interruption kills the workers (the
    runs they had started are lost, their temporary files removed); what finished is in the
    cache already."""
    models = {unique[k].model for block in blocks for k in block}
    if any(unique[k].sharpness_steps for block in blocks for k in block):
        models.add("sharpness")
    if kernels_cold(models):
        warm_up(models)  # compile once here, not once in every worker
    cache = None if cdir is None else str(cdir)
    pool = WorkerPool(min(workers, len(blocks)))
    try:
        with pool:
            futures = {pool.submit(_run_block, [unique[k] for k in block], cache): block
                       for block in blocks}
            for fut in cf.as_completed(futures):
                block = futures[fut]
                try:
                    results = fut.result()
                except Exception as exc:  # noqa: BLE001
                    # A worker died (e.g. killed for memory: BrokenProcessPool, and every
                    # later run fails too) or the results could not be sent back: record
                    # them as failed (not cached, so the next run retries them), keep the
                    # others.
                    msg = " ".join(f"{type(exc).__name__}: {exc}".split())
                    results = [FailedRun(config=unique[k], error=msg) for k in block]
                for k, res in zip(block, results):
                    finish(k, res)
    finally:
        if pool.killed and cdir is not None:
            _remove_temporaries(cdir, pool.killed)


def _run_dask(client, unique, blocks, cdir, finish) -> None:
    """Run ``blocks`` as tasks of a Dask cluster; gather the results here, cache them here
    (the cluster needs no access to the cache folder), ``finish(key, result)`` as each
    block completes. Dask recomputes the block of a lost worker on another one (up to its
    ``allowed-failures``; then the block's runs are recorded as failed). An interruption
    cancels what is still pending on the cluster."""
    from distributed import as_completed

    futures = {client.submit(_run_block, [unique[k] for k in block], None, pure=False):
               block for block in blocks}
    try:
        for fut in as_completed(list(futures)):
            block = futures[fut]
            try:
                results = fut.result()
            except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: keep the others
                msg = " ".join(f"{type(exc).__name__}: {exc}".split())
                results = [FailedRun(config=unique[k], error=msg) for k in block]
            for k, res in zip(block, results):
                if cdir is not None and not getattr(res, "failed", False):
                    _write_cache(res, _cache_path(cdir, k))
                finish(k, res)
    except BaseException:
        client.cancel(list(futures))
        raise


def run_configs(configs: Sequence[SimConfig], *, workers: int = 1,
                cache_dir: str | os.PathLike | None = None, progress: bool = True,
                client=None) -> list:
    """Run every configuration through ``signaldrift.simulate``; results in input order.

    **Arguments:**
    - `configs`: the configurations (duplicates run once and share the result).
    - `workers`: cores to use: threads in this process, or for long runs (above
      ``_FORK_ABOVE_SECONDS`` estimated) a fork-context process pool
      (:class:`~signaldrift._pool.WorkerPool`: workers never outlive this process).
      Results do not depend on it (each run is seeded by its config alone).
    - `cache_dir`: folder of cached results (created if needed); ``None``: no cache.
      A cached result is used only if its stored config equals the requested one.
    - `progress`: show a progress bar (tqdm) on stderr, and a line when Numba compiles.
    - `client`: a ``dask.distributed.Client``: run the blocks on its cluster instead
      (``workers`` must stay 1). Results, cache and resume are exactly as locally: the
      results come back here and are cached here. Needs the ``dask`` extra.

    **Returns:** a list of ``SimulationResult`` (or :class:`FailedRun` for a run that raised),
    one per config, in input order.

    Raises :class:`ConfigError` before anything runs for an invalid configuration or
    ``cache_dir`` (a file, not writable), and when a run or the whole sweep would need more
    memory than ``SIGNALDRIFT_MAX_MEMORY`` (:mod:`signaldrift._memory`). On SIGINT
    (``KeyboardInterrupt``) or SIGTERM (:class:`~signaldrift._pool.Interrupted`) the workers
    are killed at once and the exception propagates, its ``detail`` attribute saying how
    many runs finished; every finished run is in the cache.
    """
    return _run_configs(configs, workers=workers, cache_dir=cache_dir, progress=progress,
                        client=client)[0]


# ---------------------------------------------------------------------------- dataset
def _coord_values(values: list[Any]) -> tuple[np.ndarray, dict[str, str]]:
    """A coordinate array for ``values``: bool, int64, float64 or str; anything else
    (None mixed with numbers, lists) as JSON strings, marked by an ``encoding`` attribute."""
    if all(isinstance(v, bool) for v in values):
        return np.array(values, dtype=bool), {}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64), {}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.float64), {}
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=str), {}
    return np.array([_json(v) for v in values], dtype=str), {"encoding": "json"}


def _union(arrays) -> np.ndarray:
    arrays = [np.asarray(a, dtype=np.int64) for a in arrays if a is not None]
    if not arrays:
        return np.zeros(0, dtype=np.int64)
    return np.unique(np.concatenate(arrays)).astype(np.int64)


def _gather(results, shape, axis_values, axis_of, value_of) -> np.ndarray:
    """Stack per-result arrays onto the union axis ``axis_values`` (NaN where absent)."""
    out = np.full((len(results), axis_values.size), np.nan)
    for i, r in enumerate(results):
        ax = axis_of(r)
        val = value_of(r)
        if ax is None or val is None or len(ax) == 0:
            continue
        pos = np.searchsorted(axis_values, np.asarray(ax, dtype=np.int64))
        out[i, pos] = np.asarray(val, dtype=np.float64)
    return out.reshape(tuple(shape) + (axis_values.size,))


def _dataset(base: SimConfig, grid, mode: str, names: list[str], values, configs,
             results) -> xr.Dataset:
    if mode == "grid":
        dims = list(names)
        shape = [len(v) for v in values]
        coords: dict[str, Any] = {}
        for name, vals in zip(names, values):
            arr, attrs = _coord_values(vals)
            coords[name] = xr.Variable((name,), arr, attrs)
    else:
        dims = ["config"]
        shape = [len(configs)]
        coords = {"config": np.arange(len(configs), dtype=np.int64)}
        for name in names:
            arr, attrs = _coord_values([getattr(c, name) for c in configs])
            coords[name] = xr.Variable(("config",), arr, attrs)
    step = _union(r.step for r in results)
    loss_step = _union(r.loss_step for r in results)
    sharp_step = _union(r.sharpness.get("step") for r in results)
    coords["step"] = step
    coords["loss_step"] = loss_step

    data: dict[str, Any] = {}
    rec_names: list[str] = ["loss"]
    for r in results:
        for k in r.records:
            if k not in rec_names:
                rec_names.append(k)
    for k in rec_names:
        axis, axname = (loss_step, "loss_step") if k == "loss" else (step, "step")
        arr = _gather(results, shape, axis,
                      (lambda r: r.loss_step) if k == "loss" else (lambda r: r.step),
                      lambda r, k=k: r.records.get(k))
        data[k] = (dims + [axname], arr)
    if sharp_step.size:
        coords["sharpness_step"] = sharp_step
        for k in ("lambda_max", "precond_lambda_max"):
            data[k] = (dims + ["sharpness_step"],
                       _gather(results, shape, sharp_step, lambda r: r.sharpness.get("step"),
                               lambda r, k=k: r.sharpness.get(k)))

    def scalar(fn, dtype):
        return (dims, np.array([fn(r) for r in results], dtype=dtype).reshape(shape))

    data["final_loss"] = scalar(lambda r: r.final_loss, np.float64)
    data["diverged"] = scalar(lambda r: bool(r.diverged), np.int8)
    data["diverged_step"] = scalar(lambda r: int(r.diverged_step), np.int64)
    data["failed"] = scalar(lambda r: bool(getattr(r, "failed", False)), np.int8)
    data["scale_factor" if "scale" in coords else "scale"] = scalar(lambda r: r.scale,
                                                                   np.float64)
    errors = [{"index": i, "config": json.loads(c.to_json()), "error": r.error}
              for i, (c, r) in enumerate(zip(configs, results)) if getattr(r, "failed", False)]
    attrs = {
        "title": "signaldrift sweep",
        "base_config": base.to_json(),
        "grid": _json({n: v for n, v in zip(names, values)} if mode == "grid" else values),
        # Not "mode": scipy's netCDF writer keeps global attributes on its file object.
        "grid_mode": mode,
        "swept": _json(names),
        "errors": json.dumps(errors),
        "cache_version": CACHE_VERSION,
    }
    ds = xr.Dataset(data, coords=coords, attrs=attrs)
    ds["final_loss"].attrs["description"] = "excess loss after the last step (inf if diverged, NaN if failed)"
    ds["diverged"].attrs["description"] = "1 if the run diverged or failed"
    ds["failed"].attrs["description"] = "1 if simulate raised; see the errors attribute"
    return ds


def _run_sweep(base, grid, *, workers=1, cache_dir=None, progress=True, client=None):
    """:func:`run_sweep` that also returns the counts (:class:`_Stats`)."""
    _check_workers(workers)
    configs, _ = expand_grid(base, grid)
    mode, names, values = _parse_grid(grid)
    results, stats = _run_configs(configs, workers=workers, cache_dir=cache_dir,
                                  progress=progress, client=client)
    return _dataset(base, grid, mode, names, values, configs, results), stats


def run_sweep(base: SimConfig, grid, *, workers: int = 1,
              cache_dir: str | os.PathLike | None = None, progress: bool = True,
              client=None) -> xr.Dataset:
    """Run ``base`` over ``grid`` and gather the results in an ``xarray.Dataset``.

    **Arguments:**
    - `base`: the base :class:`SimConfig`.
    - `grid`: ordered mapping setting name -> list of values (any SimConfig field;
      Cartesian product), or a list of override dicts (list mode, a ``config`` dimension).
    - `workers`, `cache_dir`, `progress`, `client`: as in :func:`run_configs`.

    **Returns:** the Dataset described in the module docstring.
    Raises :class:`ConfigError` for an invalid grid before anything runs.

    Example::

        ds = run_sweep(SimConfig(d=32, m=32, steps=50),
                       {"lr": [1e-3, 1e-2], "alpha": [1.0, 16.0], "seed": [0, 1]})
        ds.final_loss.mean("seed").sel(alpha=16.0)
    """
    return _run_sweep(base, grid, workers=workers, cache_dir=cache_dir, progress=progress,
                      client=client)[0]


def config_at(ds: xr.Dataset, **point: Any) -> SimConfig:
    """The :class:`SimConfig` of one point of a sweep Dataset, from its attributes.

    **Arguments:**
    - `ds`: a Dataset from :func:`run_sweep` (or :func:`load_dataset`).
    - `point`: every swept name and its coordinate value (grid mode), or ``config=i``
      (list mode).

    Example::

        cfg = config_at(ds, lr=1e-2, alpha=16.0, seed=0)
    """
    base = SimConfig.from_dict(json.loads(ds.attrs["base_config"]))
    if ds.attrs.get("grid_mode") == "list":
        if set(point) != {"config"}:
            raise ConfigError("point: give config=i for a list-mode sweep")
        overrides = json.loads(ds.attrs["grid"])[int(point["config"])]
    else:
        names = json.loads(ds.attrs["swept"])
        if set(point) != set(names):
            raise ConfigError(f"point: give every swept setting ({', '.join(names)}), "
                              f"got {', '.join(point) or 'none'}")
        overrides = {}
        for name in names:
            value = point[name]
            if ds[name].attrs.get("encoding") == "json" and isinstance(value, str):
                value = json.loads(value)
            overrides[name] = _normalise(name, value)
    return _build(base, {k: _normalise(k, v) for k, v in overrides.items()})


# ---------------------------------------------------------------------------- netCDF
_DTYPE_ATTR = "signaldrift_dtype"
# scipy's netCDF writer keeps global attributes on its file object: these names break it.
_SCIPY_RESERVED = frozenset({"mode", "fp", "filename", "use_mmap", "version_byte",
                             "maskandscale", "dimensions", "variables"})


def save_dataset(ds: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write ``ds`` to netCDF3 (``engine="scipy"``) atomically; returns the path.

    netCDF3 has no bool or int64: bools are stored as int8 and int64 as int32 (checked to
    fit), with an attribute ``signaldrift_dtype`` that :func:`load_dataset` uses to restore
    the dtype.
    """
    path = Path(path)
    clash = sorted(set(ds.attrs) & _SCIPY_RESERVED)
    if clash:
        raise ValueError(f"attrs: {clash[0]!r} cannot be a global attribute of a netCDF3 file "
                         "written by scipy; rename it")
    out = ds.copy(deep=False)
    for name in list(out.variables):
        var = out.variables[name]
        attrs = dict(var.attrs)
        if var.dtype == bool:
            new = var.values.astype(np.int8)
            attrs[_DTYPE_ATTR] = "bool"
        elif var.dtype.kind in "iu" and var.dtype not in (np.int8, np.int16, np.int32):
            # netCDF3 integers are signed and at most 32 bits.
            vals = var.values
            if vals.size and (vals.min() < np.iinfo(np.int32).min
                              or vals.max() > np.iinfo(np.int32).max):
                raise ValueError(f"{name}: integer values do not fit netCDF3's int32")
            new = vals.astype(np.int32)
            attrs[_DTYPE_ATTR] = str(var.dtype)
        elif var.dtype == object:
            new = var.values.astype(str)
        else:
            continue
        out[name] = xr.Variable(var.dims, new, attrs)
    for name in out.variables:
        out.variables[name].encoding = {}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        out.to_netcdf(tmp, engine="scipy", format="NETCDF3_64BIT")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_dataset(path: str | os.PathLike) -> xr.Dataset:
    """Read a Dataset written by :func:`save_dataset` into memory (dtypes restored)."""
    with xr.open_dataset(path, engine="scipy") as f:
        ds = f.load()
    for name in list(ds.variables):
        var = ds.variables[name]
        kind = var.attrs.get(_DTYPE_ATTR)
        if kind is None:
            if var.dtype == object and all(isinstance(v, str) for v in var.values.ravel()):
                # netCDF3 char arrays come back as objects; make them str like the original.
                ds[name] = xr.Variable(var.dims, var.values.astype(str), var.attrs)
            continue
        attrs = {k: v for k, v in var.attrs.items() if k != _DTYPE_ATTR}
        ds[name] = xr.Variable(var.dims, var.values.astype(kind), attrs)
    return ds
