"""F7: LoRA-α vs LoRA vs rsLoRA across ranks.

Runs the simulations (cached in <out>/.cache), writes <out>/F7_rule_comparison.png, .pdf and .nc,
updates <out>/summary.json and prints this figure's summary. Settings: signaldrift.figures (one module per figure).

    python figures/f7_rule_comparison.py --quick --out figures/out
"""

import sys

from signaldrift.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("F7", sys.argv[1:]))
