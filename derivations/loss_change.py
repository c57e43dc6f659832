"""Exact one-step loss change L_{t+1} − L_t = ⟨G, ΔW⟩ + ½tr(ΔWΣΔWᵀ) (THEORY.md §3).

Run: `python derivations/loss_change.py [--check]`.
The logic lives in :mod:`signaldrift._derivations.loss_change` (so that an installed package can
run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.loss_change import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["loss_change", *sys.argv[1:]]))
