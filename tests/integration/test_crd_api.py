"""The generated CRD on a real API server: accepted, published with its descriptions, defaulting like the
models, and rejecting invalid objects with a message that names the field."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import pytest
from kubernetes import client
from kubernetes.client import ApiException

from autoparallel.controller.crd import CRD_NAME, PRINTER_COLUMNS, build_crd
from autoparallel.controller.models import (
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ParallelDeploymentSpec,
    ParallelDeploymentStatus,
)
from kube import KubeCluster, wait_for

pytestmark = pytest.mark.cluster

FIELD_MANAGER = "autoparallel-tests"
OPENAPI_PATH = f"/openapi/v3/apis/{GROUP}/{VERSION}"
OPENAPI_SCHEMA = f"io.autoparallel.{VERSION}.{KIND}"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"
MODEL = "Qwen/Qwen3-8B"
NAME = "pd"

STATUS = {
    "observedGeneration": 1,
    "conditions": [
        {
            "type": "Planned",
            "status": "True",
            "reason": "Planned",
            "message": "TP=4 PP=1 DP=2 on 8× H100-80GB",
            "observedGeneration": 1,
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
        {
            "type": "Ready",
            "status": "True",
            "reason": "Ready",
            "message": "2/2 replicas ready",
            "observedGeneration": 1,
            "lastTransitionTime": "2025-01-01T00:00:00Z",
        },
    ],
    "plan": {
        "tensor": 4,
        "pipeline": 1,
        "data": 2,
        "expert": 1,
        "gpus": 8,
        "gpusPerReplica": 4,
        "nodes": 1,
        "nodesPerReplica": 1,
        "gpuType": "H100-80GB",
        "pool": "H100-80GB",
        "memoryPerGPU": {
            "weights": 4_400_000_000,
            "kvCache": 60_000_000_000,
            "activations": 1_000_000_000,
            "overhead": 4_000_000_000,
            "total": 69_400_000_000,
            "human": "64.6 GiB of 79.2 GiB",
            "summary": "64.6/79.2 GiB",
        },
        "utilization": "0.82",
        "kvCacheTokens": 400_000,
        "maxConcurrency": 97,
        "command": "vllm serve Qwen/Qwen3-8B --tensor-parallel-size 4",
        "reason": "fewest GPUs",
        "hash": "0123456789abcdef",
    },
    "candidates": ["TP=8 PP=1 DP=1 on 8× H100-80GB"],
    "replicas": {"desired": 2, "ready": 2},
    "inventory": [
        {
            "name": "H100-80GB",
            "gpuType": "H100-80GB",
            "nodes": 2,
            "gpusTotal": 16,
            "gpusFree": 8,
            "memoryPerGPU": "79.2 GiB",
        }
    ],
}


def manifest(spec: Mapping[str, Any], name: str = NAME) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": name}, "spec": spec}


def descriptions(node: Mapping[str, Any], path: str) -> dict[str, str]:
    """{property path: description} below ``node`` (list items as ``[]``)."""
    found: dict[str, str] = {}
    for name, child in node.get("properties", {}).items():
        found[f"{path}.{name}"] = child.get("description", "")
        found |= descriptions(child, f"{path}.{name}")
    if "items" in node:
        found |= descriptions(node["items"], f"{path}[]")
    return found


def ours() -> dict[str, str]:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return descriptions(schema["properties"]["spec"], "spec") | descriptions(schema["properties"]["status"], "status")


def get_json(api_client: client.ApiClient, path: str, accept: str = "application/json") -> Any:
    """GET a path the typed clients have no method for; raises ApiException like they do."""
    request = api_client.param_serialize(
        method="GET", resource_path=path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
    )
    response = api_client.call_api(*request).response  # urllib3's, its content read
    if response.status != 200:
        raise ApiException(http_resp=response)
    return json.loads(response.data)


def published_descriptions(api_client: client.ApiClient) -> dict[str, str]:
    schema = get_json(api_client, OPENAPI_PATH)["components"]["schemas"][OPENAPI_SCHEMA]
    return descriptions(schema["properties"]["spec"], "spec") | descriptions(schema["properties"]["status"], "status")


def crd_conditions(api: client.ApiextensionsV1Api) -> dict[str, str]:
    crd = api.read_custom_resource_definition(CRD_NAME)
    conditions = crd.status.conditions if crd.status else None
    return {c.type: f"{c.status} {c.reason}: {c.message}" for c in conditions or []}


def rejection(exc: ApiException) -> str:
    """The API server's message from an error response (a v1 Status)."""
    return str(json.loads(exc.body or "{}").get("message", exc))


@pytest.fixture(scope="module")
def crd(kube_cluster: KubeCluster) -> client.CustomObjectsApi:
    """The CRD applied server-side (it stays installed: other suites need it), established and published."""
    extensions = client.ApiextensionsV1Api(kube_cluster.api_client)
    extensions.patch_custom_resource_definition(
        CRD_NAME,
        build_crd(),
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )
    wait_for(
        lambda: crd_conditions(extensions).get("Established", "").startswith("True"),
        timeout=30,
        description=f"CRD {CRD_NAME} to be Established",
        observe=lambda: crd_conditions(extensions),
    )
    # Established is already True when an older version of the CRD was installed: wait until the server
    # publishes this schema, which it does once it has taken it up.
    expected = ours()
    wait_for(
        lambda: published_descriptions(kube_cluster.api_client) == expected,
        timeout=30,
        description=f"the API server to publish this schema at {OPENAPI_PATH}",
        observe=lambda: {
            path: text
            for path, text in published_descriptions(kube_cluster.api_client).items()
            if expected.get(path) != text
        },
    )
    return client.CustomObjectsApi(kube_cluster.api_client)


def create(custom: client.CustomObjectsApi, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, dict(body), field_validation="Strict"
    )
    return cast(dict[str, Any], created)


def test_crd_is_established_with_its_names(kube_cluster: KubeCluster, crd: client.CustomObjectsApi) -> None:
    extensions = client.ApiextensionsV1Api(kube_cluster.api_client)
    conditions = crd_conditions(extensions)
    assert conditions["Established"].startswith("True"), conditions
    assert conditions["NamesAccepted"].startswith("True"), conditions
    resources = client.CustomObjectsApi(kube_cluster.api_client).get_api_resources(GROUP, VERSION)
    resource = next(r for r in resources.resources if r.name == PLURAL)
    assert resource.kind == KIND
    assert resource.namespaced is True
    assert resource.short_names == ["pd", "pdeploy"]
    assert resource.categories == ["autoparallel"]
    assert any(r.name == f"{PLURAL}/status" for r in resources.resources), "status subresource"


def test_openapi_publishes_the_descriptions(kube_cluster: KubeCluster, crd: client.CustomObjectsApi) -> None:
    """What `kubectl explain pd.spec.model.name` reads."""
    published = published_descriptions(kube_cluster.api_client)
    assert published["spec.model.name"].startswith("Hugging Face model id (e.g. meta-llama/Llama-3.1-70B), or an")
    assert published["spec.workload.type"].startswith("inference serves the model with vLLM")
    assert published == ours()


def test_minimal_object_is_accepted_and_defaulted_like_the_models(crd: client.CustomObjectsApi, namespace: str) -> None:
    created = create(crd, namespace, manifest({"model": {"name": MODEL}}))
    spec = created["spec"]
    # No sequenceLength default: unset means min(4096, the model's positions), decided when planning.
    assert spec["workload"] == {"type": "inference", "batchSize": 32}
    assert spec["objective"] == "minimize_gpus"
    assert spec["planOnly"] is False
    assert spec["placement"]["gpuResource"] == "nvidia.com/gpu"
    assert "serving" not in spec
    default = ParallelDeploymentSpec.model_validate({"model": {"name": MODEL}})
    assert spec == default.model_dump(by_alias=True, mode="json", exclude_none=True)


@pytest.mark.parametrize(
    "spec",
    [
        {
            "model": {"name": "custom/llama", "revision": "main", "dtype": "bfloat16", "quantization": "fp8"},
            "workload": {"type": "inference", "sequenceLength": 8192, "batchSize": 64},
            "objective": "maximize_batch",
            "parallelism": {"tensor": 4, "pipeline": 2, "data": 1, "expert": 2, "maxGPUs": 8},
            "placement": {
                "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"},
                "gpuResource": "nvidia.com/gpu",
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "topologyKey": "cloud.google.com/gke-nodepool",
            },
            "serving": {
                "args": ["--enforce-eager"],
                "env": [{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
                "gpuMemoryUtilization": ".95",
                "kvCacheDtype": "fp8",
                "port": 8080,
                "multiNodeBackend": "leaderWorkerSet",
            },
            "planOnly": True,
        },
        {
            "model": {
                "name": "custom/tiny",
                "config": {"architectures": ["LlamaForCausalLM"], "hidden_size": 512, "rope_scaling": {"factor": 8.0}},
            },
            "workload": {"type": "training", "sequenceLength": 2048, "batchSize": 16},
            "training": {"command": ["python", "train.py"], "steps": 10},
        },
        {
            "model": {"name": MODEL, "tokenSecretRef": {"name": "hf"}, "cache": {"size": "100Gi"}},
            "workload": {"type": "training", "sequenceLength": 2048, "batchSize": 16},
            "training": {
                "init": "pretrained",
                "data": "tatsu-lab/alpaca",
                "dataField": "text",
                "checkpointDir": "/model-cache/checkpoints/run",
                "checkpointEvery": 100,
                "exportDir": "/model-cache/exports/run",
                "exportEvery": 500,
            },
        },
        {
            "model": {
                "name": "/model-cache/exports/run",
                "configFrom": MODEL,
                "cache": {"claimName": "run-model-cache"},
            },
        },
    ],
    ids=["inference-everything-set", "training-inline-config", "training-fine-tune", "inference-from-an-export"],
)
def test_full_objects_are_kept_as_the_models_read_them(
    crd: client.CustomObjectsApi, namespace: str, spec: dict[str, Any]
) -> None:
    created = create(crd, namespace, manifest(spec))
    model = ParallelDeploymentSpec.model_validate(spec)
    assert created["spec"] == model.model_dump(by_alias=True, mode="json", exclude_none=True)


INVALID = [
    pytest.param({"model": {}}, ["spec.model.name: Required value"], id="model-name-missing"),
    pytest.param(
        {"model": {"name": MODEL}, "workload": {"type": "serving"}},
        ['spec.workload.type: Unsupported value: "serving": supported values: "inference", "training"'],
        id="workload-type-not-in-enum",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "workload": {"sequenceLength": 0}},
        ["spec.workload.sequenceLength: Invalid value: 0", "should be greater than or equal to 1"],
        id="sequence-length-zero",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "replicas": 2},
        ['unknown field "spec.replicas"'],
        id="unknown-field",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "workload": {"type": "training"}, "serving": {"port": 8000}},
        ['spec: Invalid value: "object": serving applies to inference; use training for workload.type training'],
        id="serving-with-training",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "training": {"steps": 10}},
        ['spec: Invalid value: "object": training applies to workload.type training'],
        id="training-with-inference",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "workload": {"type": "training"}, "parallelism": {"expert": 2}},
        ['spec: Invalid value: "object": parallelism.expert applies to inference'],
        id="expert-with-training",
    ),
    pytest.param(
        {
            "model": {"name": MODEL},
            "placement": {"topologyKey": "rack"},
            "serving": {"multiNodeBackend": "statefulSet"},
        },
        [
            'spec: Invalid value: "object": placement.topologyKey places replicas through LeaderWorkerSet\'s '
            "exclusive topology: use serving.multiNodeBackend auto or leaderWorkerSet, or remove topologyKey"
        ],
        id="topology-key-with-statefulsets",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "serving": {"multiNodeBackend": "ray"}},
        ['spec.serving.multiNodeBackend: Unsupported value: "ray"'],
        id="multi-node-backend-not-in-enum",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "parallelism": {"tensor": 4, "pipeline": 2, "maxGPUs": 4}},
        ['spec.parallelism: Invalid value: "object": maxGPUs must be at least tensor × pipeline'],
        id="max-gpus-below-tensor-times-pipeline",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "serving": {"gpuMemoryUtilization": "1.5"}},
        [
            'spec.serving.gpuMemoryUtilization: Invalid value: "1.5"',
            'spec.serving: Invalid value: "object": gpuMemoryUtilization must be a decimal in (0, 1], e.g. "0.90"',
        ],
        id="gpu-memory-utilization-above-one",
    ),
    pytest.param(
        {"model": {"name": MODEL}, "serving": {"gpuMemoryUtilization": "0.0"}},
        ['spec.serving: Invalid value: "object": gpuMemoryUtilization must be a decimal in (0, 1], e.g. "0.90"'],
        id="gpu-memory-utilization-zero",
    ),
    pytest.param(
        {"model": {"name": MODEL, "cache": {"claimName": "weights", "retain": True}}},
        [
            'spec.model.cache: Invalid value: "object": storageClassName, accessModes and retain apply to a cache '
            "the operator creates (size)"
        ],
        id="retain-of-an-existing-claim",
    ),
    pytest.param(
        {"model": {"name": "/model-cache/exports/run"}},
        ['spec.model: Invalid value: "object": name is a path the operator cannot read: set configFrom'],
        id="path-without-config-from",
    ),
    pytest.param(
        {"model": {"name": "/model-cache/exports/run", "configFrom": MODEL, "revision": "main"}},
        ['spec.model: Invalid value: "object": revision selects a Hugging Face revision; a path in name has none'],
        id="path-with-revision",
    ),
    pytest.param(
        {"model": {"name": MODEL, "configFrom": "/model-cache/base", "config": {"model_type": "llama"}}},
        [
            "config and configFrom both describe the architecture: give one",
            "configFrom names a model the operator resolves (a catalog or Hugging Face id), not a path",
        ],
        id="config-from-a-path-and-config",
    ),
    pytest.param(
        {
            "model": {"name": MODEL},
            "workload": {"type": "training"},
            "training": {"command": ["python", "train.py"], "exportDir": "/model-cache/exports/run"},
        },
        ["are flags of autoparallel's runtime, which command replaces: pass your program's own flags in args"],
        id="runtime-flags-with-a-command",
    ),
    pytest.param(
        {
            "model": {"name": MODEL},
            "workload": {"type": "training"},
            "training": {"dataField": "text", "exportEvery": 10, "checkpointEvery": 5, "checkpointDir": "ckpt"},
        },
        [
            "dataField applies to data: set data",
            "exportEvery needs exportDir",
            "checkpointDir must be an absolute path on a volume of the pods",
        ],
        id="training-fields-without-what-they-need",
    ),
]


@pytest.mark.parametrize(("spec", "messages"), INVALID)
def test_invalid_objects_are_rejected_naming_the_field(
    crd: client.CustomObjectsApi, namespace: str, spec: dict[str, Any], messages: list[str]
) -> None:
    with pytest.raises(ApiException) as rejected:
        create(crd, namespace, manifest(spec))
    assert rejected.value.status in (400, 422), rejected.value
    message = rejection(rejected.value)
    for expected in messages:
        assert expected in message


def test_status_is_written_through_the_subresource_and_shown_in_columns(
    kube_cluster: KubeCluster, crd: client.CustomObjectsApi, namespace: str
) -> None:
    create(crd, namespace, manifest({"model": {"name": MODEL}}))
    status = ParallelDeploymentStatus.model_validate(STATUS).model_dump(by_alias=True, mode="json", exclude_none=True)
    patched: Any = crd.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, NAME, {"status": status}, _content_type="application/merge-patch+json"
    )
    assert patched["status"] == status, "the status schema keeps every field the operator writes"

    table = get_json(kube_cluster.api_client, f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}", TABLE)
    columns = [c["name"] for c in table["columnDefinitions"]]
    assert columns == ["Name", *(c.name for c in PRINTER_COLUMNS)]
    cells = dict(zip(columns, table["rows"][0]["cells"], strict=True))
    assert cells["Name"] == NAME
    assert (cells["Ready"], cells["TP"], cells["PP"], cells["DP"], cells["GPUs"]) == ("True", 4, 1, 2, 8)
    assert cells["Mem/GPU"] == "64.6/79.2 GiB"
    assert cells["Reason"] == "Ready"
    assert cells["Message"] == "TP=4 PP=1 DP=2 on 8× H100-80GB"


def test_status_conditions_are_unique_by_type(crd: client.CustomObjectsApi, namespace: str) -> None:
    create(crd, namespace, manifest({"model": {"name": MODEL}}))
    ready = {"type": "Ready", "status": "False", "reason": "RollingOut", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    with pytest.raises(ApiException) as rejected:
        crd.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            NAME,
            {"status": {"conditions": [ready, {**ready, "status": "True", "reason": "Ready"}]}},
            _content_type="application/merge-patch+json",
        )
    assert 'status.conditions[1]: Duplicate value: {"type":"Ready"}' in rejection(rejected.value)
