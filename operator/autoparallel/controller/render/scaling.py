"""spec.scaling: the serving Deployment's replicas autoscaled on a vLLM metric between the planned bounds.

A KEDA ScaledObject (Prometheus trigger on the metric the PodMonitor scrapes) while the API server serves KEDA's
CRD, else a HorizontalPodAutoscaler on the same metric as a per-pod custom metric (served by an adapter such as
prometheus-adapter). Only the replica count changes with load, never tensor or pipeline degrees; the Deployment
leaves ``replicas`` to the autoscaler (the operator's server-side apply does not own the field).
"""

from __future__ import annotations

from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import ParallelDeploymentSpec, ScalingSpec
from autoparallel.controller.plan import Owner
from autoparallel.controller.render.common import COMPONENT_INFERENCE, Manifest, object_meta

SCALED_OBJECT = BY_KIND["ScaledObject"]
HPA = BY_KIND["HorizontalPodAutoscaler"]


def _target(owner: Owner) -> Manifest:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name}


def _query(scaling: ScalingSpec, owner: Owner) -> str:
    """The metric summed over the resource's serving pods (KEDA divides by the threshold per replica)."""
    return f'sum({scaling.metric}{{namespace="{owner.namespace}",pod=~"{owner.name}-[a-z0-9]+-[a-z0-9]+"}})'


def render_autoscaler(
    spec: ParallelDeploymentSpec, owner: Owner, plan_hash: str, max_replicas: int | None, served: frozenset[str]
) -> list[Manifest]:
    """The ScaledObject (KEDA served) or HorizontalPodAutoscaler ``<name>`` of a resource with spec.scaling."""
    scaling = spec.scaling
    if scaling is None or spec.plan_only or max_replicas is None:
        return []
    metadata = object_meta(owner.name, plan_hash, owner, COMPONENT_INFERENCE)
    if SCALED_OBJECT.requires in served:
        trigger = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": scaling.prometheus_url,
                "query": _query(scaling, owner),
                "threshold": scaling.target,
            },
        }
        spec_body: Manifest = {
            "scaleTargetRef": _target(owner),
            "minReplicaCount": scaling.min_replicas,
            "maxReplicaCount": max_replicas,
            "triggers": [trigger],
        }
        return [
            {
                "apiVersion": SCALED_OBJECT.api_version,
                "kind": SCALED_OBJECT.kind,
                "metadata": metadata,
                "spec": spec_body,
            }
        ]
    metric = {
        "type": "Pods",
        "pods": {
            "metric": {"name": scaling.metric},
            "target": {"type": "AverageValue", "averageValue": scaling.target},
        },
    }
    body: Manifest = {
        "scaleTargetRef": _target(owner),
        "minReplicas": scaling.min_replicas,
        "maxReplicas": max_replicas,
        "metrics": [metric],
    }
    return [{"apiVersion": HPA.api_version, "kind": HPA.kind, "metadata": metadata, "spec": body}]
