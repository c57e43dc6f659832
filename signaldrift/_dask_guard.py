"""Keep xarray from importing Dask where no Dask object can exist (a local command).

xarray asks "is this a Dask array?" and "which Dask scheduler is active?" by importing
``dask.array`` and ``dask.distributed`` whenever Dask is *installed* (it is, with the
``dask`` extra): half a second of a ``signaldrift sweep`` process whose arrays are all
NumPy. While Dask has not been imported, no Dask array and no Dask scheduler can exist, so
the answer is known: :func:`dask_hidden_from_xarray` makes ``import dask`` fail for the
duration (``sys.modules[name] = None``, the documented way to block an import), which
xarray reads as "Dask not installed". The written netCDF bytes are the same (a test).

Used by the command line only (``sweep`` without ``--scheduler``, ``figures``); the
library never hides anything from its caller.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

__all__ = ["dask_hidden_from_xarray"]

_HIDDEN = ("dask", "distributed")


@contextlib.contextmanager
def dask_hidden_from_xarray() -> Iterator[bool]:
    """Within the block, ``import dask`` and ``import distributed`` raise ImportError,
    unless one of them is imported already (then nothing changes).

    xarray is imported first, so that its import-time checks see the real installation;
    its cached answers are cleared on entering and on leaving (and the entries removed), so
    later Dask use in the same process works. With an xarray whose caches are not where
    :func:`_xarray_dask_caches` looks, nothing is hidden.

    Yields:
        True if Dask is hidden in the block, False if it was already imported.
    """
    if any(name in sys.modules for name in _HIDDEN):
        yield False
        return
    caches = _xarray_dask_caches()
    if caches is None:  # an xarray whose lookups we do not know: hide nothing
        yield False
        return
    clear_available, duck_modules = caches
    for name in _HIDDEN:
        sys.modules[name] = None  # type: ignore[assignment]
    clear_available()
    try:
        yield True
    finally:
        for name in _HIDDEN:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        clear_available()
        duck_modules.pop("dask", None)


def _xarray_dask_caches():
    """xarray's two cached answers to "is Dask available?": ``module_available`` (an
    ``lru_cache``; its ``cache_clear``) and the duck-array module cache of
    ``xarray.namedarray.pycompat``; None if this xarray does not have them. xarray is
    imported here, so that its import-time checks see the real installation."""
    try:
        from xarray.namedarray import pycompat, utils

        return utils.module_available.cache_clear, pycompat._cached_duck_array_modules
    except (ImportError, AttributeError):
        return None
