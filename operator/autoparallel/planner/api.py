"""The public planner API (seed 001): plain dicts in and out, GiB at the edge, typed objects underneath."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from autoparallel.planner.advice import insufficient_memory
from autoparallel.planner.cluster import NodePool, parse_cluster, pool_price
from autoparallel.planner.commands import ServeOptions, TrainOptions, join, torchrun_args, vllm_serve_args
from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.gpus import GPU_CATALOG
from autoparallel.planner.inference import (
    DEFAULT_MAX_NUM_SEQS,
    KV_BLOCK_SIZE,
    VLLM_VERSION,
    Degrees,
    InferenceEstimate,
    default_max_num_seqs,
    estimate_inference,
    kv_bytes_per_sequence,
)
from autoparallel.planner.options import Context, ModelRef, build_context
from autoparallel.planner.precision import checkpoint_format
from autoparallel.planner.search import Plan, SearchResult, search
from autoparallel.planner.training import TrainingSettings, estimate_training
from autoparallel.planner.units import to_gib


def _breakdown(plan: Plan) -> dict[str, float]:
    if isinstance(plan.memory, InferenceEstimate):
        stage = plan.memory.peak_stage
        parts = {
            "weights": stage.weights,
            "activations": stage.activations,
            "kv_cache": max(0, stage.kv_cache),
            "framework_overhead": stage.overhead,
        }
    else:
        m = plan.memory
        parts = {
            "weights": m.parameters,
            "gradients": m.gradients,
            "optimizer_states": m.optimizer_states,
            "gathered": m.gathered,
            "activations": m.activations,
            "kv_cache": 0,
            "framework_overhead": m.overhead,
        }
    return {**{k: to_gib(v) for k, v in parts.items()}, "total": to_gib(sum(parts.values()))}


def max_num_seqs(plan: Plan, ctx: Context) -> tuple[int, int]:
    """(the ``max_num_seqs`` vLLM runs the plan with, vLLM's own default on the plan's GPU).

    The caller's ``max_num_seqs`` (when it differs from the option's default) or else vLLM 0.19's GPU-dependent
    default, capped at the sequences the cache can run at once: past the recurrent-state blocks vLLM refuses to
    start ("max_num_seqs (1024) exceeds available Mamba cache blocks"), past the KV blocks it could never run them.
    """
    assert isinstance(plan.memory, InferenceEstimate)
    default = default_max_num_seqs(plan.pool.gpu_name, plan.pool.gpu_memory_bytes)
    requested = ctx.options["max_num_seqs"]
    wanted = default if requested == DEFAULT_MAX_NUM_SEQS else requested
    return min(wanted, plan.memory.max_num_seqs_limit), default


def _command(plan: Plan, ctx: Context) -> str:
    d = plan.degrees
    if ctx.request.workload == "training":
        nodes = max(1, plan.nodes)
        per_node = d.total_gpus // nodes
        micro = max(1, ctx.request.batch_size // (d.data * ctx.options["micro_batch_size"]))
        train = TrainOptions(ctx.model.model_id, ctx.request.sequence_length, ctx.request.batch_size, micro)
        return join(torchrun_args(d, train, nodes, per_node))
    serving = ctx.request.serving
    assert serving is not None
    seqs, default_seqs = max_num_seqs(plan, ctx)
    serve = ServeOptions(
        model=ctx.model.model_id,
        max_model_len=ctx.request.sequence_length,
        gpu_memory_utilization=serving.gpu_memory_utilization,
        dtype=ctx.options["dtype"],
        quantization=ctx.options["quantization"],
        kv_cache_dtype=ctx.options["kv_cache_dtype"],
        max_num_batched_tokens=serving.max_num_batched_tokens,
        max_num_seqs=None if seqs == default_seqs else seqs,
    )
    return join(vllm_serve_args(d, serve, multi_node=plan.nodes_per_replica > 1))


def _reason(plan: Plan, ctx: Context) -> str:
    d = plan.degrees
    layout = f"TP={d.tensor} PP={d.pipeline}" + (f" EP={d.expert}" if d.expert > 1 else "") + f" DP={d.data}"
    where = f"{d.total_gpus}× {plan.pool.gpu_name} on {plan.nodes} node(s)"
    if isinstance(plan.memory, InferenceEstimate):
        serves = (
            f"KV cache {plan.kv_cache_tokens:,} tokens/replica = {plan.max_concurrent_sequences} sequences of "
            f"{ctx.request.sequence_length}; {d.data} replica(s) cover batch {ctx.request.batch_size}"
        )
    else:
        serves = f"{to_gib(plan.per_gpu_bytes)} GiB per GPU for global batch {ctx.request.batch_size}"
    return f"{ctx.request.objective}: {layout} on {where}; {serves}{_checkpoint_note(ctx)}"


def _checkpoint_note(ctx: Context) -> str:
    """What the plan assumes about the checkpoint when ``weight_format`` differs from the model's own."""
    wanted = ctx.options["weight_format"]
    serving = ctx.request.serving
    if wanted is None or serving is None:
        return ""
    stored = checkpoint_format(ctx.model.quantization_config, serving.dtype)
    if stored is not None and stored.name == wanted:
        return ""
    return (
        f"; requires a checkpoint stored as {wanted} (weight_format): serve a {wanted} checkpoint of "
        f"{ctx.model.model_id}, whose quantization_config vLLM reads, since {ctx.model.model_id} itself is stored "
        f"as {stored.name if stored else serving.dtype}"
    )


def _plan_dict(plan: Plan, ctx: Context) -> dict[str, Any]:
    d = plan.degrees
    per_gpu = plan.per_gpu_bytes
    result: dict[str, Any] = {
        "tensor_parallel": d.tensor,
        "pipeline_parallel": d.pipeline,
        "expert_parallel": d.expert,
        "data_parallel": d.data,
        "total_gpus": d.total_gpus,
        "memory_per_gpu_gb": to_gib(per_gpu),
        "memory_utilization": round(per_gpu / plan.pool.gpu_memory_bytes, 4),
        "memory_breakdown": _breakdown(plan),
        "deployment_command": _command(plan, ctx),
        "nodes": plan.nodes,
        "gpu_type": plan.pool.gpu_name,
        "kv_cache_tokens": plan.kv_cache_tokens,
        "max_concurrent_sequences": plan.max_concurrent_sequences,
        "reason": _reason(plan, ctx),
        "pool": plan.pool.name,
        "gpus_per_replica": d.gpus_per_replica,
        "nodes_per_replica": plan.nodes_per_replica,
        "gpu_memory_gb": to_gib(plan.pool.gpu_memory_bytes),
        "cost_per_hour_usd": round(plan.cost_per_hour, 2) if plan.cost_per_hour is not None else None,
        "workload": ctx.request.workload,
        "model": ctx.model.model_id,
        "vllm_version": VLLM_VERSION,
    }
    if isinstance(plan.memory, InferenceEstimate):
        seqs, default_seqs = max_num_seqs(plan, ctx)
        result["max_num_seqs"] = seqs
        result["max_num_seqs_flag"] = None if seqs == default_seqs else seqs  # --max-num-seqs in the command
        result["kv_cache_blocks"] = plan.memory.peak_stage.kv_cache_blocks
        result["stages"] = [
            {
                "stage": s.stage,
                "layers": [s.first_layer, s.first_layer + s.num_layers - 1],
                "weights_gb": to_gib(s.weights),
                "kv_cache_gb": to_gib(max(0, s.kv_cache)),
                "kv_cache_tokens": s.kv_cache_tokens,
                "kv_cache_blocks": s.kv_cache_blocks,
                "block_size": s.layout.block_tokens if s.layout else KV_BLOCK_SIZE,
                "max_num_seqs_limit": s.running_limit,
            }
            for s in plan.memory.stages
        ]
    return result


def _run(ctx: Context, cluster: object) -> tuple[tuple[NodePool, ...], SearchResult]:
    pools = parse_cluster(cluster)
    if ctx.request.objective == "minimize_cost":
        prices = dict(ctx.request.prices)
        unpriced = sorted({p.gpu_name for p in pools if pool_price(p, prices) is None})
        if unpriced:
            raise InvalidConfigurationError(
                f"objective: minimize_cost needs a price for every GPU and none is known for {', '.join(unpriced)}; "
                f"pass prices={{{unpriced[0]!r}: USD per GPU-hour}} (or price_per_gpu_hour on the pool), or "
                "choose another objective"
            )
    result = search(ctx.model.shape, pools, ctx.request)
    if not result.plans:
        raise insufficient_memory(ctx, pools, result)
    return pools, result


def _distinct(plans: tuple[Plan, ...], limit: int) -> list[Plan]:
    """The best plan of each distinct (pool, TP, PP, EP) shape, up to ``limit``."""
    seen: set[tuple[str, int, int, int]] = set()
    chosen: list[Plan] = []
    for plan in plans:
        key = (plan.pool.name, plan.degrees.tensor, plan.degrees.pipeline, plan.degrees.expert)
        if key not in seen:
            seen.add(key)
            chosen.append(plan)
        if len(chosen) == limit:
            break
    return chosen


def analyze(
    model: ModelRef,
    cluster: object,
    sequence_length: int | None = None,
    batch_size: int = 32,
    max_configs: int = 5,
    **options: Any,
) -> list[dict[str, Any]]:
    """Ranked parallel configurations of ``model`` on ``cluster`` (best first).

    ``sequence_length`` defaults to 2048, or the model's maximum positions when fewer. ``cost_per_hour_usd`` is
    None when no price is known for the GPU. Raises ModelNotFoundError, InsufficientMemoryError or
    InvalidConfigurationError with a message that names the field at fault and the nearest fix. With
    ``explain=True`` every dict also lists the rejected candidates under ``rejected``, one line each.
    """
    if isinstance(max_configs, bool) or not isinstance(max_configs, int) or max_configs < 1:
        raise InvalidConfigurationError(f"max_configs: expected a positive integer, got {max_configs!r}")
    ctx = build_context(model, sequence_length, batch_size, options)
    _, result = _run(ctx, cluster)
    configs = [_plan_dict(plan, ctx) for plan in _distinct(result.plans, max_configs)]
    if ctx.options["explain"]:
        rejected = [str(r) for r in result.rejections]
        for config in configs:
            config["rejected"] = rejected
    return configs


def best_config(model: ModelRef, cluster: object, objective: str = "minimize_gpus", **options: Any) -> dict[str, Any]:
    """The single best configuration for ``objective`` (minimize_gpus, maximize_batch, balanced, minimize_cost)."""
    return analyze(model, cluster, max_configs=1, **{**options, "objective": objective})[0]


def check_memory_requirements(model: ModelRef, sequence_length: int | None = None, **options: Any) -> dict[str, Any]:
    """Memory the model needs on one GPU, without a cluster: weights, one sequence, ``batch_size`` sequences.

    ``sequence_length`` defaults to 2048, or the model's maximum positions when fewer.
    """
    batch = options.pop("batch_size", 32)
    ctx = build_context(model, sequence_length, batch, options)
    sequence_length = ctx.request.sequence_length
    shape = ctx.model.shape
    serving = ctx.request.serving
    assert serving is not None
    unlimited = 1 << 50  # an imaginary GPU large enough for any model: only the fixed parts matter
    stage = estimate_inference(shape, Degrees(), replace(serving, gpu_memory_utilization=1.0), unlimited, 1).stages[0]
    fixed = stage.weights + stage.activations + stage.overhead
    one_sequence = kv_bytes_per_sequence(shape, serving, sequence_length)
    minimum = fixed + one_sequence
    recommended = (fixed + batch * one_sequence) / serving.gpu_memory_utilization
    result: dict[str, Any] = {
        "model": ctx.model.model_id,
        "parameter_count": shape.parameter_count,
        "model_size_gb": to_gib(stage.weights),
        "minimum_memory_gb": to_gib(minimum),
        "recommended_memory_gb": to_gib(recommended),
        "supports_quantization": not serving.weights.quantized,
        "dtype": serving.dtype,
        "weight_format": serving.weights.name,
        "kv_cache_bytes_per_token": stage.kv_bytes_per_token,
        "kv_cache_gb_per_sequence": to_gib(one_sequence, 4),
        "sequence_length": sequence_length,
        "batch_size": batch,
        "vllm_version": VLLM_VERSION,
        "fits_on": sorted(g.name for g in GPU_CATALOG if g.usable_bytes * serving.gpu_memory_utilization >= minimum),
    }
    if shape.is_moe:
        result["active_parameter_count"] = shape.active_parameter_count
    if ctx.request.workload == "training":
        settings = replace(ctx.request.training or TrainingSettings(), num_micro_batches=1)
        training = estimate_training(shape, Degrees(), settings, sequence_length)
        result["training_memory_gb"] = to_gib(training.total)
    return result


def estimate_cost(model: ModelRef, cluster: object, hours_per_month: float = 730, **options: Any) -> dict[str, Any]:
    """Monthly cost of the cheapest configuration that serves the request on ``cluster``."""
    if isinstance(hours_per_month, bool) or not isinstance(hours_per_month, int | float) or hours_per_month <= 0:
        raise InvalidConfigurationError(f"hours_per_month: expected a positive number, got {hours_per_month!r}")
    objective = options.get("objective", "minimize_cost")
    if "objective" not in options and _unpriced(cluster, options.get("prices") or {}):
        objective = "minimize_gpus"  # no price to minimise: the fewest GPUs, its cost reported as unknown
    config = best_config(model, cluster, **{**options, "objective": objective})
    gpus = config["total_gpus"]
    hourly = config["cost_per_hour_usd"]
    if hourly is None:
        price = None
        assumptions = (
            f"{gpus}× {config['gpu_type']} at an unknown price: autoparallel has no price for this GPU; pass "
            f"prices={{{config['gpu_type']!r}: USD per GPU-hour}}. Plan '{config['reason']}'"
        )
    else:
        price = hourly / gpus
        source = "caller's prices" if options.get("prices") else "autoparallel's default on-demand list prices"
        assumptions = (
            f"{gpus}× {config['gpu_type']} at ${price:.2f}/GPU-hour ({source}), "
            f"{hours_per_month} hours per month, plan '{config['reason']}'"
        )
    return {
        "gpus_needed": gpus,
        "gpu_type": config["gpu_type"],
        "cost_per_gpu_hour": round(price, 2) if price is not None else None,
        "estimated_monthly_cost_usd": round(hourly * hours_per_month, 2) if hourly is not None else None,
        "hours_per_month": hours_per_month,
        "configuration": {k: config[k] for k in ("tensor_parallel", "pipeline_parallel", "data_parallel")},
        "assumptions": assumptions,
    }


def _unpriced(cluster: object, prices: object) -> bool:
    """Whether no pool of ``cluster`` has a known price (malformed input is left to the planner's checks)."""
    try:
        pools = parse_cluster(cluster)
    except InvalidConfigurationError:
        return False
    known = dict(prices) if isinstance(prices, dict) else {}
    return all(pool_price(pool, known) is None for pool in pools)
