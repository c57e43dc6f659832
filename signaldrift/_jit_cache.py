"""Keep Numba's on-disk cache consistent with the package's source.

Numba's ``cache=True`` keys a function's cached machine code on its own source file only:
when ``_rng.py`` changes, the cached ``_kernels.lora_block`` (which inlined the old sampler)
is still loaded. :func:`purge_stale` stores a fingerprint of the source files that can
reach compiled code (:func:`compiled_sources`) next to the cache
(``__pycache__/signaldrift-jit.stamp``) and, when the fingerprint differs, deletes the
package's ``*.nbi``/``*.nbc`` files before any kernel is loaded, so that every kernel
compiles from the current sources. A pip upgrade rewrites every file anyway; this guards
editable installs and checkouts (a ``git pull``, a branch switch, an edit). With
``NUMBA_CACHE_DIR`` set, Numba caches elsewhere and nothing is done here.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["compiled_sources", "fingerprint", "purge_stale"]

_ROOT = Path(__file__).resolve().parent
_DIRS = (_ROOT, _ROOT / "_generated")
_STAMP = "signaldrift-jit.stamp"


def fingerprint() -> str:
    """SHA-256 (16 hex digits) of the package's ``.py`` files that Numba may compile, by
    name and content: :func:`compiled_sources`."""
    h = hashlib.sha256()
    for path in compiled_sources():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def compiled_sources() -> list[Path]:
    """The source files whose content can end up in compiled code, sorted: every module of
    the package (and ``_generated/``) that mentions ``numba``, and, transitively, the
    package modules they import at module level (``from .x import …`` at the start of a
    line: the globals a jitted function reads are frozen into its machine code). An
    import inside a function cannot be read by jitted code and is not followed, so an
    edit of the command line or the sweep engine keeps the compiled kernels."""
    files = {p.relative_to(_ROOT).with_suffix("").as_posix().replace("/", "."): p
             for folder in _DIRS for p in folder.glob("*.py")}
    todo = [name for name, p in files.items() if b"numba" in p.read_bytes()]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for match in _IMPORT.finditer(files[name].read_bytes()):
            module, names = match.group(1).decode(), match.group(2).decode()
            targets = [module] if module else [n.split(" as ")[0].strip(" ()")
                                              for n in names.split(",")]
            todo.extend(t for t in targets if t in files)
    return sorted((files[name] for name in seen), key=lambda p: p.relative_to(_ROOT).as_posix())


_IMPORT = re.compile(rb"^from \.([\w.]*) import ([^\n]+)", re.M)


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
