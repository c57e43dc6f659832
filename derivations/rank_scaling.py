"""First-step progress and update norm vs rank; rank-stable rules (THEORY.md §5).

Run: `python derivations/rank_scaling.py [--check]`.
The logic lives in :mod:`signaldrift._derivations.rank_scaling` (so that an installed package can
run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.rank_scaling import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["rank_scaling", *sys.argv[1:]]))
