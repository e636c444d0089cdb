"""The GPU inventory: which nodes have GPUs of which product, and how many are free.

Pure functions over node and pod bodies (the operator keeps them current in kopf indexes fed by watch
events). GPU product and memory come from the GPU-feature-discovery labels, falling back to the built-in
catalog by product name; free GPUs are allocatable minus the GPU requests of non-terminated pods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.cluster import NodePool
from autoparallel.planner.gpus import DRIVER_RESERVED_BYTES, find_gpu
from autoparallel.planner.units import MIB

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_OWNER_UID = "autoparallel.io/owner-uid"
"""Label on every pod the operator creates: the GPUs of a ParallelDeployment's own pods are free to it."""
GPU_RESOURCE_MARKERS = ("gpu",)
"""Extended resources whose name contains one of these are GPU resources (nvidia.com/gpu, amd.com/gpu)."""


@dataclass(frozen=True)
class NodeGPUs:
    """What the planner needs to know about one node."""

    name: str
    product: str | None
    """GFD product label (e.g. NVIDIA-H100-80GB-HBM3), None when the node has none."""
    memory_mib: int | None
    """GFD memory label, MiB per GPU."""
    allocatable: tuple[tuple[str, int], ...]
    """GPU extended resources and their allocatable counts."""
    labels: tuple[tuple[str, str], ...]
    schedulable: bool
    """Ready and not cordoned."""

    def gpus(self, resource: str) -> int:
        return dict(self.allocatable).get(resource, 0)


@dataclass(frozen=True)
class PodGPUs:
    """GPUs a non-terminated pod holds on its node."""

    uid: str
    node: str
    resource: str
    gpus: int
    owner_uid: str | None
    """The ParallelDeployment that created the pod (its ``autoparallel.io/owner-uid`` label)."""


def _quantity(value: object) -> int:
    """An integer resource quantity (GPU counts are whole numbers)."""
    try:
        return int(str(value))
    except ValueError:
        return 0


def _ready(node: Mapping[str, Any]) -> bool:
    for condition in node.get("status", {}).get("conditions") or []:
        if condition.get("type") == "Ready":
            return bool(condition.get("status") == "True")
    return False


def node_gpus(node: Mapping[str, Any]) -> NodeGPUs | None:
    """The GPU view of a Node body; None for nodes without GPU resources."""
    allocatable = node.get("status", {}).get("allocatable") or {}
    gpus = tuple(
        sorted(
            (name, _quantity(value))
            for name, value in allocatable.items()
            if any(marker in name for marker in GPU_RESOURCE_MARKERS) and _quantity(value) > 0
        )
    )
    if not gpus:
        return None
    labels = node.get("metadata", {}).get("labels") or {}
    memory = labels.get(LABEL_MEMORY)
    return NodeGPUs(
        name=node["metadata"]["name"],
        product=labels.get(LABEL_PRODUCT),
        memory_mib=_quantity(memory) if memory else None,
        allocatable=gpus,
        labels=tuple(sorted(labels.items())),
        schedulable=_ready(node) and not node.get("spec", {}).get("unschedulable", False),
    )


def pod_gpus(pod: Mapping[str, Any]) -> list[PodGPUs]:
    """GPU requests of a scheduled, non-terminated pod (one entry per GPU resource)."""
    node = pod.get("spec", {}).get("nodeName")
    phase = pod.get("status", {}).get("phase")
    if not node or phase in ("Succeeded", "Failed"):
        return []
    requests: dict[str, int] = defaultdict(int)
    for container in pod["spec"].get("containers") or []:
        resources = container.get("resources") or {}
        for source in (resources.get("limits") or {}, resources.get("requests") or {}):
            for name, value in source.items():
                if any(marker in name for marker in GPU_RESOURCE_MARKERS):
                    requests[name] = max(requests[name], _quantity(value))
    owner = (pod.get("metadata", {}).get("labels") or {}).get(LABEL_OWNER_UID)
    uid = pod["metadata"].get("uid", pod["metadata"]["name"])
    return [PodGPUs(uid, node, name, gpus, owner) for name, gpus in sorted(requests.items()) if gpus > 0]


def _gpu_memory_bytes(node: NodeGPUs) -> tuple[str, int] | None:
    """(pool GPU name, usable bytes): the catalog's figure for a known product, else the GFD label."""
    spec = find_gpu(node.product) if node.product else None
    if spec is not None:
        return spec.name, spec.usable_bytes
    if node.memory_mib:
        return node.product or f"{node.memory_mib}MiB-GPU", node.memory_mib * MIB - DRIVER_RESERVED_BYTES
    return None


@dataclass(frozen=True)
class Inventory:
    """Pools usable by one ParallelDeployment, and nodes that were skipped with the reason."""

    pools: tuple[NodePool, ...]
    products: tuple[tuple[str, str | None], ...]
    """(pool name, GFD product label) — pods of a plan select their pool's product."""
    skipped: tuple[str, ...]


def build_inventory(
    nodes: Iterable[NodeGPUs],
    pods: Iterable[PodGPUs],
    resource: str = "nvidia.com/gpu",
    node_selector: Mapping[str, str] | None = None,
    owner_uid: str | None = None,
) -> Inventory:
    """Group schedulable GPU nodes matching ``node_selector`` into pools of one product and GPU count.

    GPUs held by pods of ``owner_uid`` (the deployment being planned) count as free: replanning may reuse them.
    """
    used: dict[str, int] = defaultdict(int)
    for pod in pods:
        if pod.resource == resource and (owner_uid is None or pod.owner_uid != owner_uid):
            used[pod.node] += pod.gpus
    groups: dict[tuple[str, int, int], list[tuple[str, int]]] = defaultdict(list)
    product_labels: dict[str, str | None] = {}
    skipped = []
    selector = dict(node_selector or {})
    for node in sorted(nodes, key=lambda n: n.name):
        total = node.gpus(resource)
        if total == 0:
            continue
        labels = dict(node.labels)
        if any(labels.get(key) != value for key, value in selector.items()):
            continue
        if not node.schedulable:
            skipped.append(f"{node.name}: not Ready or cordoned")
            continue
        memory = _gpu_memory_bytes(node)
        if memory is None:
            skipped.append(f"{node.name}: GPU product and memory unknown (no {LABEL_PRODUCT}/{LABEL_MEMORY} labels)")
            continue
        name, usable = memory
        groups[(name, usable, total)].append((node.name, max(0, total - used[node.name])))
        product_labels[name] = node.product
    counts_per_name: dict[str, int] = defaultdict(int)
    for name, _, _ in groups:
        counts_per_name[name] += 1
    pools = []
    products = []
    for (name, usable, total), members in sorted(groups.items()):
        spec = find_gpu(name)
        pool_name = name if counts_per_name[name] == 1 else f"{name}-x{total}"
        pools.append(
            NodePool(
                name=pool_name,
                gpu_name=name,
                gpu_memory_bytes=usable,
                gpus_per_node=total,
                free_gpus=tuple(free for _, free in members),
                nvlink=spec.nvlink if spec else True,
            )
        )
        products.append((pool_name, product_labels[name]))
    return Inventory(tuple(pools), tuple(products), tuple(skipped))
