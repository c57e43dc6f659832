"""signaldrift: a theoretical simulator for the Signal-Drift framework of LoRA scaling.

The public API is what this module exports (``__all__``); modules whose names start with an
underscore are private and may change. The model is specified in docs/THEORY.md.

Heavy parts (sweeps with xarray, analysis with scipy.stats, the Hessian with scipy.sparse)
are imported on first use of one of their names (PEP 562), so ``import signaldrift`` stays
fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from ._jit_cache import purge_stale as _purge_stale_jit_cache

_purge_stale_jit_cache()  # before any cached kernel is loaded (signaldrift/_jit_cache.py)

from ._config import ConfigError, SimConfig  # noqa: E402
from ._result import SimulationResult  # noqa: E402
from ._task import Task, make_task  # noqa: E402

__version__ = "0.2.0"

#: public name -> private module that defines it (imported on first access)
_LAZY = {
    "bracket_position": "_analysis",
    "divergence_threshold": "_analysis",
    "fit_power_law": "_analysis",
    "loglog_slope": "_analysis",
    "optimal_alpha": "_analysis",
    "optimisation_gap": "_analysis",
    "init_adapter": "_init",
    "simulate_reference": "_reference",
    "SampleStream": "_sampling",
    "scale_factor": "_scaling",
    "learning_rates": "_schedules",
    "dense_hessian": "_sharpness",
    "hessian_operator": "_sharpness",
    "sharpness": "_sharpness",
    "sharpness_at_init": "_sharpness",
    "simulate": "_simulate",
    "simulate_block": "_simulate",
    "FailedRun": "_sweep",
    "config_at": "_sweep",
    "load_dataset": "_sweep",
    "run_configs": "_sweep",
    "run_sweep": "_sweep",
    "save_dataset": "_sweep",
    "simulate_reduced": "_reduced",
    "sample_overlaps": "_reduced",
    "simulate_flow": "_flow",
    "escape_step": "_escape",
    "plateau_coefficient": "_escape",
    "predict_escape_step": "_escape",
}

__all__ = sorted(["ConfigError", "SimConfig", "SimulationResult", "Task", "make_task",
                  *_LAZY])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        if name.startswith("_") and not name.startswith("__"):
            try:  # a private submodule, e.g. signaldrift._rng
                return importlib.import_module(f"{__name__}.{name}")
            except ModuleNotFoundError:
                pass
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
