"""Which parallel degrees a model admits. Each check returns None, or one line saying what must divide what."""

from __future__ import annotations

from autoparallel.planner.shapes import ModelShape


def tensor_parallel_problem(shape: ModelShape, tp: int) -> str | None:
    """vLLM's rules: TP divides the attention heads, the KV heads divide TP or TP divides them, and the MLP
    width divides evenly (vocabulary rows are padded, so the vocabulary never blocks a TP size)."""
    if shape.num_heads % tp:
        return f"TP={tp}: {shape.num_heads} attention heads are not divisible by TP={tp}"
    for kv in () if shape.is_mla else shape.kv_head_counts:
        if kv % tp and tp % kv:
            return f"TP={tp}: {kv} KV heads are not divisible by TP={tp} and TP={tp} is not a multiple of {kv}"
    dense_widths = {layer.sharded for layer in shape.layers if layer.sharded}
    if shape.moe_intermediate_size and shape.moe_intermediate_size % tp:
        return f"TP={tp}: expert MLP width {shape.moe_intermediate_size} is not divisible by TP={tp}"
    if dense_widths and not shape.is_moe and (shape.intermediate_size % tp):
        return f"TP={tp}: MLP width {shape.intermediate_size} is not divisible by TP={tp}"
    return None


def pipeline_parallel_problem(shape: ModelShape, pp: int) -> str | None:
    """Every stage needs at least one layer; uneven splits are fine (the largest stage counts)."""
    if pp > shape.num_layers:
        return f"PP={pp}: more stages than the {shape.num_layers} layers"
    return None


def expert_parallel_problem(shape: ModelShape, ep: int) -> str | None:
    """EP spreads whole experts over ranks, so it must divide the number of routed experts."""
    if ep == 1:
        return None
    if not shape.is_moe:
        return f"EP={ep}: the model has no routed experts"
    if shape.num_experts % ep:
        return f"EP={ep}: {shape.num_experts} experts are not divisible by EP={ep}"
    return None
