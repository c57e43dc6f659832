"""E λ_max(A₀ΣA₀ᵀ) at init where r is not ≪ d_eff: deterministic equivalent (Silverstein's
equation with the actual spectrum) and the mean of its top unit of mass (THEORY.md §4).

Run: `python derivations/init_sharpness.py [--check]`.
The logic lives in :mod:`signaldrift._derivations.init_sharpness` (so that an installed
package can run `signaldrift derive --check`); this script prints it.
"""

import sys

from signaldrift._derivations.init_sharpness import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["init_sharpness", *sys.argv[1:]]))
