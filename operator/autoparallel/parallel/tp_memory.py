"""Memory of a model under tensor parallelism: weights per rank, communication buffers, savings.

Pure arithmetic over a :class:`TPAnalysisReport`. The weights per rank follow DTensor's sharding and the
planner's rules (``autoparallel.planner.inference._layer_bytes``): paired layers split evenly, the vocabulary
split by rows, experts by experts, norms and biases of row layers replicated, and — when a layer has fewer
heads than ranks (grouped-query attention's KV heads) — one whole head per rank, vLLM's KV-head replication.
docs/tensor-parallel.md compares the figures with the planner's for the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from autoparallel.parallel.tp_analysis import analyze_tp
from autoparallel.parallel.tp_report import TPAnalysisReport
from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.units import human_bytes

DEFAULT_TOKENS = 2048
"""Tokens one forward pass carries for the buffer estimate: one sequence of 2048 (the CLI's default --seq-len)."""


@dataclass(frozen=True)
class TPMemoryEstimate:
    """Parameter memory of one model with and without ``world_size``-way tensor parallelism, in bytes."""

    world_size: int
    base_memory_bytes: int
    """Every parameter on one device."""
    rank_memory_bytes: tuple[int, ...]
    """Parameter bytes each rank holds (uneven vocabulary splits give the first ranks one row more)."""
    communication_buffer_bytes: int
    """The largest tensor one collective materialises: ``tokens`` × the widest all-reduced or all-gathered
    activation (the hidden states after a row layer, or a gathered lm_head's logits) × the weights' element
    size. 0 on one rank."""
    tokens: int
    convertible: bool
    """Whether ``convert_to_tp`` accepts this world size (every paired layer and its heads divide evenly)."""
    replicated_heads: tuple[str, ...] = ()
    """Layers with fewer heads than ranks: each rank keeps one whole head (vLLM replicates KV heads so), which
    the weights per rank count; ``convert_to_tp`` rejects such a world size."""

    @property
    def memory_per_rank_bytes(self) -> int:
        """Parameter bytes of the busiest rank (rank 0)."""
        return max(self.rank_memory_bytes)

    @property
    def total_memory_per_rank_bytes(self) -> int:
        return self.memory_per_rank_bytes + self.communication_buffer_bytes

    @property
    def memory_savings_percentage(self) -> float:
        """How much less the busiest rank holds than one device holding the whole model (buffers included)."""
        if not self.base_memory_bytes:
            return 0.0
        return 100 * (1 - self.total_memory_per_rank_bytes / self.base_memory_bytes)

    def summary(self) -> str:
        lines = [
            f"=== TP memory at world size {self.world_size} ===",
            f"Base memory (one device): {human_bytes(self.base_memory_bytes)} ({self.base_memory_bytes:,} bytes)",
            f"Weights per rank: {human_bytes(self.memory_per_rank_bytes)} ({self.memory_per_rank_bytes:,} bytes)",
            f"Communication buffers: {human_bytes(self.communication_buffer_bytes)} ({self.tokens} tokens)",
            f"Total per rank: {human_bytes(self.total_memory_per_rank_bytes)}",
            f"Savings: {self.memory_savings_percentage:.1f}%",
        ]
        if self.replicated_heads:
            lines.append(
                f"KV heads replicated: {len(self.replicated_heads)} layer(s) have fewer heads than ranks (first: "
                f"{self.replicated_heads[0]}); each rank keeps one whole head, as vLLM does"
            )
        if not self.convertible:
            lines.append("convert_to_tp rejects this world size: a paired layer or its heads do not divide by it")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "base_memory_bytes": self.base_memory_bytes,
            "memory_per_rank_bytes": self.memory_per_rank_bytes,
            "rank_memory_bytes": list(self.rank_memory_bytes),
            "communication_buffer_bytes": self.communication_buffer_bytes,
            "total_memory_per_rank_bytes": self.total_memory_per_rank_bytes,
            "memory_savings_percentage": round(self.memory_savings_percentage, 3),
            "tokens": self.tokens,
            "convertible": self.convertible,
            "replicated_heads": list(self.replicated_heads),
        }


def _communication_buffer(report: TPAnalysisReport, world_size: int, tokens: int) -> int:
    if world_size == 1 or not report.parameter_count:
        return 0
    width = max((layer.collective_width for layer in report.layers if layer.parallelizable), default=0)
    element_bytes = round(report.total_memory_bytes / report.parameter_count)
    return tokens * width * element_bytes


def estimate_tp_memory(
    model: nn.Module | TPAnalysisReport,
    world_size: int,
    *,
    tokens: int = DEFAULT_TOKENS,
) -> TPMemoryEstimate:
    """Memory of ``model`` (or of its analysis) split over ``world_size`` tensor-parallel ranks."""
    if world_size < 1:
        raise InvalidConfigurationError(f"world_size: must be at least 1 (got {world_size})")
    if tokens < 1:
        raise InvalidConfigurationError(f"tokens: must be at least 1 (got {tokens})")
    report = model if isinstance(model, TPAnalysisReport) else analyze_tp(model, max_world_size=world_size)
    return TPMemoryEstimate(
        world_size=world_size,
        base_memory_bytes=report.total_memory_bytes,
        rank_memory_bytes=tuple(report.per_rank_bytes(world_size, rank) for rank in range(world_size)),
        communication_buffer_bytes=_communication_buffer(report, world_size, tokens),
        tokens=tokens,
        convertible=all(layer.divides(world_size) for layer in report.layers),
        replicated_heads=tuple(
            layer.name for layer in report.layers if layer.heads is not None and layer.heads < world_size
        ),
    )
