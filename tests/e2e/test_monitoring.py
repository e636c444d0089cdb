"""The Prometheus Operator integration on the real control plane: no PodMonitor CRD, no PodMonitor and no error;
once the CRD (the Prometheus Operator's own, generated from its Go API module by hack/build-crds.sh) is served,
one PodMonitor per serving resource, for resources that existed before the CRD too, and none for training."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from kube import KubeCluster, wait_for

from .conftest import Operator, example
from .pd import create, wait_condition
from .third_party import custom_objects, installed_crd, served

CRD_NAME = "podmonitors.monitoring.coreos.com"


def _pod_monitors(kube_cluster: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    return custom_objects(kube_cluster, namespace, "monitoring.coreos.com", "v1", "podmonitors")


@pytest.fixture
def pod_monitor_crd(kube_cluster: KubeCluster) -> Iterator[str]:
    """The PodMonitor CRD, installed by this test unless the cluster has it (then it is left as it is)."""
    with installed_crd(kube_cluster, CRD_NAME) as name:
        yield name


def test_without_the_crd_there_is_no_pod_monitor_and_no_error(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    if served(kube_cluster, CRD_NAME) is not None:
        pytest.skip(f"this cluster serves {CRD_NAME} (installed by someone else): the no-CRD case cannot be shown")
    body = example("moe-mixtral.yaml")
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, body["metadata"]["name"], "Ready", "True", timeout=90)
    assert all(c["status"] != "True" for c in pd["status"]["conditions"] if c["type"] == "Degraded")
    assert served(kube_cluster, CRD_NAME) is None  # and the operator fixture asserts that the operator raised nothing


def test_one_pod_monitor_per_serving_resource_once_the_crd_is_served(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str, request: pytest.FixtureRequest
) -> None:
    before = example("moe-mixtral.yaml")
    create(kube_cluster, pd_namespace, before)
    pd = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    request.getfixturevalue("pod_monitor_crd")
    # A resource that existed before the CRD gets its PodMonitor when the operator sees the CRD.
    [monitor] = wait_for(
        lambda: _pod_monitors(kube_cluster, pd_namespace),
        timeout=60,
        description="the PodMonitor of the resource created before the CRD",
    )
    assert monitor["metadata"]["name"] == "mixtral"
    assert monitor["metadata"]["ownerReferences"][0]["uid"] == pd["metadata"]["uid"]
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics"}]
    pods = kube_cluster.core.list_namespaced_pod(
        pd_namespace,
        label_selector=",".join(f"{k}={v}" for k, v in monitor["spec"]["selector"]["matchLabels"].items()),
    ).items
    assert len(pods) == pd["status"]["plan"]["pods"]  # it selects exactly the serving pods
    # A new serving resource gets one at once; a training resource none.
    create(kube_cluster, pd_namespace, example("llama70b.yaml"))
    wait_condition(kube_cluster, pd_namespace, "llama70b", "Ready", "True", timeout=120)
    create(kube_cluster, pd_namespace, example("training-llama8b.yaml"))
    wait_condition(kube_cluster, pd_namespace, "train-llama8b", "Planned", "True", timeout=60)
    names = wait_for(
        lambda: (
            sorted(m["metadata"]["name"] for m in _pod_monitors(kube_cluster, pd_namespace))
            if len(_pod_monitors(kube_cluster, pd_namespace)) >= 2
            else None
        ),
        timeout=60,
        description="a PodMonitor for the second serving resource",
    )
    assert names == ["llama70b", "mixtral"]
