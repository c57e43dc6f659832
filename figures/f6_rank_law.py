"""F6: the rank law α*(r) = c·r^γ with confidence intervals (THEORY §5, P6).

Runs the simulations (cached in <out>/.cache), writes <out>/F6_rank_law.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f6_rank_law.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F6", sys.argv[1:]))
