"""Simulated GPU nodes that a test session owns.

The tests never plan onto the nodes of `hack/nodepools.yaml`: a user's resources (the demo's `llama70b`, say) may
hold those GPUs. Each session creates its own copy of the same pools (named `e2e-<run>-<pool>-<i>`), labelled
`autoparallel.io/test-run=<run>` and tainted with the same key, so nothing but the session's resources lands on
them; `TestNodes.place` adds the matching node selector and toleration to a ParallelDeployment. The nodes are
rendered by the same code as the local cluster's (hack/cluster/helper.py) and deleted when the session ends.
"""

from __future__ import annotations

import copy
import importlib.util
import secrets
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from kubernetes import client

from kube import KubeCluster, gone, repo_root, wait_for

TEST_RUN_LABEL = "autoparallel.io/test-run"
"""Label and taint key of the nodes of one test session (value: the session's run id)."""
NODEPOOLS = repo_root() / "hack" / "nodepools.yaml"


def _helper() -> ModuleType:
    path = repo_root() / "hack" / "cluster" / "helper.py"
    spec = importlib.util.spec_from_file_location("cluster_helper", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HELPER = _helper()


@dataclass
class TestNodes:
    """The simulated GPU nodes of one test session."""

    cluster: KubeCluster
    run: str = field(default_factory=lambda: secrets.token_hex(3))
    names: list[str] = field(default_factory=list)

    __test__ = False  # not a test class

    def toleration(self) -> dict[str, str]:
        return {"key": TEST_RUN_LABEL, "operator": "Equal", "value": self.run, "effect": "NoSchedule"}

    def place(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` (a ParallelDeployment) restricted to this session's nodes."""
        placed = copy.deepcopy(body)
        placement = placed.setdefault("spec", {}).setdefault("placement", {})
        placement.setdefault("nodeSelector", {})[TEST_RUN_LABEL] = self.run
        placement.setdefault("tolerations", []).append(self.toleration())
        return placed

    def add(self, pool: dict[str, Any], extra_labels: dict[str, str] | None = None) -> list[str]:
        """Create ``pool['count']`` nodes of a pool (the hack/nodepools.yaml format) and wait until kwok made
        them Ready; returns their names."""
        version = client.VersionApi(self.cluster.api_client).get_code().git_version
        created = []
        for index in range(pool["count"]):
            node = HELPER.render_node(pool, 200, index, version)
            name = f"e2e-{self.run}-{pool['name']}-{index}"
            labels = node["metadata"]["labels"]
            labels.pop(HELPER.SIMULATED_LABEL)  # cluster-up.sh prunes simulated nodes missing from its pools file
            labels.update({"kubernetes.io/hostname": name, TEST_RUN_LABEL: self.run, **(extra_labels or {})})
            node["metadata"]["name"] = name
            node["spec"]["taints"] = [{"key": TEST_RUN_LABEL, "value": self.run, "effect": "NoSchedule"}]
            status = node.pop("status")
            self.cluster.core.create_node(node)
            self.names.append(name)
            created.append((name, status))
        # kwok initialises a node once, from the node it saw: the GPUs are patched in only after that (a patch
        # made before could be overwritten by an initialisation that kwok computed from the older node)
        for name, _ in created:
            wait_for(lambda name=name: self._condition_ready(name), timeout=60, description=f"node {name} Ready (kwok)")
        for name, status in created:
            self.cluster.core.patch_node_status(name, {"status": status})
            wait_for(
                lambda name=name, status=status: self._ready(name, status),
                timeout=60,
                description=f"node {name} Ready (kwok) with its GPUs allocatable",
            )
        return [name for name, _ in created]

    def _condition_ready(self, name: str) -> bool:
        conditions = self.cluster.core.read_node(name).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    def _ready(self, name: str, status: dict[str, Any]) -> bool:
        """Ready, and its GPUs allocatable: kwok's initialisation of a new node can land after the status patch
        and drop the GPUs from it, so the patch is made again until both hold."""
        node = self.cluster.core.read_node(name)
        conditions = node.status.conditions or []
        ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
        gpus = (node.status.allocatable or {}).get("nvidia.com/gpu") == status["allocatable"]["nvidia.com/gpu"]
        if ready and not gpus:
            self.cluster.core.patch_node_status(name, {"status": status})
        return ready and gpus

    def remove(self, name: str) -> None:
        try:
            self.cluster.core.delete_node(name)
        except client.ApiException as error:
            if error.status != 404:
                raise
        wait_for(gone(lambda: self.cluster.core.read_node(name)), timeout=30, description=f"node {name} deleted")
        self.names.remove(name)

    def remove_all(self) -> None:
        for name in list(self.names):
            self.remove(name)


def default_pools() -> list[dict[str, Any]]:
    """The pools of hack/nodepools.yaml (the shapes the examples are planned for)."""
    return list(HELPER.load_pools(NODEPOOLS))
