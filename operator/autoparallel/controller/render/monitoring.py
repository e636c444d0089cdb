"""The Prometheus Operator integration: a PodMonitor that scrapes vLLM's ``/metrics`` (``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``, …) from every serving pod, rendered only while the API server serves the
PodMonitor CRD (otherwise nothing: a cluster without the Prometheus Operator is not an error)."""

from __future__ import annotations

from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import MultiNodeBackend, ParallelDeploymentSpec, WorkloadType
from autoparallel.controller.plan import Owner
from autoparallel.controller.render.common import COMPONENT_INFERENCE, Manifest, object_meta
from autoparallel.controller.render.inference import HTTP_PORT_NAME, server_selector

POD_MONITOR = BY_KIND["PodMonitor"]
METRICS_PATH = "/metrics"
"""vLLM's OpenAI server serves Prometheus metrics on its API port."""


def render_pod_monitor(
    spec: ParallelDeploymentSpec,
    owner: Owner,
    plan_hash: str,
    backend: MultiNodeBackend | None,
    served: frozenset[str],
) -> list[Manifest]:
    """One PodMonitor ``<name>`` selecting the pods that run vLLM's server (the head of each multi-node group),
    when the CRD is ``served`` and the resource serves a model."""
    if POD_MONITOR.requires not in served or spec.workload.type is not WorkloadType.INFERENCE or spec.plan_only:
        return []
    selector = server_selector(owner, backend)
    return [
        {
            "apiVersion": POD_MONITOR.api_version,
            "kind": POD_MONITOR.kind,
            "metadata": object_meta(owner.name, plan_hash, owner, COMPONENT_INFERENCE),
            "spec": {
                "selector": {"matchLabels": selector},
                "podMetricsEndpoints": [{"port": HTTP_PORT_NAME, "path": METRICS_PATH}],
            },
        }
    ]
