"""α is exactly the learning rate of B (THEORY.md §3): symbolic proof of the equivalence.

Run: `python derivations/equivalence.py [--check]`. The logic lives in
:mod:`signaldrift._derivations.equivalence`; the numeric check is
`tests/test_generality.py::test_alpha_is_the_learning_rate_of_B`.
"""

import sys

from signaldrift._derivations.equivalence import derive  # noqa: F401  (importable entry point)
from signaldrift._derive import main

if __name__ == "__main__":
    sys.exit(main(["equivalence", *sys.argv[1:]]))
