"""The renderers: golden YAML per case, plus direct checks of what the children must say.

Regenerate the golden files after an intended change with ``UPDATE_GOLDEN=1 pytest tests/unit/test_render.py``
and review the diff.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from autoparallel.controller.capabilities import OPTIONAL_CRDS
from autoparallel.controller.config import DEFAULT_TRAINING_IMAGE
from autoparallel.controller.inventory import LABEL_OWNER_UID
from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import CacheSpec, MultiNodeBackend, ParallelDeploymentSpec, ServingSpec
from autoparallel.controller.plan import LABEL_PRODUCT, ChosenPlan, Owner
from autoparallel.controller.render import (
    ANNOTATION_PLAN_HASH,
    LABEL_MANAGED_BY,
    children_selector,
    render_children,
)
from autoparallel.controller.render.cache import download_job_name
from autoparallel.controller.render.inference import group_script
from autoparallel.controller.render.leaderworkerset import leader_script, worker_script
from autoparallel.controller.render.training import TRAINING_IMAGE_GROUP, training_script
from autoparallel.planner.commands import TORCHRUN_MASTER_PORT, torchrun_program_args
from autoparallel.planner.inference import Degrees

GOLDEN_DIR = Path(__file__).parent / "golden" / "render"
OWNER = Owner(name="llama", namespace="models", uid="6f1c2a34-9b7e-4c1d-8f3a-2e5d7c9b0a11")
H100 = "NVIDIA-H100-80GB-HBM3"
KIND_MODELS = {
    "Service": "V1Service",
    "Deployment": "V1Deployment",
    "StatefulSet": "V1StatefulSet",
    "Job": "V1Job",
    "PersistentVolumeClaim": "V1PersistentVolumeClaim",
}


def is_cache(manifest: dict[str, Any]) -> bool:
    """The weight cache's PVC or download Job: not rendered from the plan (no GPUs, a hash of their own)."""
    component = manifest["metadata"]["labels"].get("app.kubernetes.io/component")
    return manifest["kind"] == "PersistentVolumeClaim" or component == "model-download"


def _plan(degrees: Degrees, gpus_per_pod: int, nodes_per_replica: int = 1, **extra: Any) -> ChosenPlan:
    # sequence_length: what plan_deployment chooses for an unset spec.workload.sequenceLength on these models.
    defaults: dict[str, Any] = {"pool": H100, "gpu_product": H100, "plan_hash": "3f9a1c0d5e7b", "sequence_length": 4096}
    return ChosenPlan(degrees, nodes_per_replica, gpus_per_pod, **{**defaults, **extra})


def _spec(body: dict[str, Any]) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate(body)


CASES: dict[str, tuple[ChosenPlan, ParallelDeploymentSpec]] = {
    "inference_single_node": (
        _plan(Degrees(tensor=4, pipeline=1, data=2), gpus_per_pod=4),
        _spec(
            {
                "model": {
                    "name": "meta-llama/Llama-3.1-70B-Instruct",
                    "revision": "main",
                    "tokenSecretRef": {"name": "hf-token", "key": "token"},
                },
                "workload": {"type": "inference", "sequenceLength": 8192, "batchSize": 64},
                "placement": {
                    "nodeSelector": {"cloud.google.com/gke-nodepool": "h100"},
                    "tolerations": [
                        {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"},
                        {
                            "key": "node.kubernetes.io/unreachable",
                            "operator": "Exists",
                            "effect": "NoExecute",
                            "tolerationSeconds": 300,
                        },
                    ],
                },
                "serving": {
                    "args": ["--enable-prefix-caching", "--served-model-name", "llama-70b"],
                    "env": [
                        {"name": "HF_HOME", "value": "/cache/hf"},
                        {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
                        {"name": "HF_TOKEN", "value": "a literal never wins over tokenSecretRef"},
                        {
                            "name": "OTEL_ENDPOINT",
                            "valueFrom": {"configMapKeyRef": {"name": "otel", "key": "endpoint"}},
                        },
                        {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    ],
                    "envFrom": [{"secretRef": {"name": "vllm-extra"}, "prefix": "VLLM_"}],
                    "gpuMemoryUtilization": "0.92",
                },
            }
        ),
    ),
    "inference_multi_node": (
        _plan(
            Degrees(tensor=8, pipeline=2, data=1),
            gpus_per_pod=8,
            nodes_per_replica=2,
            multi_node_backend=MultiNodeBackend.STATEFUL_SET,
        ),
        _spec(
            {
                "model": {"name": "meta-llama/Llama-3.1-405B", "dtype": "bfloat16", "tokenSecretRef": {"name": "hf"}},
                "workload": {"sequenceLength": 16384},
                "serving": {"kvCacheDtype": "fp8", "port": 8080},
                "podTemplate": {
                    "spec": {
                        "affinity": {
                            "podAntiAffinity": {
                                "preferredDuringSchedulingIgnoredDuringExecution": [
                                    {
                                        "weight": 100,
                                        "podAffinityTerm": {
                                            "topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": {"team": "llm"}},
                                        },
                                    }
                                ]
                            }
                        },
                        "runtimeClassName": "nvidia",
                    }
                },
            }
        ),
    ),
    "inference_multi_node_lws": (
        _plan(
            Degrees(tensor=8, pipeline=2, data=2),
            gpus_per_pod=8,
            nodes_per_replica=2,
            multi_node_backend=MultiNodeBackend.LEADER_WORKER_SET,
            max_replicas=4,
        ),
        _spec(
            {
                "model": {
                    "name": "meta-llama/Llama-3.1-405B",
                    "tokenSecretRef": {"name": "hf"},
                    "cache": {"claimName": "weights-rwx", "prefetch": False},
                },
                "workload": {"sequenceLength": 8192},
                "placement": {"topologyKey": "cloud.google.com/gke-nodepool"},
                "serving": {"multiNodeBackend": "leaderWorkerSet", "gateway": {"inferencePool": True}},
                "scaling": {"minReplicas": 2, "maxReplicas": 8},
            }
        ),
    ),
    "inference_moe_wide_ep": (
        _plan(Degrees(tensor=1, pipeline=1, expert=4, data=1), gpus_per_pod=4, gpu_product=None, pool="a100"),
        _spec({"model": {"name": "Qwen/Qwen3-30B-A3B"}, "parallelism": {"expert": 4}}),
    ),
    "training_one_pod": (
        _plan(Degrees(tensor=2, pipeline=1, data=4), gpus_per_pod=8, micro_batches=4),
        _spec(
            {
                "model": {"name": "meta-llama/Llama-3.1-8B", "tokenSecretRef": {"name": "hf"}},
                "workload": {"type": "training", "sequenceLength": 4096, "batchSize": 64},
                "training": {"steps": 500},
            }
        ),
    ),
    "training_two_pods": (
        _plan(Degrees(tensor=2, pipeline=2, data=4), gpus_per_pod=8, micro_batches=8),
        _spec(
            {
                "model": {"name": "meta-llama/Llama-3.1-8B"},
                "workload": {"type": "training", "sequenceLength": 8192, "batchSize": 256},
                "training": {"args": ["--log-every", "10"], "env": [{"name": "NCCL_DEBUG", "value": "WARN"}]},
                "podTemplate": {
                    "metadata": {"labels": {"team": "research"}},
                    "spec": {
                        "serviceAccountName": "trainer",
                        "securityContext": {"runAsUser": 1000, "fsGroup": 1000},
                        "volumes": [{"name": "datasets", "persistentVolumeClaim": {"claimName": "datasets"}}],
                        "containers": [
                            {
                                "name": "trainer",
                                "volumeMounts": [{"name": "datasets", "mountPath": "/data", "readOnly": True}],
                                "resources": {"limits": {"memory": "900Gi"}},
                            }
                        ],
                    },
                },
            }
        ),
    ),
    "inference_cached": (
        _plan(Degrees(tensor=8, pipeline=1, data=1), gpus_per_pod=8),
        _spec(
            {
                "model": {
                    "name": "meta-llama/Llama-3.1-70B-Instruct",
                    "revision": "1605565",
                    "tokenSecretRef": {"name": "hf-token"},
                    "cache": {"size": "200Gi", "storageClassName": "premium-rwo"},
                },
                "workload": {"sequenceLength": 8192, "batchSize": 16},
            }
        ),
    ),
    "inference_overrides": (
        _plan(Degrees(tensor=2, pipeline=1, data=2), gpus_per_pod=2),
        _spec(
            {
                "model": {
                    "name": "Qwen/Qwen3-32B",
                    "tokenSecretRef": {"name": "hf"},
                    "cache": {"size": "100Gi", "accessModes": ["ReadWriteMany"]},
                },
                "serving": {"env": [{"name": "VLLM_LOGGING_LEVEL", "value": "INFO"}]},
                "podTemplate": {
                    "metadata": {
                        "labels": {"team": "llm", "cost-center": "ml-42"},
                        "annotations": {"sidecar.istio.io/inject": "false", "karpenter.sh/do-not-disrupt": "true"},
                    },
                    "spec": {
                        "affinity": {
                            "nodeAffinity": {
                                "requiredDuringSchedulingIgnoredDuringExecution": {
                                    "nodeSelectorTerms": [
                                        {
                                            "matchExpressions": [
                                                {"key": LABEL_PRODUCT, "operator": "In", "values": [H100]},
                                                {
                                                    "key": "topology.kubernetes.io/zone",
                                                    "operator": "In",
                                                    "values": ["a"],
                                                },
                                            ]
                                        }
                                    ]
                                }
                            }
                        },
                        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
                        "imagePullSecrets": [{"name": "registry"}],
                        "serviceAccountName": "llm-serving",
                        "priorityClassName": "inference-critical",
                        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
                        "volumes": [{"name": "models-nfs", "nfs": {"server": "nfs.internal", "path": "/models"}}],
                        "containers": [
                            {
                                "name": "vllm",
                                "env": [{"name": "VLLM_USE_V1", "value": "1"}],
                                "envFrom": [{"configMapRef": {"name": "vllm-tuning"}}],
                                "volumeMounts": [{"name": "models-nfs", "mountPath": "/models", "readOnly": True}],
                                "resources": {
                                    "requests": {"cpu": "12", "memory": "96Gi", "nvidia.com/gpu": 2},
                                    "limits": {"nvidia.com/gpu": "2", "ephemeral-storage": "50Gi"},
                                },
                            },
                            {"name": "download", "resources": {"requests": {"cpu": "4"}}},
                        ],
                    },
                },
            }
        ),
    ),
    "inference_autoscaled": (
        _plan(Degrees(tensor=2, pipeline=1, data=1), gpus_per_pod=2, max_replicas=6),
        _spec(
            {
                "model": {"name": "Qwen/Qwen3-32B"},
                "scaling": {"minReplicas": 1, "maxReplicas": 8, "target": "3"},
                "serving": {"gateway": {"inferencePool": True, "endpointPicker": {"failureMode": "FailOpen"}}},
            }
        ),
    ),
    "training_finetune": (
        _plan(Degrees(tensor=2, pipeline=1, data=4), gpus_per_pod=8, micro_batches=2),
        _spec(
            {
                "model": {
                    "name": "meta-llama/Llama-3.1-8B",
                    "tokenSecretRef": {"name": "hf-token", "key": "token"},
                    "cache": {"size": "200Gi", "accessModes": ["ReadWriteMany"], "retain": True},
                },
                "workload": {"type": "training", "sequenceLength": 4096, "batchSize": 64},
                "training": {
                    "steps": 2000,
                    "init": "pretrained",
                    "data": "tatsu-lab/alpaca",
                    "dataField": "text",
                    "checkpointDir": "/model-cache/checkpoints/llama8b-alpaca",
                    "checkpointEvery": 200,
                    "exportDir": "/model-cache/exports/llama8b-alpaca",
                    "exportEvery": 1000,
                },
            }
        ),
    ),
    "inference_from_export": (
        _plan(Degrees(tensor=1, pipeline=1, data=2), gpus_per_pod=1),
        _spec(
            {
                "model": {
                    "name": "/model-cache/exports/llama8b-alpaca",
                    "configFrom": "meta-llama/Llama-3.1-8B",
                    "cache": {"claimName": "llama8b-alpaca-model-cache"},
                },
                "workload": {"sequenceLength": 4096},
            }
        ),
    ),
    "training_user_command": (
        _plan(Degrees(tensor=2, pipeline=1, data=4), gpus_per_pod=4, pool="mi300", gpu_product=None),
        _spec(
            {
                "model": {"name": "meta-llama/Llama-3.2-3B"},
                "workload": {"type": "training"},
                "placement": {"gpuResource": "amd.com/gpu", "nodeSelector": {"pool": "mi300"}},
                "training": {
                    "image": "registry.example.com/team/trainer:1.4",
                    "command": ["python", "train.py", "--config", "configs/llama 3b.yaml"],
                    "args": ["--lr", "3e-4"],
                    "env": [{"name": "PET_NNODES", "value": "99"}, {"name": "WANDB_MODE", "value": "offline"}],
                },
            }
        ),
    ),
}


SERVED: dict[str, frozenset[str]] = {
    "inference_multi_node": OPTIONAL_CRDS,
    "inference_multi_node_lws": OPTIONAL_CRDS,
    "inference_overrides": OPTIONAL_CRDS,
    "inference_autoscaled": OPTIONAL_CRDS,
}
"""Cases rendered for a cluster that serves the optional integrations' CRDs (the others: none)."""


def render_case(name: str) -> list[dict[str, Any]]:
    plan, spec = CASES[name]
    return render_children(plan, spec, OWNER, served=SERVED.get(name, frozenset()))


# --- golden files -------------------------------------------------------------------------------------------


class _GoldenDumper(yaml.SafeDumper):
    """Multi-line strings (the shell scripts) as literal blocks, so golden diffs read line by line; no anchors,
    so every object reads in full (and shared sub-objects show up as a test failure, not as an alias)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_GoldenDumper.add_representer(str, _represent_str)


def to_yaml(manifests: list[dict[str, Any]]) -> str:
    return yaml.dump_all(manifests, Dumper=_GoldenDumper, sort_keys=False, width=4096)


def assert_golden(name: str, manifests: list[dict[str, Any]]) -> None:
    """Compare with ``golden/render/<name>.yaml``; rewrite it instead when ``UPDATE_GOLDEN=1``."""
    text = to_yaml(manifests)
    path = GOLDEN_DIR / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    expected = path.read_text() if path.exists() else ""
    if text != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True), text.splitlines(keepends=True), str(path), "rendered"
            )
        )
        pytest.fail(
            f"{name} differs from its golden file; run UPDATE_GOLDEN=1 pytest tests/unit/test_render.py\n{diff}",
            pytrace=False,
        )


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name: str) -> None:
    manifests = render_case(name)
    assert list(yaml.safe_load_all(to_yaml(manifests))) == manifests  # the golden YAML is faithful
    assert_golden(name, manifests)


# --- structure ----------------------------------------------------------------------------------------------


def _walk(value: Any) -> Iterator[Any]:
    yield value
    if isinstance(value, dict):
        for item in value.values():
            yield from _walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk(item)


_PRIMITIVES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "bool": (bool,), "object": (str, int)}


def assert_known_fields(value: Any, type_name: str, path: str) -> None:
    """Every key is a field of the official client's model for it, recursively (the client's own
    deserializer silently drops unknown keys, so misspelt fields would pass it)."""
    if match := re.fullmatch(r"Optional\[(.+)\]", type_name):
        assert_known_fields(value, match.group(1), path)
    elif match := re.fullmatch(r"(?:List|list)\[(.+)\]", type_name):
        assert isinstance(value, list), path
        for index, item in enumerate(value):
            assert_known_fields(item, match.group(1), f"{path}[{index}]")
    elif match := re.fullmatch(r"(?:Dict\[str, (.+)\])|(?:dict\(str, (.+)\))", type_name):
        assert isinstance(value, dict), path
        for key, item in value.items():
            assert_known_fields(item, match.group(1) or match.group(2), f"{path}.{key}")
    elif type_name in _PRIMITIVES:
        assert isinstance(value, _PRIMITIVES[type_name]), f"{path}: {value!r} is not {type_name}"
    else:
        model = getattr(client.models, type_name)
        assert isinstance(value, dict), path
        fields = {wire: attribute for attribute, wire in model.attribute_map.items()}
        unknown = set(value) - set(fields)
        assert not unknown, f"{path}: {type_name} has no field(s) {sorted(unknown)}"
        for key, item in value.items():
            assert_known_fields(item, model.openapi_types[fields[key]], f"{path}.{key}")


def templates_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod templates of a workload: its template, or a LeaderWorkerSet's leader and worker templates."""
    if manifest["kind"] == "LeaderWorkerSet":
        groups = manifest["spec"]["leaderWorkerTemplate"]
        return [groups["leaderTemplate"], groups["workerTemplate"]]
    return [manifest["spec"]["template"]] if "template" in manifest.get("spec", {}) else []


def pod_templates(manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [template for m in manifests for template in templates_of(m)]


def only_container(template: dict[str, Any]) -> dict[str, Any]:
    containers = template["spec"]["containers"]
    assert len(containers) == 1
    container: dict[str, Any] = containers[0]
    return container


def main_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return only_container(manifest["spec"]["template"])


def by_kind(manifests: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_manifest_is_a_valid_kubernetes_object(name: str) -> None:
    api = client.ApiClient()
    for manifest in render_case(name):
        if BY_KIND[manifest["kind"]].requires:
            continue  # not a built-in kind: the e2e tests apply it to the API server with its project's CRD
        model = KIND_MODELS[manifest["kind"]]
        assert_known_fields(manifest, model, manifest["kind"])
        api._ApiClient__deserialize(manifest, model)  # type: ignore[attr-defined]  # required fields, enums


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_nulls_no_shared_objects_and_deterministic(name: str) -> None:
    manifests = render_case(name)
    assert all(value is not None for value in _walk(manifests))
    containers = [v for v in _walk(manifests) if isinstance(v, dict | list)]
    assert len({id(v) for v in containers}) == len(containers)  # editing one field never changes another
    assert render_case(name) == manifests
    names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize("name", sorted(CASES))
def test_metadata_ties_children_to_the_owner_and_plan(name: str) -> None:
    plan, _ = CASES[name]
    for manifest in render_case(name):
        meta = manifest["metadata"]
        assert meta["namespace"] == OWNER.namespace
        assert meta["name"].startswith(OWNER.name)
        assert meta["labels"][LABEL_OWNER_UID] == OWNER.uid
        if is_cache(manifest):
            continue
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "autoparallel.io/v1alpha1",
                "kind": "ParallelDeployment",
                "name": OWNER.name,
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["annotations"][ANNOTATION_PLAN_HASH] == plan.plan_hash
        assert set(meta["annotations"]) <= {ANNOTATION_PLAN_HASH, "leaderworkerset.sigs.k8s.io/exclusive-topology"}
        assert meta["labels"][LABEL_OWNER_UID] == OWNER.uid
        assert meta["labels"][LABEL_MANAGED_BY] == "autoparallel"
        assert meta["labels"]["app.kubernetes.io/instance"] == OWNER.name
    for template in pod_templates(render_case(name)):
        assert template["metadata"]["labels"][LABEL_OWNER_UID] == OWNER.uid
    assert children_selector(OWNER) == f"app.kubernetes.io/managed-by=autoparallel,{LABEL_OWNER_UID}={OWNER.uid}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_workload_selectors_match_their_pod_templates(name: str) -> None:
    manifests = render_case(name)
    templates = pod_templates(manifests)
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "StatefulSet"}:
            selector = manifest["spec"]["selector"]["matchLabels"]
            assert selector.items() <= manifest["spec"]["template"]["metadata"]["labels"].items()
        if manifest["kind"] == "Service":  # selects some pod (the indexes are added by the StatefulSet/LWS controller)
            indexes = {"apps.kubernetes.io/pod-index", "leaderworkerset.sigs.k8s.io/worker-index"}
            selector = {k: v for k, v in manifest["spec"]["selector"].items() if k not in indexes}
            assert any(selector.items() <= t["metadata"]["labels"].items() for t in templates)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pods_request_the_planned_gpus_on_the_planned_pool(name: str) -> None:
    plan, spec = CASES[name]
    gpu = spec.placement.gpu_resource
    for template in pod_templates([m for m in render_case(name) if not is_cache(m)]):
        resources = only_container(template)["resources"]
        assert resources["requests"][gpu] == resources["limits"][gpu] == str(plan.gpus_per_pod)
        pod = template["spec"]
        assert pod["enableServiceLinks"] is False
        assert {"key": gpu, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        selector = pod.get("nodeSelector", {})
        assert spec.placement.node_selector.items() <= selector.items()
        if plan.gpu_product:
            assert selector[LABEL_PRODUCT] == plan.gpu_product
        else:
            assert LABEL_PRODUCT not in selector
        assert {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}} in pod["volumes"]


# --- inference ----------------------------------------------------------------------------------------------


def test_single_node_inference_is_a_deployment_of_dp_vllm_pods() -> None:
    manifests = render_case("inference_single_node")
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [("Service", "llama"), ("Deployment", "llama")]
    deployment = by_kind(manifests, "Deployment")[0]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    container = main_container(deployment)
    command = container["command"]
    assert command[:3] == ["vllm", "serve", "meta-llama/Llama-3.1-70B-Instruct"]
    assert command[command.index("--tensor-parallel-size") + 1] == "4"
    assert command[command.index("--pipeline-parallel-size") + 1] == "1"
    assert command[command.index("--max-model-len") + 1] == "8192"
    assert command[command.index("--gpu-memory-utilization") + 1] == "0.92"
    assert command[command.index("--revision") + 1] == "main"
    assert "--dtype" not in command  # auto keeps vLLM's own choice
    assert command[-3:] == ["--enable-prefix-caching", "--served-model-name", "llama-70b"]  # user args last
    # The token comes from the Secret through the kubelet (a literal HF_TOKEN of the user never wins), the user's
    # references are passed as written.
    assert container["env"] == [
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "token"}}},
        {"name": "HF_HOME", "value": "/cache/hf"},
        {"name": "VLLM_LOGGING_LEVEL", "value": "INFO"},
        {"name": "OTEL_ENDPOINT", "valueFrom": {"configMapKeyRef": {"name": "otel", "key": "endpoint"}}},
        {"name": "NODE_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
    ]
    assert container["envFrom"] == [{"prefix": "VLLM_", "secretRef": {"name": "vllm-extra"}}]
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 600
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    pod = deployment["spec"]["template"]["spec"]
    assert pod["tolerations"][1] == {
        "key": "node.kubernetes.io/unreachable",
        "operator": "Exists",
        "effect": "NoExecute",
        "tolerationSeconds": 300,
    }
    service = by_kind(manifests, "Service")[0]
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"}]


def test_moe_wide_expert_parallelism_runs_attention_data_parallel_in_one_pod() -> None:
    deployment = by_kind(render_case("inference_moe_wide_ep"), "Deployment")[0]
    assert deployment["spec"]["replicas"] == 1
    command = main_container(deployment)["command"]
    assert command[command.index("--tensor-parallel-size") + 1] == "1"
    flags = command[command.index("--enable-expert-parallel") :]
    assert flags[:3] == ["--enable-expert-parallel", "--data-parallel-size", "4"]
    assert "nodeSelector" not in deployment["spec"]["template"]["spec"]  # no product label, no user selector


def test_multi_node_inference_is_a_ray_group_per_replica() -> None:
    plan = _plan(
        Degrees(tensor=8, pipeline=2, data=2),
        gpus_per_pod=8,
        nodes_per_replica=2,
        multi_node_backend=MultiNodeBackend.STATEFUL_SET,
    )
    spec = CASES["inference_multi_node"][1]
    manifests = render_children(plan, spec, OWNER)
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Service", "llama"),
        ("Service", "llama-r0"),
        ("StatefulSet", "llama-r0"),
        ("Service", "llama-r1"),
        ("StatefulSet", "llama-r1"),
    ]
    endpoint = manifests[0]
    assert endpoint["spec"]["selector"]["apps.kubernetes.io/pod-index"] == "0"
    assert "autoparallel.io/replica" not in endpoint["spec"]["selector"]  # pod 0 of every replica
    assert endpoint["spec"]["ports"][0]["port"] == 8080
    for replica in (0, 1):
        headless, statefulset = manifests[1 + 2 * replica], manifests[2 + 2 * replica]
        assert headless["spec"]["clusterIP"] == "None"
        assert headless["spec"]["publishNotReadyAddresses"] is True
        assert statefulset["spec"]["serviceName"] == headless["metadata"]["name"]
        assert statefulset["spec"]["replicas"] == 2
        assert statefulset["spec"]["podManagementPolicy"] == "Parallel"
        assert headless["spec"]["selector"] == statefulset["spec"]["selector"]["matchLabels"]
        assert statefulset["spec"]["selector"]["matchLabels"]["autoparallel.io/replica"] == str(replica)
        script = main_container(statefulset)["command"][2]
        assert f"--address=llama-r{replica}-0.llama-r{replica}.models.svc.cluster.local:6379" in script
        assert "--distributed-executor-backend ray" in script
        assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in script


def test_multi_node_inference_on_a_leader_worker_set_is_one_object_of_dp_groups() -> None:
    plan, spec = CASES["inference_multi_node_lws"]
    fixed = spec.model_copy(update={"scaling": None})
    manifests = render_children(plan, fixed, OWNER)
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [
        ("Service", "llama"),
        ("LeaderWorkerSet", "llama-lws"),  # not "llama": its controller names its headless Service after it
    ]
    endpoint, lws = manifests
    assert endpoint["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"  # the leaders serve
    assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
    assert lws["metadata"]["annotations"]["leaderworkerset.sigs.k8s.io/exclusive-topology"] == (
        "cloud.google.com/gke-nodepool"
    )
    assert lws["spec"]["replicas"] == plan.degrees.data
    assert lws["spec"]["startupPolicy"] == "LeaderCreated"
    assert lws["spec"]["rolloutStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
    }
    groups = lws["spec"]["leaderWorkerTemplate"]
    assert (groups["size"], groups["restartPolicy"]) == (plan.nodes_per_replica, "RecreateGroupOnPodRestart")
    leader, worker = only_container(groups["leaderTemplate"]), only_container(groups["workerTemplate"])
    assert "--tensor-parallel-size 8 --pipeline-parallel-size 2" in leader["command"][2]
    assert "--distributed-executor-backend ray" in leader["command"][2]
    assert leader["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert [p["name"] for p in leader["ports"]] == ["http", "ray-gcs"]
    assert "readinessProbe" not in worker and "livenessProbe" not in worker  # no server: ready while running
    assert "ports" not in worker
    for container in (leader, worker):  # both load their shard of the weights
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}}} in container[
            "env"
        ]
        assert {"name": "model-cache", "mountPath": "/model-cache"} in container["volumeMounts"]
    for template in (groups["leaderTemplate"], groups["workerTemplate"]):
        assert_known_fields(template, "V1PodTemplateSpec", "LeaderWorkerSet.template")
        client.ApiClient()._ApiClient__deserialize(template, "V1PodTemplateSpec")  # type: ignore[attr-defined]
        assert template["metadata"]["labels"].items() >= endpoint["spec"]["selector"].items() - {
            ("leaderworkerset.sigs.k8s.io/worker-index", "0")
        }
    assert not by_kind(manifests, "StatefulSet")


def kubelet_expand(script: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of a container command, for the variables of the container's ``env``."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), script)


# --- the shell scripts, run against stand-in executables -----------------------------------------------------


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A directory of stand-ins for ray, vllm, torchrun and python3 that log their argv to ``calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for program in ("ray", "vllm", "torchrun", "python3"):
        stub = bin_dir / program
        stub.write_text(f'#!/bin/sh\necho "{program} $*" >> "{tmp_path}/calls"\n')
        stub.chmod(0o755)
    return bin_dir


def run_script(script: str, fake_bin: Path, env: dict[str, str]) -> list[str]:
    sh = shutil.which("sh")
    assert sh is not None
    environment = {"PATH": f"{fake_bin}:/usr/bin:/bin", **env}
    subprocess.run([sh, "-c", script], env=environment, check=True, timeout=30)
    return (fake_bin.parent / "calls").read_text().splitlines()


def test_group_pod_0_starts_the_ray_head_and_serves(fake_bin: Path) -> None:
    plan, spec = CASES["inference_multi_node"]
    calls = run_script(group_script(plan, spec, OWNER, 0), fake_bin, {"POD_NAME": "llama-r0-0"})
    assert calls[0] == "ray start --head --port=6379"
    assert calls[1].startswith("vllm serve meta-llama/Llama-3.1-405B --tensor-parallel-size 8")
    assert len(calls) == 2


def test_group_workers_wait_for_the_head_and_join_it(fake_bin: Path) -> None:
    plan, spec = CASES["inference_multi_node"]
    head = "llama-r0-0.llama-r0.models.svc.cluster.local:6379"
    for pod in ("llama-r0-1", "llama-r0-10"):
        (fake_bin.parent / "calls").unlink(missing_ok=True)
        calls = run_script(group_script(plan, spec, OWNER, 0), fake_bin, {"POD_NAME": pod})
        assert calls == [f"ray health-check --address={head}", f"ray start --address={head} --block"]


def test_lws_leader_starts_the_ray_head_and_serves(fake_bin: Path) -> None:
    plan, spec = CASES["inference_multi_node_lws"]
    calls = run_script(leader_script(plan, spec), fake_bin, {})
    assert calls[0] == "ray start --head --port=6379"
    assert calls[1].startswith("vllm serve meta-llama/Llama-3.1-405B --tensor-parallel-size 8")
    assert len(calls) == 2


def test_lws_workers_wait_for_their_leader_and_join_it(fake_bin: Path) -> None:
    env = {"LWS_LEADER_ADDRESS": "llama-lws-1.llama-lws.models", "LWS_WORKER_INDEX": "1"}  # set by LWS's webhook
    head = "llama-lws-1.llama-lws.models:6379"
    calls = run_script(kubelet_expand(worker_script(), env), fake_bin, env)
    assert calls == [f"ray health-check --address={head}", f"ray start --address={head} --block"]


def test_group_probe_checks_vllm_on_pod_0_only(fake_bin: Path) -> None:
    statefulset = by_kind(render_case("inference_multi_node"), "StatefulSet")[0]
    probe = main_container(statefulset)["readinessProbe"]["exec"]["command"]
    assert run_script(probe[2], fake_bin, {"POD_NAME": "llama-r0-0"})[0].endswith("http://127.0.0.1:8080/health")
    (fake_bin.parent / "calls").unlink()
    (fake_bin.parent / "calls").touch()
    assert run_script(probe[2], fake_bin, {"POD_NAME": "llama-r0-1"}) == []


def test_training_script_expands_the_rendezvous_variables(fake_bin: Path) -> None:
    plan, spec = CASES["training_two_pods"]
    env = {"PET_NODE_RANK": "1", "PET_MASTER_ADDR": "llama-0.llama"}
    [call] = run_script(training_script(plan, spec), fake_bin, env)
    assert call.startswith(
        "torchrun --nnodes=2 --nproc-per-node=8 --node-rank=1 --master-addr=llama-0.llama --master-port=29500 "
        "-m autoparallel.parallel.train --tensor-parallel 2 --pipeline-parallel 2 --data-parallel 4 "
    )
    assert call.endswith("--micro-batches 8 --steps 1000 --precision bf16 --log-every 10")


def test_training_user_command_replaces_the_runtime(fake_bin: Path) -> None:
    plan, spec = CASES["training_user_command"]
    [call] = run_script(training_script(plan, spec), fake_bin, {"PET_NODE_RANK": "0", "PET_MASTER_ADDR": "m"})
    assert call == (
        "torchrun --nnodes=2 --nproc-per-node=4 --node-rank=0 --master-addr=m --master-port=29500 --no-python "
        "python train.py --config configs/llama 3b.yaml --lr 3e-4"
    )
    assert torchrun_program_args(["python", "x.py"], 2, 4)[-3:] == ["--no-python", "python", "x.py"]


# --- training -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "pods"), [("training_one_pod", 1), ("training_two_pods", 2)])
def test_training_is_an_indexed_job_behind_a_headless_service(name: str, pods: int) -> None:
    plan, _ = CASES[name]
    manifests = render_case(name)
    assert [(m["kind"], m["metadata"]["name"]) for m in manifests] == [("Service", "llama"), ("Job", "llama")]
    service, job = manifests
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == pods
    assert "selector" not in job["spec"]  # the Job controller generates it
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert pod["restartPolicy"] == "Never"
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in main_container(job)["env"]}
    assert env["PET_NNODES"] == str(pods)
    assert env["PET_NPROC_PER_NODE"] == str(plan.gpus_per_pod)
    assert env["PET_NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    assert env["PET_MASTER_ADDR"] == "llama-0.llama"
    assert env["PET_MASTER_PORT"] == str(TORCHRUN_MASTER_PORT)
    assert env["AUTOPARALLEL_TENSOR_PARALLEL"] == str(plan.degrees.tensor)
    assert env["AUTOPARALLEL_PIPELINE_PARALLEL"] == str(plan.degrees.pipeline)
    assert env["AUTOPARALLEL_DATA_PARALLEL"] == str(plan.degrees.data)
    assert main_container(job)["command"][:2] == ["/bin/sh", "-c"]


def test_user_env_cannot_override_the_rendezvous() -> None:
    job = by_kind(render_case("training_user_command"), "Job")[0]
    env = main_container(job)["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))  # server-side apply merges env by name
    assert {"name": "PET_NNODES", "value": "2"} in env
    assert env[-1] == {"name": "WANDB_MODE", "value": "offline"}
    assert main_container(job)["image"] == "registry.example.com/team/trainer:1.4"


def _flags(argv: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of the runtime's part of a torchrun command line (``--flag`` alone maps to None)."""
    runtime = argv[argv.index("autoparallel.parallel.train") + 1 :]
    flags: dict[str, str | None] = {}
    for index, item in enumerate(runtime):
        if item.startswith("--"):
            following = runtime[index + 1] if index + 1 < len(runtime) else "--"
            flags[item] = None if following.startswith("--") else following
    return flags


def test_the_training_fields_become_the_runtimes_flags(fake_bin: Path) -> None:
    plan, spec = CASES["training_finetune"]
    [call] = run_script(training_script(plan, spec), fake_bin, {"PET_NODE_RANK": "0", "PET_MASTER_ADDR": "m"})
    flags = _flags(call.split(" "))
    training = spec.training
    assert training is not None
    assert flags["--model"] == spec.model.name
    assert flags["--init"] == "pretrained"
    assert (flags["--data"], flags["--data-field"]) == (training.data, training.data_field)
    assert (flags["--checkpoint-dir"], flags["--checkpoint-every"]) == (training.checkpoint_dir, "200")
    assert (flags["--export-dir"], flags["--export-every"]) == (training.export_dir, "1000")
    assert "--resume" in flags and flags["--resume"] is None  # a retried pod continues from the newest checkpoint
    # Unset fields leave the runtime's defaults: no flag at all.
    plain_plan, plain = CASES["training_one_pod"]
    plain_call = run_script(  # the stand-in appends: this run's call is the last
        training_script(plain_plan, plain), fake_bin, {"PET_NODE_RANK": "0", "PET_MASTER_ADDR": "m"}
    )[-1]
    runtime_flags = {"--init", "--data", "--data-field", "--checkpoint-dir", "--export-dir", "--resume"}
    assert not runtime_flags & set(_flags(plain_call.split(" ")))


def test_training_pods_load_the_model_as_serving_pods_do() -> None:
    """The same spec.model (token Secret, cache) gives the trainer the environment, mount and volume that it gives
    a vLLM pod, and the trainer waits for the same download Job."""
    plan, spec = CASES["training_finetune"]
    serving = ParallelDeploymentSpec.model_validate({"model": spec.model.model_dump(by_alias=True, exclude_none=True)})
    [trainer] = [m for m in render_children(plan, spec, OWNER) if m["kind"] == "Job" and not is_cache(m)]
    [vllm] = by_kind(render_children(_plan(Degrees(tensor=8, pipeline=1, data=1), 8), serving, OWNER), "Deployment")
    model_variables = {"HF_TOKEN", "HF_HOME", "HF_HUB_OFFLINE"}

    def model_env(manifest: dict[str, Any]) -> list[dict[str, Any]]:
        return [e for e in main_container(manifest)["env"] if e["name"] in model_variables]

    assert model_env(trainer) == model_env(vllm) and len(model_env(trainer)) == 3
    cache_mount = {"name": "model-cache", "mountPath": "/model-cache"}
    assert (
        cache_mount in main_container(trainer)["volumeMounts"] and cache_mount in main_container(vllm)["volumeMounts"]
    )
    claim = {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{OWNER.name}-model-cache"}}
    assert (
        claim in trainer["spec"]["template"]["spec"]["volumes"] and claim in vllm["spec"]["template"]["spec"]["volumes"]
    )
    assert [m["kind"] for m in render_children(plan, spec, OWNER, model_cached=False)] == [
        "PersistentVolumeClaim",
        "Job",
    ]


def test_training_pods_run_the_operators_image_unless_the_spec_names_one() -> None:
    plan, spec = CASES["training_finetune"]
    job = by_kind(render_children(plan, spec, OWNER, training_image="registry.example.com/ml/train:2"), "Job")[-1]
    assert main_container(job)["image"] == "registry.example.com/ml/train:2"
    assert main_container(by_kind(render_children(plan, spec, OWNER), "Job")[-1])["image"] == DEFAULT_TRAINING_IMAGE
    named_plan, named = CASES["training_user_command"]
    job = by_kind(render_children(named_plan, named, OWNER, training_image="registry.example.com/ml/train:2"), "Job")[0]
    assert main_container(job)["image"] == "registry.example.com/team/trainer:1.4"


def test_training_volumes_are_writable_by_the_images_group_unless_the_pod_template_says_otherwise() -> None:
    plan, spec = CASES["training_finetune"]
    pod = by_kind(render_children(plan, spec, OWNER), "Job")[-1]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"fsGroup": TRAINING_IMAGE_GROUP, "fsGroupChangePolicy": "OnRootMismatch"}
    own_plan, own = CASES["training_two_pods"]  # podTemplate.spec.securityContext: runAsUser and fsGroup 1000
    pod = by_kind(render_children(own_plan, own, OWNER), "Job")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsUser": 1000, "fsGroup": 1000}
    serving_plan, serving = CASES["inference_cached"]
    assert (
        "securityContext"
        not in by_kind(render_children(serving_plan, serving, OWNER), "Deployment")[0]["spec"]["template"]["spec"]
    )


# --- the weight cache ----------------------------------------------------------------------------------------


def test_a_cache_is_a_claim_a_download_job_and_hf_home_in_every_pod() -> None:
    plan, spec = CASES["inference_cached"]
    claim, job, service, deployment = render_children(plan, spec, OWNER)
    assert (claim["kind"], claim["metadata"]["name"]) == ("PersistentVolumeClaim", f"{OWNER.name}-model-cache")
    assert claim["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid  # goes with the resource
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "200Gi"}},
        "storageClassName": "premium-rwo",
    }
    download = job["spec"]["template"]["spec"]
    assert download["containers"][0]["command"][:2] == ["/bin/sh", "-c"]
    assert {e["name"] for e in download["containers"][0]["env"]} == {"HF_TOKEN", "HF_HOME"}
    assert download["volumes"] == [
        {"name": "model-cache", "persistentVolumeClaim": {"claimName": f"{OWNER.name}-model-cache"}}
    ]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["HF_HOME"]["value"] == "/model-cache" and env["HF_HUB_OFFLINE"]["value"] == "1"
    assert {"name": "model-cache", "mountPath": "/model-cache"} in pod["containers"][0]["volumeMounts"]
    assert service["kind"] == "Service"
    # Until the cache is filled, only the cache exists.
    assert [m["kind"] for m in render_children(plan, spec, OWNER, model_cached=False)] == [
        "PersistentVolumeClaim",
        "Job",
    ]


def test_the_download_job_is_named_after_what_it_downloads_not_the_plan() -> None:
    plan, spec = CASES["inference_cached"]
    other_plan = _plan(Degrees(tensor=4, pipeline=1, data=1), gpus_per_pod=4)
    name = render_children(plan, spec, OWNER)[1]["metadata"]["name"]
    assert render_children(other_plan, spec, OWNER)[1]["metadata"]["name"] == name
    newer = spec.model_copy(update={"model": spec.model.model_copy(update={"revision": "main"})})
    assert render_children(plan, newer, OWNER)[1]["metadata"]["name"] != name


def test_an_existing_claim_is_mounted_and_never_created_and_retain_drops_the_owner() -> None:
    plan, spec = CASES["inference_cached"]
    existing = spec.model_copy(
        update={"model": spec.model.model_copy(update={"cache": CacheSpec.model_validate({"claimName": "weights"})})}
    )
    kinds = [m["kind"] for m in render_children(plan, existing, OWNER)]
    assert "PersistentVolumeClaim" not in kinds
    deployment = render_children(plan, existing, OWNER)[-1]
    assert {"name": "model-cache", "persistentVolumeClaim": {"claimName": "weights"}} in deployment["spec"]["template"][
        "spec"
    ]["volumes"]
    kept = spec.model_copy(
        update={
            "model": spec.model.model_copy(update={"cache": CacheSpec.model_validate({"size": "1Ti", "retain": True})})
        }
    )
    assert "ownerReferences" not in render_children(plan, kept, OWNER)[0]["metadata"]


def _download_calls(spec: ParallelDeploymentSpec, tmp_path: Path, cli: str = "hf") -> list[str]:
    """What the download Job's script runs, with a stand-in ``cli`` (hf, or the older huggingface-cli) on PATH."""
    bin_dir = tmp_path / cli
    bin_dir.mkdir()
    (bin_dir / cli).write_text(f'#!/bin/sh\necho "{cli} $*" >> "{tmp_path}/{cli}.calls"\n')
    (bin_dir / cli).chmod(0o755)
    [job] = [m for m in render_children(*_first(spec), OWNER) if m["kind"] == "Job" and is_cache(m)]
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    sh = shutil.which("sh")
    assert sh is not None and command[0] == "/bin/sh"
    subprocess.run([sh, *command[1:]], env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True, timeout=30)
    return (tmp_path / f"{cli}.calls").read_text().splitlines()


def _first(spec: ParallelDeploymentSpec) -> tuple[ChosenPlan, ParallelDeploymentSpec]:
    return _plan(Degrees(tensor=8, pipeline=1, data=1), gpus_per_pod=8), spec


def test_the_download_job_fetches_the_model_and_a_hub_dataset(tmp_path: Path) -> None:
    _, spec = CASES["training_finetune"]
    assert _download_calls(spec, tmp_path) == [
        "hf download meta-llama/Llama-3.1-8B",
        "hf download --repo-type dataset tatsu-lab/alpaca",
    ]
    _, pinned = CASES["inference_cached"]
    assert _download_calls(pinned, tmp_path, "huggingface-cli") == [
        "huggingface-cli download meta-llama/Llama-3.1-70B-Instruct --revision 1605565"
    ]


def test_a_dataset_on_a_volume_is_not_downloaded_and_the_dataset_names_the_job(tmp_path: Path) -> None:
    _, spec = CASES["training_finetune"]
    assert spec.training is not None
    local = spec.model_copy(update={"training": spec.training.model_copy(update={"data": "/model-cache/chat.jsonl"})})
    assert _download_calls(local, tmp_path) == ["hf download meta-llama/Llama-3.1-8B"]
    names = {
        download_job_name(variant, OWNER)
        for variant in (
            spec,
            local,
            spec.model_copy(update={"training": spec.training.model_copy(update={"data": "a/b"})}),
        )
    }
    assert len(names) == 3


def test_training_from_an_export_downloads_only_its_hub_dataset(tmp_path: Path) -> None:
    """A model at a path is on the volume already; the Hub dataset still comes through the download Job, and the
    pods then run offline."""
    _, spec = CASES["training_finetune"]
    continued = spec.model_copy(
        update={
            "model": spec.model.model_copy(
                update={"name": "/model-cache/exports/llama8b-alpaca", "config_from": "meta-llama/Llama-3.1-8B"}
            )
        }
    )
    assert continued.prefetched
    assert _download_calls(continued, tmp_path) == ["hf download --repo-type dataset tatsu-lab/alpaca"]
    job = by_kind(render_children(*_first(continued), OWNER), "Job")[-1]
    env = {e["name"]: e.get("value") for e in main_container(job)["env"]}
    assert env["HF_HUB_OFFLINE"] == "1"
    assert _flags(main_container(job)["command"][2].split(" "))["--model"] == "/model-cache/exports/llama8b-alpaca"
    assert spec.training is not None
    local_data = continued.model_copy(update={"training": spec.training.model_copy(update={"data": "/model-cache/d"})})
    assert not local_data.prefetched  # nothing left to download: no Job, no HF_HUB_OFFLINE
    assert not [m for m in render_children(*_first(local_data), OWNER) if m["kind"] == "Job" and is_cache(m)]


def test_a_model_at_a_path_is_served_from_the_volume_under_its_folders_name() -> None:
    plan, spec = CASES["inference_from_export"]
    assert spec.model.cache is not None and spec.model.cache.prefetch  # asked for, but a path is never downloaded:
    assert not spec.prefetched  # the pods wait for no download Job
    manifests = render_children(plan, spec, OWNER)
    assert [m["kind"] for m in manifests] == ["Service", "Deployment"]  # an existing claim, no download Job
    deployment = manifests[1]
    command = main_container(deployment)["command"]
    assert command[:3] == ["vllm", "serve", "/model-cache/exports/llama8b-alpaca"]
    assert command[command.index("--served-model-name") + 1] == "llama8b-alpaca"
    env = {e["name"]: e.get("value") for e in main_container(deployment)["env"]}
    assert env == {"HF_HOME": "/model-cache"}  # no HF_HUB_OFFLINE: nothing was prefetched
    assert {"name": "model-cache", "mountPath": "/model-cache"} in main_container(deployment)["volumeMounts"]
    renamed = spec.model_copy(update={"serving": ServingSpec(args=["--served-model-name", "chat"])})
    command = main_container(by_kind(render_children(plan, renamed, OWNER), "Deployment")[0])["command"]
    assert command[-2:] == ["--served-model-name", "chat"]  # later than the operator's: vLLM keeps the last
    hub_plan, hub = CASES["inference_cached"]
    assert (
        "--served-model-name"
        not in main_container(by_kind(render_children(hub_plan, hub, OWNER), "Deployment")[0])["command"]
    )


# --- optional integrations -----------------------------------------------------------------------------------


def test_a_pod_monitor_scrapes_the_vllm_servers_only_when_its_crd_is_served() -> None:
    plan, spec = CASES["inference_single_node"]
    assert "PodMonitor" not in [m["kind"] for m in render_children(plan, spec, OWNER)]
    manifests = render_children(plan, spec, OWNER, served=OPTIONAL_CRDS)
    monitor = manifests[-1]
    assert (monitor["apiVersion"], monitor["kind"]) == ("monitoring.coreos.com/v1", "PodMonitor")
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics"}]
    deployment = by_kind(manifests, "Deployment")[0]
    assert monitor["spec"]["selector"] == deployment["spec"]["selector"]
    ports = main_container(deployment)["ports"]
    assert [p["name"] for p in ports] == ["http"]
    # Multi-node groups: only pod 0 runs vLLM's server, as for the Service.
    group_plan, group_spec = CASES["inference_multi_node"]
    group_monitor = by_kind(render_children(group_plan, group_spec, OWNER, served=OPTIONAL_CRDS), "PodMonitor")[0]
    assert group_monitor["spec"]["selector"]["matchLabels"]["apps.kubernetes.io/pod-index"] == "0"
    # Training and plan-only resources serve nothing to scrape.
    training_plan, training_spec = CASES["training_one_pod"]
    assert not by_kind(render_children(training_plan, training_spec, OWNER, served=OPTIONAL_CRDS), "PodMonitor")
    preview = spec.model_copy(update={"plan_only": True})
    assert not by_kind(render_children(plan, preview, OWNER, served=OPTIONAL_CRDS), "PodMonitor")


def test_scaling_renders_keda_when_served_else_an_hpa_and_leaves_replicas_to_it() -> None:
    plan, spec = CASES["inference_autoscaled"]
    with_keda = render_children(plan, spec, OWNER, served=OPTIONAL_CRDS)
    [scaled] = by_kind(with_keda, "ScaledObject")
    assert not by_kind(with_keda, "HorizontalPodAutoscaler")
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (1, 6)  # the planned cap
    assert scaled["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": OWNER.name}
    [trigger] = scaled["spec"]["triggers"]
    assert trigger["metadata"]["threshold"] == "3"
    assert trigger["metadata"]["query"].startswith(f'sum(vllm:num_requests_waiting{{namespace="{OWNER.namespace}"')
    [deployment] = by_kind(with_keda, "Deployment")
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count
    plain = render_children(plan, spec, OWNER)
    [hpa] = by_kind(plain, "HorizontalPodAutoscaler")
    assert not by_kind(plain, "ScaledObject")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 6)
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm:num_requests_waiting"
    unscaled = spec.model_copy(update={"scaling": None})
    [fixed] = by_kind(render_children(plan, unscaled, OWNER), "Deployment")
    assert fixed["spec"]["replicas"] == plan.degrees.data


def test_an_inference_pool_selects_the_vllm_servers_only_when_asked_and_served() -> None:
    plan, spec = CASES["inference_autoscaled"]
    [pool] = by_kind(render_children(plan, spec, OWNER, served=OPTIONAL_CRDS), "InferencePool")
    [deployment] = by_kind(render_children(plan, spec, OWNER, served=OPTIONAL_CRDS), "Deployment")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"] == deployment["spec"]["selector"]
    assert pool["spec"]["targetPorts"] == [{"number": 8000}]
    assert pool["spec"]["endpointPickerRef"] == {
        "name": f"{OWNER.name}-epp",
        "port": {"number": 9002},
        "failureMode": "FailOpen",
    }
    assert not by_kind(render_children(plan, spec, OWNER), "InferencePool")  # the CRD is not served
    group_plan, group_spec = CASES["inference_multi_node"]
    assert not by_kind(render_children(group_plan, group_spec, OWNER, served=OPTIONAL_CRDS), "InferencePool")


def test_on_a_leader_worker_set_the_integrations_select_the_leaders_and_scale_the_groups() -> None:
    plan, spec = CASES["inference_multi_node_lws"]
    manifests = render_children(plan, spec, OWNER, served=OPTIONAL_CRDS)
    [lws] = by_kind(manifests, "LeaderWorkerSet")
    assert "replicas" not in lws["spec"]  # the autoscaler owns the group count
    leaders = {**lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["metadata"]["labels"]}
    leaders["leaderworkerset.sigs.k8s.io/worker-index"] = "0"  # what the LWS controller adds to a leader
    [monitor] = by_kind(manifests, "PodMonitor")
    [pool] = by_kind(manifests, "InferencePool")
    [service] = by_kind(manifests, "Service")
    for selector in (monitor["spec"]["selector"]["matchLabels"], pool["spec"]["selector"]["matchLabels"]):
        assert selector == service["spec"]["selector"]
        assert selector.items() <= leaders.items()
        assert selector["leaderworkerset.sigs.k8s.io/worker-index"] == "0"
    [scaled] = by_kind(manifests, "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "name": "llama-lws",
    }
    assert (scaled["spec"]["minReplicaCount"], scaled["spec"]["maxReplicaCount"]) == (2, 4)
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    pods = re.search(r'pod=~"([^"]+)"', query)
    assert pods is not None
    assert re.fullmatch(pods.group(1), "llama-lws-3") and not re.fullmatch(pods.group(1), "llama-lws-3-1")
    [hpa] = by_kind(render_children(plan, spec, OWNER), "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "LeaderWorkerSet"
