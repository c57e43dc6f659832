"""Progress of sweeps on stderr, with ``tqdm`` (terminals, notebooks and log files).

:func:`sweep_bar` is the bar of one :func:`signaldrift.run_configs` call. Inside a
:func:`progress_group` every such call adds its runs to the group's single bar instead, so
that a command running several sweeps one after the other (``signaldrift figures``) shows
one overall progress.

Example::

    with progress_group("figures") as group:
        run_configs(configs_a)          # both advance the same bar
        group.set_stage("F2 (2/7)")
        run_configs(configs_b)
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TextIO

from tqdm.auto import tqdm

__all__ = ["sweep_bar", "progress_group", "ProgressGroup", "GroupLog"]

_ACTIVE: list["ProgressGroup"] = []


def _new_bar(desc: str, total: int, initial: int, stream: TextIO) -> tqdm:
    tty = bool(getattr(stream, "isatty", lambda: False)())
    # In a log file (not a terminal) a line every 10 s, not every 0.1 s.
    return tqdm(total=total, initial=initial, desc=desc, unit="run", file=stream,
                dynamic_ncols=tty, mininterval=0.1 if tty else 10.0,
                maxinterval=10.0 if tty else 60.0, smoothing=0.1)


class _Counts:
    def __init__(self) -> None:
        self.cached = self.diverged = self.failed = 0

    def postfix(self) -> dict[str, int]:
        return {"cached": self.cached, "diverged": self.diverged, "failed": self.failed}


class _Section:
    """The part of a bar that one sweep advances (its own bar, or a group's)."""

    def __init__(self, bar: tqdm | None, counts: _Counts, own: bool) -> None:
        self.bar, self.counts, self.own = bar, counts, own

    def advance(self, *, cached: int = 0, ran: int = 0, diverged: int = 0,
                failed: int = 0) -> None:
        """Count ``cached`` results read and ``ran`` runs finished (of which ``diverged``
        diverged and ``failed`` raised)."""
        c = self.counts
        c.cached += cached
        c.diverged += diverged
        c.failed += failed
        if self.bar is not None:
            self.bar.set_postfix(c.postfix(), refresh=False)
            self.bar.update(cached + ran)

    def close(self) -> None:
        if self.bar is not None and self.own:
            self.bar.close()


@contextlib.contextmanager
def sweep_bar(total: int, *, enabled: bool, desc: str = "sweep",
              stream: TextIO | None = None) -> Iterator[_Section]:
    """The progress of one sweep of ``total`` distinct runs (a no-op if not ``enabled``).

    Inside a :func:`progress_group` the runs are added to the group's bar.

    **Returns** (as the context value): an object with ``advance(cached=, ran=, diverged=,
    failed=)``.
    """
    if not enabled or total <= 0:
        yield _Section(None, _Counts(), own=False)
        return
    if _ACTIVE:
        group = _ACTIVE[-1]
        group.bar.total += total
        group.bar.refresh()
        yield _Section(group.bar, group.counts, own=False)
        return
    section = _Section(_new_bar(desc, total, 0, stream or sys.stderr), _Counts(), own=True)
    try:
        yield section
    finally:
        section.close()


class ProgressGroup:
    """One bar for every sweep run inside :func:`progress_group` (see the module docstring).
    The total grows as each sweep announces its runs."""

    def __init__(self, desc: str, stream: TextIO) -> None:
        self.desc = desc
        self.counts = _Counts()
        self.bar = _new_bar(desc, 0, 0, stream)

    def set_stage(self, text: str) -> None:
        """Show ``text`` (e.g. the figure being made) in the bar's description."""
        self.bar.set_description(f"{self.desc} {text}".strip(), refresh=True)

    def write(self, line: str) -> None:
        """Print ``line`` above the bar."""
        tqdm.write(line, file=self.bar.fp)

    def close(self) -> None:
        self.bar.close()


@contextlib.contextmanager
def progress_group(desc: str = "", *, enabled: bool = True,
                   stream: TextIO | None = None) -> Iterator[ProgressGroup | None]:
    """Gather the progress of every sweep run inside the block in one bar.

    **Returns** (as the context value): the :class:`ProgressGroup`, or None if not
    ``enabled``.
    """
    if not enabled:
        yield None
        return
    group = ProgressGroup(desc, stream or sys.stderr)
    _ACTIVE.append(group)
    try:
        yield group
    finally:
        _ACTIVE.remove(group)
        group.close()


class GroupLog:
    """A text stream for log lines that prints them above a group's bar, and shows the
    stage announced by lines like ``[figures] F3 signal_drift ...`` in the bar.

    **Arguments:**
    - `group`: the :class:`ProgressGroup`.
    - `total`: the number of stages (figures), shown as ``(i/total)``.
    """

    def __init__(self, group: ProgressGroup, total: int) -> None:
        self.group, self.total, self.stage = group, total, 0
        self._buf = ""

    def write(self, text: str) -> int:
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(line)
        return len(text)

    def _line(self, line: str) -> None:
        words = line.split()
        if len(words) >= 3 and words[0] == "[figures]" and words[-1] == "...":
            self.stage += 1
            self.group.set_stage(f"{words[1]} ({self.stage}/{self.total})")
        elif line.strip():
            self.group.write(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False
