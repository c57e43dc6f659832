"""Hessian of L(A, B), its HVP, the B-block and exact sharpness at B = 0 (THEORY.md §4).

Run: `python derivations/hessian.py [--check]`.
The logic lives in :mod:`signaldrift._derivations.hessian` (so that an installed package can
run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.hessian import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["hessian", *sys.argv[1:]]))
