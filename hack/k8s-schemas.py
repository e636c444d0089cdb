#!/usr/bin/env python3
"""Writes operator/autoparallel/controller/schemas/core-v1.json: the Kubernetes core/v1 types that
``spec.podTemplate`` embeds (Affinity, PodSecurityContext, Volume, VolumeMount, ResourceRequirements), taken
from the OpenAPI v3 document the Kubernetes project publishes in its own module (``api/openapi-spec/v3``) at the
version the local control plane runs, made structural for a CRD (the way controller-gen renders these types):

- ``$ref``/``allOf`` inlined; Quantity and IntOrString as ``x-kubernetes-int-or-string``;
- descriptions dropped below the top of each type (they would make the CRD too large for client-side apply;
  ``kubectl explain`` still shows every field and its type);
- defaults dropped (the API server would otherwise write them into the ParallelDeployment), as are the
  strategic-merge and list-map markers (the embedded lists are atomic in a ParallelDeployment).

Run after changing the Kubernetes version: ``make k8s-schemas`` (needs the module in Go's module cache, which
``make cluster-up`` puts there).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
GO_MOD = REPO / "hack/cluster/kubernetes/go.mod"
OUTPUT = REPO / "operator/autoparallel/controller/schemas/core-v1.json"
PREFIX = "io.k8s.api.core.v1."
TYPES = ("Affinity", "PodSecurityContext", "Volume", "VolumeMount", "ResourceRequirements")
INT_OR_STRING = {"io.k8s.apimachinery.pkg.api.resource.Quantity", "io.k8s.apimachinery.pkg.util.intstr.IntOrString"}
KEPT = {"type", "format", "enum", "items", "properties", "additionalProperties", "required", "description"}


def openapi_document() -> tuple[str, dict[str, Any]]:
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)", GO_MOD.read_text(), flags=re.MULTILINE)
    if not match:
        sys.exit(f"no k8s.io/kubernetes version in {GO_MOD}")
    version = match.group(1)
    cache = subprocess.run(["go", "env", "GOMODCACHE"], check=True, capture_output=True, text=True).stdout.strip()
    path = Path(cache) / f"k8s.io/kubernetes@{version}/api/openapi-spec/v3/api__v1_openapi.json"
    if not path.exists():
        sys.exit(f"{path} is missing: run make cluster-up (it downloads k8s.io/kubernetes {version})")
    return version, json.loads(path.read_text())


def structural(node: Any, schemas: dict[str, Any], top: bool) -> Any:
    if isinstance(node, list):
        return [structural(item, schemas, False) for item in node]
    if not isinstance(node, dict):
        return node
    reference = node.get("$ref") or (node["allOf"][0]["$ref"] if len(node.get("allOf", [])) == 1 else None)
    if reference:
        name = reference.rsplit("/", 1)[-1]
        if name in INT_OR_STRING:
            return {"x-kubernetes-int-or-string": True}
        return structural(schemas[name], schemas, False)
    result: dict[str, Any] = {}
    for key, value in node.items():
        if key not in KEPT or (key == "description" and not top):
            continue
        if key == "properties":
            result[key] = {name: structural(child, schemas, False) for name, child in value.items()}
        elif key in {"items", "additionalProperties"}:
            result[key] = structural(value, schemas, False)
        else:
            result[key] = value
    return result


def main() -> None:
    version, document = openapi_document()
    schemas = document["components"]["schemas"]
    types = {name: structural(schemas[PREFIX + name], schemas, True) for name in TYPES}
    body = {"source": f"k8s.io/kubernetes@{version} api/openapi-spec/v3/api__v1_openapi.json", "types": types}
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(body, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUTPUT.relative_to(REPO)} ({OUTPUT.stat().st_size} bytes) from k8s.io/kubernetes {version}")


if __name__ == "__main__":
    main()
