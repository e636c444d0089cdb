"""autoparallel: plan tensor/pipeline/data/expert parallelism for LLMs and run them that way on Kubernetes.

The public planner API lives in :mod:`autoparallel.planner` and is re-exported here.
"""

from autoparallel.planner import (
    AutoParallelError,
    InsufficientMemoryError,
    InvalidConfigurationError,
    ModelNotFoundError,
    analyze,
    best_config,
    check_memory_requirements,
    estimate_cost,
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
