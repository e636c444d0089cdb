"""The GPU inventory: which nodes have GPUs of which product, and how many are free.

Pure functions over node and pod bodies (the operator keeps them current in kopf indexes fed by watch
events). GPU product and memory come from the GPU-feature-discovery labels, falling back to the built-in
catalog by product name; free GPUs are allocatable minus the GPU requests of non-terminated pods, minus the
GPUs other ParallelDeployments have planned but whose pods are not bound yet (their reservations).
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.cluster import NodePool
from autoparallel.planner.gpus import DRIVER_RESERVED_BYTES, find_gpu
from autoparallel.planner.units import MIB

LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_OWNER_UID = "autoparallel.io/owner-uid"
ANNOTATION_PLAN_HASH = "autoparallel.io/plan-hash"
"""Annotation on every child and pod: the plan it belongs to."""
"""Label on every pod the operator creates: the GPUs of a ParallelDeployment's own pods are free to it."""
GPU_RESOURCE_MARKERS = ("gpu",)
"""Extended resources whose name contains one of these are GPU resources (nvidia.com/gpu, amd.com/gpu)."""


@dataclass(frozen=True)
class Taint:
    key: str
    value: str
    effect: str


def tolerated(taint: Taint, tolerations: Iterable[Mapping[str, Any]]) -> bool:
    """Whether one of ``tolerations`` (pod-spec form) tolerates ``taint``, as the scheduler decides it."""
    for toleration in tolerations:
        if toleration.get("effect") and toleration["effect"] != taint.effect:
            continue
        key = toleration.get("key") or ""
        if toleration.get("operator") == "Exists":
            if not key or key == taint.key:
                return True
        elif key == taint.key and (toleration.get("value") or "") == taint.value:
            return True
    return False


def _tolerates_all(node: NodeGPUs, tolerations: Iterable[Mapping[str, Any]]) -> bool:
    rules = list(tolerations)
    return all(tolerated(taint, rules) for taint in node.taints)


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
    taints: tuple[Taint, ...] = ()
    """NoSchedule and NoExecute taints: only pods that tolerate them land on the node."""

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
    plan_hash: str | None = None
    """The plan of that ParallelDeployment the pod belongs to."""


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
    taints = tuple(
        Taint(str(t.get("key", "")), str(t.get("value") or ""), str(t.get("effect", "")))
        for t in node.get("spec", {}).get("taints") or []
        if t.get("effect") in ("NoSchedule", "NoExecute")
    )
    return NodeGPUs(
        name=node["metadata"]["name"],
        product=labels.get(LABEL_PRODUCT),
        memory_mib=_quantity(memory) if memory else None,
        allocatable=gpus,
        labels=tuple(sorted(labels.items())),
        schedulable=_ready(node) and not node.get("spec", {}).get("unschedulable", False),
        taints=taints,
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
    meta = pod["metadata"]
    owner = (meta.get("labels") or {}).get(LABEL_OWNER_UID)
    plan_hash = (meta.get("annotations") or {}).get(ANNOTATION_PLAN_HASH)
    uid = meta.get("uid", meta["name"])
    return [PodGPUs(uid, node, name, gpus, owner, plan_hash) for name, gpus in sorted(requests.items()) if gpus > 0]


def _gpu_memory_bytes(node: NodeGPUs) -> tuple[str, int] | None:
    """(pool GPU name, usable bytes): the catalog's figure for a known product, else the GFD label."""
    spec = find_gpu(node.product) if node.product else None
    if spec is not None:
        return spec.name, spec.usable_bytes
    if node.memory_mib:
        return node.product or f"{node.memory_mib}MiB-GPU", node.memory_mib * MIB - DRIVER_RESERVED_BYTES
    return None


@dataclass(frozen=True)
class Reservation:
    """GPUs a ParallelDeployment's current plan holds: its pods, bound or not yet (derived from its status)."""

    owner_uid: str
    owner: str
    """namespace/name, for messages."""
    created: str
    """creationTimestamp: reservations are served first come, first served."""
    resource: str
    node_selector: tuple[tuple[str, str], ...]
    tolerations: tuple[tuple[tuple[str, Any], ...], ...]
    """The pods' tolerations, each as sorted (field, value) pairs."""
    gpu_type: str
    """Catalog GPU name of the planned pool: its pods select that product."""
    gpus_per_pod: int
    pods: int
    plan_hash: str

    def can_use(self, node: NodeGPUs, gpu_name: str) -> bool:
        """Whether the scheduler could put one of the reserved pods on ``node``."""
        labels = dict(node.labels)
        return (
            node.schedulable
            and gpu_name == self.gpu_type
            and all(labels.get(key) == value for key, value in self.node_selector)
            and _tolerates_all(node, (dict(t) for t in self.tolerations))
        )


@dataclass(frozen=True)
class Inventory:
    """Pools usable by one ParallelDeployment, and nodes that were skipped with the reason."""

    pools: tuple[NodePool, ...]
    products: tuple[tuple[str, str | None], ...]
    """(pool name, GFD product label) — pods of a plan select their pool's product."""
    skipped: tuple[str, ...]
    holders: tuple[tuple[str, str], ...] = ()
    """(pool name, who holds its GPUs): running pods per ParallelDeployment and unbound reservations."""


class _FreeBuckets:
    """The nodes one kind of reservation may use, bucketed by free GPUs, to find the fullest node that still
    fits in a few steps (reservations of other kinds may have taken GPUs since: such entries are re-filed)."""

    def __init__(self, names: Iterable[str], free: Mapping[str, int]) -> None:
        self._levels: dict[int, list[str]] = defaultdict(list)
        for name in sorted(names):
            heapq.heappush(self._levels[free[name]], name)

    def take(self, need: int, free: dict[str, int]) -> str | None:
        """Take ``need`` GPUs from the fullest node that has them (then by name); None when none has."""
        while True:
            refiled = False
            for level in sorted(level for level, names in self._levels.items() if level >= need and names):
                heap = self._levels[level]
                while heap:
                    name = heapq.heappop(heap)
                    if free[name] != level:  # taken from by another kind of reservation: file it where it is now
                        heapq.heappush(self._levels[free[name]], name)
                        refiled = True
                        continue
                    free[name] -= need
                    heapq.heappush(self._levels[free[name]], name)
                    return name
            if not refiled:
                return None


def _reserve(
    free: dict[str, int],
    gpu_names: Mapping[str, str],
    nodes: Mapping[str, NodeGPUs],
    pods: Sequence[PodGPUs],
    reservations: Iterable[Reservation],
    holders: dict[str, dict[str, list[int]]],
) -> None:
    """Take the GPUs of every reservation's pods that are not bound yet out of ``free``: each such pod on the
    fullest node that still has room for it (the planner packs the same way), in creation order."""
    bound: dict[tuple[str, str], int] = defaultdict(int)
    for pod in pods:
        if pod.owner_uid and pod.plan_hash:
            bound[(pod.owner_uid, pod.plan_hash)] += 1
    buckets: dict[tuple[object, ...], _FreeBuckets] = {}
    for reservation in sorted(reservations, key=lambda r: (r.created, r.owner)):
        unbound = reservation.pods - bound[(reservation.owner_uid, reservation.plan_hash)]
        if unbound <= 0:
            continue
        kind = (reservation.gpu_type, reservation.node_selector, reservation.tolerations)
        if kind not in buckets:  # reservations of one kind share their candidate nodes
            candidates = [n for n, node in nodes.items() if n in gpu_names and reservation.can_use(node, gpu_names[n])]
            buckets[kind] = _FreeBuckets(candidates, free)
        for _ in range(unbound):
            node = buckets[kind].take(reservation.gpus_per_pod, free)
            if node is None:
                break  # over-committed already: the scheduler will leave that pod Pending
            holders[node].setdefault(f"{reservation.owner} (reserved)", []).append(reservation.gpus_per_pod)


def _holder_lines(members: Iterable[str], holders: Mapping[str, Mapping[str, list[int]]]) -> str:
    totals: dict[str, int] = defaultdict(int)
    for node in members:
        for who, gpus in holders.get(node, {}).items():
            totals[who] += sum(gpus)
    return ", ".join(f"{who} {gpus}" for who, gpus in sorted(totals.items(), key=lambda item: (-item[1], item[0])))


@dataclass
class _Free:
    """Per node: catalog GPU name, usable bytes per GPU, free GPUs, and who holds the others."""

    gpu_names: dict[str, str]
    usable_bytes: dict[str, int]
    free: dict[str, int]
    holders: dict[str, dict[str, list[int]]]


def _free_gpus(
    nodes: Mapping[str, NodeGPUs],
    pods: Sequence[PodGPUs],
    resource: str,
    owner_uid: str | None,
    reservations: Sequence[Reservation],
) -> _Free:
    owners = {r.owner_uid: r.owner for r in reservations}
    used: dict[str, int] = defaultdict(int)
    holders: dict[str, dict[str, list[int]]] = defaultdict(dict)
    for pod in pods:
        if pod.resource == resource and (owner_uid is None or pod.owner_uid != owner_uid):
            used[pod.node] += pod.gpus
            who = f"{owners[pod.owner_uid]} (running)" if pod.owner_uid in owners else "other pods"
            holders[pod.node].setdefault(who, []).append(pod.gpus)
    result = _Free({}, {}, {}, holders)
    for node in nodes.values():
        total = node.gpus(resource)
        memory = _gpu_memory_bytes(node) if total else None
        if memory is not None:
            result.gpu_names[node.name], result.usable_bytes[node.name] = memory
            result.free[node.name] = max(0, total - used[node.name])
    others = [r for r in reservations if r.owner_uid != owner_uid]
    if others:
        _reserve(result.free, result.gpu_names, nodes, pods, others, holders)
    return result


def _skip_reason(node: NodeGPUs, tolerations: Sequence[Mapping[str, Any]], known: bool) -> str | None:
    if not node.schedulable:
        return f"{node.name}: not Ready or cordoned"
    untolerated = [t for t in node.taints if not tolerated(t, tolerations)]
    if untolerated:
        taint = untolerated[0]
        return (
            f"{node.name}: taint {taint.key}={taint.value}:{taint.effect} is not tolerated (spec.placement.tolerations)"
        )
    if not known:
        return f"{node.name}: GPU product and memory unknown (no {LABEL_PRODUCT}/{LABEL_MEMORY} labels)"
    return None


def build_inventory(
    nodes: Iterable[NodeGPUs],
    pods: Iterable[PodGPUs],
    resource: str = "nvidia.com/gpu",
    node_selector: Mapping[str, str] | None = None,
    owner_uid: str | None = None,
    tolerations: Iterable[Mapping[str, Any]] = (),
    reservations: Iterable[Reservation] = (),
) -> Inventory:
    """Group schedulable GPU nodes matching ``node_selector`` and tolerated by ``tolerations`` into pools of one
    product and GPU count.

    GPUs held by pods of ``owner_uid`` (the deployment being planned) count as free: replanning may reuse them.
    ``reservations`` of other deployments take their unbound pods' GPUs.
    """
    by_name = {node.name: node for node in sorted(nodes, key=lambda n: n.name)}
    mine = [r for r in reservations if r.resource == resource]
    free = _free_gpus(by_name, list(pods), resource, owner_uid, mine)
    groups: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    product_labels: dict[str, str | None] = {}
    skipped = []
    selector = dict(node_selector or {})
    rules = list(tolerations)
    for node in by_name.values():
        total = node.gpus(resource)
        labels = dict(node.labels)
        if total == 0 or any(labels.get(key) != value for key, value in selector.items()):
            continue
        reason = _skip_reason(node, rules, node.name in free.gpu_names)
        if reason:
            skipped.append(reason)
            continue
        name = free.gpu_names[node.name]
        groups[(name, free.usable_bytes[node.name], total)].append(node.name)
        product_labels[name] = node.product
    counts_per_name: dict[str, int] = defaultdict(int)
    for name, _, _ in groups:
        counts_per_name[name] += 1
    pools = []
    products = []
    pool_holders = []
    for (name, usable, total), members in sorted(groups.items()):
        spec = find_gpu(name)
        pool_name = name if counts_per_name[name] == 1 else f"{name}-x{total}"
        pools.append(
            NodePool(
                name=pool_name,
                gpu_name=name,
                gpu_memory_bytes=usable,
                gpus_per_node=total,
                free_gpus=tuple(free.free[member] for member in members),
                nvlink=spec.nvlink if spec else True,
            )
        )
        products.append((pool_name, product_labels[name]))
        held = _holder_lines(members, free.holders)
        if held:
            pool_holders.append((pool_name, held))
    return Inventory(tuple(pools), tuple(products), tuple(skipped), tuple(pool_holders))
