"""Cluster descriptions: the seed's dict, a list of node pools, or what the operator discovers.

A cluster is a tuple of :class:`NodePool` — nodes that share one GPU product. Each pool knows how many GPUs
every node has and how many of them are still free, so the search can place replicas on real nodes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.gpus import GPUSpec, find_gpu, lookup_gpu
from autoparallel.planner.units import GIB

MAX_NODES = 5000
"""Nodes per pool at most: Kubernetes' documented scalability limit (kubernetes.io, "Considerations for large
clusters": no more than 5,000 nodes). The search keeps one entry per node, so a bound keeps it fast."""
MAX_GPUS_PER_NODE = 72
"""GPUs per node at most: the largest NVLink domain sold as one system (GB200 NVL72)."""

_SEED_KEYS = {"gpu_memory_gb", "gpus_per_node", "num_nodes", "gpu_architecture", "gpu_type"}
_POOL_KEYS = _SEED_KEYS | {"name", "free_gpus_per_node", "price_per_gpu_hour"}


@dataclass(frozen=True)
class NodePool:
    """Nodes with the same GPU product."""

    name: str
    """Pool name (the operator uses the GPU product)."""
    gpu_name: str
    """Catalog name of the GPU, or the product string when the catalog does not know it."""
    gpu_memory_bytes: int
    """Memory of one GPU that CUDA programs can use."""
    gpus_per_node: int
    """GPUs on each node (allocatable)."""
    free_gpus: tuple[int, ...]
    """Free GPUs on each node of the pool, one entry per node."""
    price_per_gpu_hour: float | None = None
    """Override of the catalog price for this pool."""
    nvlink: bool = True
    """GPUs of one node share a fast interconnect."""

    @property
    def num_nodes(self) -> int:
        return len(self.free_gpus)

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_node * self.num_nodes

    @property
    def free_total(self) -> int:
        return sum(self.free_gpus)

    @property
    def gpu(self) -> GPUSpec | None:
        return find_gpu(self.gpu_name)


def pool_price(pool: NodePool, prices: Mapping[str, float]) -> float | None:
    """USD per GPU-hour of a pool: its own price, the caller's price for its GPU, the catalog's; None if unknown."""
    if pool.price_per_gpu_hour is not None:
        return pool.price_per_gpu_hour
    if pool.gpu_name in prices:
        return prices[pool.gpu_name]
    return pool.gpu.price_per_hour_usd if pool.gpu else None


def _positive_int(raw: Mapping[str, Any], key: str, where: str, maximum: int, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidConfigurationError(f"{where}.{key}: expected an integer from 1 to {maximum:,}, got {value!r}")
    return value


def _gpu_memory(raw: Mapping[str, Any], spec: GPUSpec | None, where: str) -> int:
    """Usable bytes per GPU: the catalog's CUDA-visible figure, unless gpu_memory_gb says otherwise.

    ``gpu_memory_gb`` is GiB. A value equal to the product's nominal size (80 for an H100 80GB) is read
    as "this product" and replaced by what CUDA really exposes (79.19 GiB), so the seed's
    ``{"gpu_memory_gb": 80, "gpu_architecture": "H100"}`` plans against real memory.
    """
    value = raw.get("gpu_memory_gb")
    if value is None:
        if spec is None:
            raise InvalidConfigurationError(f"{where}: give gpu_memory_gb or a known gpu_type")
        return spec.usable_bytes
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise InvalidConfigurationError(f"{where}.gpu_memory_gb: expected a positive finite number, got {value!r}")
    if spec is not None and round(spec.memory_mib / 1024) == round(value):
        return spec.usable_bytes
    return int(value * GIB)


def _unknown_gpu_name(label: str | None, memory_gib: object) -> str:
    """A name for a GPU the catalog does not know, one that no catalog lookup matches (it has no catalog price)."""
    return f"{label}-{memory_gib}GiB" if label else f"{memory_gib}GiB-GPU"


def _pool_from_dict(raw: Mapping[str, Any], where: str) -> NodePool:
    if not isinstance(raw, Mapping):
        raise InvalidConfigurationError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - _POOL_KEYS)
    if unknown:
        raise InvalidConfigurationError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_POOL_KEYS))}"
        )
    gpu_field = "gpu_type" if "gpu_type" in raw else "gpu_architecture"
    gpu_label = raw.get(gpu_field)
    spec: GPUSpec | None = None
    if gpu_label is not None:
        if not isinstance(gpu_label, str):
            raise InvalidConfigurationError(f"{where}.{gpu_field}: expected a string, got {gpu_label!r}")
        memory = raw.get("gpu_memory_gb")
        if memory is None:
            spec = lookup_gpu(gpu_label, f"{where}.{gpu_field}")
        elif isinstance(memory, int | float) and not isinstance(memory, bool) and 0 < memory < math.inf:
            spec = find_gpu(gpu_label, memory)
    gpus_per_node = _positive_int(raw, "gpus_per_node", where, MAX_GPUS_PER_NODE)
    num_nodes = _positive_int(raw, "num_nodes", where, MAX_NODES, default=1)
    free_raw = raw.get("free_gpus_per_node")
    if free_raw is None:
        free = (gpus_per_node,) * num_nodes
    else:
        if not isinstance(free_raw, Sequence) or len(free_raw) != num_nodes:
            raise InvalidConfigurationError(
                f"{where}.free_gpus_per_node: expected a list of {num_nodes} integers (one per node)"
            )
        if any(isinstance(f, bool) or not isinstance(f, int) or not 0 <= f <= gpus_per_node for f in free_raw):
            raise InvalidConfigurationError(
                f"{where}.free_gpus_per_node: each entry must be an integer between 0 and {gpus_per_node}"
            )
        free = tuple(free_raw)
    price = raw.get("price_per_gpu_hour")
    if price is not None and (
        isinstance(price, bool) or not isinstance(price, int | float) or not 0 <= price < math.inf
    ):
        raise InvalidConfigurationError(f"{where}.price_per_gpu_hour: expected a number ≥ 0, got {price!r}")
    gpu_name = spec.name if spec else _unknown_gpu_name(gpu_label, raw.get("gpu_memory_gb"))
    return NodePool(
        name=str(raw.get("name", gpu_name)),
        gpu_name=gpu_name,
        gpu_memory_bytes=_gpu_memory(raw, spec, where),
        gpus_per_node=gpus_per_node,
        free_gpus=free,
        price_per_gpu_hour=float(price) if price is not None else None,
        nvlink=spec.nvlink if spec else True,
    )


def parse_cluster(cluster: object) -> tuple[NodePool, ...]:
    """Normalise any accepted cluster description into node pools.

    Accepted: the seed's dict (``gpu_memory_gb``, ``gpus_per_node``, ``num_nodes``, optional
    ``gpu_architecture``), a dict ``{"pools": [...]}``, a list of pool dicts, or :class:`NodePool` objects.
    """
    if isinstance(cluster, NodePool):
        return (cluster,)
    if isinstance(cluster, Mapping):
        if "pools" in cluster:
            return parse_cluster(cluster["pools"])
        return (_pool_from_dict(cluster, "cluster"),)
    if isinstance(cluster, Sequence) and not isinstance(cluster, str | bytes):
        if not cluster:
            raise InvalidConfigurationError("cluster: the list of node pools is empty")
        pools = tuple(
            item if isinstance(item, NodePool) else _pool_from_dict(item, f"cluster[{i}]")
            for i, item in enumerate(cluster)
        )
        names = [p.name for p in pools]
        if len(set(names)) != len(names):
            raise InvalidConfigurationError(f"cluster: pool names must be unique, got {names}")
        return pools
    raise InvalidConfigurationError(
        "cluster: expected a dict such as {'gpu_memory_gb': 80, 'gpus_per_node': 8, 'num_nodes': 1} "
        f"or a list of node pools, got {type(cluster).__name__}"
    )
