"""Faults on the real local control plane: the API server killed and restarted while resources are applied, the
operator killed with SIGKILL in the middle of applying children, two operator replicas with one active and a
takeover within 30 s, and a resource deleted while the resync loop serves it. After each, every resource
converges to the plan the planner gives for it, with its children exactly once."""

from __future__ import annotations

import logging
import re
import secrets
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client

import autoparallel
from kube import KubeCluster, gone, repo_root, wait_for

from .conftest import Operator, OperatorProcess
from .pd import GROUP, PLURAL, VERSION, children, create, get, wait_condition

CLUSTER_UP = repo_root() / "hack" / "cluster-up.sh"
MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen3-8B", "mistralai/Mistral-7B-v0.1")
H100 = "NVIDIA-H100-80GB-HBM3"


def _small(index: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ParallelDeployment",
        "metadata": {"name": f"svc-{index}"},
        "spec": {
            "model": {"name": MODELS[index % len(MODELS)]},
            "workload": {"sequenceLength": 4096, "batchSize": 8},
            "placement": {"nodeSelector": {"nvidia.com/gpu.product": H100}},
        },
    }


def _converged(kube_cluster: KubeCluster, namespace: str, count: int) -> None:
    """Every resource Ready with the planner's plan, and its children exactly once."""
    for index in range(count):
        body = _small(index)
        name = body["metadata"]["name"]
        pd = wait_condition(kube_cluster, namespace, name, "Ready", "True", timeout=120)
        plan = pd["status"]["plan"]
        expected = autoparallel.best_config(
            body["spec"]["model"]["name"],
            {"gpu_memory_gb": 80, "gpus_per_node": 8, "num_nodes": 2, "gpu_architecture": "H100"},
            sequence_length=4096,
            batch_size=8,
        )
        assert (plan["tensor"], plan["pipeline"], plan["data"]) == (
            expected["tensor_parallel"],
            expected["pipeline_parallel"],
            expected["data_parallel"],
        ), name
        kids = children(kube_cluster, namespace, pd["metadata"]["uid"])
        assert [d.metadata.name for d in kids["Deployment"]] == [name]
        assert [s.metadata.name for s in kids["Service"]] == [name]
        assert kids["Deployment"][0].spec.replicas == plan["data"]
        wait_for(
            lambda uid=pd["metadata"]["uid"], data=plan["data"]: (
                len(children(kube_cluster, namespace, uid)["Pod"]) == data
            ),
            timeout=60,
            description=f"{name}: exactly {plan['data']} pod(s)",
        )


def _local_cluster_or_skip(kube_cluster: KubeCluster) -> None:
    local = subprocess.run(
        [str(CLUSTER_UP), "--print-kubeconfig-path"], check=True, capture_output=True, text=True
    ).stdout.strip()
    if kube_cluster.kubeconfig != local:
        pytest.skip(f"restarting the API server needs the local control plane; KUBECONFIG is {kube_cluster.kubeconfig}")


def test_api_server_restart_while_resources_are_applied(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    _local_cluster_or_skip(kube_cluster)
    for index in range(3):
        create(kube_cluster, pd_namespace, _small(index))
    # While the operator plans and applies these, the API server dies (SIGKILL) and comes back.
    restart = subprocess.run(
        [str(CLUSTER_UP), "--restart", "kube-apiserver"], capture_output=True, text=True, check=False
    )
    assert restart.returncode == 0, restart.stderr
    assert re.search(r"killed kube-apiserver \(pid \d+, SIGKILL\)", restart.stderr), restart.stderr
    for index in range(3, 5):
        create(kube_cluster, pd_namespace, _small(index))
    _converged(kube_cluster, pd_namespace, 5)


def test_operator_killed_while_applying_children_converges_after_restart(
    kube_cluster: KubeCluster, pd_namespace: str, operator_processes: Callable[..., OperatorProcess]
) -> None:
    first = operator_processes(pd_namespace)
    for index in range(6):
        create(kube_cluster, pd_namespace, _small(index))

    def some_children() -> bool:
        return bool(kube_cluster.apps.list_namespaced_deployment(pd_namespace).items)

    wait_for(some_children, timeout=60, description="the first operator applying children", interval=0.05)
    first.kill()
    ready_then = sum(
        1
        for index in range(6)
        if any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in (get(kube_cluster, pd_namespace, f"svc-{index}").get("status") or {}).get("conditions") or []
        )
    )
    assert ready_then < 6, "the operator was killed after it had finished: nothing was interrupted"
    operator_processes(pd_namespace)
    _converged(kube_cluster, pd_namespace, 6)


def _lease(kube_cluster: KubeCluster, namespace: str, name: str) -> Any:
    return client.CoordinationV1Api(kube_cluster.api_client).read_namespaced_lease(name, namespace)


def test_two_replicas_one_active_and_a_standby_takes_over(
    kube_cluster: KubeCluster, pd_namespace: str, operator_processes: Callable[..., OperatorProcess]
) -> None:
    lease_name = f"autoparallel-{secrets.token_hex(3)}"
    flags = ("--leader-elect", "--leader-election-namespace", pd_namespace, "--leader-election-name", lease_name)
    replicas = [operator_processes(pd_namespace, *flags) for _ in range(2)]
    holder = wait_for(
        lambda: _lease(kube_cluster, pd_namespace, lease_name).spec.holder_identity,
        timeout=60,
        description=f"lease {lease_name} held",
    )
    leader_pid = int(holder.rsplit("_", 1)[1])
    [leader] = [r for r in replicas if r.process.pid == leader_pid]
    [standby] = [r for r in replicas if r is not leader]
    wait_for(lambda: "standing by" in standby.output(), timeout=30, description="the standby waiting for the lease")
    create(kube_cluster, pd_namespace, _small(0))
    wait_condition(kube_cluster, pd_namespace, "svc-0", "Ready", "True", timeout=90)
    assert "Handler 'on_change'" not in standby.output(), "the standby reconciled while the leader was active"

    leader.kill()
    killed = time.monotonic()
    create(kube_cluster, pd_namespace, _small(1))  # arrives while nobody leads
    new_holder = wait_for(
        lambda: (_lease(kube_cluster, pd_namespace, lease_name).spec.holder_identity or "").endswith(
            f"_{standby.process.pid}"
        ),
        timeout=40,
        description="the standby holding the lease",
    )
    takeover = time.monotonic() - killed
    assert new_holder and takeover <= 30, f"takeover took {takeover:.1f} s"
    print(f"\ntakeover {takeover:.1f} s after kill -9 of the leader")
    _converged(kube_cluster, pd_namespace, 2)
    lease = _lease(kube_cluster, pd_namespace, lease_name)
    assert lease.spec.lease_transitions >= 1


def test_a_resource_deleted_during_resync_logs_no_error(
    operator: Operator,
    kube_cluster: KubeCluster,
    pd_namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="autoparallel.resync")
    create(kube_cluster, pd_namespace, _small(0))
    pd = wait_condition(kube_cluster, pd_namespace, "svc-0", "Ready", "True", timeout=60)
    client.CustomObjectsApi(kube_cluster.api_client).delete_namespaced_custom_object(
        GROUP, VERSION, pd_namespace, PLURAL, "svc-0"
    )
    wait_for(gone(lambda: get(kube_cluster, pd_namespace, "svc-0")), timeout=30, description="svc-0 deleted")
    wait_for(
        lambda: not any(children(kube_cluster, pd_namespace, pd["metadata"]["uid"]).values()),
        timeout=60,
        description="its children garbage-collected",
    )
    rounds = sum(1 for r in caplog.records if r.name == "autoparallel.resync" and r.message.startswith("resynced"))
    wait_for(
        lambda: (
            sum(1 for r in caplog.records if r.name == "autoparallel.resync" and r.message.startswith("resynced"))
            >= rounds + 2
        ),
        timeout=30,
        description="two resync rounds after the deletion",
    )
    noisy = [
        f"{r.name}: {r.getMessage()[:200]}"
        for r in caplog.records
        if r.levelno >= logging.WARNING and "svc-0" in r.getMessage()
    ]
    assert noisy == []
