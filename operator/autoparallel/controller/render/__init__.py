"""Renderers: pure functions from (ChosenPlan, ParallelDeploymentSpec, Owner) to the Kubernetes objects a
ParallelDeployment needs, as plain dicts ready for server-side apply.

Every child is named after the owner, lives in its namespace, is controlled by it (ownerReferences) and carries
the labels of :func:`labels` (``managed-by: autoparallel`` and ``autoparallel.io/owner-uid``: select on both to
find children to prune) and the ``autoparallel.io/plan-hash`` annotation.
"""

from __future__ import annotations

from autoparallel.controller.config import DEFAULT_TRAINING_IMAGE
from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH
from autoparallel.controller.models import MultiNodeBackend, ParallelDeploymentSpec, WorkloadType
from autoparallel.controller.plan import ChosenPlan, Owner
from autoparallel.controller.render.cache import render_cache
from autoparallel.controller.render.common import (
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    Manifest,
    children_selector,
    labels,
    owner_references,
)
from autoparallel.controller.render.gateway import render_inference_pool
from autoparallel.controller.render.inference import (
    LABEL_REPLICA,
    render_group_service,
    render_group_statefulset,
    render_inference_deployment,
    render_inference_service,
)
from autoparallel.controller.render.leaderworkerset import render_leader_worker_set
from autoparallel.controller.render.monitoring import render_pod_monitor
from autoparallel.controller.render.overrides import check_containers
from autoparallel.controller.render.scaling import render_autoscaler
from autoparallel.controller.render.training import render_training_job, render_training_service

__all__ = [
    "ANNOTATION_PLAN_HASH",
    "LABEL_COMPONENT",
    "LABEL_INSTANCE",
    "LABEL_MANAGED_BY",
    "LABEL_NAME",
    "LABEL_REPLICA",
    "Manifest",
    "children_selector",
    "labels",
    "owner_references",
    "render_children",
    "render_group_service",
    "render_group_statefulset",
    "render_inference_deployment",
    "render_inference_service",
    "render_integrations",
    "render_leader_worker_set",
    "render_training_job",
    "render_training_service",
]


def render_children(
    plan: ChosenPlan,
    spec: ParallelDeploymentSpec,
    owner: Owner,
    model_cached: bool = True,
    served: frozenset[str] = frozenset(),
    training_image: str = DEFAULT_TRAINING_IMAGE,
) -> list[Manifest]:
    """Every child of the ParallelDeployment: the weight cache first, then Services before the workloads that
    resolve them, then the children of the optional integrations whose CRDs are ``served``. Until the download
    Job has filled the cache (``model_cached`` False), only the cache. Training pods without spec.training.image
    run ``training_image`` (the operator's --training-image). Raises ``PodTemplateConflict`` when
    spec.podTemplate contradicts the plan."""
    check_containers(spec)
    cache = render_cache(spec, owner)
    if not model_cached:
        return cache
    backend = plan.multi_node_backend
    integrations = render_integrations(spec, owner, plan.plan_hash, backend, plan.max_replicas, served)
    return [*cache, *_workloads(plan, spec, owner, training_image), *integrations]


def render_integrations(
    spec: ParallelDeploymentSpec,
    owner: Owner,
    plan_hash: str,
    backend: MultiNodeBackend | None,
    max_replicas: int | None,
    served: frozenset[str],
) -> list[Manifest]:
    """The children that depend on which CRDs the API server serves: the PodMonitor, the autoscaler (KEDA's
    ScaledObject or an HPA) and the InferencePool. ``backend``: what runs multi-node replicas (None: a replica is
    one pod), which says which pods serve and what the autoscaler scales."""
    return [
        *render_pod_monitor(spec, owner, plan_hash, backend, served),
        *render_autoscaler(spec, owner, plan_hash, max_replicas, backend, served),
        *render_inference_pool(spec, owner, plan_hash, backend, served),
    ]


def _workloads(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, training_image: str) -> list[Manifest]:
    if spec.workload.type is WorkloadType.TRAINING:
        return [render_training_service(plan, spec, owner), render_training_job(plan, spec, owner, training_image)]
    if plan.nodes_per_replica == 1:
        return [render_inference_service(plan, spec, owner), render_inference_deployment(plan, spec, owner)]
    if plan.multi_node_backend is MultiNodeBackend.LEADER_WORKER_SET:
        return [render_inference_service(plan, spec, owner), render_leader_worker_set(plan, spec, owner)]
    groups: list[Manifest] = [render_inference_service(plan, spec, owner)]
    for replica in range(plan.degrees.data):
        groups += [
            render_group_service(plan, spec, owner, replica),
            render_group_statefulset(plan, spec, owner, replica),
        ]
    return groups
