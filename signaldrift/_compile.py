"""Numba's first-run compile: tell the user, and compile once before workers fork.

The kernels are compiled with ``cache=True``: the first run on a machine (or after the
kernels' source changed) compiles them, which takes one to two minutes on 2 cores and would
otherwise look like a hang. :func:`announce_compile` prints one line on stderr when Numba's
on-disk cache holds no current compiled code for a kernel about to be used;
:func:`warm_up` compiles them in this process, so that forked workers inherit the compiled
code instead of each compiling its own copy (with the sharpness kernels, :func:`warm_sharpness`,
where a run measures λ_max).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import TextIO

__all__ = ["kernels_cold", "announce_compile", "warm_up", "warm_sharpness",
           "compile_in_parallel"]

#: The kernel each model's (or the sharpness measurement's) first call compiles: in
#: ``_kernels``, Lanczos's in ``_lanczos``.
_KERNELS = {"lora": "lora_block", "full": "full_block", "sharpness": "lanczos_max"}
_announced = False
# The kernels `simulate` calls first are named above; these are their names in the
# previous kernel design (one kernel per run), checked where the new ones do not exist.
_EARLIER = {"lora_block": "lora_segment", "full_block": "full_segment"}


def kernels_cold(models: Iterable[str] = ("lora", "full")) -> bool:
    """Whether a kernel of ``models`` ("lora", "full", or "sharpness": Lanczos) will be
    compiled (not loaded) by its next call in this process: not compiled here yet, and no
    current entry in Numba's cache index.

    A heuristic on Numba's cache internals; if they cannot be read, returns False.
    """
    try:
        from . import _kernels, _lanczos

        for model in set(models):
            name = _KERNELS.get(model, "")
            module = _lanczos if model == "sharpness" else _kernels
            kernel = getattr(module, name, None) or getattr(module, _EARLIER.get(name, ""),
                                                            None)
            if kernel is None or kernel.signatures:
                continue
            if not kernel._cache._cache_file._load_index():
                return True
    except Exception:  # noqa: BLE001 - a notice is not worth a failure
        return False
    return False


def announce_compile(models: Iterable[str] = ("lora", "full"), *,
                     stream: TextIO | None = None) -> bool:
    """Print ``compiling Numba kernels …`` once per process if :func:`kernels_cold`;
    returns whether the kernels are cold."""
    global _announced
    cold = kernels_cold(models)
    if cold and not _announced:
        _announced = True
        print("signaldrift: compiling Numba kernels (first run only, 1-2 minutes; "
              "later runs load them from the cache)...", file=stream or sys.stderr,
              flush=True)
    return cold


def warm_up(models: Iterable[str] = ("lora", "full")) -> None:
    """Compile (or load) the kernels of ``models`` in this process with tiny runs of the
    real simulator, covering population and minibatch gradients; with "sharpness" among
    ``models``, the sharpness kernels too (:func:`warm_sharpness`)."""
    from ._config import SimConfig
    from ._simulate import simulate

    tiny = SimConfig(d=8, m=8, task_rank=2, rank=2, steps=2, record_every=1)
    for model in sorted(set(models) & {"lora", "full"}):
        for batch in (0, 2):
            simulate(tiny.replace(model=model, batch=batch,
                                  optimizer="sgd" if model == "full" else "adam"))
    if "sharpness" in set(models):
        warm_sharpness()


def warm_sharpness() -> None:
    """Compile (or load) the sharpness kernels (:mod:`signaldrift._sharpness`) without the
    simulator's: Lanczos at B = 0 and B ≠ 0, with and without Adam's preconditioner, on
    n = 96 parameters (runs of more than 64 parameters never take the dense path)."""
    import numpy as np

    from ._config import SimConfig
    from ._init import init_adapter
    from ._sharpness import sharpness
    from ._task import make_task

    config = SimConfig(d=24, m=24, task_rank=2, rank=2)  # n = 96 parameters: Lanczos
    task = make_task(config)
    A, B = init_adapter(config, task)
    for B_at in (B, B + 0.1):
        sharpness(task, 1.0, A, B_at)
        sharpness(task, 1.0, A, B_at, precond_A=np.ones(A.shape), precond_B=np.ones(B.shape))


def compile_in_parallel(groups: Sequence[Callable[[], None]], *, cold: bool | None = None
                        ) -> None:
    """Run every callable of ``groups`` (each compiles some kernels, e.g. with tiny runs),
    the first here and each other one first in a forked child, side by side.

    Numba compiles one function at a time per process (a global lock), and a cold start
    compiles dozens of specialisations; the children write what they compile to Numba's
    on-disk cache (``cache=True``), so that the calls made here afterwards only load it.
    A child that fails costs nothing: the call here compiles what it did not. With a warm
    cache (``cold`` False; default :func:`kernels_cold`), or where ``os.fork`` is missing,
    the groups simply run here in turn.
    """
    groups = list(groups)
    if cold is None:
        cold = kernels_cold()
    children = []
    if cold and hasattr(os, "fork") and len(groups) > 1:
        for fn in groups[1:]:
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # the child: compile, write the cache, leave without cleanup
                code = 1
                try:
                    import signal

                    signal.signal(signal.SIGINT, signal.SIG_DFL)
                    from ._pool import _set_parent_death_signal

                    _set_parent_death_signal()
                    fn()
                    code = 0
                except BaseException:  # noqa: BLE001 - the parent compiles it instead
                    pass
                finally:
                    os._exit(code)
            children.append(pid)
    try:
        groups[0]()
        for pid in children:
            os.waitpid(pid, 0)
        children = []
    finally:
        for pid in children:  # interrupted: do not leave compiling children behind
            try:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
            except OSError:
                pass
    for fn in groups[1:]:
        fn()
