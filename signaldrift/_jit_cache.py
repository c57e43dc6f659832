"""Keep Numba's on-disk cache consistent with the package's source.

Numba's ``cache=True`` keys a function's cached machine code on its own source file only:
when ``_rng.py`` changes, the cached ``_kernels.lora_run`` (which inlined the old sampler)
is still loaded. :func:`purge_stale` stores a fingerprint of every source file of the
package next to the cache (``__pycache__/signaldrift-jit.stamp``) and, when the fingerprint
differs, deletes the package's ``*.nbi``/``*.nbc`` files before any kernel is loaded, so
that every kernel compiles from the current sources. A pip upgrade rewrites every file
anyway; this guards editable installs and checkouts (a ``git pull``, a branch switch, an
edit). With ``NUMBA_CACHE_DIR`` set, Numba caches elsewhere and nothing is done here.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["fingerprint", "purge_stale"]

_ROOT = Path(__file__).resolve().parent
_DIRS = (_ROOT, _ROOT / "_generated")
_STAMP = "signaldrift-jit.stamp"


def fingerprint() -> str:
    """SHA-256 (16 hex digits) of the package's ``.py`` files that Numba may compile
    (the package and ``_generated/``), by name and content."""
    h = hashlib.sha256()
    for folder in _DIRS:
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def purge_stale() -> bool:
    """Delete the package's Numba cache files if the sources changed since they were
    written; returns whether anything was deleted. Never raises (a read-only install
    keeps its cache, which its unchanged sources make current)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return False
    try:
        stamp_file = _ROOT / "__pycache__" / _STAMP
        current = fingerprint()
        if stamp_file.exists() and stamp_file.read_text().strip() == current:
            return False
        deleted = False
        for folder in _DIRS:
            cache = folder / "__pycache__"
            for pattern in ("*.nbi", "*.nbc"):
                for path in cache.glob(pattern):
                    path.unlink(missing_ok=True)
                    deleted = True
        stamp_file.parent.mkdir(exist_ok=True)
        tmp = stamp_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(current + "\n")
        tmp.replace(stamp_file)
        return deleted
    except OSError:
        return False
