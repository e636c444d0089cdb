"""Multi-node replicas on both backends, on the real control plane with the LeaderWorkerSet controller running
(kwok plays the pods): a LeaderWorkerSet whose group is recreated as a whole when a worker pod goes, StatefulSets
when asked for (and the switch between the two), and an autoscaler on the LeaderWorkerSet whose count stands."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from kube import KubeCluster, wait_for

from .conftest import Operator, example
from .pd import children, create, get, leader_worker_sets, patch_spec, wait_condition
from .third_party import served

NAME = "llama405b"
LWS_NAME = f"{NAME}-lws"
GROUP = ("leaderworkerset.x-k8s.io", "v1")
LWS_CRD = "leaderworkersets.leaderworkerset.x-k8s.io"


@pytest.fixture(autouse=True)
def lws_installed(kube_cluster: KubeCluster) -> None:
    """The local control plane runs the LeaderWorkerSet controller; another cluster must too (never skipped)."""
    if served(kube_cluster, LWS_CRD) is None:
        pytest.fail(
            f"{kube_cluster.kubeconfig}: the API server does not serve {LWS_CRD}; these tests need the LeaderWorkerSet "
            "controller, which hack/cluster-up.sh runs (docs/local-cluster.md)",
            pytrace=False,
        )


def _pods(kube_cluster: KubeCluster, namespace: str, selector: str) -> dict[str, Any]:
    """The Running and Ready pods matching ``selector``, by name (none terminating)."""
    items = kube_cluster.core.list_namespaced_pod(namespace, label_selector=selector).items
    return {
        p.metadata.name: p
        for p in items
        if not p.metadata.deletion_timestamp
        and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    }


def _uids(pods: dict[str, Any]) -> dict[str, str]:
    return {name: pod.metadata.uid for name, pod in pods.items()}


def test_a_leader_worker_set_serves_the_plan_and_restarts_a_group_as_a_whole(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    create(kube_cluster, pd_namespace, example("multinode-405b.yaml"))
    pd = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=120)
    plan, uid = pd["status"]["plan"], pd["metadata"]["uid"]
    assert plan["multiNodeBackend"] == "leaderWorkerSet" and plan["nodesPerReplica"] > 1
    kids = children(kube_cluster, pd_namespace, uid)
    assert not kids["StatefulSet"] and not kids["Deployment"]
    [lws] = kids["LeaderWorkerSet"]
    assert lws["metadata"]["name"] == LWS_NAME
    groups = lws["spec"]["leaderWorkerTemplate"]
    assert (lws["spec"]["replicas"], groups["size"]) == (plan["data"], plan["nodesPerReplica"])
    assert groups["restartPolicy"] == "RecreateGroupOnPodRestart"
    leader = groups["leaderTemplate"]["spec"]["containers"][0]
    flags = f"--tensor-parallel-size {plan['tensor']} --pipeline-parallel-size {plan['pipeline']}"
    assert flags in leader["command"][2] and "--distributed-executor-backend ray" in leader["command"][2]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == str(plan["gpusPerPod"])
    assert lws["status"]["readyReplicas"] == plan["data"]

    # Every pod of the plan runs; the LWS webhook told the workers where their leader is.
    selector = f"autoparallel.io/owner-uid={uid}"
    pods = _pods(kube_cluster, pd_namespace, selector)
    assert len(pods) == plan["data"] * plan["nodesPerReplica"]
    worker = pods[f"{LWS_NAME}-0-1"]
    env = {e.name: e.value for e in worker.spec.containers[0].env}
    assert env["LWS_LEADER_ADDRESS"] == f"{LWS_NAME}-0.{LWS_NAME}.{pd_namespace}"
    # The endpoint selects the leaders only: the pods that run vLLM's server.
    [service] = [s for s in kids["Service"] if s.metadata.name == NAME]
    endpoint = ",".join(f"{k}={v}" for k, v in service.spec.selector.items())
    assert set(_pods(kube_cluster, pd_namespace, endpoint)) == {f"{LWS_NAME}-{i}" for i in range(plan["data"])}

    # A worker pod goes: LWS recreates its whole group, leader included, and the resource is Ready again.
    group = {name: pod_uid for name, pod_uid in _uids(pods).items() if name.startswith(f"{LWS_NAME}-0")}
    kube_cluster.core.delete_namespaced_pod(f"{LWS_NAME}-0-1", pd_namespace)

    def recreated() -> dict[str, str] | None:
        now = _uids(_pods(kube_cluster, pd_namespace, selector))
        fresh = all(name in now and now[name] != old for name, old in group.items())
        return now if fresh else None

    wait_for(
        recreated,
        timeout=90,
        description=f"every pod of group 0 recreated (the leader {LWS_NAME}-0 with a new uid)",
        observe=lambda: _uids(_pods(kube_cluster, pd_namespace, selector)),
    )
    events = kube_cluster.core.list_namespaced_event(pd_namespace, field_selector=f"involvedObject.name={LWS_NAME}")
    assert any(e.reason == "RecreateGroupOnPodRestart" for e in events.items)
    again = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=90)
    assert again["status"]["replicas"] == {"desired": plan["data"], "ready": plan["data"]}
    assert again["status"]["plan"]["hash"] == plan["hash"]  # the same plan: LWS restarted the group, not us


def test_stateful_sets_when_asked_and_a_switch_to_a_leader_worker_set_replaces_them(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("multinode-405b.yaml")
    body["spec"]["serving"] = {"multiNodeBackend": "statefulSet"}
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=120)
    plan, uid = pd["status"]["plan"], pd["metadata"]["uid"]
    assert plan["multiNodeBackend"] == "statefulSet"
    kids = children(kube_cluster, pd_namespace, uid)
    assert not kids["LeaderWorkerSet"]
    assert len(kids["StatefulSet"]) == plan["data"]
    assert all(s.spec.replicas == plan["nodesPerReplica"] for s in kids["StatefulSet"])
    script = kids["StatefulSet"][0].spec.template.spec.containers[0].command[2]
    assert f"--tensor-parallel-size {plan['tensor']} --pipeline-parallel-size {plan['pipeline']}" in script
    assert len(_pods(kube_cluster, pd_namespace, f"autoparallel.io/owner-uid={uid}")) == (
        plan["data"] * plan["nodesPerReplica"]
    )

    patch_spec(kube_cluster, pd_namespace, NAME, {"serving": {"multiNodeBackend": "auto"}})
    switched = wait_condition(kube_cluster, pd_namespace, NAME, "Ready", "True", timeout=120)
    assert switched["status"]["plan"]["multiNodeBackend"] == "leaderWorkerSet"
    assert switched["status"]["plan"]["hash"] != plan["hash"]
    kids = wait_for(
        lambda: (found := children(kube_cluster, pd_namespace, uid)) and not found["StatefulSet"] and found,
        timeout=60,
        description="the StatefulSets of the old backend pruned",
    )
    assert [lws["metadata"]["name"] for lws in kids["LeaderWorkerSet"]] == [LWS_NAME]
    assert {s.metadata.name for s in kids["Service"]} == {NAME}  # the groups' headless Services went too


def test_an_autoscaler_scales_the_leader_worker_set_in_groups_and_its_count_stands(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    if served(kube_cluster, "scaledobjects.keda.sh") is not None:
        pytest.skip("this cluster serves KEDA's ScaledObject (installed by someone else): the HPA case cannot be shown")
    name = "llama70b-groups"
    body = {
        "apiVersion": "autoparallel.io/v1alpha1",
        "kind": "ParallelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"name": "meta-llama/Llama-3.1-70B"},
            "workload": {"sequenceLength": 4096, "batchSize": 16},
            # Pinned across two nodes: the test's four A100 nodes hold two groups.
            "parallelism": {"tensor": 8, "pipeline": 2},
            "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"}},
            "scaling": {"minReplicas": 1, "maxReplicas": 5},
        },
    }
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, name, "Ready", "True", timeout=120)
    plan = pd["status"]["plan"]
    assert (plan["nodesPerReplica"], plan["data"], plan["multiNodeBackend"]) == (2, 1, "leaderWorkerSet")
    assert plan["maxReplicas"] == 2 and "maxReplicas 5 is capped at 2" in plan["reason"]
    autoscaling = client.AutoscalingV2Api(kube_cluster.api_client)
    [hpa] = wait_for(
        lambda: autoscaling.list_namespaced_horizontal_pod_autoscaler(pd_namespace).items,
        timeout=30,
        description="the HPA",
    )
    target = hpa.spec.scale_target_ref
    assert (target.api_version, target.kind, target.name) == (
        "leaderworkerset.x-k8s.io/v1",
        "LeaderWorkerSet",
        f"{name}-lws",
    )
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (1, 2)

    # The autoscaler (the test in its place) adds a group through the scale subresource; a new plan re-applies
    # the LeaderWorkerSet and keeps the count.
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    custom.patch_namespaced_custom_object_scale(
        *GROUP, pd_namespace, "leaderworkersets", f"{name}-lws", {"spec": {"replicas": 2}}
    )
    patch_spec(kube_cluster, pd_namespace, name, {"scaling": {"minReplicas": 1, "maxReplicas": 5, "target": "4"}})

    def replanned() -> str | None:
        new: str = get(kube_cluster, pd_namespace, name)["status"]["plan"]["hash"]
        return new if new != plan["hash"] else None

    new = wait_for(replanned, timeout=60, description="the new plan in the status")

    def applied() -> dict[str, Any] | None:
        [lws] = leader_worker_sets(kube_cluster, pd_namespace, f"autoparallel.io/owner-uid={pd['metadata']['uid']}")
        return lws if lws["metadata"]["annotations"]["autoparallel.io/plan-hash"] == new else None

    lws = wait_for(applied, timeout=60, description="the LeaderWorkerSet of the new plan")
    assert lws["spec"]["replicas"] == 2  # re-applied by the new plan without resetting the autoscaler's count
    ready = wait_for(
        lambda: (found := get(kube_cluster, pd_namespace, name))["status"]["replicas"]["ready"] == 2 and found,
        timeout=90,
        description="both groups ready",
    )
    assert ready["status"]["replicas"]["desired"] == 1  # the plan's minimum; the autoscaler runs more
