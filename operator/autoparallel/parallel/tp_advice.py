"""The analysis' recommendations: plain sentences over a finished report (pure, no torch)."""

from __future__ import annotations

from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
from autoparallel.parallel.tp_structure import TPStyle
from autoparallel.planner.units import human_bytes

LARGEST_NODE = 8
"""GPUs of the largest common node: tensor parallelism beyond it crosses the network."""

REPLICATED_WARNING_SHARE = 0.05
"""Replicated weights other than norms above this share of the model earn a recommendation."""

_PARALLELIZATION_TIERS = (
    (80.0, "Highly recommended for this model"),
    (50.0, "Recommended with significant memory savings"),
    (20.0, "Moderate benefit, consider a hybrid approach (pipeline or data parallel)"),
)
"""The seed's tiers over the parallelizable share of the weights."""


def recommendations(report: TPAnalysisReport, fits: bool) -> dict[str, str]:
    """Keyed sentences: the seed's (Parallelization, World size, Topology) and ours."""
    layers = report.layers
    share = report.parallelizable_percentage
    verdict = next(
        (text for floor, text in _PARALLELIZATION_TIERS if share > floor), "Low benefit, consider other strategies"
    )
    advice = {"Parallelization": f"{verdict} ({share:.1f}% of the weights split)"}
    if not report.traced:
        advice["Pairing"] = f"found from the module structure: {report.pairing}"
    world = report.suggested_world_size
    per_rank = human_bytes(report.per_rank_bytes(world))
    budget = human_bytes(report.memory_budget_bytes)
    if fits:
        advice["World size"] = f"{world} rank(s) hold {per_rank} of weights each (budget {budget})"
    else:
        advice["World size"] = (
            f"does not fit: at {world} ranks each holds {per_rank} > {budget}; add pipeline parallelism or "
            "use larger devices"
        )
    if world > LARGEST_NODE:
        advice["Topology"] = f"{world} ranks exceed one 8-GPU node: tensor parallelism across nodes is slow"
    vocab_rows = {layer.split_size for layer in layers if layer.style is TPStyle.VOCAB}
    alone = [  # an output projection (lm_head) gathers its logits whatever the pairing; others need not
        layer.name
        for layer in layers
        if layer.style in (TPStyle.COLUMN, TPStyle.ROW)
        and not layer.paired
        and not (layer.style is TPStyle.COLUMN and layer.split_size in vocab_rows)
    ]
    if alone:
        advice["Unpaired layers"] = (
            f"{len(alone)} linear layer(s) split on their own, each with its own collective (first: {alone[0]}: "
            f"{report.layer(alone[0]).reason})"
        )
    advice |= _replicated(layers, report)
    return advice | _divisibility(layers, report)


def _replicated(layers: tuple[LayerAnalysis, ...], report: TPAnalysisReport) -> dict[str, str]:
    replicated = [layer for layer in layers if not layer.parallelizable and "norm" not in layer.layer_type.lower()]
    replicated_bytes = sum(layer.memory_bytes for layer in replicated)
    if not report.total_memory_bytes or replicated_bytes <= REPLICATED_WARNING_SHARE * report.total_memory_bytes:
        return {}
    kinds = sorted({layer.layer_type for layer in replicated})
    return {"Replicated weights": f"{human_bytes(replicated_bytes)} in {', '.join(kinds)} stay whole on every rank"}


def _divisibility(layers: tuple[LayerAnalysis, ...], report: TPAnalysisReport) -> dict[str, str]:
    powers_of_two = [1 << k for k in range(report.max_world_size.bit_length()) if 1 << k <= report.max_world_size]
    blocked = next((w for w in powers_of_two if w not in report.valid_world_sizes), None)
    if blocked is None:
        return {}
    limiting = next(layer for layer in layers if not layer.divides(blocked))
    what = f"{limiting.heads} heads" if limiting.heads is not None else f"width {limiting.split_size}"
    valid = ", ".join(map(str, report.valid_world_sizes))
    return {"Divisibility": f"{limiting.name} ({what}) does not divide by {blocked}: valid world sizes are {valid}"}
