"""F8: the rank law across widths: does α*(r) converge as d grows; γ per (d, k, T) (THEORY §6, P6).

Runs the simulations (cached in <out>/.cache), writes <out>/F8_rank_law_widths.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures
(one module per figure).

    python figures/f8_rank_law_widths.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F8", sys.argv[1:]))
