"""GPU reservations: resources competing for one pool never get the same GPUs; the refused ones wait without
children and are planned, first come first served, once capacity frees up."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kube import KubeCluster, wait_for
from nodes import default_pools

from . import pd
from .conftest import Operator
from .pd import children, condition, create, get

POOL_LABEL = "autoparallel.io/test-pool"
POOL_GPUS = 16


@pytest.fixture
def contested_pool(kube_cluster: KubeCluster) -> Iterator[str]:
    """Two 8 × H100 nodes that only this test's resources select."""
    assert pd.TEST_NODES is not None
    pool = secrets.token_hex(3)
    [h100] = [p for p in default_pools() if p["name"] == "h100"]
    names = pd.TEST_NODES.add({**h100, "name": f"contested-{pool}", "count": 2}, {POOL_LABEL: pool})
    yield pool
    for name in names:
        pd.TEST_NODES.remove(name)


def _competitor(name: str, pool: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoparallel.io/v1alpha1",
        "kind": "ParallelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Meta-Llama-3.1-8B"},
            "workload": {"sequenceLength": 4096, "batchSize": 8},
            "parallelism": {"tensor": 8},  # one whole node each
            "placement": {"nodeSelector": {POOL_LABEL: pool}},
        },
    }


def _decided(kube_cluster: KubeCluster, namespace: str, names: list[str]) -> dict[str, dict[str, Any]] | None:
    """Every resource's body once each has a Planned condition for its generation; asserts on the way that the
    planned GPUs never exceed the pool."""
    bodies = {name: get(kube_cluster, namespace, name) for name in names}
    planned = [
        b for b in bodies.values() if (condition(b, "Planned") or {}).get("status") == "True" and b["status"]["plan"]
    ]
    total = sum(b["status"]["plan"]["gpus"] for b in planned)
    assert total <= POOL_GPUS, (
        f"{total} GPUs planned on a pool of {POOL_GPUS}: {[b['metadata']['name'] for b in planned]}"
    )
    for body in bodies.values():
        found = condition(body, "Planned")
        if not found or found.get("observedGeneration") != body["metadata"]["generation"]:
            return None
    return bodies


def _split(bodies: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    planned = sorted(n for n, b in bodies.items() if condition(b, "Planned")["status"] == "True")
    return planned, sorted(set(bodies) - set(planned))


def test_competing_resources_never_share_gpus_and_waiters_get_freed_capacity(
    contested_pool: str, operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    names = ["first", "second", "third", "fourth"]
    for name in names:  # back to back: the operator sees them all at once
        create(kube_cluster, pd_namespace, _competitor(name, contested_pool))
    bodies = wait_for(
        lambda: _decided(kube_cluster, pd_namespace, names), timeout=60, description="every resource decided"
    )
    planned, refused = _split(bodies)
    assert len(planned) == 2 and len(refused) == 2, {n: condition(b, "Planned")["message"] for n, b in bodies.items()}
    for name in refused:
        found = condition(bodies[name], "Planned")
        assert found["reason"] == "InsufficientGPUs"
        # The message names what holds the pool.
        assert all(f"{pd_namespace}/{holder}" in found["message"] for holder in planned), found["message"]
        assert not any(children(kube_cluster, pd_namespace, bodies[name]["metadata"]["uid"]).values())
    for name in planned:
        pd.wait_condition(kube_cluster, pd_namespace, name, "Ready", "True", timeout=60)

    client.CustomObjectsApi(kube_cluster.api_client).delete_namespaced_custom_object(
        pd.GROUP, pd.VERSION, pd_namespace, pd.PLURAL, planned[0]
    )
    remaining = [n for n in names if n != planned[0]]

    def one_more_planned() -> dict[str, dict[str, Any]] | None:
        decided = _decided(kube_cluster, pd_namespace, remaining)
        return decided if decided and any(n in refused for n in _split(decided)[0]) else None

    def state() -> dict[str, str]:
        return {
            n: (condition(get(kube_cluster, pd_namespace, n), "Planned") or {}).get("message", "") for n in remaining
        }

    after = wait_for(
        one_more_planned, timeout=60, description="a waiting resource planned on the freed node", observe=state
    )
    now_planned, still_refused = _split(after)
    assert len(now_planned) == 2 and len(still_refused) == 1 and still_refused[0] in refused
    waiter = next(n for n in now_planned if n in refused)
    ready = pd.wait_condition(kube_cluster, pd_namespace, waiter, "Ready", "True", timeout=60)
    assert len(children(kube_cluster, pd_namespace, ready["metadata"]["uid"])["Deployment"]) == 1
    last = get(kube_cluster, pd_namespace, still_refused[0])
    assert condition(last, "Planned")["reason"] == "InsufficientGPUs"
    assert not any(children(kube_cluster, pd_namespace, last["metadata"]["uid"]).values())
