"""The Gateway API Inference Extension integration: an InferencePool of the resource's vLLM servers, so that a
Gateway with an endpoint picker routes requests by each server's KV-cache and queue load. Rendered only with
``spec.serving.gateway.inferencePool`` and while the API server serves the InferencePool CRD."""

from __future__ import annotations

from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import MultiNodeBackend, ParallelDeploymentSpec, WorkloadType
from autoparallel.controller.plan import Owner
from autoparallel.controller.render.common import COMPONENT_INFERENCE, Manifest, object_meta
from autoparallel.controller.render.inference import server_selector

INFERENCE_POOL = BY_KIND["InferencePool"]


def render_inference_pool(
    spec: ParallelDeploymentSpec,
    owner: Owner,
    plan_hash: str,
    backend: MultiNodeBackend | None,
    served: frozenset[str],
) -> list[Manifest]:
    """One InferencePool ``<name>`` selecting the pods that run vLLM's server (the head of each multi-node
    group)."""
    serving = spec.serving
    gateway = serving.gateway if serving else None
    wanted = gateway is not None and gateway.inference_pool and spec.workload.type is WorkloadType.INFERENCE
    if not wanted or INFERENCE_POOL.requires not in served or spec.plan_only:
        return []
    assert serving is not None and gateway is not None
    selector = server_selector(owner, backend)
    picker = gateway.endpoint_picker
    return [
        {
            "apiVersion": INFERENCE_POOL.api_version,
            "kind": INFERENCE_POOL.kind,
            "metadata": object_meta(owner.name, plan_hash, owner, COMPONENT_INFERENCE),
            "spec": {
                "selector": {"matchLabels": selector},
                "targetPorts": [{"number": serving.port}],
                "endpointPickerRef": {
                    "name": picker.name or f"{owner.name}-epp",
                    "port": {"number": picker.port},
                    "failureMode": picker.failure_mode.value,
                },
            },
        }
    ]
