"""F2: optimisation gap at standard hyperparameters (THEORY §4, P2).

Runs the simulations (cached in <out>/.cache), writes <out>/F2_optimisation_gap.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f2_optimisation_gap.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F2", sys.argv[1:]))
