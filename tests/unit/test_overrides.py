"""spec.podTemplate: what it adds to every pod, and every way it can contradict the plan (refused, never
dropped)."""

from __future__ import annotations

from typing import Any

import pytest

from autoparallel.controller.models import ParallelDeploymentSpec
from autoparallel.controller.plan import LABEL_PRODUCT, ChosenPlan, Owner
from autoparallel.controller.render import render_children
from autoparallel.controller.render.overrides import PodTemplateConflict
from autoparallel.planner.inference import Degrees

OWNER = Owner(name="m", namespace="ns", uid="0b1e4c8a-3d2f-4f6a-9e1b-7c5d2a8f0e13")
H100 = "NVIDIA-H100-80GB-HBM3"
OVERRIDE: dict[str, Any] = {
    "metadata": {"labels": {"team": "llm"}, "annotations": {"sidecar.istio.io/inject": "false"}},
    "spec": {
        "tolerations": [{"key": "spot", "operator": "Exists"}],
        "imagePullSecrets": [{"name": "registry"}],
        "serviceAccountName": "sa",
        "priorityClassName": "high",
        "runtimeClassName": "nvidia",
        "securityContext": {"runAsNonRoot": True},
        "volumes": [{"name": "scratch", "emptyDir": {}}],
    },
}


def _plan(nodes_per_replica: int = 1, data: int = 1) -> ChosenPlan:
    degrees = Degrees(tensor=8, pipeline=nodes_per_replica, data=data)
    return ChosenPlan(degrees, nodes_per_replica, 8, pool=H100, gpu_product=H100, plan_hash="abc", sequence_length=4096)


def _spec(pod_template: dict[str, Any], **extra: Any) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate(
        {"model": {"name": "Qwen/Qwen3-8B"}, "podTemplate": pod_template, **extra}
    )


def _pods(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [m["spec"]["template"] for m in manifests if "template" in m["spec"]]


@pytest.mark.parametrize(
    ("nodes_per_replica", "extra", "components"),
    [
        (1, {"model": {"name": "Qwen/Qwen3-8B", "cache": {"size": "50Gi"}}}, {"inference", "model-download"}),
        (2, {}, {"inference"}),  # a StatefulSet per multi-node group
        (1, {"workload": {"type": "training"}}, {"training"}),
    ],
)
def test_every_pod_gets_the_overrides(nodes_per_replica: int, extra: dict[str, Any], components: set[str]) -> None:
    spec = _spec(OVERRIDE, **extra)
    pods = _pods(render_children(_plan(nodes_per_replica, data=2), spec, OWNER))
    assert {pod["metadata"]["labels"]["app.kubernetes.io/component"] for pod in pods} == components
    for pod in pods:
        assert pod["metadata"]["labels"]["team"] == "llm"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        body = pod["spec"]
        assert body["imagePullSecrets"] == [{"name": "registry"}]
        assert (body["serviceAccountName"], body["priorityClassName"], body["runtimeClassName"]) == (
            "sa",
            "high",
            "nvidia",
        )
        assert body["securityContext"] == {"runAsNonRoot": True}
        assert {"name": "scratch", "emptyDir": {}} in body["volumes"]
        if pod["metadata"]["labels"]["app.kubernetes.io/component"] != "model-download":
            assert {"key": "spot", "operator": "Exists"} in body["tolerations"]


def test_container_additions_go_to_the_named_container_only() -> None:
    spec = _spec(
        {
            "spec": {
                "volumes": [{"name": "scratch", "emptyDir": {}}],
                "containers": [
                    {"name": "vllm", "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
                    {"name": "download", "env": [{"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"}]},
                ],
            }
        },
        model={"name": "Qwen/Qwen3-8B", "cache": {"size": "50Gi"}},
    )
    download, serving = _pods(render_children(_plan(), spec, OWNER))
    assert {"name": "scratch", "mountPath": "/scratch"} in serving["spec"]["containers"][0]["volumeMounts"]
    assert "HF_HUB_ENABLE_HF_TRANSFER" not in {e["name"] for e in serving["spec"]["containers"][0]["env"]}
    assert {"name": "HF_HUB_ENABLE_HF_TRANSFER", "value": "1"} in download["spec"]["containers"][0]["env"]
    assert "/scratch" not in {m["mountPath"] for m in download["spec"]["containers"][0]["volumeMounts"]}


def test_a_limit_without_a_request_replaces_the_operators_request() -> None:
    spec = _spec({"spec": {"containers": [{"name": "vllm", "resources": {"limits": {"memory": "64Gi"}}}]}})
    pod = _pods(render_children(_plan(), spec, OWNER))[0]
    resources = pod["spec"]["containers"][0]["resources"]
    assert "memory" not in resources["requests"] and resources["limits"]["memory"] == "64Gi"
    assert resources["requests"]["cpu"] == "16"  # the operator's, untouched


def _affinity(operator: str, values: list[str]) -> dict[str, Any]:
    term = {"matchExpressions": [{"key": LABEL_PRODUCT, "operator": operator, "values": values}]}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [term]}}}


@pytest.mark.parametrize(
    ("pod_template", "field"),
    [
        ({"metadata": {"labels": {"app.kubernetes.io/instance": "x"}}}, "metadata.labels[app.kubernetes.io/instance]"),
        ({"metadata": {"annotations": {"autoparallel.io/plan-hash": "x"}}}, "metadata.annotations"),
        ({"spec": {"volumes": [{"name": "dshm", "emptyDir": {}}]}}, "spec.volumes[0].name"),
        ({"spec": {"containers": [{"name": "sidecar"}]}}, "spec.containers[0].name"),
        ({"spec": {"containers": [{"name": "vllm", "env": [{"name": "HF_TOKEN", "value": "x"}]}]}}, "env[0].name"),
        (
            {"spec": {"containers": [{"name": "vllm", "resources": {"limits": {"nvidia.com/gpu": "4"}}}]}},
            "resources.limits[nvidia.com/gpu]",
        ),
        (
            {"spec": {"containers": [{"name": "vllm", "volumeMounts": [{"name": "nope", "mountPath": "/x"}]}]}},
            "volumeMounts[0].name",
        ),
        (
            {"spec": {"containers": [{"name": "vllm", "volumeMounts": [{"name": "dshm", "mountPath": "/y"}]}]}},
            "volumeMounts[0]",
        ),
        ({"spec": {"affinity": _affinity("In", ["NVIDIA-A100-SXM4-80GB"])}}, "nodeAffinity"),
        ({"spec": {"affinity": _affinity("NotIn", [H100])}}, "nodeAffinity"),
    ],
)
def test_a_contradiction_is_refused_naming_the_field(pod_template: dict[str, Any], field: str) -> None:
    spec = _spec(pod_template, model={"name": "Qwen/Qwen3-8B", "tokenSecretRef": {"name": "hf"}})
    with pytest.raises(PodTemplateConflict, match=r"spec\.podTemplate\.") as raised:
        render_children(_plan(), spec, OWNER)
    assert field in str(raised.value)


def test_an_affinity_that_admits_the_pool_and_an_equal_gpu_count_are_accepted() -> None:
    spec = _spec(
        {
            "spec": {
                "affinity": _affinity("In", [H100, "NVIDIA-H200"]),
                "containers": [{"name": "vllm", "resources": {"requests": {"nvidia.com/gpu": 8}}}],
            }
        }
    )
    pod = _pods(render_children(_plan(), spec, OWNER))[0]
    assert pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "8"
    assert pod["spec"]["affinity"] == _affinity("In", [H100, "NVIDIA-H200"])
