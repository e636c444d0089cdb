"""Helpers to create ParallelDeployments and read what the operator reports about them."""

from __future__ import annotations

import urllib.request
from typing import Any

from kubernetes import client

from kube import KubeCluster, wait_for
from nodes import TestNodes

GROUP, VERSION, PLURAL = "autoparallel.io", "v1alpha1", "paralleldeployments"
TEST_NODES: TestNodes | None = None
"""The session's simulated GPU nodes (set by the e2e session fixture): every resource is placed on them."""


def custom(cluster: KubeCluster) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(cluster.api_client)


def create(cluster: KubeCluster, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create ``body`` restricted to the test session's own GPU nodes."""
    assert TEST_NODES is not None, "the e2e session fixture sets TEST_NODES"
    return custom(cluster).create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, TEST_NODES.place(body))


def get(cluster: KubeCluster, namespace: str, name: str) -> dict[str, Any]:
    return custom(cluster).get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)


def patch_spec(cluster: KubeCluster, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return custom(cluster).patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (body.get("status") or {}).get("conditions") or [] if c["type"] == type_), None)


def wait_condition(
    cluster: KubeCluster,
    namespace: str,
    name: str,
    type_: str,
    status: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    """Wait until condition ``type_`` has ``status`` (and ``reason``) for the current generation."""

    def check() -> dict[str, Any] | None:
        body = get(cluster, namespace, name)
        found = condition(body, type_)
        generation = body["metadata"]["generation"]
        if (
            found
            and found["status"] == status
            and (reason is None or found["reason"] == reason)
            and found.get("observedGeneration") == generation
        ):
            return body
        return None

    def observe() -> Any:  # the conditions name what holds the GPUs when the test's capacity is taken
        current = get(cluster, namespace, name).get("status") or {}
        return {"conditions": current.get("conditions"), "inventory": current.get("inventory")}

    return wait_for(
        check,
        timeout=timeout,
        description=f"{namespace}/{name} {type_}={status} ({reason or 'any reason'})",
        observe=observe,
    )


def events(cluster: KubeCluster, namespace: str, name: str) -> list[Any]:
    items = cluster.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    return [e for e in items if e.involved_object.kind == "ParallelDeployment"]


def leader_worker_sets(cluster: KubeCluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    """LeaderWorkerSets (the local control plane runs the LWS controller, so their CRD is served)."""
    found = custom(cluster).list_namespaced_custom_object(
        "leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", label_selector=selector
    )
    items: list[dict[str, Any]] = found["items"]
    return items


def children(cluster: KubeCluster, namespace: str, uid: str) -> dict[str, list[Any]]:
    selector = f"autoparallel.io/owner-uid={uid}"
    return {
        "Deployment": cluster.apps.list_namespaced_deployment(namespace, label_selector=selector).items,
        "StatefulSet": cluster.apps.list_namespaced_stateful_set(namespace, label_selector=selector).items,
        "LeaderWorkerSet": leader_worker_sets(cluster, namespace, selector),
        "Service": cluster.core.list_namespaced_service(namespace, label_selector=selector).items,
        "Job": cluster.batch.list_namespaced_job(namespace, label_selector=selector).items,
        "Pod": cluster.core.list_namespaced_pod(namespace, label_selector=selector).items,
    }


def scrape_metrics(port: int) -> str:
    """The operator's /metrics page (the operator under test serves it on 127.0.0.1)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def kubelet_reports(
    cluster: KubeCluster, namespace: str, pod: Any, phase: str, restarts: int = 0, **states: dict[str, Any]
) -> None:
    """Write into a pod's status what a kubelet would for its vllm container, not ready (kwok runs no kubelet,
    so a test plays its part): ``states`` are the container status's ``state`` and ``lastState``."""
    status = {
        "phase": phase,
        "conditions": [{"type": "Ready", "status": "False"}, {"type": "ContainersReady", "status": "False"}],
        "containerStatuses": [
            {
                "name": "vllm",
                "image": pod.spec.containers[0].image,
                "imageID": "",
                "ready": False,
                "restartCount": restarts,
                **states,
            }
        ],
    }
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": status})
