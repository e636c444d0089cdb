"""Serving pods on a real cluster: the Hub token from a Secret (never a literal), user env references, and a
missing Secret reported as a condition and an Event while the plan stands."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from kube import KubeCluster, wait_for

from .conftest import Operator
from .pd import children, create, events, get, kubelet_reports, wait_condition

TOKEN = "hf_this-is-a-test-token-value"


def _gated(secret: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoparallel.io/v1alpha1",
        "kind": "ParallelDeployment",
        "metadata": {"name": "gated"},
        "spec": {
            "model": {"name": "meta-llama/Meta-Llama-3.1-8B", "tokenSecretRef": {"name": secret, "key": "token"}},
            "workload": {"sequenceLength": 4096, "batchSize": 8},
            "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
            "serving": {
                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                "envFrom": [{"configMapRef": {"name": "vllm-settings", "optional": True}}],
            },
        },
    }


def test_the_token_comes_from_the_secret_and_is_never_copied(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    kube_cluster.core.create_namespaced_secret(
        pd_namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": TOKEN})
    )
    create(kube_cluster, pd_namespace, _gated("hf-token"))
    pd = wait_condition(kube_cluster, pd_namespace, "gated", "Ready", "True", timeout=60)
    [deployment] = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Deployment"]
    container = deployment.spec.template.spec.containers[0]
    env = {e.name: e for e in container.env}
    assert env["HF_TOKEN"].value is None
    assert (env["HF_TOKEN"].value_from.secret_key_ref.name, env["HF_TOKEN"].value_from.secret_key_ref.key) == (
        "hf-token",
        "token",
    )
    assert env["POD_IP"].value_from.field_ref.field_path == "status.podIP"
    assert container.env_from[0].config_map_ref.name == "vllm-settings"
    everything = json.dumps([get(kube_cluster, pd_namespace, "gated"), deployment.to_dict()], default=str)
    assert TOKEN not in everything


def _kubelet_cannot_find(kube_cluster: KubeCluster, namespace: str, pod: client.V1Pod, message: str) -> None:
    """What the kubelet writes when a referenced Secret is missing."""
    waiting = {"waiting": {"reason": "CreateContainerConfigError", "message": message}}
    kubelet_reports(kube_cluster, namespace, pod, "Pending", state=waiting)


def test_a_missing_secret_is_a_condition_and_an_event_not_a_crash_loop(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    create(kube_cluster, pd_namespace, _gated("no-such-secret"))
    pd = wait_condition(kube_cluster, pd_namespace, "gated", "Planned", "True", timeout=60)
    pods = wait_for(
        lambda: children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Pod"],
        timeout=60,
        description="the serving pod",
    )
    message = 'secret "no-such-secret" not found'
    for pod in pods:
        _kubelet_cannot_find(kube_cluster, pd_namespace, pod, message)
    ready = wait_condition(kube_cluster, pd_namespace, "gated", "Ready", "False", "SecretNotFound", timeout=60)
    condition = next(c for c in ready["status"]["conditions"] if c["type"] == "Ready")
    assert message in condition["message"] and "create the Secret" in condition["message"]
    planned = next(c for c in ready["status"]["conditions"] if c["type"] == "Planned")
    assert planned["status"] == "True"  # the plan is right; the pod waits for the Secret
    wait_for(
        lambda: any(
            e.reason == "SecretNotFound" and e.type == "Warning" for e in events(kube_cluster, pd_namespace, "gated")
        ),
        timeout=30,
        description="a SecretNotFound warning event",
    )
    # Creating the Secret is the fix: once the kubelet starts the container the resource is Ready again.
    kube_cluster.core.create_namespaced_secret(
        pd_namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="no-such-secret"), string_data={"token": TOKEN}),
    )
    for pod in children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Pod"]:
        kube_cluster.core.delete_namespaced_pod(pod.metadata.name, pd_namespace)
    wait_condition(kube_cluster, pd_namespace, "gated", "Ready", "True", timeout=90)
