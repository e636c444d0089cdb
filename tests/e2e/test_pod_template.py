"""spec.podTemplate on the real control plane: the user's labels, annotations and pod fields in every pod the
operator creates (a Deployment's, a multi-node LeaderWorkerSet's leaders and workers, a training Job's), and an
override that contradicts the plan refused with a condition and an Event, the existing pods left alone."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from kubernetes import client

from kube import KubeCluster, wait_for

from .conftest import Operator, example
from .pd import children, create, events, get, patch_spec, wait_condition

OVERRIDE: dict[str, Any] = {
    "metadata": {"labels": {"team": "llm"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "serviceAccountName": "llm-serving",
        "imagePullSecrets": [{"name": "registry"}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
        "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "10Gi"}}],
    },
}


def _with_override(body: dict[str, Any], container: str) -> dict[str, Any]:
    body = copy.deepcopy(body)
    override = copy.deepcopy(OVERRIDE)
    override["spec"]["containers"] = [
        {
            "name": container,
            "env": [{"name": "EXTRA", "value": "1"}],
            "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            "resources": {"requests": {"cpu": "3"}},
        }
    ]
    body["spec"]["podTemplate"] = override
    return body


def _assert_overridden(pod: client.V1Pod, container: str) -> None:
    assert pod.metadata.labels["team"] == "llm"
    assert pod.metadata.annotations["sidecar.istio.io/inject"] == "false"
    spec = pod.spec
    assert spec.service_account_name == "llm-serving"
    assert [s.name for s in spec.image_pull_secrets] == ["registry"]
    assert (spec.security_context.run_as_non_root, spec.security_context.run_as_user) == (True, 1000)
    assert any(t.key == "spot" for t in spec.tolerations)
    assert "scratch" in {v.name for v in spec.volumes}
    [main] = [c for c in spec.containers if c.name == container]
    assert {"EXTRA": "1"}.items() <= {e.name: e.value for e in main.env}.items()
    assert "/scratch" in {m.mount_path for m in main.volume_mounts}
    assert main.resources.requests["cpu"] == "3"
    assert int(main.resources.requests["nvidia.com/gpu"]) > 0  # the plan's GPUs stay


@pytest.fixture
def service_account(kube_cluster: KubeCluster, pd_namespace: str) -> str:
    account = client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="llm-serving"))
    kube_cluster.core.create_namespaced_service_account(pd_namespace, account)
    return "llm-serving"


@pytest.mark.parametrize(
    ("example_file", "container", "kind"),
    [
        ("multinode-405b.yaml", "vllm", "LeaderWorkerSet"),
        ("training-llama8b.yaml", "trainer", "Job"),
        ("moe-mixtral.yaml", "vllm", "Deployment"),
    ],
)
def test_every_pod_carries_the_overrides(
    operator: Operator,
    kube_cluster: KubeCluster,
    pd_namespace: str,
    service_account: str,
    example_file: str,
    container: str,
    kind: str,
) -> None:
    body = _with_override(example(example_file), container)
    name = body["metadata"]["name"]
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, name, "Ready", "True", timeout=120)
    kids = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    assert kids[kind], f"no {kind} rendered for {example_file}"
    plan = pd["status"]["plan"]

    def current_pods() -> list[client.V1Pod] | None:
        pods = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Pod"]
        live = [
            p
            for p in pods
            if p.metadata.deletion_timestamp is None
            and (p.metadata.annotations or {}).get("autoparallel.io/plan-hash") == plan["hash"]
        ]
        return live if len(live) == plan["pods"] else None

    pods = wait_for(current_pods, timeout=60, description="the pods of the plan, none terminating")
    for pod in pods:
        _assert_overridden(pod, container)


def test_a_conflicting_override_is_a_condition_and_the_pods_stay(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("moe-mixtral.yaml")
    name = body["metadata"]["name"]
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, name, "Ready", "True", timeout=90)
    uid, plan = pd["metadata"]["uid"], pd["status"]["plan"]
    before = {p.metadata.name for p in children(kube_cluster, pd_namespace, uid)["Pod"]}
    gpus = {"nvidia.com/gpu": str(plan["gpusPerPod"] * 2)}
    conflict = {"podTemplate": {"spec": {"containers": [{"name": "vllm", "resources": {"limits": gpus}}]}}}
    patch_spec(kube_cluster, pd_namespace, name, conflict)
    refused = wait_condition(kube_cluster, pd_namespace, name, "Planned", "False", "PodTemplateConflict", timeout=60)
    message = next(c["message"] for c in refused["status"]["conditions"] if c["type"] == "Planned")
    assert "spec.podTemplate.spec.containers[0].resources.limits[nvidia.com/gpu]" in message
    wait_for(
        lambda: any(
            e.reason == "PodTemplateConflict" and e.type == "Warning" for e in events(kube_cluster, pd_namespace, name)
        ),
        timeout=30,
        description="a PodTemplateConflict warning event",
    )
    # Nothing was applied: the pods of the last good plan keep serving.
    assert {p.metadata.name for p in children(kube_cluster, pd_namespace, uid)["Pod"]} == before
    assert get(kube_cluster, pd_namespace, name)["metadata"]["uid"] == uid
