"""The planner's error classes: each message names the offending field and the nearest fix."""


class AutoParallelError(Exception):
    """Base class of every error the planner raises on bad input."""


class ModelNotFoundError(AutoParallelError):
    """The model id, path or config cannot be resolved to a model configuration."""


class InsufficientMemoryError(AutoParallelError):
    """No parallel configuration of the model fits on the given hardware."""

    def __init__(self, message: str, gpus_needed: int | None = None) -> None:
        super().__init__(message)
        self.gpus_needed = gpus_needed
        """GPUs of the same products that would fit (None: no number of them would)."""


class InvalidConfigurationError(AutoParallelError):
    """The cluster description, the model config or an option is malformed or contradictory."""
