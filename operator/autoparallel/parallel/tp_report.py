"""What the tensor-parallel analysis returns: per-layer results, the report, its summary and JSON (no torch)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autoparallel.parallel.tp_structure import TPStyle, rank_rows
from autoparallel.planner.units import human_bytes

_LAYER_INDEX = re.compile(r"(?<=\.)\d+(?=\.|$)")


@dataclass(frozen=True)
class LayerAnalysis:
    """One module that owns parameters directly, and how tensor parallelism splits it."""

    name: str
    """Module path (``model.layers.0.mlp.up_proj``); ``""`` for parameters of the root module."""
    layer_type: str
    """The module's class name."""
    style: TPStyle
    memory_bytes: int
    """Bytes of the parameters this module owns (a weight tied to an earlier module counts there, not here)."""
    parameter_count: int
    parameters: tuple[str, ...]
    """Full names of the parameters the module owns, tied ones included."""
    reason: str
    """Why this style: the block it pairs in, the shape rule, or why it stays replicated."""
    block: str | None = None
    """The module (``""``: the root) holding the pair this layer belongs to (for experts: the MoE block); None
    when the layer is split on its own and its collective runs right after it."""
    pair: str | None = None
    """The column/row pair this layer belongs to, named after its row layer(s) (experts: their module)."""
    split_size: int = 0
    """Size of the dimension that is split (out_features, in_features, or the vocabulary)."""
    split_bytes: int = 0
    """Bytes of the parameters split along it (a row layer's bias is not: it is added once)."""
    heads: int | None = None
    """Attention heads along the split dimension (the size it takes once the activations are reshaped into
    heads), when it is reshaped into heads."""
    fused_parts: tuple[int, ...] = ()
    """A fused column layer's parts along its output features (q, k, v of one ``qkv``; gate and up of one
    ``gate_up``): each is split, so the weight is re-ordered for the conversion (see ``tp_convert``)."""
    collective_width: int = 0
    """Width of the tensor the layer's own collective carries per token (0: none, the pair's row does it)."""
    tied_to: str | None = None
    """The module that owns this module's (shared) weight."""
    inside_block: str | None = None
    """For a replicated layer applied to a paired block's local heads (a per-head norm): that block. Its
    gradient on each rank covers only the local heads, so the conversion sums it over the ranks."""

    @property
    def parallelizable(self) -> bool:
        return self.style is not TPStyle.NONE

    @property
    def paired(self) -> bool:
        return self.block is not None

    @property
    def collective(self) -> str:
        """The collective the split costs right after this layer (forward pass), or for its gradient."""
        if self.style is TPStyle.COLUMN:
            return "none: its output stays split for the pair's row layer" if self.paired else "all-gather"
        if self.style is TPStyle.NONE:
            return "all-reduce of its gradient" if self.inside_block is not None else "none"
        return "all-reduce"

    def rank_bytes(self, world_size: int, rank: int = 0) -> int:
        """Parameter bytes rank ``rank`` holds under ``world_size``-way tensor parallelism.

        Shards follow DTensor (``torch.chunk``: uneven splits give the first ranks one more row). A split over
        fewer heads than ranks keeps one whole head per rank, as vLLM replicates KV heads (``convert_to_tp``
        rejects that case; the estimate keeps it to stay comparable with the planner)."""
        if world_size == 1 or not self.split_bytes:
            return self.memory_bytes
        replicated = self.memory_bytes - self.split_bytes
        if self.heads is not None and self.heads < world_size:
            return replicated + self.split_bytes // self.heads
        return replicated + self.split_bytes * rank_rows(self.split_size, world_size, rank) // self.split_size

    def divides(self, world_size: int) -> bool:
        """Whether a paired layer splits evenly (heads too) over ``world_size`` ranks; unpaired splits may be
        uneven, since their collective re-assembles them at once."""
        if not self.paired:
            return True
        sizes = (self.split_size, *self.fused_parts, *([] if self.heads is None else [self.heads]))
        return all(size % world_size == 0 for size in sizes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layer_type": self.layer_type,
            "parallelizable": self.parallelizable,
            "style": str(self.style),
            "memory_bytes": self.memory_bytes,
            "parameter_count": self.parameter_count,
            "parameters": list(self.parameters),
            "reason": self.reason,
            "block": self.block,
            "pair": self.pair,
            "collective": self.collective,
            "split_size": self.split_size,
            "heads": self.heads,
            "fused_parts": list(self.fused_parts),
            "tied_to": self.tied_to,
            "inside_block": self.inside_block,
        }


@dataclass(frozen=True, eq=False)
class TPAnalysisReport:
    """Every parameter-owning layer of a model, its suggested split, and what that buys."""

    layers: tuple[LayerAnalysis, ...]
    suggested_world_size: int
    """The smallest valid world size whose per-rank weights fit ``memory_budget_bytes`` (else the largest)."""
    valid_world_sizes: tuple[int, ...]
    """World sizes up to ``max_world_size`` that every paired layer (and its heads) divides."""
    max_world_size: int
    memory_budget_bytes: int
    """Per-device budget for the weights the suggestion aims at."""
    recommendations: Mapping[str, str] = field(default_factory=dict)
    pairing: str = ""
    """How the pairs were found: the traced graph's dataflow, or the module structure and why."""
    traced: bool = False
    """Whether the pairs come from the traced graph (False: from the module structure)."""
    local_attributes: tuple[tuple[str, str], ...] = ()
    """(module, attribute) holding a global size that the conversion divides by the world size: head counts
    that reshapes read, the part size a fused projection is split by."""

    @property
    def total_memory_bytes(self) -> int:
        return sum(layer.memory_bytes for layer in self.layers)

    @property
    def parallelizable_memory_bytes(self) -> int:
        return sum(layer.memory_bytes for layer in self.layers if layer.parallelizable)

    @property
    def parallelizable_percentage(self) -> float:
        total = self.total_memory_bytes
        return 100 * self.parallelizable_memory_bytes / total if total else 0.0

    @property
    def parameter_count(self) -> int:
        return sum(layer.parameter_count for layer in self.layers)

    def layer(self, name: str) -> LayerAnalysis:
        """The analysis of the module at ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(f"no parameter-owning module named {name!r} in the analysis")

    def per_rank_bytes(self, world_size: int, rank: int = 0) -> int:
        """Parameter bytes one rank holds under ``world_size``-way tensor parallelism."""
        return sum(layer.rank_bytes(world_size, rank) for layer in self.layers)

    def summary(self) -> str:
        """A readable report: totals, the suggestion, layers grouped across repeated blocks, recommendations."""
        parallel = [layer for layer in self.layers if layer.parallelizable]
        pairs = {layer.pair for layer in self.layers if layer.pair is not None}
        per_rank = self.per_rank_bytes(self.suggested_world_size)
        lines = [
            "=== TP Model Analysis ===",
            f"Total layers: {len(self.layers)} ({len(parallel)} parallelizable, {len(pairs)} paired blocks, "
            "one all-reduce each)",
            f"Pairing: {self.pairing}",
            f"Parameters: {self.parameter_count:,}",
            f"Total memory: {human_bytes(self.total_memory_bytes)} ({self.total_memory_bytes:,} bytes)",
            f"Parallelizable: {human_bytes(self.parallelizable_memory_bytes)} ({self.parallelizable_percentage:.1f}%)",
            f"Suggested world size: {self.suggested_world_size} ({human_bytes(per_rank)} of weights per rank, "
            f"budget {human_bytes(self.memory_budget_bytes)})",
            f"Valid world sizes (≤ {self.max_world_size}): {', '.join(map(str, self.valid_world_sizes))}",
            "",
            "Layers (repeated blocks folded into '*'):",
            *_layer_table(self.layers),
            "",
            "Recommendations:",
            *(f"  - {key}: {value}" for key, value in self.recommendations.items()),
        ]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_memory_bytes": self.total_memory_bytes,
            "parallelizable_memory_bytes": self.parallelizable_memory_bytes,
            "parallelizable_percentage": round(self.parallelizable_percentage, 3),
            "parameter_count": self.parameter_count,
            "suggested_world_size": self.suggested_world_size,
            "valid_world_sizes": list(self.valid_world_sizes),
            "max_world_size": self.max_world_size,
            "memory_budget_bytes": self.memory_budget_bytes,
            "pairing": self.pairing,
            "traced": self.traced,
            "local_attributes": [list(item) for item in self.local_attributes],
            "recommendations": dict(self.recommendations),
            "layers": [layer.to_dict() for layer in self.layers],
        }


@dataclass
class _Row:
    layer_type: str
    style: str
    count: int = 0
    parameters: int = 0
    memory: int = 0


def _layer_table(layers: tuple[LayerAnalysis, ...]) -> list[str]:
    rows: dict[tuple[str, str, str], _Row] = {}
    for layer in layers:
        pattern = _LAYER_INDEX.sub("*", layer.name) or "(root)"
        style = f"{layer.style}" + ("" if layer.paired or not layer.parallelizable else "*")
        row = rows.setdefault((pattern, layer.layer_type, style), _Row(layer.layer_type, style))
        row.count += 1
        row.parameters += layer.parameter_count
        row.memory += layer.memory_bytes
    width = max([len(key[0]) for key in rows] + [4])
    type_width = max([len(key[1]) for key in rows] + [4])
    header = f"  {'name':<{width}}  {'type':<{type_width}}  {'style':<7}  {'count':>5}  {'parameters':>15}  memory"
    table = [header]
    for (pattern, layer_type, style), row in rows.items():
        table.append(
            f"  {pattern:<{width}}  {layer_type:<{type_width}}  {style:<7}  {row.count:>5}  "
            f"{row.parameters:>15,}  {human_bytes(row.memory)}"
        )
    table.append("  (style*: split on its own, its collective runs right after it)")
    return table
