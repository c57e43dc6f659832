"""Output paths, checked before any work: a command that cannot write its result must say
so at once (one line, exit 2), not after the computation.

:func:`check_output_file` and :func:`check_output_dir` raise :class:`ConfigError` naming the
flag. Writability is probed by creating (and removing) a temporary file in the folder,
because permission bits do not tell the whole truth (read-only mounts; root ignores them).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ._config import ConfigError

__all__ = ["check_output_file", "check_output_dir", "check_input_file"]


def _writable(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else the reason."""
    try:
        fd, name = tempfile.mkstemp(prefix=".signaldrift-probe-", dir=folder)
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(fd)
    os.unlink(name)
    return None


def _is_root() -> bool:
    return getattr(os, "geteuid", lambda: -1)() == 0


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def _check_folder(folder: Path, flag: str, *, create: bool) -> None:
    """``folder`` must be a writable folder; with ``create`` it may be missing if its
    nearest existing ancestor is a writable folder (it is created later, by the writer)."""
    shown = str(folder) or "."
    if folder.exists():
        if not folder.is_dir():
            raise ConfigError(f"{flag}: {shown!r} is not a folder")
        why = _writable(folder)
        if why:
            raise ConfigError(f"{flag}: cannot write in folder {shown!r} ({why})")
        return
    if not create:
        raise ConfigError(f"{flag}: folder {shown!r} does not exist")
    anc = _nearest_existing(folder.absolute())
    if not anc.is_dir():
        raise ConfigError(f"{flag}: cannot create folder {shown!r}: {str(anc)!r} is a file")
    why = _writable(anc)
    if why:
        raise ConfigError(f"{flag}: cannot create folder {shown!r} in {str(anc)!r} ({why})")


def check_output_file(path: str | os.PathLike, *, flag: str = "--out",
                      suffix: str | None = None, create_folder: bool = False) -> Path:
    """Check that a file can be written at ``path``, without writing it.

    **Arguments:**
    - `path`: the file to be written (replaced if it exists).
    - `flag`: the option named in the message.
    - `suffix`: the required extension (e.g. ``".npz"``), or None.
    - `create_folder`: whether a missing parent folder is allowed (the writer creates it).

    **Returns:** ``path`` as a :class:`~pathlib.Path`.
    Raises :class:`ConfigError` (one line): wrong suffix, ``path`` is a folder, its folder
    does not exist (unless `create_folder`) or is not writable, or the file exists and
    cannot be replaced.
    """
    p = Path(path)
    if suffix is not None and p.suffix != suffix:
        raise ConfigError(f"{flag}: must be a path ending in {suffix}, got {str(path)!r}")
    if p.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a folder; give a file name"
                          + (f" ending in {suffix}" if suffix else ""))
    _check_folder(p.parent, flag, create=create_folder)
    if p.exists() and not os.access(p, os.W_OK) and not _is_root():
        # The writers replace the file (os.replace), which needs only the folder; but a
        # write-protected file is a sign the user did not mean it to be overwritten.
        raise ConfigError(f"{flag}: {str(path)!r} exists and is write-protected")
    return p


def check_output_dir(path: str | os.PathLike, *, flag: str = "--out") -> Path:
    """Check that ``path`` is (or can be created as) a folder we can write in.

    **Returns:** ``path`` as a :class:`~pathlib.Path`.
    Raises :class:`ConfigError` (one line): ``path`` is a file, or it (or its nearest
    existing ancestor) is not writable.
    """
    p = Path(path)
    _check_folder(p, flag, create=True)
    return p


def check_input_file(path: str | os.PathLike, *, flag: str) -> Path:
    """Check that ``path`` is a readable file (not a folder).

    Raises :class:`ConfigError` (one line) otherwise.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{flag}: file not found: {str(path)!r}")
    if p.is_dir():
        raise ConfigError(f"{flag}: {str(path)!r} is a folder; give a file")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{flag}: cannot read {str(path)!r} (permission denied)")
    return p
