"""Operator behaviour on the real control plane: bad input, spec edits, deletion, restarts, node loss, metrics."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import pytest
from kopf.testing import KopfRunner
from kubernetes import client

from kube import KubeCluster, wait_for

from . import pd as pds
from .conftest import Operator, operator_args
from .pd import children, create, events, get, patch_spec, scrape_metrics, wait_condition

SMALL = {
    "apiVersion": "autoparallel.io/v1alpha1",
    "kind": "ParallelDeployment",
    "metadata": {"name": "small"},
    "spec": {
        "model": {"name": "meta-llama/Meta-Llama-3.1-8B"},
        "workload": {"sequenceLength": 4096, "batchSize": 8},
        "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
    },
}


def _with(spec_changes: dict, name: str = "small") -> dict:
    body = {**SMALL, "metadata": {"name": name}, "spec": {**SMALL["spec"], **spec_changes}}
    return body


@pytest.mark.parametrize(
    ("spec", "reason", "fragment"),
    [
        ({"model": {"name": "nobody/no-such-model-7b"}}, "ModelNotFound", "spec.model.name"),
        ({"workload": {"sequenceLength": 1_000_000, "batchSize": 1}}, "InvalidSpec", "sequence_length"),
        (
            {
                "model": {"name": "meta-llama/Llama-3.1-405B"},
                "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}},
            },
            "InsufficientGPUs",
            "L4",
        ),
    ],
)
def test_bad_input_gets_a_condition_an_event_and_no_children(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str, spec: dict, reason: str, fragment: str
) -> None:
    create(kube_cluster, pd_namespace, _with(spec, "bad"))
    pd = wait_condition(kube_cluster, pd_namespace, "bad", "Planned", "False", reason)
    planned = next(c for c in pd["status"]["conditions"] if c["type"] == "Planned")
    assert fragment in planned["message"]
    wait_for(
        lambda: any(e.reason == reason and e.type == "Warning" for e in events(kube_cluster, pd_namespace, "bad")),
        timeout=30,
        description=f"a {reason} warning event",
    )
    assert not any(children(kube_cluster, pd_namespace, pd["metadata"]["uid"]).values())
    # The operator survived: a good resource next to it is still planned.
    create(kube_cluster, pd_namespace, SMALL)
    wait_condition(kube_cluster, pd_namespace, "small", "Ready", "True", timeout=60)


def test_schema_invalid_spec_is_rejected_by_the_api_server(
    kube_cluster: KubeCluster, pd_namespace: str, crd: str
) -> None:
    with pytest.raises(client.ApiException) as error:
        create(kube_cluster, pd_namespace, _with({"workload": {"type": "serving"}}, "invalid"))
    assert error.value.status == 422 and "spec.workload.type" in error.value.body


def test_editing_the_spec_replans_and_updates_children(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    create(kube_cluster, pd_namespace, SMALL)
    first = wait_condition(kube_cluster, pd_namespace, "small", "Ready", "True", timeout=60)
    patch_spec(
        kube_cluster,
        pd_namespace,
        "small",
        {"workload": {"sequenceLength": 16384, "batchSize": 256}, "objective": "maximize_batch"},
    )
    second = wait_condition(kube_cluster, pd_namespace, "small", "Ready", "True", timeout=90)
    assert second["status"]["plan"]["hash"] != first["status"]["plan"]["hash"]
    assert second["status"]["plan"]["gpus"] > first["status"]["plan"]["gpus"]
    [deployment] = children(kube_cluster, pd_namespace, second["metadata"]["uid"])["Deployment"]
    argv = " ".join(
        [
            *(deployment.spec.template.spec.containers[0].command or []),
            *(deployment.spec.template.spec.containers[0].args or []),
        ]
    )
    assert "--max-model-len 16384" in argv
    assert deployment.spec.replicas == second["status"]["plan"]["data"]


def test_deleting_the_resource_removes_its_children(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    create(kube_cluster, pd_namespace, SMALL)
    pd = wait_condition(kube_cluster, pd_namespace, "small", "Ready", "True", timeout=60)
    uid = pd["metadata"]["uid"]
    client.CustomObjectsApi(kube_cluster.api_client).delete_namespaced_custom_object(
        "autoparallel.io", "v1alpha1", pd_namespace, "paralleldeployments", "small"
    )
    wait_for(
        lambda: not any(children(kube_cluster, pd_namespace, uid).values()),
        timeout=60,
        description="garbage collection of the children",
    )


def test_restarting_the_operator_creates_no_duplicates(
    kube_cluster: KubeCluster,
    pd_namespace: str,
    crd: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("AUTOPARALLEL_RESYNC_SECONDS", "1")
    monkeypatch.setenv("AUTOPARALLEL_METRICS_PORT", "0")
    args = operator_args()
    with KopfRunner(args, timeout=60):
        create(kube_cluster, pd_namespace, SMALL)
        pd = wait_condition(kube_cluster, pd_namespace, "small", "Ready", "True", timeout=60)
    before = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    versions = {
        (k, o.metadata.name): o.metadata.resource_version for k, objs in before.items() if k != "Pod" for o in objs
    }
    caplog.set_level(logging.INFO, logger="kopf")
    caplog.set_level(logging.DEBUG, logger="autoparallel.resync")  # last: it also sets the capture level
    caplog.clear()

    def resumed() -> bool:
        return any(
            getattr(r, "k8s_ref", {}).get("namespace") == pd_namespace and "Handler 'on_change' succeeded" in r.message
            for r in caplog.records
        )

    def resyncs() -> int:
        return sum(1 for r in caplog.records if r.name == "autoparallel.resync" and r.message.startswith("resynced"))

    with KopfRunner(args, timeout=60):
        # The new operator resumes the object (its resume handler plans again, deterministically) and
        # resyncs it; neither may write anything.
        wait_for(resumed, timeout=30, description="the resume handler after the restart")
        wait_for(lambda: resyncs() >= 2, timeout=30, description="two resync rounds after the restart")
    after = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    assert {k: len(v) for k, v in after.items()} == {k: len(v) for k, v in before.items()}
    assert {
        (k, o.metadata.name): o.metadata.resource_version for k, objs in after.items() if k != "Pod" for o in objs
    } == versions


L40S_POOL = {
    "name": "l40s",
    "count": 2,
    "gpu": {
        "product": "NVIDIA-L40S",
        "count": 4,
        "memoryMiB": 46068,
        "family": "ada-lovelace",
        "computeMajor": 8,
        "computeMinor": 9,
    },
    "capacity": {"cpu": "48", "memory": "384Gi", "pods": "110"},
}


@pytest.fixture
def l40s_nodes(kube_cluster: KubeCluster) -> Iterator[list[str]]:
    """Two extra simulated 4 × L40S nodes that only this test uses."""
    assert pds.TEST_NODES is not None
    names = pds.TEST_NODES.add(L40S_POOL)
    yield names
    for name in names:
        if name in pds.TEST_NODES.names:
            pds.TEST_NODES.remove(name)


def test_losing_a_node_replans_onto_what_is_left(
    l40s_nodes: list[str], operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    # The nodes come first (fixture order): the operator starts knowing them, so the first plan sees both.
    body = _with(
        {"objective": "maximize_batch", "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L40S"}}},
        "elastic",
    )
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, "elastic", "Ready", "True", timeout=60)
    assert pd["status"]["plan"]["gpus"] == 8 and pd["status"]["plan"]["gpuType"] == "L40S"
    assert pds.TEST_NODES is not None
    pds.TEST_NODES.remove(l40s_nodes[1])

    def replanned() -> dict | None:
        current = get(kube_cluster, pd_namespace, "elastic")
        plan = (current.get("status") or {}).get("plan") or {}
        return current if plan.get("gpus") == 4 else None

    replanned_pd = wait_for(replanned, timeout=60, description="a plan on the 4 remaining L40S GPUs")
    wait_for(
        lambda: any(e.reason == "Replanned" for e in events(kube_cluster, pd_namespace, "elastic")),
        timeout=30,
        description="a Replanned event",
    )
    [deployment] = children(kube_cluster, pd_namespace, replanned_pd["metadata"]["uid"])["Deployment"]
    assert deployment.spec.replicas == replanned_pd["status"]["plan"]["data"]


def test_metrics_show_the_planned_values(operator: Operator, kube_cluster: KubeCluster, pd_namespace: str) -> None:
    create(kube_cluster, pd_namespace, SMALL)
    pd = wait_condition(kube_cluster, pd_namespace, "small", "Planned", "True")
    plan = pd["status"]["plan"]
    labels = f'name="small",namespace="{pd_namespace}"'

    def scraped() -> str | None:
        text = scrape_metrics(operator.metrics_port)
        return text if f"autoparallel_plan_gpus{{{labels}}}" in text else None

    text = wait_for(scraped, timeout=30, description="the deployment's series on /metrics")
    total = re.search(rf'autoparallel_memory_per_gpu_bytes{{component="total",{labels}}} (\S+)', text)
    assert total and float(total.group(1)) == plan["memoryPerGPU"]["total"]
    assert re.search(rf"autoparallel_plan_gpus{{{labels}}} {plan['gpus']}\.0", text)
    assert re.search(rf'autoparallel_plan_degree{{dimension="tensor",{labels}}} {plan["tensor"]}\.0', text)
    h100 = [
        node
        for node in kube_cluster.core.list_node().items
        if (node.metadata.labels or {}).get("nvidia.com/gpu.product") == "NVIDIA-H100-80GB-HBM3"
    ]
    gpus = sum(int(node.status.allocatable.get("nvidia.com/gpu", 0)) for node in h100)
    assert re.search(rf'autoparallel_cluster_gpus{{product="H100-80GB",state="total"}} {gpus}\.0', text), gpus
    assert "autoparallel_planning_seconds_count" in text and "autoparallel_reconciles_total" in text
