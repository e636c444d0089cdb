"""kopf handlers: each a few lines that forward to :mod:`reconcile`. Importing this module registers them.

Every handler is ``async``: a sync one runs in kopf's thread pool, where the start-up indexing of thousands of
objects waits behind whatever else holds a thread, and no handler here blocks."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from autoparallel.controller import capabilities, k8s, metrics
from autoparallel.controller.capabilities import OPTIONAL_CRDS
from autoparallel.controller.config import OperatorConfig
from autoparallel.controller.feedback import Endpoint, PodProblem, pod_problem, serving_endpoint
from autoparallel.controller.inventory import LABEL_OWNER_UID, NodeGPUs, PodGPUs, Reservation, node_gpus, pod_gpus
from autoparallel.controller.models import GROUP, PLURAL, VERSION
from autoparallel.controller.reconcile import (
    INTEGRATIONS_APPLIED,
    LEDGER,
    Snapshot,
    reconcile,
    resync_loop,
)
from autoparallel.controller.reservations import reservation_of
from autoparallel.controller.status import ChildReadiness, child_readiness

RESOURCE = (GROUP, VERSION, PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": "autoparallel"}
CONFIG = OperatorConfig.from_env()


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **kwargs: Any) -> None:
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.watching.server_timeout = CONFIG.watch_server_timeout
    settings.watching.client_timeout = CONFIG.watch_client_timeout
    settings.posting.level = logging.INFO
    k8s.configure_client()
    try:
        capabilities.SERVED = await k8s.served_crds(OPTIONAL_CRDS)
    except (ApiException, OSError):  # read again on every resync round
        capabilities.SERVED = frozenset()
    if CONFIG.metrics_port:
        metrics.serve(CONFIG.metrics_port)
    # Periodic resync runs as the operator's own task, not as a kopf timer: kopf guards timers with a
    # finalizer, which would leave resources stuck Terminating while the operator is down.
    memo.resync = asyncio.create_task(resync_loop(lambda: _snapshots(kwargs), CONFIG.resync_seconds))


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    memo.resync.cancel()


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster service account, else the kubeconfig named by KUBECONFIG at the time of login."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.index("", "v1", "nodes")
async def gpu_nodes(body: kopf.Body, **_: Any) -> dict[str, NodeGPUs]:
    node = node_gpus(body)
    return {node.name: node} if node else {}


@kopf.index("", "v1", "pods")
async def gpu_pods(body: kopf.Body, **_: Any) -> dict[str, PodGPUs]:
    return {pod.node: pod for pod in pod_gpus(body)}


@kopf.index("", "v1", "pods", labels={LABEL_OWNER_UID: kopf.PRESENT})
async def own_pod_problems(body: kopf.Body, **_: Any) -> dict[str, PodProblem]:
    """Our pods that cannot run: unschedulable, or their container cannot be created (a missing Secret)."""
    pod = pod_problem(body)
    return {pod.owner_uid: pod} if pod else {}


@kopf.index("", "v1", "pods", labels={LABEL_OWNER_UID: kopf.PRESENT})
async def serving_endpoints(body: kopf.Body, **_: Any) -> dict[str, Endpoint]:
    """Our ready vLLM servers, whose /metrics say what vLLM allocated."""
    endpoint = serving_endpoint(body)
    return {endpoint.owner_uid: endpoint} if endpoint else {}


async def _child(body: kopf.Body, **_: Any) -> dict[str, ChildReadiness]:
    readiness = child_readiness(body)
    owner = (body.get("metadata", {}).get("labels") or {}).get(LABEL_OWNER_UID)
    return {owner: readiness} if readiness and owner else {}


child_deployments = kopf.index("apps", "v1", "deployments", labels=MANAGED, id="child_deployments")(_child)
child_statefulsets = kopf.index("apps", "v1", "statefulsets", labels=MANAGED, id="child_statefulsets")(_child)
child_jobs = kopf.index("batch", "v1", "jobs", labels=MANAGED, id="child_jobs")(_child)
# Served only where LeaderWorkerSet is installed: kopf logs the resource as unresolved otherwise, and starts
# watching it when its CRD appears (kopf watches CRDs).
child_leader_worker_sets = kopf.index(
    "leaderworkerset.x-k8s.io", "v1", "leaderworkersets", labels=MANAGED, id="child_leader_worker_sets"
)(_child)


@kopf.index(*RESOURCE)
async def parallel_deployments(body: kopf.Body, **_: Any) -> dict[str, kopf.Body]:
    return {body["metadata"]["uid"]: body}


@kopf.index(*RESOURCE)
async def gpu_reservations(body: kopf.Body, **_: Any) -> dict[str, Reservation | None]:
    """What each resource's stored plan holds, parsed once per change of the resource."""
    return {body["metadata"]["uid"]: reservation_of(body)}


@dataclass(frozen=True)
class _Shared:
    """The cluster-wide part of every snapshot of one round, gathered once."""

    nodes: list[NodeGPUs]
    pods: list[PodGPUs]
    reservations: dict[str, Reservation | None]
    pods_by_owner: dict[str, list[PodGPUs]]
    schedulable: frozenset[str]
    served: frozenset[str]


def _shared(indices: Mapping[str, Any]) -> _Shared:
    nodes = [node for values in indices["gpu_nodes"].values() for node in values]
    pods = [pod for values in indices["gpu_pods"].values() for pod in values]
    by_owner: dict[str, list[PodGPUs]] = defaultdict(list)
    for pod in pods:
        if pod.owner_uid:
            by_owner[pod.owner_uid].append(pod)
    return _Shared(
        nodes=nodes,
        pods=pods,
        reservations={uid: next(iter(values), None) for uid, values in indices["gpu_reservations"].items()},
        pods_by_owner=by_owner,
        schedulable=frozenset(node.name for node in nodes if node.schedulable),
        served=capabilities.SERVED,
    )


def _snapshot(indices: Mapping[str, Any], uid: str, shared: _Shared | None = None) -> Snapshot:
    shared = shared or _shared(indices)
    children: list[ChildReadiness] = []
    for index in ("child_deployments", "child_statefulsets", "child_leader_worker_sets", "child_jobs"):
        children.extend(indices[index].get(uid, []))
    return Snapshot(
        nodes=shared.nodes,
        pods=shared.pods,
        children=children,
        problems=list(indices["own_pod_problems"].get(uid, [])),
        endpoints=list(indices["serving_endpoints"].get(uid, [])),
        reservations=shared.reservations,
        own_pods=shared.pods_by_owner.get(uid, []),
        schedulable_nodes=shared.schedulable,
        served=shared.served,
    )


def _snapshots(indices: Mapping[str, Any]) -> list[tuple[kopf.Body, Snapshot]]:
    """Every ParallelDeployment with what the indexes know about it (for the resync loop). The cluster gauges
    are refreshed here too, once a round: not on every node event (kwok and kubelets update every node's status
    every few seconds, and a thousand nodes would mean a thousand inventories a heartbeat)."""
    shared = _shared(indices)
    metrics.record_inventory_from(shared.nodes, shared.pods)
    return [
        (body, _snapshot(indices, uid, shared))
        for uid, bodies in indices["parallel_deployments"].items()
        for body in bodies
    ]


@kopf.on.resume(*RESOURCE)
@kopf.on.create(*RESOURCE)
@kopf.on.update(*RESOURCE)
async def on_change(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **kwargs: Any) -> None:
    await reconcile(body, patch, _snapshot(kwargs, body["metadata"]["uid"]), logger)


@kopf.on.delete(*RESOURCE, optional=True)
async def on_delete(namespace: str | None, name: str, uid: str | None, **_: Any) -> None:
    metrics.forget(namespace or "", name)
    if uid:
        LEDGER.forget(uid)
        INTEGRATIONS_APPLIED.pop(uid, None)
