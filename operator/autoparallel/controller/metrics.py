"""Prometheus metrics: one ``autoparallel_`` prefix, base units, low-cardinality labels.

Per deployment: planned memory per GPU by component, GPUs, degrees and KV capacity. Cluster: GPUs total and
free by product. Operator: reconciles by result and planning time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from autoparallel.controller.inventory import Inventory, NodeGPUs, PodGPUs, build_inventory
from autoparallel.controller.models import PlanStatus

REGISTRY = CollectorRegistry(auto_describe=True)

MEMORY_PER_GPU = Gauge(
    "autoparallel_memory_per_gpu_bytes",
    "Planned memory of the most-loaded GPU of a ParallelDeployment, by component.",
    ["namespace", "name", "component"],
    registry=REGISTRY,
)
PLAN_GPUS = Gauge(
    "autoparallel_plan_gpus",
    "GPUs of all replicas of a ParallelDeployment's plan.",
    ["namespace", "name"],
    registry=REGISTRY,
)
PLAN_DEGREE = Gauge(
    "autoparallel_plan_degree",
    "Planned parallel degree of a ParallelDeployment (dimension: tensor, pipeline, data, expert).",
    ["namespace", "name", "dimension"],
    registry=REGISTRY,
)
KV_CACHE_TOKENS = Gauge(
    "autoparallel_kv_cache_tokens",
    "Planned KV-cache capacity of one replica, in tokens.",
    ["namespace", "name"],
    registry=REGISTRY,
)
KV_CACHE_TOKENS_MEASURED = Gauge(
    "autoparallel_kv_cache_tokens_measured",
    "KV-cache capacity of one replica as vLLM reports it (vllm:cache_config_info), in tokens.",
    ["namespace", "name"],
    registry=REGISTRY,
)
KV_CACHE_TOKENS_ERROR = Gauge(
    "autoparallel_kv_cache_tokens_error_ratio",
    "(planned - measured) / measured KV-cache tokens of one replica: how far the memory model is off.",
    ["namespace", "name"],
    registry=REGISTRY,
)
CLUSTER_GPUS = Gauge(
    "autoparallel_cluster_gpus",
    "GPUs of schedulable nodes by product (state: total, free).",
    ["product", "state"],
    registry=REGISTRY,
)
RECONCILES = Counter(
    "autoparallel_reconciles_total",
    "Reconciliations of ParallelDeployments by result.",
    ["result"],
    registry=REGISTRY,
)
PLANNING_SECONDS = Histogram(
    "autoparallel_planning_seconds",
    "Time to plan one ParallelDeployment (inventory to chosen plan).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
    registry=REGISTRY,
)

_COMPONENTS = ("weights", "kv_cache", "activations", "overhead", "total")


def record_plan(namespace: str, name: str, plan: PlanStatus) -> None:
    memory = plan.memory_per_gpu
    values = (memory.weights, memory.kv_cache, memory.activations, memory.overhead, memory.total)
    for component, value in zip(_COMPONENTS, values, strict=True):
        MEMORY_PER_GPU.labels(namespace, name, component).set(value)
    PLAN_GPUS.labels(namespace, name).set(plan.gpus)
    for dimension, value in (
        ("tensor", plan.tensor),
        ("pipeline", plan.pipeline),
        ("data", plan.data),
        ("expert", plan.expert),
    ):
        PLAN_DEGREE.labels(namespace, name, dimension).set(value)
    KV_CACHE_TOKENS.labels(namespace, name).set(plan.kv_cache_tokens)


def record_measured(namespace: str, name: str, tokens: int, error: float) -> None:
    KV_CACHE_TOKENS_MEASURED.labels(namespace, name).set(tokens)
    KV_CACHE_TOKENS_ERROR.labels(namespace, name).set(error)


def forget(namespace: str, name: str) -> None:
    """Drop a deployment's series (it was deleted, or has no plan any more)."""
    for component in _COMPONENTS:
        _remove(MEMORY_PER_GPU, namespace, name, component)
    _remove(PLAN_GPUS, namespace, name)
    for dimension in ("tensor", "pipeline", "data", "expert"):
        _remove(PLAN_DEGREE, namespace, name, dimension)
    _remove(KV_CACHE_TOKENS, namespace, name)
    _remove(KV_CACHE_TOKENS_MEASURED, namespace, name)
    _remove(KV_CACHE_TOKENS_ERROR, namespace, name)


def _remove(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:  # never set
        return


def record_inventory(inventory: Inventory) -> None:
    """Cluster gauges from an inventory built without a selector or owner."""
    CLUSTER_GPUS.clear()
    for pool in inventory.pools:
        CLUSTER_GPUS.labels(pool.gpu_name, "total").inc(pool.total_gpus)
        CLUSTER_GPUS.labels(pool.gpu_name, "free").inc(pool.free_total)


_SERVING: set[int] = set()


def serve(port: int) -> None:
    """Expose ``/metrics`` on ``port`` (all interfaces) from a background thread, once per process."""
    if port not in _SERVING:
        start_http_server(port, registry=REGISTRY)
        _SERVING.add(port)


def record_inventory_from(nodes: list[NodeGPUs], pods: list[PodGPUs]) -> None:
    """Cluster gauges from the operator's node and pod indexes (every schedulable GPU node, tainted or not)."""
    record_inventory(build_inventory(nodes, pods, tolerations=TOLERATE_ALL))


TOLERATE_ALL = ({"operator": "Exists"},)
"""A toleration of every taint (empty key, operator Exists)."""
