"""Backward-compatible entry point of the figures (kept for ``_figures_cli.py`` and scripts).

The figures now live one per module in :mod:`signaldrift.figures` (settings, experiment,
analysis and plot of each figure together, shared helpers in
:mod:`signaldrift.figures._common`). This module re-exports what the command line and older
code import from here.
"""

from __future__ import annotations

from .figures import (ALPHA_STD, ADAM_LR_STD, FIGURES, MODES, base_config, figure_F1,
                      figure_F2, figure_F3, figure_F4, figure_F5, figure_F6, figure_F7,
                      figure_F8, resolve_names, run_figures, script_main, settings)

__all__ = ["MODES", "FIGURES", "settings", "base_config", "figure_F1", "figure_F2",
           "figure_F3", "figure_F4", "figure_F5", "figure_F6", "figure_F7", "figure_F8",
           "run_figures", "resolve_names", "script_main", "ADAM_LR_STD", "ALPHA_STD"]
