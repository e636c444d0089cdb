"""The cluster side: the local control plane and the CRD, the run's simulated nodes and namespaces, the bodies
of the objects the bench creates, and the clean-up of everything the run created."""

from __future__ import annotations

import contextlib
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from bench.operator.base import REPO, poll

GROUP, VERSION, PLURAL = "autoparallel.io", "v1alpha1", "paralleldeployments"
MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen3-8B", "mistralai/Mistral-7B-v0.1")
BENCH_KEY = "autoparallel.io/bench"
"""Label and NoSchedule taint key of the run's nodes (value: the run id)."""
WORKERS = 8
"""Client threads that create objects (a burst is created "at once": as fast as the API server takes it)."""


def node_body(name: str, run: str) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "type": "kwok",
        BENCH_KEY: run,
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
        "spec": {"taints": [{"key": BENCH_KEY, "value": run, "effect": "NoSchedule"}]},
    }


NODE_RESOURCES = {"cpu": "192", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}


def deployment(name: str, index: int, run: str, plan_only: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": {"name": MODELS[index % len(MODELS)]},
        "workload": {"sequenceLength": 4096, "batchSize": 8},
        "placement": {
            "nodeSelector": {BENCH_KEY: run},
            "tolerations": [{"key": BENCH_KEY, "operator": "Equal", "value": run, "effect": "NoSchedule"}],
        },
    }
    if plan_only:
        spec["planOnly"] = True
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ParallelDeployment", "metadata": {"name": name}, "spec": spec}


@dataclass
class Cluster:
    kubeconfig: str
    core: client.CoreV1Api
    custom: client.CustomObjectsApi
    run: str
    nodes: list[str] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)

    def create_nodes(self, count: int, pool: ThreadPoolExecutor) -> None:
        names = [f"bench-{self.run}-{i:04d}" for i in range(count)]

        def create(name: str) -> None:
            self.nodes.append(name)  # recorded first: a half-created node is still cleaned up
            self.core.create_node(node_body(name, self.run))
            # Capacity lives in the status subresource (like a kubelet's registration).
            self.core.patch_node_status(name, {"status": {"capacity": NODE_RESOURCES, "allocatable": NODE_RESOURCES}})

        list(pool.map(create, names))

        def ready() -> int | None:
            items = self.core.list_node(label_selector=f"{BENCH_KEY}={self.run}").items
            ok = sum(
                1
                for node in items
                if (node.status.allocatable or {}).get("nvidia.com/gpu") == "8"
                and any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])
            )
            return ok if ok == count else None

        poll(ready, 60 + count * 0.1, f"{count} simulated nodes to be Ready with 8 GPUs (kwok)", interval=0.5)

    def create_namespace(self, name: str) -> None:
        self.namespaces.append(name)
        self.core.create_namespace({"metadata": {"name": name, "labels": {BENCH_KEY: self.run}}})

    def create(self, namespace: str, body: dict[str, Any]) -> None:
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

    def clean_up(self) -> None:
        """Delete this run's namespaces, then its nodes (nothing else), waiting until each is gone. Namespaces
        first: kwok removes a deleted pod only while it still manages the pod's node."""
        try:
            for namespace in self.namespaces:
                with contextlib.suppress(ApiException):
                    self.core.delete_namespace(namespace)
            poll(
                lambda: not [n for n in self.namespaces if self._namespace_exists(n)],
                600,
                f"the run's namespaces {', '.join(self.namespaces)} to be deleted",
                interval=1.0,
            )
        finally:
            with ThreadPoolExecutor(WORKERS) as pool:
                list(pool.map(self._delete_node, self.nodes))
            poll(
                lambda: not self.core.list_node(label_selector=f"{BENCH_KEY}={self.run}").items,
                300,
                f"the run's nodes ({BENCH_KEY}={self.run}) to be deleted",
                interval=1.0,
            )

    def _delete_node(self, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.core.delete_node(name)

    def _namespace_exists(self, name: str) -> bool:
        try:
            self.core.read_namespace(name)
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True


def start_cluster() -> str:
    """hack/cluster-up.sh (idempotent; honours AUTOPARALLEL_CLUSTER_DIR and the port variables); the kubeconfig."""
    script = REPO / "hack" / "cluster-up.sh"
    subprocess.run([str(script)], check=True, stdout=subprocess.DEVNULL)
    path = subprocess.run([str(script), "--print-kubeconfig-path"], check=True, capture_output=True, text=True)
    return path.stdout.strip()


def apply_crds(kubeconfig: str) -> None:
    bin_dir = subprocess.run(
        [str(REPO / "hack" / "build-control-plane.sh"), "--print-bin-dir"], check=True, capture_output=True, text=True
    ).stdout.strip()
    subprocess.run(
        [f"{bin_dir}/kubectl", "--kubeconfig", kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
