"""The planner's error classes: each message names the offending field and the nearest fix."""


class AutoParallelError(Exception):
    """Base class of every error the planner raises on bad input."""


class ModelNotFoundError(AutoParallelError):
    """The model id, path or config cannot be resolved to a model configuration."""


class InsufficientMemoryError(AutoParallelError):
    """No parallel configuration of the model fits on the given hardware."""


class InvalidConfigurationError(AutoParallelError):
    """The cluster description, the model config or an option is malformed or contradictory."""
