"""GPU inventory from node and pod bodies: labels, catalog fallback, free GPUs, exclusions, pools, selectors."""

from typing import Any

import pytest

from autoparallel.controller.inventory import build_inventory, node_gpus, pod_gpus
from autoparallel.planner.gpus import find_gpu
from autoparallel.planner.units import MIB


def node(
    name: str,
    product: str | None = "NVIDIA-H100-80GB-HBM3",
    gpus: int = 8,
    memory_mib: int | None = 81559,
    ready: bool = True,
    cordoned: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    all_labels = dict(labels or {})
    if product:
        all_labels["nvidia.com/gpu.product"] = product
    if memory_mib:
        all_labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"unschedulable": cordoned},
        "status": {
            "allocatable": {"cpu": "96", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(name: str, node_name: str, gpus: int, phase: str = "Running", owner: str | None = None) -> dict[str, Any]:
    labels = {"autoparallel.io/owner-uid": owner} if owner else {}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "labels": labels},
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": phase},
    }


def test_nodes_without_gpus_are_ignored() -> None:
    cpu_only = node("cpu", product=None, gpus=0)
    cpu_only["status"]["allocatable"].pop("nvidia.com/gpu")
    assert node_gpus(cpu_only) is None


def test_free_gpus_subtract_requests_of_live_pods_only() -> None:
    nodes = [n for n in (node_gpus(node("h0")), node_gpus(node("h1"))) if n]
    pods = [
        *pod_gpus(pod("a", "h0", 3)),
        *pod_gpus(pod("b", "h0", 2, phase="Succeeded")),  # terminated: holds nothing
        *pod_gpus(pod("c", "h1", 8)),
    ]
    [pool] = build_inventory(nodes, pods).pools
    assert pool.free_gpus == (5, 0)
    assert pool.gpu_name == "H100-80GB"
    spec = find_gpu("H100-80GB")
    assert spec is not None and pool.gpu_memory_bytes == spec.usable_bytes


def test_own_pods_count_as_free_for_their_deployment() -> None:
    nodes = [n for n in (node_gpus(node("h0")),) if n]
    pods = pod_gpus(pod("mine", "h0", 4, owner="me")) + pod_gpus(pod("theirs", "h0", 2, owner="other"))
    assert build_inventory(nodes, pods, owner_uid="me").pools[0].free_gpus == (6,)
    assert build_inventory(nodes, pods).pools[0].free_gpus == (2,)


@pytest.mark.parametrize(("ready", "cordoned"), [(False, False), (True, True)])
def test_not_ready_and_cordoned_nodes_are_excluded(ready: bool, cordoned: bool) -> None:
    nodes = [n for n in (node_gpus(node("ok")), node_gpus(node("bad", ready=ready, cordoned=cordoned))) if n]
    inventory = build_inventory(nodes, [])
    assert inventory.pools[0].num_nodes == 1
    assert inventory.skipped == ("bad: not Ready or cordoned",)


def test_heterogeneous_pools_and_catalog_fallback() -> None:
    nodes = [
        n
        for n in (
            node_gpus(node("h0")),
            node_gpus(node("a0", "NVIDIA-A100-SXM4-40GB", memory_mib=None)),  # no memory label: catalog
            node_gpus(node("x0", "Acme-Accelerator-9000", gpus=4, memory_mib=65536)),  # unknown: label
            node_gpus(node("u0", None, memory_mib=None)),  # nothing known: skipped with a reason
        )
        if n
    ]
    inventory = build_inventory(nodes, [])
    names = {p.name: p for p in inventory.pools}
    assert set(names) == {"H100-80GB", "A100-40GB", "Acme-Accelerator-9000"}
    assert names["Acme-Accelerator-9000"].gpu_memory_bytes == 65536 * MIB - 470 * MIB
    assert dict(inventory.products)["A100-40GB"] == "NVIDIA-A100-SXM4-40GB"
    assert inventory.skipped[0].startswith("u0: GPU product and memory unknown")


def test_same_product_with_different_gpu_counts_are_separate_pools() -> None:
    nodes = [n for n in (node_gpus(node("big")), node_gpus(node("small", gpus=4))) if n]
    assert sorted(p.name for p in build_inventory(nodes, []).pools) == ["H100-80GB-x4", "H100-80GB-x8"]


def test_node_selector_is_honoured() -> None:
    nodes = [
        n
        for n in (
            node_gpus(node("spot", labels={"pool": "spot"})),
            node_gpus(node("reserved", labels={"pool": "reserved"})),
        )
        if n
    ]
    [pool] = build_inventory(nodes, [], node_selector={"pool": "reserved"}).pools
    assert pool.num_nodes == 1


def test_other_gpu_resources() -> None:
    amd = node("m0", "AMD-Instinct-MI300X", gpus=0, memory_mib=None)
    amd["status"]["allocatable"]["amd.com/gpu"] = "8"
    info = node_gpus(amd)
    assert info is not None and info.gpus("amd.com/gpu") == 8
    assert build_inventory([info], [], resource="amd.com/gpu").pools[0].gpu_name == "MI300X"
    assert build_inventory([info], []).pools == ()
