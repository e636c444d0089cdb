"""The operator under test: the CRD installed in the real API server and the operator running in-process
(kopf's KopfRunner), with a short resync so replans and readiness show up within seconds."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client

from kube import KubeCluster, repo_root, wait_for

CRD_FILE = repo_root() / "crds" / "paralleldeployments.autoparallel.io.yaml"
GROUP, VERSION, PLURAL = "autoparallel.io", "v1alpha1", "paralleldeployments"
OWNER_LABEL = "autoparallel.io/owner-uid"


@dataclass
class Operator:
    metrics_port: int
    runner: KopfRunner


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def crd(kube_cluster: KubeCluster) -> str:
    body = yaml.safe_load(CRD_FILE.read_text())
    api = client.ApiextensionsV1Api(kube_cluster.api_client)
    name = body["metadata"]["name"]
    api.patch_custom_resource_definition(
        name, body, field_manager="autoparallel-tests", force=True, _content_type="application/apply-patch+yaml"
    )

    def established() -> bool:
        conditions = api.read_custom_resource_definition(name).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, description=f"CRD {name} Established")
    return name


METRICS_PORT = _free_port()


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(kube_cluster: KubeCluster) -> None:
    """Test namespaces an interrupted earlier run left behind hold simulated GPUs: remove them first."""
    stale = kube_cluster.core.list_namespace(label_selector="autoparallel.io/test=true").items
    for item in stale:
        if item.status.phase == "Active":
            kube_cluster.core.delete_namespace(item.metadata.name, propagation_policy="Background")
    wait_for(
        lambda: not kube_cluster.core.list_pod_for_all_namespaces(label_selector=OWNER_LABEL).items,
        timeout=120,
        description="pods of earlier test runs gone",
    )


@pytest.fixture
def operator(kube_cluster: KubeCluster, crd: str) -> Iterator[Operator]:
    """A fresh operator per test (all namespaces); its settings come from AUTOPARALLEL_* variables."""
    env = {"AUTOPARALLEL_RESYNC_SECONDS": "1", "AUTOPARALLEL_METRICS_PORT": str(METRICS_PORT)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        args = ["run", "--standalone", "--all-namespaces", "-m", "autoparallel.controller.handlers"]
        with KopfRunner(args, timeout=60) as runner:
            yield Operator(METRICS_PORT, runner)
    assert runner.exception is None, runner.output[-4000:]


def example(name: str) -> dict:
    return yaml.safe_load((Path(repo_root()) / "examples" / name).read_text())


def _no_pods_left(kube_cluster: KubeCluster, namespace: str) -> bool:
    return not kube_cluster.core.list_namespaced_pod(namespace, label_selector=OWNER_LABEL).items


@pytest.fixture
def pd_namespace(namespace: str, kube_cluster: KubeCluster) -> Iterator[str]:
    """A namespace whose ParallelDeployments are deleted, and their pods gone, before the next test plans
    (simulated GPUs are shared by all tests)."""
    yield namespace
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]:
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, item["metadata"]["name"])
    wait_for(
        lambda: _no_pods_left(kube_cluster, namespace),
        timeout=90,
        description=f"the pods of namespace {namespace} gone",
    )


os.environ.setdefault("HF_HUB_OFFLINE", "1")
