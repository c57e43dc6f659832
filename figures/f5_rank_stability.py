"""F5: rank stability: first step and budget against r (THEORY §5, P5).

Runs the simulations (cached in <out>/.cache), writes <out>/F5_rank_stability.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f5_rank_stability.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F5", sys.argv[1:]))
