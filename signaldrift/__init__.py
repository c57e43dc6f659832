"""signaldrift: a theoretical simulator for the Signal-Drift framework of LoRA scaling.

The public API is what this module exports (``__all__``); modules whose names start with an
underscore are private and may change. The model is specified in docs/THEORY.md.
"""

from ._config import ConfigError, SimConfig
from ._init import init_adapter
from ._reference import simulate_reference
from ._result import SimulationResult
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._simulate import simulate
from ._task import Task, make_task

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "SampleStream",
    "SimConfig",
    "SimulationResult",
    "Task",
    "init_adapter",
    "learning_rates",
    "make_task",
    "scale_factor",
    "simulate",
    "simulate_reference",
]
