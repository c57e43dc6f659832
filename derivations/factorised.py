"""Factorised kernels and their code generation (THEORY.md §2 "Cost").

Run: `python derivations/factorised.py [--check]`.
`python derivations/factorised.py --write` regenerates `signaldrift/_generated/`.
The logic lives in :mod:`signaldrift._derivations.factorised` (so that an installed package can
run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.factorised import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["factorised", *sys.argv[1:]]))
