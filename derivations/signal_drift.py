"""One-step Signal-Drift decomposition ΔW = S + D and drift-ratio exponents (THEORY.md §3).

Run: `python derivations/signal_drift.py [--check]`.
The logic lives in :mod:`signaldrift._derivations.signal_drift` (so that an installed package can
run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.signal_drift import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["signal_drift", *sys.argv[1:]]))
