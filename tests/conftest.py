"""Shared test configuration: the ``slow`` marker, and the kernels compiled in two
processes at once when Numba's cache is cold (a fresh clone, CI).

The slowest end-to-end checks are marked ``slow``. CI (``make test``) runs everything; a
developer can skip them while iterating::

    python -m pytest -m "not slow"

Tests in this folder mark themselves with ``@pytest.mark.slow``; the ones listed in
:data:`SLOW` (end-to-end commands in modules owned elsewhere) are marked here, by node id.
"""

from __future__ import annotations

import pytest

#: End-to-end checks that take 5–25 s each on a 2-core machine (``--durations`` output).
SLOW = frozenset({
    "tests/test_derivations.py::test_derive_check_passes_end_to_end",
    "tests/test_derivations.py::test_scripts_run_and_import",
    "tests/test_derivations.py::test_cli_check_fails_on_stale_generated_code",
    "tests/test_crosscheck.py::test_full_crosscheck_command_passes_on_cpu",
})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("[")[0] in SLOW:
            item.add_marker(pytest.mark.slow)


def pytest_sessionstart(session):
    """On a cold Numba cache (a fresh clone, as in CI), compile the kernels before the
    first test, split in two halves compiled side by side: the LoRA block kernel here;
    the reduced engine's, the sharpness kernels and full fine-tuning's block kernel in a
    forked child that writes them to the on-disk cache (the figures' own warm-up,
    :func:`signaldrift.figures._warm_up`). One process would compile them one after
    another as tests first call them, about a minute and a half longer on 2 cores. With a
    warm cache this does nothing (each test loads what it calls)."""
    from signaldrift._compile import kernels_cold

    if kernels_cold(("lora", "full", "sharpness")):
        from signaldrift.figures import _warm_up

        _warm_up()
