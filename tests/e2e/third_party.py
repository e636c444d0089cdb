"""Other projects' CRDs in the local API server: generated from their own Go API modules by hack/build-crds.sh,
installed by a test that needs them and removed by it (a CRD the cluster already had is left alone)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kube import KubeCluster, gone, repo_root, wait_for

TEST_LABEL = "autoparallel.io/installed-by-tests"


def served(kube_cluster: KubeCluster, name: str) -> dict[str, Any] | None:
    """The CRD ``name`` (``<plural>.<group>``) if the API server has it."""
    try:
        crd = client.ApiextensionsV1Api(kube_cluster.api_client).read_custom_resource_definition(name)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    result: dict[str, Any] = crd.to_dict()
    return result


@contextmanager
def installed_crd(kube_cluster: KubeCluster, name: str) -> Iterator[str]:
    """The CRD ``name`` from its project's Go module, Established for the duration (unless it existed)."""
    if served(kube_cluster, name) is not None:
        yield name
        return
    built = subprocess.run(
        [str(repo_root() / "hack" / "build-crds.sh"), "--print-path"], check=True, capture_output=True, text=True
    )
    plural, group = name.split(".", 1)
    body = yaml.safe_load((Path(built.stdout.strip()) / f"{group}_{plural}.yaml").read_text())
    body["metadata"].setdefault("labels", {})[TEST_LABEL] = "true"
    api = client.ApiextensionsV1Api(kube_cluster.api_client)
    api.create_custom_resource_definition(body)

    def established() -> bool:
        conditions = api.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    try:
        wait_for(established, timeout=30, description=f"CRD {name} Established")
        yield name
    finally:
        api.delete_custom_resource_definition(name)
        wait_for(gone(lambda: api.read_custom_resource_definition(name)), timeout=60, description=f"{name} gone")


def custom_objects(kube_cluster: KubeCluster, namespace: str, group: str, version: str, plural: str) -> list[Any]:
    api = client.CustomObjectsApi(kube_cluster.api_client)
    items: list[Any] = api.list_namespaced_custom_object(group, version, namespace, plural)["items"]
    return items
