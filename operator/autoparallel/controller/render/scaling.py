"""spec.scaling: the serving replicas (the Deployment's pods, or a LeaderWorkerSet's groups) autoscaled on a vLLM
metric between the planned bounds.

A KEDA ScaledObject (Prometheus trigger on the metric the PodMonitor scrapes) while the API server serves KEDA's
CRD, else a HorizontalPodAutoscaler on the same metric as a per-pod custom metric (served by an adapter such as
prometheus-adapter). Only the replica count changes with load, never tensor or pipeline degrees; the Deployment or
LeaderWorkerSet leaves ``replicas`` to the autoscaler (the operator's server-side apply does not own the field). A
LeaderWorkerSet's scale subresource selects the group leaders, the pods that serve and report the metric.
"""

from __future__ import annotations

from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import MultiNodeBackend, ParallelDeploymentSpec, ScalingSpec
from autoparallel.controller.plan import Owner
from autoparallel.controller.render.common import COMPONENT_INFERENCE, Manifest, object_meta
from autoparallel.controller.render.leaderworkerset import LEADER_WORKER_SET, leader_worker_set_name

SCALED_OBJECT = BY_KIND["ScaledObject"]
HPA = BY_KIND["HorizontalPodAutoscaler"]


def _target(owner: Owner, backend: MultiNodeBackend | None) -> Manifest:
    if backend is MultiNodeBackend.LEADER_WORKER_SET:
        lws = LEADER_WORKER_SET
        return {"apiVersion": lws.api_version, "kind": lws.kind, "name": leader_worker_set_name(owner)}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": owner.name}


def _query(scaling: ScalingSpec, owner: Owner, backend: MultiNodeBackend | None) -> str:
    """The metric summed over the resource's serving pods (KEDA divides by the threshold per replica): the
    Deployment's pods (<name>-<replicaset hash>-<suffix>) or the group leaders (<name>-lws-<group index>)."""
    if backend is MultiNodeBackend.LEADER_WORKER_SET:
        pods = f"{leader_worker_set_name(owner)}-[0-9]+"
    else:
        pods = f"{owner.name}-[a-z0-9]+-[a-z0-9]+"
    return f'sum({scaling.metric}{{namespace="{owner.namespace}",pod=~"{pods}"}})'


def render_autoscaler(
    spec: ParallelDeploymentSpec,
    owner: Owner,
    plan_hash: str,
    max_replicas: int | None,
    backend: MultiNodeBackend | None,
    served: frozenset[str],
) -> list[Manifest]:
    """The ScaledObject (KEDA served) or HorizontalPodAutoscaler ``<name>`` of a resource with spec.scaling,
    scaling its Deployment, or its LeaderWorkerSet when ``backend`` says so."""
    scaling = spec.scaling
    if scaling is None or spec.plan_only or max_replicas is None:
        return []
    metadata = object_meta(owner.name, plan_hash, owner, COMPONENT_INFERENCE)
    if SCALED_OBJECT.requires in served:
        trigger = {
            "type": "prometheus",
            "metadata": {
                "serverAddress": scaling.prometheus_url,
                "query": _query(scaling, owner, backend),
                "threshold": scaling.target,
            },
        }
        spec_body: Manifest = {
            "scaleTargetRef": _target(owner, backend),
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
        "scaleTargetRef": _target(owner, backend),
        "minReplicas": scaling.min_replicas,
        "maxReplicas": max_replicas,
        "metrics": [metric],
    }
    return [{"apiVersion": HPA.api_version, "kind": HPA.kind, "metadata": metadata, "spec": body}]
