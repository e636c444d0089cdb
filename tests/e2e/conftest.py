"""The operator under test: the CRD installed in the real API server and the operator running in-process
(kopf's KopfRunner), with a short resync so replans and readiness show up within seconds."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from kopf.testing import KopfRunner
from kubernetes import client

from kube import KubeCluster, repo_root, wait_for
from nodes import TestNodes

from . import pd

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


TEST_NAMESPACES = "t-*"
"""The namespaces of the `namespace` fixture: the operators under test watch these and nothing else, so a
user's resources (the demo's, say) in other namespaces are never touched by a test."""


def _test_namespaces(kube_cluster: KubeCluster) -> set[str]:
    items = kube_cluster.core.list_namespace(label_selector="autoparallel.io/test=true").items
    return {item.metadata.name for item in items}


@pytest.fixture(scope="session", autouse=True)
def no_leftovers(kube_cluster: KubeCluster, gpu_nodes: TestNodes) -> Iterator[None]:
    """Test namespaces an interrupted earlier run left behind: remove them (and wait for their pods) first.
    Pods of anybody else (the demo's) are left alone: they run on other nodes than the tests'."""
    stale = _test_namespaces(kube_cluster)
    for name in stale:
        kube_cluster.core.delete_namespace(name, propagation_policy="Background")

    def stale_pods() -> list[str]:
        pods = kube_cluster.core.list_pod_for_all_namespaces(label_selector=OWNER_LABEL).items
        return [f"{p.metadata.namespace}/{p.metadata.name}" for p in pods if p.metadata.namespace in stale]

    wait_for(lambda: not stale_pods(), timeout=120, description="pods of earlier test runs gone", observe=stale_pods)
    pd.TEST_NODES = gpu_nodes
    yield
    pd.TEST_NODES = None


def operator_args(*extra: str) -> list[str]:
    """`kopf run` arguments of an operator under test: the test namespaces only."""
    return ["run", "--standalone", "--namespace", TEST_NAMESPACES, "-m", "autoparallel.controller.handlers", *extra]


@pytest.fixture
def operator(kube_cluster: KubeCluster, crd: str, namespace: str) -> Iterator[Operator]:
    """A fresh operator per test (the test namespaces); its settings come from AUTOPARALLEL_* variables. The
    test's namespace exists before it starts, so it watches it from its first listing (a namespace created later
    is found through kopf's namespace watch, which lags under load)."""
    env = {"AUTOPARALLEL_RESYNC_SECONDS": "1", "AUTOPARALLEL_METRICS_PORT": str(METRICS_PORT)}
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        args = operator_args()
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


@dataclass
class OperatorProcess:
    """`autoparallel operator run` as its own process (what a pod runs), for tests that kill it."""

    process: subprocess.Popen[str]
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def kill(self) -> None:
        """kill -9: no cleanup, no lease release."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def operator_processes(crd: str, tmp_path: Path) -> Iterator[Callable[..., OperatorProcess]]:
    """Start operator processes watching one namespace; every one still running is stopped at the end."""
    started: list[OperatorProcess] = []
    executable = Path(sys.executable).with_name("autoparallel")

    def start(namespace: str, *extra: str) -> OperatorProcess:
        log = tmp_path / f"operator-{len(started)}.log"
        args = ["operator", "run", "--namespace", namespace, "--metrics-port", "0", "--liveness-port", "0"]
        env = {**os.environ, "AUTOPARALLEL_RESYNC_SECONDS": "1", "HF_HUB_OFFLINE": "1"}
        with log.open("w") as out:
            process = subprocess.Popen(
                [str(executable), *args, *extra], env=env, stdout=out, stderr=subprocess.STDOUT, text=True
            )
        started.append(OperatorProcess(process, log))
        return started[-1]

    yield start
    for operator_process in started:
        operator_process.stop()
