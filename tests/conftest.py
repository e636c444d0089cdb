"""Shared fixtures. Cluster tests (`@pytest.mark.cluster`) get a real Kubernetes API server:

* `kube_cluster` (session): the cluster of `KUBECONFIG` when that is set and reachable; otherwise the
  local control plane (docs/local-cluster.md) through hack/cluster-up.sh, which reuses a healthy one;
  when this session started it, hack/cluster-down.sh stops it at the end of the session. When it
  cannot be started the fixture fails (it never skips: CI runs these tests). While the session runs,
  KUBECONFIG points at the cluster in use, so code under test that reads it talks to the same one.
  `~/.kube/config` is deliberately never used implicitly: tests create and delete objects.
* `namespace` (function): a fresh namespace for one test, deleted afterwards.
* `gpu_nodes` (session): this session's own simulated GPU nodes (tests/nodes.py): the pools of
  hack/nodepools.yaml again, labelled and tainted for this session, so that tests never plan onto GPUs a user
  or the demo holds; removed at the end of the session.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
from collections.abc import Iterator

import pytest
from kubernetes import client

from kube import KubeCluster, gone, reachable, repo_root, wait_for
from nodes import TEST_RUN_LABEL, TestNodes, default_pools

CLUSTER_UP = repo_root() / "hack" / "cluster-up.sh"
CLUSTER_DOWN = repo_root() / "hack" / "cluster-down.sh"
TEST_NAMESPACE_LABEL = "autoparallel.io/test"


def _run_script(pytestconfig: pytest.Config, *args: str) -> int:
    """Run a hack/ script with its output going straight to the terminal (a cold build runs for many
    minutes and prints its progress and timings)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        return subprocess.run(args, check=False).returncode


def _local_kubeconfig() -> str:
    result = subprocess.run([str(CLUSTER_UP), "--print-kubeconfig-path"], check=True, capture_output=True, text=True)
    return result.stdout.strip()


@pytest.fixture(scope="session")
def kube_cluster(pytestconfig: pytest.Config) -> Iterator[KubeCluster]:
    external = os.environ.get("KUBECONFIG")
    if external and reachable(external):
        kubeconfig, started_here = external, False
    else:
        kubeconfig = _local_kubeconfig()
        # Run cluster-up even when the local cluster answers: on a healthy cluster it returns within
        # seconds after checking every component and node; a broken one it replaces.
        already_running = reachable(kubeconfig)
        reason = f"KUBECONFIG={external} is not reachable" if external else "KUBECONFIG is not set"
        print(f"\n{reason}: using the local control plane ({CLUSTER_UP})")
        code = _run_script(pytestconfig, str(CLUSTER_UP))
        if code != 0:
            pytest.fail(
                f"{CLUSTER_UP} failed with exit code {code} (its output is above); "
                "cluster tests need a Kubernetes API server",
                pytrace=False,
            )
        started_here = not already_running
    cluster = KubeCluster.connect(kubeconfig, started_here=started_here)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("KUBECONFIG", kubeconfig)
            yield cluster
    finally:
        cluster.close()
        if started_here:
            _run_script(pytestconfig, str(CLUSTER_DOWN))


@pytest.fixture
def namespace(kube_cluster: KubeCluster, request: pytest.FixtureRequest) -> Iterator[str]:
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower().removeprefix("test_")).strip("-")
    name = f"t-{base[:48].rstrip('-')}-{secrets.token_hex(3)}"
    core = kube_cluster.core
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={TEST_NAMESPACE_LABEL: "true"}))
    )
    # Pods are admitted only once the controller-manager has created the namespace's `default`
    # ServiceAccount.
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        description=f"the default ServiceAccount of namespace {name}",
    )
    try:
        yield name
    finally:
        core.delete_namespace(name, propagation_policy="Background")
        # Gone before the next test starts an operator: a fresh kopf that lists a `t-*` namespace while it
        # terminates was seen to stall at its start-up indexing (every stream left unprocessed).
        wait_for(gone(lambda: core.read_namespace(name)), timeout=180, description=f"namespace {name} gone")


@pytest.fixture(scope="session")
def gpu_nodes(kube_cluster: KubeCluster) -> Iterator[TestNodes]:
    stale = kube_cluster.core.list_node(label_selector=TEST_RUN_LABEL).items
    for node in stale:  # nodes an interrupted earlier test session created (never anybody else's)
        kube_cluster.core.delete_node(node.metadata.name)
    nodes = TestNodes(kube_cluster)
    try:
        for pool in default_pools():
            nodes.add(pool)
        yield nodes
    finally:
        nodes.remove_all()
