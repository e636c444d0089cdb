"""What to change when a request does not fit: the cheapest fixes on the cluster as it is, then more GPUs.

Each fix is checked by planning again with it, so the advice never proposes a change that would still fail.
Fixes that keep the cluster come first (a setting costs nothing, a larger cluster costs GPUs); the larger
cluster only grows what growing fixes: it is sized at a ``gpu_memory_utilization`` that leaves CUDA graphs their
room, since more pipeline stages to shrink each GPU's graphs is no answer to a utilization set too high.
"""

from __future__ import annotations

from dataclasses import replace

from autoparallel.planner.cluster import NodePool
from autoparallel.planner.errors import InsufficientMemoryError
from autoparallel.planner.inference import Degrees, estimate_inference
from autoparallel.planner.options import Context
from autoparallel.planner.precision import runtime_quantization
from autoparallel.planner.search import Plan, Request, SearchResult, search

UTILIZATIONS = (0.98, 0.95, 0.92, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5)
"""gpu_memory_utilization values the advice tries, nearest to the requested one first."""
GROWTH_NODES = 64
"""Nodes of each GPU product the smallest-cluster search may use."""
SHORTEST_SEQUENCE = 256
"""Sequence lengths are halved down to this before the advice gives up on shortening them."""


def _fits(ctx: Context, pools: tuple[NodePool, ...], request: Request) -> tuple[Plan, ...]:
    return search(ctx.model.shape, pools, request).plans


def _utilization_fix(ctx: Context, pools: tuple[NodePool, ...]) -> str | None:
    serving = ctx.request.serving
    if serving is None or ctx.request.workload != "inference":
        return None
    current = serving.gpu_memory_utilization
    for value in sorted((u for u in UTILIZATIONS if u != current), key=lambda u: abs(u - current)):
        if _fits(ctx, pools, replace(ctx.request, serving=replace(serving, gpu_memory_utilization=value))):
            if value > current:
                return f"raise gpu_memory_utilization to {value:g}"
            return (
                f"lower gpu_memory_utilization to {value:g} (CUDA graphs are captured outside that budget; "
                "vLLM's --enforce-eager skips them, at a speed cost)"
            )
    return None


def _precision_fixes(ctx: Context, pools: tuple[NodePool, ...]) -> list[str]:
    serving = ctx.request.serving
    if serving is None or ctx.request.workload != "inference":
        return []
    fixes = []
    if serving.kv_cache_bytes_per_element > 1:
        fp8_cache = replace(serving, kv_cache_bytes_per_element=1)
        if _fits(ctx, pools, replace(ctx.request, serving=fp8_cache)):
            fixes.append("kv_cache_dtype fp8 (a KV cache of half the size)")
    if not serving.weights.quantized:
        fp8_weights = replace(serving, weights=runtime_quantization("fp8"))
        if _fits(ctx, pools, replace(ctx.request, serving=fp8_weights)):
            fixes.append("quantization fp8 (vLLM quantizes the weights while loading them: half the size)")
    return fixes


def _shorter_sequence(ctx: Context, pools: tuple[NodePool, ...]) -> str | None:
    length = ctx.request.sequence_length // 2
    while length >= SHORTEST_SEQUENCE:
        if _fits(ctx, pools, replace(ctx.request, sequence_length=length)):
            return f"sequence_length {length}"
        length //= 2
    return None


def _smaller_batch(ctx: Context, pools: tuple[NodePool, ...]) -> str | None:
    if ctx.request.workload != "inference" or ctx.request.batch_size == 1:
        return None
    plans = _fits(ctx, pools, replace(ctx.request, batch_size=1, data_parallel=None))
    most = max((p.replicas_possible * p.max_concurrent_sequences for p in plans), default=0)
    return f"batch_size {most} (concurrent sequences the cluster holds)" if most else None


def cheaper_fixes(ctx: Context, pools: tuple[NodePool, ...]) -> list[str]:
    """Single changes that make the request fit on ``pools`` as they are, cheapest first."""
    candidates = [
        _utilization_fix(ctx, pools),
        *_precision_fixes(ctx, pools),
        _shorter_sequence(ctx, pools),
        _smaller_batch(ctx, pools),
    ]
    return [fix for fix in candidates if fix]


def _graph_safe(ctx: Context, pool: NodePool, request: Request) -> Request:
    """The request at a utilization that leaves room for the CUDA graphs of an unsplit replica."""
    serving = request.serving
    if serving is None or request.workload != "inference":
        return request
    stage = estimate_inference(
        ctx.model.shape, Degrees(), serving, pool.gpu_memory_bytes, request.sequence_length
    ).stages[0]
    ceiling = int(100 * (1 - stage.cuda_graphs / pool.gpu_memory_bytes)) / 100
    if serving.gpu_memory_utilization <= ceiling:
        return request
    return replace(request, serving=replace(serving, gpu_memory_utilization=ceiling))


def smallest_fit(ctx: Context, pools: tuple[NodePool, ...]) -> tuple[str, int | None]:
    """The smallest cluster of the same GPU products (whole nodes) that would fit: a sentence and its GPUs
    (None when no number of these GPUs fits)."""
    best: tuple[Plan, Request] | None = None
    for pool in {p.gpu_name: p for p in pools}.values():
        nodes = max(GROWTH_NODES, pool.num_nodes)
        ample = replace(pool, name=pool.gpu_name, free_gpus=(pool.gpus_per_node,) * nodes, price_per_gpu_hour=0.0)
        request = _graph_safe(
            ctx, pool, replace(ctx.request, objective="minimize_gpus", max_gpus=None, data_parallel=None)
        )
        plans = search(ctx.model.shape, (ample,), request).plans
        if plans and (best is None or plans[0].degrees.total_gpus < best[0].degrees.total_gpus):
            best = (plans[0], request)
    if best is None:
        return (
            f"it does not fit even on {GROWTH_NODES} nodes of these GPUs; use larger GPUs, quantization or a "
            "shorter sequence",
            None,
        )
    plan, request = best
    d = plan.degrees
    sentence = (
        f"the smallest cluster that fits is {d.total_gpus}× {plan.pool.gpu_name} "
        f"({plan.nodes} node(s) of {plan.pool.gpus_per_node}: TP={d.tensor} PP={d.pipeline} DP={d.data})"
    )
    wanted, lowered = ctx.request.serving, request.serving
    if wanted is not None and lowered is not None and lowered.gpu_memory_utilization != wanted.gpu_memory_utilization:
        sentence += f" with gpu_memory_utilization {lowered.gpu_memory_utilization:g}"
    return sentence, d.total_gpus


def insufficient_memory(ctx: Context, pools: tuple[NodePool, ...], result: SearchResult) -> InsufficientMemoryError:
    """The error for a request no plan serves: what failed, the cheapest fixes, and the smallest cluster."""
    free = sum(p.free_total for p in pools)
    reasons = "; ".join(dict.fromkeys(str(r) for r in result.rejections[-3:]))
    fixes = cheaper_fixes(ctx, pools)
    growth, gpus_needed = smallest_fit(ctx, pools)
    if not fixes:
        advice = growth
    elif gpus_needed is not None and gpus_needed <= free:  # growing fixes nothing a setting does not
        advice, gpus_needed = f"cheapest fix on this cluster: {'; or '.join(fixes)}", None
    else:
        advice = f"cheapest fix on this cluster: {'; or '.join(fixes)}; otherwise {growth}"
    return InsufficientMemoryError(
        f"{ctx.model.model_id} ({ctx.request.workload}, sequence_length={ctx.request.sequence_length}, "
        f"batch_size={ctx.request.batch_size}) does not fit on the cluster's {free} free GPU(s): "
        f"{advice}. Last rejections: {reasons}",
        gpus_needed=gpus_needed,
    )
