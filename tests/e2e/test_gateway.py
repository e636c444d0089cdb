"""The Gateway API Inference Extension integration on the real control plane: spec.serving.gateway.inferencePool
renders nothing while the InferencePool CRD is missing, and an InferencePool of the vLLM servers, which the API
server accepts against the extension's own CRD, once it is served."""

from __future__ import annotations

from typing import Any

import pytest

from kube import KubeCluster, wait_for

from .conftest import Operator, example
from .pd import children, create, wait_condition
from .third_party import custom_objects, installed_crd, served

CRD_NAME = "inferencepools.inference.networking.k8s.io"


def _pools(kube_cluster: KubeCluster, namespace: str) -> list[dict[str, Any]]:
    return custom_objects(kube_cluster, namespace, "inference.networking.k8s.io", "v1", "inferencepools")


def test_an_inference_pool_only_once_the_crd_is_served(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    if served(kube_cluster, CRD_NAME) is not None:
        pytest.skip(f"this cluster serves {CRD_NAME} (installed by someone else): the no-CRD case cannot be shown")
    body = example("llama70b.yaml")
    body["spec"]["serving"] = {"gateway": {"inferencePool": True}}
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, "llama70b", "Ready", "True", timeout=90)
    assert not any(c["status"] == "True" for c in pd["status"]["conditions"] if c["type"] == "Degraded")
    with installed_crd(kube_cluster, CRD_NAME):
        [pool] = wait_for(lambda: _pools(kube_cluster, pd_namespace), timeout=60, description="the InferencePool")
        assert pool["metadata"]["ownerReferences"][0]["uid"] == pd["metadata"]["uid"]
        assert pool["spec"]["targetPorts"] == [{"number": 8000}]
        assert pool["spec"]["endpointPickerRef"]["name"] == "llama70b-epp"
        [deployment] = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Deployment"]
        assert pool["spec"]["selector"]["matchLabels"] == deployment.spec.selector.match_labels
