"""F9: the large-width limit of LoRA with the reduced engine (THEORY.md §4, §7).

Run: `python figures/f9_large_width.py [--quick | --full | --test] [--out DIR]`.
The experiment, analysis and plot live in :mod:`signaldrift.figures.f9_large_width`.
"""

import sys

from signaldrift.figures.f9_large_width import main

if __name__ == "__main__":
    sys.exit(main())
