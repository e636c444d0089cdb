"""The ParallelDeployment CRD generated from the pydantic models: committed, structural, documented.

Pure: the API server's view of the same CRD is tested in tests/integration/test_crd_api.py.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from autoparallel.controller.crd import CRD_FILE, build_crd, main, render_yaml, structural
from autoparallel.controller.models import (
    ModelSpec,
    ParallelDeploymentSpec,
    ParallelDeploymentStatus,
    ParallelismSpec,
    ServingSpec,
    TrainingSpec,
)
from autoparallel.controller.models_pod import CORE_V1_TYPES, core_v1

REPO_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_DOC = REPO_ROOT / "docs" / "crd-reference.md"

CRD = build_crd()
VERSION = CRD["spec"]["versions"][0]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]
STATUS = SCHEMA["properties"]["status"]

FORBIDDEN_KEYWORDS = ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "title", "const", "uniqueItems")
UNTYPED_MARKERS = ("x-kubernetes-preserve-unknown-fields", "x-kubernetes-int-or-string")
JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "object": dict,
    "array": list,
}


def properties(node: Mapping[str, Any], path: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every property below ``node`` as (path, schema): ``spec.model.name``, list items as
    ``status.conditions[].type``."""
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from properties(child, child_path)
    if "items" in node:
        yield from properties(node["items"], f"{path}[]")


PATHS = dict(properties(SCHEMA))
CORE_V1 = [core_v1(name)["properties"] for name in CORE_V1_TYPES]
EMBEDDED = [
    path
    for path, node in PATHS.items()
    if node.get("properties") in CORE_V1 or node.get("items", {}).get("properties") in CORE_V1
]
"""Fields holding a Kubernetes core/v1 type (spec.podTemplate.spec.affinity …): Kubernetes documents what is
below them (``kubectl explain pod.spec.affinity``), and their schema is the Kubernetes project's own."""
OWN_PATHS = [path for path in PATHS if not any(path.startswith((f"{root}.", f"{root}[]")) for root in EMBEDDED)]


def structural_problems(node: Mapping[str, Any], path: str) -> list[str]:
    """What makes ``node`` (recursively) not a structural schema, one line per problem."""
    problems = [f"{path}: {keyword}" for keyword in FORBIDDEN_KEYWORDS if keyword in node]
    if node.get("additionalProperties") is False:
        problems.append(f"{path}: additionalProperties: false")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: both properties and additionalProperties")
    if "type" not in node and not any(node.get(marker) for marker in UNTYPED_MARKERS):
        problems.append(f"{path}: no type")
    for name, child in node.get("properties", {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_problems(node["additionalProperties"], f"{path}{{}}")
    return problems


def mismatches(value: Any, node: Mapping[str, Any], path: str) -> list[str]:
    """Where ``value`` breaks ``node`` (the checks our schema uses), after the nested defaults apply."""
    if not is_json_type(value, node["type"]):
        return [f"{path}: {value!r} is not {node['type']}"]
    problems = []
    if "enum" in node and value not in node["enum"]:
        problems.append(f"{path}: {value!r} not in {node['enum']}")
    if "minimum" in node and value < node["minimum"]:
        problems.append(f"{path}: {value!r} < {node['minimum']}")
    if "maximum" in node and value > node["maximum"]:
        problems.append(f"{path}: {value!r} > {node['maximum']}")
    if "minLength" in node and len(value) < node["minLength"]:
        problems.append(f"{path}: {value!r} shorter than {node['minLength']}")
    if "maxLength" in node and len(value) > node["maxLength"]:
        problems.append(f"{path}: {value!r} longer than {node['maxLength']}")
    if "pattern" in node and not re.search(node["pattern"], value):
        problems.append(f"{path}: {value!r} does not match {node['pattern']}")
    if isinstance(value, dict) and not node.get("x-kubernetes-preserve-unknown-fields"):
        value = with_defaults(value, node)
        problems += [f"{path}.{key}: required" for key in node.get("required", []) if key not in value]
        for key, item in value.items():
            child = node.get("properties", {}).get(key) or node.get("additionalProperties")
            if child is None:
                problems.append(f"{path}.{key}: not in the schema")
            elif "type" in child:
                problems += mismatches(item, child, f"{path}.{key}")
    if isinstance(value, list):
        for index, item in enumerate(value):
            problems += mismatches(item, node["items"], f"{path}[{index}]")
    return problems


def is_json_type(value: object, schema_type: str) -> bool:
    if schema_type in {"integer", "number"} and isinstance(value, bool):
        return False
    return isinstance(value, JSON_TYPES[schema_type])


def with_defaults(value: Any, node: Mapping[str, Any]) -> Any:
    """``value`` defaulted as the API server does it: absent properties get their default, recursively."""
    if isinstance(value, dict) and "properties" in node:
        value = dict(value)
        for name, child in node["properties"].items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = with_defaults(value[name], child)
    elif isinstance(value, list) and "items" in node:
        value = [with_defaults(item, node["items"]) for item in value]
    return value


def field(path: str) -> Mapping[str, Any]:
    """The schema of a property path such as ``spec.workload.type`` or ``status.conditions[].type``."""
    return PATHS[path]


def declared_rules(model: type[BaseModel]) -> list[dict[str, str]]:
    extra = model.model_config.get("json_schema_extra")
    assert isinstance(extra, dict)
    return list(extra["x-kubernetes-validations"])  # type: ignore[arg-type]


def pydantic_view(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec as the operator reads it back: pydantic's defaults, nothing unset."""
    return ParallelDeploymentSpec.model_validate(spec).model_dump(by_alias=True, mode="json", exclude_none=True)


# --- the committed manifest -------------------------------------------------------------------------


def test_committed_crd_is_generated_from_the_models() -> None:
    committed = REPO_ROOT / CRD_FILE
    assert committed.exists(), f"{CRD_FILE} is missing: run `make crds`"
    assert committed.read_text() == render_yaml(build_crd()), (
        f"{CRD_FILE} is out of date with models.py: run `make crds`"
    )


def test_module_prints_the_manifest(capsys: pytest.CaptureFixture[str]) -> None:
    main()
    printed = capsys.readouterr().out
    assert printed == render_yaml(CRD)
    assert printed.startswith("# generated by make crds from operator/autoparallel/controller/models.py; do not edit\n")
    assert "&id" not in printed, "the YAML must not use anchors (shared definitions must be copied)"


# --- names, scope, subresources, printer columns -------------------------------------------------------


def test_names_scope_and_version() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "paralleldeployments.autoparallel.io"
    assert CRD["spec"]["group"] == "autoparallel.io"
    assert CRD["spec"]["scope"] == "Namespaced"
    assert CRD["spec"]["names"] == {
        "kind": "ParallelDeployment",
        "listKind": "ParallelDeploymentList",
        "plural": "paralleldeployments",
        "singular": "paralleldeployment",
        "shortNames": ["pd", "pdeploy"],
        "categories": ["autoparallel"],
    }
    assert [v["name"] for v in CRD["spec"]["versions"]] == ["v1alpha1"]
    assert VERSION["served"] is True
    assert VERSION["storage"] is True
    assert VERSION["subresources"] == {"status": {}}


def test_printer_columns() -> None:
    columns = [(c["name"], c["type"], c["jsonPath"], c.get("priority", 0)) for c in VERSION["additionalPrinterColumns"]]
    assert columns == [
        ("Ready", "string", '.status.conditions[?(@.type=="Ready")].status', 0),
        ("TP", "integer", ".status.plan.tensor", 0),
        ("PP", "integer", ".status.plan.pipeline", 0),
        ("DP", "integer", ".status.plan.data", 0),
        ("GPUs", "integer", ".status.plan.gpus", 0),
        ("Mem/GPU", "string", ".status.plan.memoryPerGPU.summary", 0),
        ("Age", "date", ".metadata.creationTimestamp", 0),
        ("Reason", "string", '.status.conditions[?(@.type=="Ready")].reason', 1),
        ("Message", "string", '.status.conditions[?(@.type=="Planned")].message', 1),
    ]
    assert all(c["description"] for c in VERSION["additionalPrinterColumns"])


@pytest.mark.parametrize("column", VERSION["additionalPrinterColumns"], ids=lambda c: c["name"])
def test_printer_columns_read_fields_of_the_schema(column: Mapping[str, Any]) -> None:
    path = re.sub(r'\[\?\(@\.type=="\w+"\)\]', "[]", column["jsonPath"]).removeprefix(".")
    if path.startswith("metadata."):
        return
    assert field(path)["type"] == column["type"]


# --- the schema is structural ---------------------------------------------------------------------------


def test_schema_is_structural() -> None:
    assert structural_problems(SCHEMA, "<root>") == []


def test_top_level_fields() -> None:
    assert SCHEMA["type"] == "object"
    assert list(SCHEMA["properties"]) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert SCHEMA["required"] == ["spec"]
    assert SCHEMA["properties"]["metadata"] == {"type": "object"}, "the API server allows nothing else here"


def test_every_property_has_a_description() -> None:
    undocumented = [path for path in OWN_PATHS if path != "metadata" and not PATHS[path].get("description")]
    assert undocumented == [], "add a docstring under these fields in models.py, then run `make crds`"


def test_descriptions_are_one_paragraph_lines() -> None:
    """kubectl explain wraps text itself; the docstrings' line breaks would show as ragged lines."""
    broken = [path for path, node in PATHS.items() if "\n" in node.get("description", "")]
    assert broken == []


@pytest.mark.parametrize("path", [path for path, node in PATHS.items() if "default" in node])
def test_defaults_validate_against_their_schema(path: str) -> None:
    node = field(path)
    assert mismatches(node["default"], node, path) == []


def test_a_minimal_spec_defaults_like_the_models() -> None:
    minimal = {"model": {"name": "Qwen/Qwen3-8B"}}
    assert with_defaults(minimal, SPEC) == pydantic_view(minimal)


def test_a_full_spec_defaults_like_the_models() -> None:
    full = {
        "model": {"name": "meta-llama/Llama-3.1-70B", "quantization": "fp8"},
        "workload": {"type": "training"},
        "parallelism": {"tensor": 8},
        "placement": {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}]},
        "training": {"env": [{"name": "NCCL_DEBUG"}]},
    }
    assert with_defaults(full, SPEC) == pydantic_view(full)
    assert mismatches(with_defaults(full, SPEC), SPEC, "spec") == []


def test_status_conditions_are_a_map_keyed_by_type() -> None:
    conditions = field("status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert "type" in conditions["items"]["required"]


def test_model_config_keeps_unknown_fields() -> None:
    config = field("spec.model.config")
    assert config == {
        "description": config["description"],
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": True,
    }


def test_node_selector_is_a_string_map() -> None:
    assert field("spec.placement.nodeSelector")["additionalProperties"] == {"type": "string"}


# --- the contract ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "schema_type"),
    [
        ("spec.model.name", "string"),
        ("spec.workload.type", "string"),
        ("spec.workload.sequenceLength", "integer"),
        ("spec.workload.batchSize", "integer"),
        ("spec.objective", "string"),
        ("spec.planOnly", "boolean"),
        ("spec.parallelism.tensor", "integer"),
        ("spec.parallelism.pipeline", "integer"),
        ("spec.parallelism.data", "integer"),
        ("spec.parallelism.expert", "integer"),
        ("spec.parallelism.maxGPUs", "integer"),
        ("spec.placement.nodeSelector", "object"),
        ("spec.placement.gpuResource", "string"),
        ("spec.serving.gpuMemoryUtilization", "string"),
        ("status.observedGeneration", "integer"),
        ("status.conditions", "array"),
        ("status.conditions[].type", "string"),
        ("status.conditions[].status", "string"),
        ("status.conditions[].reason", "string"),
        ("status.conditions[].message", "string"),
        ("status.conditions[].lastTransitionTime", "string"),
        ("status.plan.tensor", "integer"),
        ("status.plan.pipeline", "integer"),
        ("status.plan.data", "integer"),
        ("status.plan.expert", "integer"),
        ("status.plan.gpus", "integer"),
        ("status.plan.nodes", "integer"),
        ("status.plan.gpuType", "string"),
        ("status.plan.memoryPerGPU", "object"),
        ("status.plan.memoryPerGPU.total", "integer"),
        ("status.plan.memoryPerGPU.human", "string"),
    ],
)
def test_contract_fields_exist(path: str, schema_type: str) -> None:
    assert field(path)["type"] == schema_type


def test_required_fields_and_enums() -> None:
    assert SPEC["required"] == ["model"]
    assert field("spec.model")["required"] == ["name"]
    assert field("spec.workload.type")["enum"] == ["inference", "training"]
    assert field("spec.workload.type")["default"] == "inference"
    assert field("spec.objective")["enum"] == ["minimize_gpus", "maximize_batch", "balanced", "minimize_cost"]
    assert field("status.conditions[].status")["enum"] == ["True", "False", "Unknown"]
    assert field("spec.workload.sequenceLength")["minimum"] == 1
    assert field("spec.model.name")["minLength"] == 1
    assert "required" not in field("spec.parallelism"), "every pin is optional"


def test_optional_fields_are_not_nullable_unions() -> None:
    revision = field("spec.model.revision")
    assert revision["type"] == "string"
    assert "default" not in revision, "an unset optional field has no default (not null)"


def test_objects_given_by_default_factory_default_to_empty() -> None:
    """The API server fills ``{}`` with the fields' own defaults, so spec.workload.type is always set."""
    for path in ("spec.workload", "spec.parallelism", "spec.placement"):
        assert field(path)["default"] == {}
    assert field("spec.placement.tolerations")["default"] == []


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("spec", ParallelDeploymentSpec),
        ("spec.model", ModelSpec),
        ("spec.parallelism", ParallelismSpec),
        ("spec.serving", ServingSpec),
        ("spec.training", TrainingSpec),
    ],
)
def test_cel_rules_come_from_the_models(path: str, model: type[BaseModel]) -> None:
    rules = field(path)["x-kubernetes-validations"]
    assert rules == declared_rules(model)
    assert all(rule["rule"] and rule["message"] for rule in rules)


def test_cel_rules_cover_the_cross_field_checks() -> None:
    messages = [rule["message"] for node in PATHS.values() for rule in node.get("x-kubernetes-validations", [])]
    assert messages == [
        "serving applies to inference; use training for workload.type training",
        "training applies to workload.type training",
        "scaling applies to inference",
        "scaling sets the replicas: remove parallelism.data (minReplicas is the planned degree)",
        "parallelism.expert applies to inference",
        "placement.topologyKey places replicas through LeaderWorkerSet's exclusive topology: use "
        "serving.multiNodeBackend auto or leaderWorkerSet, or remove topologyKey",
        "quantization quantizes an unquantized checkpoint at load time, weightFormat plans for a checkpoint stored "
        "quantized: give one",
        "name is a path the operator cannot read: set configFrom to the model the checkpoint was trained from (e.g. "
        "meta-llama/Llama-3.1-8B), or config to its config.json",
        "config and configFrom both describe the architecture: give one",
        "configFrom names a model the operator resolves (a catalog or Hugging Face id), not a path: the operator "
        "cannot read the pods' volumes",
        "revision selects a Hugging Face revision; a path in name has none: remove revision",
        "cache takes claimName or size",
        "storageClassName, accessModes and retain apply to a cache the operator creates (size)",
        "maxGPUs must be at least tensor × pipeline",
        'gpuMemoryUtilization must be a decimal in (0, 1], e.g. "0.90"',
        "valueFrom takes exactly one of secretKeyRef, configMapKeyRef, fieldRef",
        "maxReplicas must be at least minReplicas",
        "data, dataField, init, checkpointDir, checkpointEvery, exportDir, exportEvery are flags of autoparallel's "
        "runtime, which command replaces: pass your program's own flags in args",
        "dataField applies to data: set data",
        "checkpointEvery needs checkpointDir",
        "exportEvery needs exportDir",
        "checkpointDir must be an absolute path on a volume of the pods, e.g. /model-cache/checkpoints/NAME",
        "exportDir must be an absolute path on a volume of the pods, e.g. /model-cache/exports/NAME",
        "valueFrom takes exactly one of secretKeyRef, configMapKeyRef, fieldRef",
        "valueFrom takes exactly one of secretKeyRef, configMapKeyRef, fieldRef",
    ]


def test_embedded_kubernetes_types_keep_their_schema() -> None:
    """spec.podTemplate embeds the core/v1 types with the Kubernetes project's schema, found where expected."""
    assert EMBEDDED == [
        "spec.podTemplate.spec.affinity",
        "spec.podTemplate.spec.securityContext",
        "spec.podTemplate.spec.volumes",
        "spec.podTemplate.spec.containers[].volumeMounts",
        "spec.podTemplate.spec.containers[].resources",
    ]
    affinity = field("spec.podTemplate.spec.affinity")
    terms = affinity["properties"]["nodeAffinity"]["properties"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["required"] == ["nodeSelectorTerms"]
    requests = field("spec.podTemplate.spec.containers[].resources")["properties"]["requests"]
    assert requests["additionalProperties"] == {"x-kubernetes-int-or-string": True}  # a Quantity


def test_status_schema_matches_what_the_operator_writes() -> None:
    status = ParallelDeploymentStatus.model_validate(
        {
            "observedGeneration": 2,
            "conditions": [
                {"type": "Planned", "status": "True", "reason": "Planned", "lastTransitionTime": "2025-01-01T00:00:00Z"}
            ],
            "replicas": {"desired": 2, "ready": 1},
        }
    )
    body = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert mismatches(body, STATUS, "status") == []


# --- the converter --------------------------------------------------------------------------------------


def test_structural_inlines_refs_and_lets_the_field_win() -> None:
    definitions = {"Pins": {"title": "Pins", "description": "the type", "type": "object", "properties": {}}}
    node = {"$ref": "#/$defs/Pins", "description": "the field"}
    assert structural(node, definitions) == {"description": "the field", "type": "object", "properties": {}}


def test_structural_reduces_nullable_unions() -> None:
    node = {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "null"}], "default": None, "title": "Tensor"}
    assert structural(node, {}) == {"type": "integer", "minimum": 1}


def test_structural_writes_exclusive_bounds_the_openapi_v3_way() -> None:
    assert structural({"type": "integer", "exclusiveMinimum": 0}, {}) == {
        "type": "integer",
        "minimum": 0,
        "exclusiveMinimum": True,
    }


def test_structural_drops_closed_object_markers() -> None:
    node = {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "string"}}}
    assert structural(node, {}) == {"type": "object", "properties": {"a": {"type": "string"}}}


def test_structural_joins_docstring_lines() -> None:
    assert structural({"type": "string", "description": "one\n  two\n\nthree"}, {})["description"] == "one two\n\nthree"


@pytest.mark.parametrize(
    "node",
    [
        {"anyOf": [{"type": "integer"}, {"type": "string"}]},
        {"type": "string", "const": "x"},
        {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
    ],
    ids=["union", "const", "uniqueItems"],
)
def test_structural_refuses_what_the_api_server_cannot_express(node: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="structural"):
        structural(node, {})


# --- the reference documentation ------------------------------------------------------------------------


def test_reference_documents_every_field() -> None:
    text = REFERENCE_DOC.read_text()
    missing = [path for path in OWN_PATHS if path.startswith(("spec", "status")) and f"`{path}`" not in text]
    assert missing == [], f"document these fields in {REFERENCE_DOC.relative_to(REPO_ROOT)}"


def test_reference_documents_the_printer_columns() -> None:
    text = REFERENCE_DOC.read_text()
    missing = [c["jsonPath"] for c in VERSION["additionalPrinterColumns"] if f"`{c['jsonPath']}`" not in text]
    assert missing == []


# --- the examples -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", sorted((REPO_ROOT / "examples").rglob("*.yaml")), ids=lambda path: str(path.relative_to(REPO_ROOT))
)
def test_every_example_is_valid_for_the_schema_and_the_models(path: Path) -> None:
    for body in yaml.safe_load_all(path.read_text()):
        if not body or body.get("kind") != "ParallelDeployment":
            continue
        assert mismatches(body["spec"], SPEC, "spec") == []
        ParallelDeploymentSpec.model_validate(body["spec"])
