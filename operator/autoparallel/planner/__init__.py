"""The planner: pure functions from a model and a cluster to ranked parallel configurations."""

from autoparallel.planner.api import analyze, best_config, check_memory_requirements, estimate_cost
from autoparallel.planner.errors import (
    AutoParallelError,
    InsufficientMemoryError,
    InvalidConfigurationError,
    ModelNotFoundError,
)

__all__ = [
    "AutoParallelError",
    "InsufficientMemoryError",
    "InvalidConfigurationError",
    "ModelNotFoundError",
    "analyze",
    "best_config",
    "check_memory_requirements",
    "estimate_cost",
]
