"""Worker processes that never outlive their parent, and a clean stop on SIGINT / SIGTERM.

A sweep runs its configurations in a :class:`WorkerPool`: a fork-context
``ProcessPoolExecutor`` whose workers

- ignore SIGINT (a Ctrl-C in a terminal reaches the whole process group; the parent alone
  decides what happens),
- die with the parent, even after SIGKILL: ``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux,
  and on every system a thread that exits the worker when its parent process changes,
- are killed at once when the ``with`` block ends by an exception (the runs in progress are
  lost; the finished ones are already in the sweep's cache).

:func:`raise_on_signals` turns SIGINT and SIGTERM into :class:`Interrupted` (a
``KeyboardInterrupt``) in the main thread, so that ``with`` blocks and ``finally`` clauses
clean up; the CLI catches it and exits 130 (SIGINT) or 143 (SIGTERM) with one line.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["Interrupted", "raise_on_signals", "WorkerPool", "ignore_signals"]

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How often a worker checks that its parent is alive, where prctl is not available.
_WATCH_SECONDS = 0.5


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived. ``signum`` is the signal; ``exit_status`` 128 + signum
    (130 for SIGINT, 143 for SIGTERM); ``detail`` what was kept (set by the sweep)."""

    def __init__(self, signum: int, detail: str = "") -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.detail = detail

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def _raise(signum: int, frame: Any) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def raise_on_signals() -> Iterator[None]:
    """Inside the block, SIGINT and SIGTERM raise :class:`Interrupted` in the main thread.

    Only default dispositions are replaced (Python's SIGINT handler, SIGTERM's default
    action): a SIGINT ignored by the caller (a background job) stays ignored, and a handler
    installed by an outer block or by the application is left alone. Outside the main
    thread this does nothing. The previous handlers come back when the block ends.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    defaults = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL}
    old = {}
    for sig in _STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is defaults[sig]:
            old[sig] = current
            signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def ignore_signals() -> Iterator[None]:
    """Ignore SIGINT and SIGTERM inside the block (main thread only), e.g. while cleaning up
    after the first one, so that pressing Ctrl-C again cannot interrupt the cleanup."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- workers
def _set_parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent dies; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        return libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    """Exit this process as soon as its parent is no longer ``parent_pid`` (re-parented:
    the parent died)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        threading.Event().wait(_WATCH_SECONDS)


def _worker_start(parent_pid: int) -> None:
    """Initializer of every worker (runs first, in the worker)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # The parent blocked both signals around the fork (see WorkerPool.submit).
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="signaldrift-watch-parent").start()


class WorkerPool:
    """A fork-context process pool whose workers die with the parent (module docstring).

    Use as a context manager; :meth:`submit` as ``ProcessPoolExecutor.submit``. Leaving the
    block normally waits for the workers; leaving it by an exception (an interruption, an
    error) kills them at once and cancels what is pending.

    **Arguments:**
    - `workers`: number of processes.
    """

    def __init__(self, workers: int) -> None:
        self.workers = int(workers)
        self._executor: cf.ProcessPoolExecutor | None = None
        self.killed: list[int] = []

    def __enter__(self) -> "WorkerPool":
        ctx = multiprocessing.get_context("fork")
        self._executor = cf.ProcessPoolExecutor(
            max_workers=self.workers, mp_context=ctx, initializer=_worker_start,
            initargs=(os.getpid(),))
        return self

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> cf.Future:
        """Submit ``fn(*args)``. The first call forks the workers, with SIGINT and SIGTERM
        blocked so that none reaches a worker before it has set its own handlers (a signal
        that arrives meanwhile is delivered to the parent right after)."""
        assert self._executor is not None, "use WorkerPool as a context manager"
        if threading.current_thread() is not threading.main_thread():
            return self._executor.submit(fn, *args)
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            return self._executor.submit(fn, *args)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def pids(self) -> list[int]:
        """Process ids of the live workers."""
        procs = getattr(self._executor, "_processes", None) or {}
        return [pid for pid, p in list(procs.items()) if p.is_alive()]

    def kill(self) -> list[int]:
        """SIGKILL every worker, cancel pending work and reap the workers; returns the
        pids that were killed."""
        if self._executor is None:
            return []
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # A worker killed while sending a result leaves half a message in the result pipe,
        # and the executor's manager thread waits for the rest. The only other holder of
        # the pipe's write end is this process: closing it turns that wait into EOF, which
        # the manager handles as a broken pool, so that the shutdown below returns.
        result_queue = getattr(self._executor, "_result_queue", None)
        writer = getattr(result_queue, "_writer", None)
        if writer is not None:
            try:
                writer.close()
            except OSError:
                pass
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
        self.killed = pids
        return pids

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._executor is None:
            return
        if exc_type is None:
            self._executor.shutdown(wait=True)
            self._executor = None
            return
        with ignore_signals():
            self.kill()
