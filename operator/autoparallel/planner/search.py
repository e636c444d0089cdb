"""Enumerate (TP, PP, EP, DP) per node pool, reject what does not fit with a reason, rank the rest."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from autoparallel.planner.cluster import NodePool, pool_price
from autoparallel.planner.constraints import (
    expert_parallel_problem,
    pipeline_parallel_problem,
    tensor_parallel_problem,
)
from autoparallel.planner.inference import Degrees, InferenceEstimate, ServingSettings, estimate_inference
from autoparallel.planner.shapes import ModelShape
from autoparallel.planner.training import TrainingMemory, TrainingSettings, estimate_training
from autoparallel.planner.units import to_gib

OBJECTIVES = ("minimize_gpus", "maximize_batch", "balanced", "minimize_cost")
WORKLOADS = ("inference", "training")
MAX_PIPELINE_STAGES = 16
"""Unpinned searches stop at 16 pipeline stages: beyond that the pipeline bubble and the per-stage
runtime overhead outweigh any gain, and no published vLLM deployment uses more. A pinned PP may exceed it."""


@dataclass(frozen=True)
class Request:
    """What to plan: the workload, the objective and any pinned degrees."""

    workload: str
    sequence_length: int
    batch_size: int
    objective: str = "minimize_gpus"
    serving: ServingSettings | None = None
    training: TrainingSettings | None = None
    tensor_parallel: int | None = None
    pipeline_parallel: int | None = None
    expert_parallel: int | None = None
    data_parallel: int | None = None
    max_gpus: int | None = None
    allow_cross_node_tensor_parallel: bool = False
    prices: tuple[tuple[str, float], ...] = ()
    """Price overrides per GPU name (USD per GPU-hour)."""


@dataclass(frozen=True)
class Plan:
    """One feasible configuration on one pool."""

    pool: NodePool
    degrees: Degrees
    nodes_per_replica: int
    nodes: int
    """Distinct nodes all replicas occupy."""
    memory: InferenceEstimate | TrainingMemory
    price_per_gpu_hour: float | None
    """USD per GPU-hour; None when no price is known for the pool's GPU."""
    replicas_possible: int
    """Replicas of this shape the pool's free GPUs could hold."""

    @property
    def per_gpu_bytes(self) -> int:
        if isinstance(self.memory, InferenceEstimate):
            return self.memory.peak_stage.total
        return self.memory.total

    @property
    def max_concurrent_sequences(self) -> int:
        return self.memory.max_concurrent_sequences if isinstance(self.memory, InferenceEstimate) else 0

    @property
    def kv_cache_tokens(self) -> int:
        return self.memory.kv_cache_tokens if isinstance(self.memory, InferenceEstimate) else 0

    @property
    def cost_per_hour(self) -> float | None:
        if self.price_per_gpu_hour is None:
            return None
        return self.degrees.total_gpus * self.price_per_gpu_hour


@dataclass(frozen=True)
class Rejection:
    pool: str
    degrees: str
    reason: str

    def __str__(self) -> str:
        return f"{self.pool} {self.degrees}: {self.reason}"


@dataclass(frozen=True)
class SearchResult:
    plans: tuple[Plan, ...]
    rejections: tuple[Rejection, ...]


def _label(tp: int, pp: int, ep: int = 1) -> str:
    return f"TP={tp} PP={pp}" + (f" EP={ep}" if ep > 1 else "")


def placement(pool: NodePool, replica_gpus: int) -> tuple[int, int]:
    """(replicas the pool can hold, nodes one replica spans); multi-node replicas take whole free nodes."""
    if replica_gpus <= pool.gpus_per_node:
        return sum(free // replica_gpus for free in pool.free_gpus), 1
    span = replica_gpus // pool.gpus_per_node
    whole_nodes = sum(1 for free in pool.free_gpus if free == pool.gpus_per_node)
    return whole_nodes // span, span


def _nodes_used(pool: NodePool, replica_gpus: int, replicas: int, span: int) -> int:
    """Nodes that ``replicas`` replicas occupy when packed onto the freest nodes first."""
    if span > 1:
        return replicas * span
    used = 0
    for free in sorted(pool.free_gpus, reverse=True):
        if replicas <= 0:
            break
        used += 1
        replicas -= free // replica_gpus
    return used


def _tensor_sizes(pool: NodePool, request: Request, limit: int) -> list[int]:
    if request.tensor_parallel:
        return [request.tensor_parallel]
    top = limit if request.allow_cross_node_tensor_parallel else min(limit, pool.gpus_per_node)
    return list(range(1, top + 1))


def _pipeline_sizes(shape: ModelShape, pool: NodePool, request: Request, tp: int, limit: int) -> list[int]:
    if request.pipeline_parallel:
        return [request.pipeline_parallel]
    # Within a node any split works; across nodes a replica takes whole nodes, each one TP group
    # (vLLM's multi-node recipe: TP = GPUs per node, PP = nodes), unless TP itself crosses nodes.
    sizes = []
    for pp in range(1, min(shape.num_layers, limit // tp, MAX_PIPELINE_STAGES) + 1):
        gpus = tp * pp
        if gpus <= pool.gpus_per_node or (gpus % pool.gpus_per_node == 0 and tp >= pool.gpus_per_node):
            sizes.append(pp)
    return sizes


def _expert_sizes(shape: ModelShape, pool: NodePool, request: Request, tp: int, pp: int) -> list[int]:
    """1 (experts sliced by TP), or wide EP = TP × k attention-data-parallel ranks inside one node."""
    if request.expert_parallel:
        return [request.expert_parallel]
    if not shape.is_moe or pp > 1 or request.workload != "inference":
        return [1]
    wide = [tp * k for k in range(2, pool.gpus_per_node // tp + 1) if shape.num_experts % (tp * k) == 0]
    return [1, *wide]


def _inference_problem(estimate: InferenceEstimate, request: Request) -> str | None:
    stage = estimate.peak_stage
    budget = to_gib(estimate.budget_bytes)
    if stage.kv_cache <= 0:
        fixed = stage.weights + stage.activations + stage.non_torch
        return f"weights, activations and runtime need {to_gib(fixed)} GiB per GPU, more than the {budget} GiB budget"
    if estimate.max_concurrent_sequences < 1:
        return f"KV cache holds {estimate.kv_cache_tokens} tokens, less than one sequence of {request.sequence_length}"
    if estimate.budget_bytes + stage.cuda_graphs > estimate.gpu_memory_bytes:
        return "gpu_memory_utilization leaves no room for CUDA graphs"
    return None


def _choose_data_parallel(
    request: Request, memory: InferenceEstimate | TrainingMemory, capacity: int, gpus: int
) -> tuple[int | None, str | None]:
    """The DP degree the objective wants, or a reason why none works."""
    limit = capacity
    if request.max_gpus:
        limit = min(limit, request.max_gpus // gpus)
    if request.workload == "inference":
        assert isinstance(memory, InferenceEstimate)
        needed = -(-request.batch_size // memory.max_concurrent_sequences)
        options = [d for d in range(needed, limit + 1)]
        why = (
            f"needs {needed} replica(s) for {request.batch_size} concurrent sequences "
            f"({memory.max_concurrent_sequences} per replica), only {limit} fit"
        )
    else:
        micro = request.training.micro_batch_size if request.training else 1
        options = [d for d in range(1, limit + 1) if request.batch_size % (d * micro) == 0]
        why = f"no DP ≤ {limit} divides the global batch {request.batch_size} into micro-batches of {micro}"
    if request.data_parallel:
        if request.data_parallel in options:
            return request.data_parallel, None
        return None, f"pinned DP={request.data_parallel} does not fit: {why}"
    if not options:
        return None, why
    return (max(options) if request.objective == "maximize_batch" else min(options)), None


def _evaluate(
    shape: ModelShape, pool: NodePool, request: Request, degrees: Degrees
) -> InferenceEstimate | TrainingMemory | str:
    if request.workload == "inference":
        assert request.serving is not None
        estimate = estimate_inference(shape, degrees, request.serving, pool.gpu_memory_bytes, request.sequence_length)
        return _inference_problem(estimate, request) or estimate
    assert request.training is not None
    memory = estimate_training(shape, degrees, request.training, request.sequence_length)
    budget = pool.gpu_memory_bytes * (request.serving.gpu_memory_utilization if request.serving else 0.9)
    if memory.total > budget:
        return f"needs {to_gib(memory.total)} GiB per GPU, more than {to_gib(budget)} GiB"
    return memory


def _training_for(request: Request, degrees: Degrees) -> Request:
    """The request with the micro-batch count that DP implies (global batch = DP × micro × count)."""
    assert request.training is not None
    micro = request.training.micro_batch_size
    count = max(1, request.batch_size // (degrees.data * micro))
    return replace(request, training=replace(request.training, num_micro_batches=count))


def _search_pool(shape: ModelShape, pool: NodePool, request: Request) -> tuple[list[Plan], list[Rejection]]:
    plans: list[Plan] = []
    rejections: list[Rejection] = []
    limit = pool.free_total if request.max_gpus is None else min(pool.free_total, request.max_gpus)
    if limit == 0:
        return plans, [Rejection(pool.name, "-", "no free GPUs")]
    for tp in _tensor_sizes(pool, request, limit):
        problem = tensor_parallel_problem(shape, tp)
        if tp > pool.gpus_per_node and not request.allow_cross_node_tensor_parallel:
            problem = problem or f"TP={tp} spans nodes; set allow_cross_node_tensor_parallel"
        if problem:
            rejections.append(Rejection(pool.name, _label(tp, 1), problem))
            continue
        for pp in _pipeline_sizes(shape, pool, request, tp, limit):
            problem = pipeline_parallel_problem(shape, pp)
            if problem:
                rejections.append(Rejection(pool.name, _label(tp, pp), problem))
                continue
            for ep in _expert_sizes(shape, pool, request, tp, pp):
                label = _label(tp, pp, ep)
                problem = expert_parallel_problem(shape, ep)
                degrees = Degrees(tp, pp, ep, 1)
                capacity, span = placement(pool, degrees.gpus_per_replica)
                if problem is None and capacity == 0:
                    problem = f"a replica needs {degrees.gpus_per_replica} GPUs; no free node(s) can hold one"
                if problem:
                    rejections.append(Rejection(pool.name, label, problem))
                    continue
                outcome = _evaluate(shape, pool, request, degrees)
                if isinstance(outcome, str):
                    rejections.append(Rejection(pool.name, label, outcome))
                    continue
                data, problem = _choose_data_parallel(request, outcome, capacity, degrees.gpus_per_replica)
                if data is None:
                    rejections.append(Rejection(pool.name, label, problem or "no data-parallel degree fits"))
                    continue
                degrees = replace(degrees, data=data)
                if request.workload == "training":
                    outcome = _evaluate(shape, pool, _training_for(request, degrees), degrees)
                    if isinstance(outcome, str):
                        rejections.append(Rejection(pool.name, f"{label} DP={data}", outcome))
                        continue
                plans.append(
                    Plan(
                        pool=pool,
                        degrees=degrees,
                        nodes_per_replica=span,
                        nodes=_nodes_used(pool, degrees.gpus_per_replica, data, span),
                        memory=outcome,
                        price_per_gpu_hour=pool_price(pool, dict(request.prices)),
                        replicas_possible=capacity,
                    )
                )
    return plans, rejections


def _communication(plan: Plan) -> tuple[int, int, int, int]:
    """Less communication first: one node per replica, then fewer pipeline stages, then smaller TP/EP."""
    d = plan.degrees
    return (plan.nodes_per_replica, d.pipeline, d.tensor, d.expert)


def rank_key(plan: Plan, objective: str) -> tuple[float | int | str, ...]:
    """Sort key of a plan under an objective; ties go to less communication, then more headroom."""
    d = plan.degrees
    headroom = plan.pool.gpu_memory_bytes - plan.per_gpu_bytes
    tail = (*_communication(plan), -headroom, plan.pool.name)
    total_sequences = d.data * plan.max_concurrent_sequences
    if objective == "maximize_batch":
        return (-total_sequences, -d.data, d.total_gpus, *tail)
    if objective == "balanced":
        # Latency-friendly first (no pipeline bubbles, no replica across nodes), then the fewest GPUs.
        return (plan.nodes_per_replica, d.pipeline, d.total_gpus, *tail)
    cost = round(plan.cost_per_hour, 6) if plan.cost_per_hour is not None else math.inf  # unknown: last
    if objective == "minimize_cost":
        return (cost, d.total_gpus, *tail)
    return (d.total_gpus, cost, *tail)


def search(shape: ModelShape, pools: tuple[NodePool, ...], request: Request) -> SearchResult:
    """Every valid configuration on every pool, ranked for ``request.objective``."""
    plans: list[Plan] = []
    rejections: list[Rejection] = []
    for pool in pools:
        pool_plans, pool_rejections = _search_pool(shape, pool, request)
        plans.extend(pool_plans)
        rejections.extend(pool_rejections)
    plans.sort(key=lambda plan: rank_key(plan, request.objective))
    return SearchResult(tuple(plans), tuple(rejections))
