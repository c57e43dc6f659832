"""Shared test configuration: the ``slow`` marker.

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
