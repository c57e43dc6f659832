"""F1: spectral suppression of the LoRA Hessian (THEORY §4, P1).

Runs the simulations (cached in <out>/.cache), writes <out>/F1_spectral_suppression.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f1_spectral_suppression.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F1", sys.argv[1:]))
