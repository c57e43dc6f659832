"""signaldrift: a theoretical simulator for the Signal-Drift framework of LoRA scaling."""
from ._config import ConfigError, SimConfig
from ._init import init_adapter
from ._sampling import SampleStream
from ._scaling import scale_factor
from ._schedules import learning_rates
from ._task import Task, make_task
from ._result import SimulationResult
from ._simulate import simulate
from ._reference import simulate_reference
