"""signaldrift: a theoretical simulator for the Signal-Drift framework of LoRA scaling.

The public API is what this module exports (``__all__``); modules whose names start with an
underscore are private and may change. The model is specified in docs/THEORY.md.
"""

from ._analysis import (
    bracket_position,
    divergence_threshold,
    fit_power_law,
    loglog_slope,
    optimal_alpha,
    optimisation_gap,
)
from ._config import ConfigError, SimConfig
from ._escape import escape_step, plateau_coefficient, predict_escape_step
from ._flow import simulate_flow
from ._init import init_adapter
from ._reduced import sample_overlaps, simulate_reduced
from ._reference import simulate_reference
from ._result import SimulationResult
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._sharpness import dense_hessian, hessian_operator, sharpness, sharpness_at_init
from ._simulate import simulate
from ._sweep import FailedRun, config_at, load_dataset, run_configs, run_sweep, save_dataset
from ._task import Task, make_task

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FailedRun",
    "SampleStream",
    "SimConfig",
    "SimulationResult",
    "Task",
    "bracket_position",
    "config_at",
    "dense_hessian",
    "divergence_threshold",
    "escape_step",
    "fit_power_law",
    "hessian_operator",
    "init_adapter",
    "learning_rates",
    "load_dataset",
    "loglog_slope",
    "make_task",
    "optimal_alpha",
    "optimisation_gap",
    "plateau_coefficient",
    "predict_escape_step",
    "run_configs",
    "run_sweep",
    "sample_overlaps",
    "save_dataset",
    "scale_factor",
    "sharpness",
    "sharpness_at_init",
    "simulate",
    "simulate_flow",
    "simulate_reduced",
    "simulate_reference",
]
