"""Operator settings, from ``AUTOPARALLEL_*`` environment variables (``autoparallel operator run`` sets them)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

DEFAULT_TRAINING_IMAGE = "autoparallel-training:0.1.0"
"""What ``docker build --target training -t autoparallel-training:0.1.0 .`` names the training image (no image is
published: push it to your registry and point ``--training-image`` / the chart's ``trainingImage`` there)."""


@dataclass(frozen=True)
class OperatorConfig:
    metrics_port: int = 8080
    """Port of the Prometheus ``/metrics`` endpoint (0 disables it)."""
    resync_seconds: float = 5.0
    """How often each ParallelDeployment's readiness is refreshed and its plan checked against the inventory."""
    watch_server_timeout: int = 300
    """Seconds the API server keeps a watch open before it restarts (kopf's server_timeout)."""
    watch_client_timeout: int = 330
    """Seconds the client waits on a silent watch before it reconnects."""
    log_format: str = "plain"
    """``plain`` or ``json``."""
    liveness_port: int = 8081
    """Port of kopf's liveness probe ``/healthz`` (0 disables it)."""
    gpu_prices: str = "{}"
    """JSON object of USD per GPU-hour by GPU name (``{"H100-80GB": 4.0}``), for the minimize_cost objective."""
    leader_elect: bool = False
    """Act only while holding the Lease ``leader_election_name`` (run several replicas, one active)."""
    leader_election_namespace: str = "default"
    """Namespace of the Lease (the chart sets the operator's own namespace)."""
    leader_election_name: str = "autoparallel-operator"
    """Name of the Lease."""
    training_image: str = DEFAULT_TRAINING_IMAGE
    """Image of the training pods whose resource leaves ``spec.training.image`` unset."""

    def prices(self) -> dict[str, float]:
        """The parsed ``gpu_prices``; a malformed value is a configuration error of the operator itself."""
        parsed = json.loads(self.gpu_prices)
        if not isinstance(parsed, dict) or not all(isinstance(v, int | float) for v in parsed.values()):
            raise ValueError(f"gpu_prices: expected a JSON object of numbers, got {self.gpu_prices!r}")
        return {str(k): float(v) for k, v in parsed.items()}

    @classmethod
    def from_env(cls) -> OperatorConfig:
        values: dict[str, object] = {}
        for field in fields(cls):
            raw = os.environ.get(f"AUTOPARALLEL_{field.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), field.name))
            values[field.name] = raw.strip().lower() in ("1", "true", "yes") if kind is bool else kind(raw)
        return cls(**values)  # type: ignore[arg-type]

    def to_env(self) -> dict[str, str]:
        return {f"AUTOPARALLEL_{field.name.upper()}": str(getattr(self, field.name)) for field in fields(self)}
