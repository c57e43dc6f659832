"""Backward-compatible names of the plot functions (THEORY.md §3–§6).

Each figure's plot function lives with the rest of that figure in
:mod:`signaldrift.figures` (``plot(ds, *, save_to=None, dpi=150) -> Figure``); it takes the
:class:`xarray.Dataset` the figure writes next to its image, so a figure can be redrawn from
its saved data:

    >>> import xarray as xr
    >>> from signaldrift._plotting import plot_rank_law
    >>> fig = plot_rank_law(xr.open_dataset("figures/out/F6_rank_law.nc"))  # doctest: +SKIP

With ``save_to``, a path ending in ``.png`` or ``.pdf`` writes that file, a path without one
of these suffixes writes both. The drawing conventions are in
:mod:`signaldrift.figures._common`.
"""

from __future__ import annotations

from .figures._common import save_figure
from .figures.f1_spectral_suppression import plot as plot_spectral_suppression
from .figures.f2_optimisation_gap import plot as plot_optimisation_gap
from .figures.f3_signal_drift import plot as plot_signal_drift
from .figures.f4_landscape import plot as plot_landscape
from .figures.f5_rank_stability import plot as plot_rank_stability
from .figures.f6_rank_law import plot as plot_rank_law
from .figures.f7_rule_comparison import plot as plot_rule_comparison
from .figures.f8_rank_law_widths import plot as plot_rank_law_widths

__all__ = [
    "plot_spectral_suppression",
    "plot_optimisation_gap",
    "plot_signal_drift",
    "plot_landscape",
    "plot_rank_stability",
    "plot_rank_law",
    "plot_rule_comparison",
    "plot_rank_law_widths",
    "save_figure",
]
