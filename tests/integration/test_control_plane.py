"""The local control plane (hack/cluster-up.sh) behaves like a real cluster with GPU nodes and LeaderWorkerSet.

These run against whatever `kube_cluster` provides; they expect the simulated GPU nodes of
hack/nodepools.yaml (kwok-managed), which the local control plane registers.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kube import KubeCluster, gone, pod_state, repo_root, wait_for
from nodes import TEST_RUN_LABEL, TestNodes

NODEPOOLS = repo_root() / "hack" / "nodepools.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"
GPU = "nvidia.com/gpu"


def pools() -> list[dict[str, Any]]:
    return list(yaml.safe_load(NODEPOOLS.read_text())["pools"])


def gpu_pod(name: str, gpus: int, nodes: TestNodes, node_selector: dict[str, str] | None = None) -> client.V1Pod:
    """A pod requesting ``gpus`` GPUs on this test session's own simulated nodes (never on GPUs a user holds)."""
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels={"app": name}),
        spec=client.V1PodSpec(
            node_selector={**(node_selector or {}), TEST_RUN_LABEL: nodes.run},
            tolerations=[client.V1Toleration(**nodes.toleration())],
            containers=[
                client.V1Container(
                    name="main",
                    image="registry.k8s.io/pause:3.10",
                    # Extended resources are requested through limits (requests default to them).
                    resources=client.V1ResourceRequirements(limits={GPU: str(gpus)}),
                )
            ],
        ),
    )


def small_pod_template(labels: dict[str, str]) -> client.V1PodTemplateSpec:
    return client.V1PodTemplateSpec(
        metadata=client.V1ObjectMeta(labels=labels),
        spec=client.V1PodSpec(
            containers=[
                client.V1Container(
                    name="main",
                    image="registry.k8s.io/pause:3.10",
                    resources=client.V1ResourceRequirements(requests={"cpu": "100m", "memory": "64Mi"}),
                )
            ],
            restart_policy="Never" if labels.get("kind") == "job" else "Always",
        ),
    )


def job_status(batch: client.BatchV1Api, namespace: str) -> dict[str, Any]:
    return dict(batch.read_namespaced_job("once", namespace).status.to_dict())


def web_pods(core: client.CoreV1Api, namespace: str) -> list[dict[str, Any]]:
    return [pod_state(p) for p in core.list_namespaced_pod(namespace, label_selector="app=web").items]


def ready(pod: client.V1Pod) -> bool:
    conditions = pod.status.conditions or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


@pytest.mark.cluster
def test_gpu_nodes_have_labels_and_allocatable_gpus(kube_cluster: KubeCluster) -> None:
    nodes = {
        n.metadata.name: n for n in kube_cluster.core.list_node(label_selector="nvidia.com/gpu.present=true").items
    }
    for pool in pools():
        gpu = pool["gpu"]
        for index in range(pool["count"]):
            name = f"gpu-{pool['name']}-{index}"
            assert name in nodes, f"node {name} missing; GPU nodes: {sorted(nodes)}"
            node = nodes[name]
            labels = node.metadata.labels
            assert labels["kubernetes.io/hostname"] == name
            assert labels["nvidia.com/gpu.product"] == gpu["product"]
            assert labels["nvidia.com/gpu.count"] == str(gpu["count"])
            assert labels["nvidia.com/gpu.memory"] == str(gpu["memoryMiB"])
            assert labels["nvidia.com/gpu.family"] == gpu["family"]
            assert labels["nvidia.com/gpu.compute.major"] == str(gpu["computeMajor"])
            assert labels["nvidia.com/gpu.compute.minor"] == str(gpu["computeMinor"])
            assert node.metadata.annotations["kwok.x-k8s.io/node"] == "fake"
            assert node.status.allocatable[GPU] == str(gpu["count"])
            assert node.status.capacity[GPU] == str(gpu["count"])
            assert node.status.allocatable["cpu"] == str(pool["allocatable"]["cpu"])
            conditions = {c.type: c.status for c in node.status.conditions}
            assert conditions.get("Ready") == "True", f"{name} conditions: {conditions}"
    h100 = kube_cluster.core.list_node(label_selector=f"nvidia.com/gpu.product={H100}").items
    assert {n.metadata.labels["nvidia.com/gpu.memory"] for n in h100} == {"81559"}


@pytest.mark.cluster
def test_pod_with_8_gpus_runs_on_an_h100_node(kube_cluster: KubeCluster, namespace: str, gpu_nodes: TestNodes) -> None:
    core = kube_cluster.core
    core.create_namespaced_pod(namespace, gpu_pod("train", 8, gpu_nodes, {"nvidia.com/gpu.product": H100}))

    def running() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("train", namespace)
        return pod if pod.status.phase == "Running" and ready(pod) else None

    pod = wait_for(
        running,
        timeout=60,
        description="pod train (8 GPUs, H100 node selector) to be Running and Ready",
        observe=lambda: pod_state(core.read_namespaced_pod("train", namespace)),
    )
    node = core.read_node(pod.spec.node_name)
    assert node.metadata.labels["nvidia.com/gpu.product"] == H100
    assert pod.spec.node_name.startswith(f"e2e-{gpu_nodes.run}-h100-")
    assert pod.status.pod_ip, "kwok assigns a pod IP"


@pytest.mark.cluster
def test_pod_with_9_gpus_stays_pending(kube_cluster: KubeCluster, namespace: str, gpu_nodes: TestNodes) -> None:
    core = kube_cluster.core
    core.create_namespaced_pod(namespace, gpu_pod("too-big", 9, gpu_nodes))

    def failed_scheduling() -> list[client.CoreV1Event]:
        events = core.list_namespaced_event(
            namespace, field_selector="involvedObject.kind=Pod,involvedObject.name=too-big"
        ).items
        return [e for e in events if e.reason == "FailedScheduling"]

    events = wait_for(
        failed_scheduling,
        timeout=60,
        description="a FailedScheduling event for pod too-big (9 GPUs)",
        observe=lambda: pod_state(core.read_namespaced_pod("too-big", namespace)),
    )
    assert f"Insufficient {GPU}" in events[0].message, events[0].message
    pod = core.read_namespaced_pod("too-big", namespace)
    assert pod.status.phase == "Pending"
    assert pod.spec.node_name is None
    scheduled = {c.type: c for c in pod.status.conditions or []}["PodScheduled"]
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")


@pytest.mark.cluster
def test_deleted_pod_goes_away(kube_cluster: KubeCluster, namespace: str, gpu_nodes: TestNodes) -> None:
    core = kube_cluster.core
    core.create_namespaced_pod(namespace, gpu_pod("short-lived", 1, gpu_nodes))
    wait_for(
        lambda: ready(core.read_namespaced_pod("short-lived", namespace)),
        timeout=60,
        description="pod short-lived to be Ready",
        observe=lambda: pod_state(core.read_namespaced_pod("short-lived", namespace)),
    )
    # Default grace period (30 s): without a kubelet, kwok's pod-delete stage must finish the deletion,
    # well before the grace period would run out.
    core.delete_namespaced_pod("short-lived", namespace)
    wait_for(
        gone(lambda: core.read_namespaced_pod("short-lived", namespace)),
        timeout=20,
        description="deleted pod short-lived to disappear (not stay Terminating)",
        observe=lambda: pod_state(core.read_namespaced_pod("short-lived", namespace)),
    )


@pytest.mark.cluster
def test_deployment_pods_are_created_and_garbage_collected(kube_cluster: KubeCluster, namespace: str) -> None:
    apps, core = kube_cluster.apps, kube_cluster.core
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=3,
                selector=client.V1LabelSelector(match_labels=labels),
                template=small_pod_template(labels),
            ),
        ),
    )

    def deployment_ready() -> bool:
        status = apps.read_namespaced_deployment("web", namespace).status
        return status.ready_replicas == 3 and status.available_replicas == 3

    wait_for(
        deployment_ready,
        timeout=90,
        description="deployment web to have 3 ready replicas",
        observe=lambda: web_pods(core, namespace),
    )
    replicasets = apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
    assert len(replicasets) == 1
    assert replicasets[0].metadata.owner_references[0].name == "web"
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3
    assert {p.metadata.owner_references[0].name for p in pods} == {replicasets[0].metadata.name}
    assert all(p.spec.node_name and p.spec.node_name.startswith("gpu-") for p in pods)

    # Deleting the owner: the garbage collector removes the ReplicaSet, then its pods.
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_for(
        lambda: (
            not apps.list_namespaced_replica_set(namespace, label_selector="app=web").items
            and not core.list_namespaced_pod(namespace, label_selector="app=web").items
        ),
        timeout=60,
        description="the garbage collector to delete the ReplicaSet and pods of deployment web",
        observe=lambda: web_pods(core, namespace),
    )


@pytest.mark.cluster
def test_deleting_an_owner_garbage_collects_dependents(kube_cluster: KubeCluster, namespace: str) -> None:
    core = kube_cluster.core
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"k": "v"})
    )
    reference = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid, block_owner_deletion=True
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[reference])),
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        timeout=60,
        description="the garbage collector to delete configmap dependent after its owner",
    )


@pytest.mark.cluster
def test_job_pod_completes(kube_cluster: KubeCluster, namespace: str) -> None:
    batch = kube_cluster.batch
    batch.create_namespaced_job(
        namespace,
        client.V1Job(
            metadata=client.V1ObjectMeta(name="once"),
            spec=client.V1JobSpec(
                completions=1, backoff_limit=0, template=small_pod_template({"app": "once", "kind": "job"})
            ),
        ),
    )

    def complete() -> bool:
        status = batch.read_namespaced_job("once", namespace).status
        conditions = {c.type: c.status for c in status.conditions or []}
        return conditions.get("Complete") == "True" and status.succeeded == 1

    wait_for(
        complete,
        timeout=60,
        description="job once to be Complete with succeeded=1",
        observe=lambda: job_status(batch, namespace),
    )
    pods = kube_cluster.core.list_namespaced_pod(namespace, label_selector="app=once").items
    assert [p.status.phase for p in pods] == ["Succeeded"]


def _group_pods(core: client.CoreV1Api, namespace: str) -> dict[str, str]:
    pods = core.list_namespaced_pod(namespace, label_selector="leaderworkerset.sigs.k8s.io/name=group").items
    return {p.metadata.name: p.metadata.uid for p in pods if ready(p) and not p.metadata.deletion_timestamp}


@pytest.mark.cluster
def test_leader_worker_set_runs_its_groups_and_restarts_a_group_as_a_whole(
    kube_cluster: KubeCluster, namespace: str, gpu_nodes: TestNodes
) -> None:
    """The LWS controller, its webhooks (LWS_* variables in the pods) and its gang restart."""
    template = gpu_pod("unused", 8, gpu_nodes, {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"})
    body = {
        "apiVersion": "leaderworkerset.x-k8s.io/v1",
        "kind": "LeaderWorkerSet",
        "metadata": {"name": "group"},
        "spec": {
            "replicas": 2,
            "leaderWorkerTemplate": {
                "size": 2,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "workerTemplate": {"spec": kube_cluster.api_client.sanitize_for_serialization(template.spec)},
            },
        },
    }
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    custom.create_namespaced_custom_object("leaderworkerset.x-k8s.io", "v1", namespace, "leaderworkersets", body)
    core = kube_cluster.core
    names = {"group-0", "group-0-1", "group-1", "group-1-1"}

    def running() -> dict[str, str] | None:
        found = _group_pods(core, namespace)
        return found if set(found) == names else None

    pods = wait_for(
        running,
        timeout=60,
        description="two groups of a leader and a worker, Ready",
        observe=lambda: _group_pods(core, namespace),
    )
    worker = core.read_namespaced_pod("group-0-1", namespace)
    variables = {e.name: e.value for e in worker.spec.containers[0].env}
    assert variables["LWS_LEADER_ADDRESS"] == f"group-0.group.{namespace}"
    assert (variables["LWS_GROUP_SIZE"], variables["LWS_WORKER_INDEX"]) == ("2", "1")

    core.delete_namespaced_pod("group-0-1", namespace)

    def recreated() -> dict[str, str] | None:
        now = _group_pods(core, namespace)
        return now if set(now) == names and now["group-0"] != pods["group-0"] else None

    after = wait_for(
        recreated,
        timeout=60,
        description="group 0 recreated, its leader too",
        observe=lambda: _group_pods(core, namespace),
    )
    assert after["group-1"] == pods["group-1"] and after["group-1-1"] == pods["group-1-1"]  # the other group stays


def test_print_kubeconfig_path_prints_only_the_path(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    result = subprocess.run(
        [str(repo_root() / "hack" / "cluster-up.sh"), "--print-kubeconfig-path"],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AUTOPARALLEL_CLUSTER_DIR": str(state)},
        check=True,
        capture_output=True,
        text=True,
    )
    assert result.stdout == f"{state}/kubeconfig\n"
    assert not state.exists(), "printing the path must not start anything"
