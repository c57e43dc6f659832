"""F3: signal ‖S‖ and drift ratio ρ against η and α (THEORY §3, P3).

Runs the simulations (cached in <out>/.cache), writes <out>/F3_signal_drift.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f3_signal_drift.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F3", sys.argv[1:]))
