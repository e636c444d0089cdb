"""spec.scaling on the real control plane: the plan reserves minReplicas and caps maxReplicas at what the pool
holds; an HPA the API server accepts (no KEDA), replaced by KEDA's ScaledObject (its CRD from KEDA's Go module)
once KEDA is served; a replica count set by the autoscaler is never reset by the operator."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from kubernetes import client

from kube import KubeCluster, wait_for
from nodes import NODEPOOLS

from .conftest import Operator, example
from .pd import children, create, get, patch_spec, wait_condition
from .third_party import custom_objects, installed_crd, served

KEDA_CRD = "scaledobjects.keda.sh"


NAME = "llama70b-autoscaled"


def _autoscaled(max_replicas: int = 100) -> dict[str, Any]:
    body = example("llama70b-autoscaled.yaml")
    body["spec"]["scaling"]["maxReplicas"] = max_replicas  # above what the test's H100 pool holds
    return body


def _hpas(kube_cluster: KubeCluster, namespace: str) -> list[Any]:
    return client.AutoscalingV2Api(kube_cluster.api_client).list_namespaced_horizontal_pod_autoscaler(namespace).items


def test_an_hpa_between_planned_bounds_and_the_autoscalers_count_stands(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    if served(kube_cluster, KEDA_CRD) is not None:
        pytest.skip(f"this cluster serves {KEDA_CRD} (installed by someone else): the HPA case cannot be shown")
    create(kube_cluster, pd_namespace, _autoscaled())
    pd = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=90)
    plan = pd["status"]["plan"]
    assert plan["data"] == 1
    pools = yaml.safe_load(NODEPOOLS.read_text())["pools"]
    h100_nodes = next(pool["count"] for pool in pools if pool["name"] == "h100")  # the session's copy of it
    holds = h100_nodes * (8 // plan["gpusPerReplica"])
    assert plan["maxReplicas"] == holds and f"maxReplicas 100 is capped at {holds}" in plan["reason"]
    [hpa] = wait_for(lambda: _hpas(kube_cluster, pd_namespace), timeout=30, description="the HPA")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, plan["maxReplicas"])
    assert hpa.spec.scale_target_ref.name == NAME
    # The autoscaler (here: the test in its place) sets the count; a new plan re-applies every child and keeps it.
    apps = client.AppsV1Api(kube_cluster.api_client)
    apps.patch_namespaced_deployment_scale(NAME, pd_namespace, {"spec": {"replicas": 2}})
    patch_spec(kube_cluster, pd_namespace, NAME, {"scaling": {"minReplicas": 1, "maxReplicas": 100, "target": "4"}})

    def retargeted() -> Any:
        hpas = _hpas(kube_cluster, pd_namespace)
        target = hpas[0].spec.metrics[0].pods.target.average_value if hpas else None
        return hpas[0] if str(target) == "4" else None

    wait_for(retargeted, timeout=60, description="the HPA of the new plan")

    def replanned() -> str | None:
        plan_hash: str = get(kube_cluster, pd_namespace, NAME)["status"]["plan"]["hash"]
        return plan_hash if plan_hash != plan["hash"] else None

    new = wait_for(replanned, timeout=60, description="the new plan in the status")
    [deployment] = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Deployment"]
    assert deployment.metadata.annotations["autoparallel.io/plan-hash"] == new  # re-applied by the new plan …
    assert deployment.spec.replicas == 2  # … without resetting the autoscaler's count


def test_keda_replaces_the_hpa_once_served(operator: Operator, kube_cluster: KubeCluster, pd_namespace: str) -> None:
    create(kube_cluster, pd_namespace, _autoscaled())
    pd = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=90)
    max_replicas = pd["status"]["plan"]["maxReplicas"]
    with installed_crd(kube_cluster, KEDA_CRD):

        def scaled_objects() -> list[Any]:
            return custom_objects(kube_cluster, pd_namespace, "keda.sh", "v1alpha1", "scaledobjects")

        [scaled] = wait_for(scaled_objects, timeout=60, description="the ScaledObject")
        assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, max_replicas)
        assert scaled["spec"]["scaleTargetRef"]["name"] == NAME
        assert scaled["spec"]["triggers"][0]["type"] == "prometheus"
        wait_for(lambda: not _hpas(kube_cluster, pd_namespace), timeout=60, description="the HPA replaced")
