"""Exact reduced dynamics on the overlaps, gradient flow, balancedness (THEORY.md §7).

Run: `python derivations/reduced.py [--check]`.
`python derivations/reduced.py --write` regenerates `signaldrift/_generated/` (including
`reduced.py`). The logic lives in :mod:`signaldrift._derivations.reduced` (so that an
installed package can run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.reduced import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["reduced", *sys.argv[1:]]))
