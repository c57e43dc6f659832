"""F4: the (η, α) landscape of final loss (THEORY §6, P4).

Runs the simulations (cached in <out>/.cache), writes <out>/F4_landscape.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f4_landscape.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F4", sys.argv[1:]))
