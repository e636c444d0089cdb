"""Tensor-parallel analysis of any ``nn.Module``: which layers split, how, and what that saves.

The model is traced (:mod:`tp_trace`, ``torch.export`` on fake tensors: meta-device models work, nothing is
allocated) and column→row pairs are found from its dataflow (:mod:`tp_pairs`). Modules the traced forward does
not reach, and whole models that do not trace, fall back to the module-structure rule (:mod:`tp_fallback`); the
report says which. Embeddings, output projections, MoE experts and unpaired linears follow the rules below.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from autoparallel.parallel.tp_advice import recommendations
from autoparallel.parallel.tp_dataflow import linear_kind
from autoparallel.parallel.tp_fallback import head_count_attributes, structural_splits
from autoparallel.parallel.tp_pairs import GraphPairs, find_pairs
from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
from autoparallel.parallel.tp_split import Split
from autoparallel.parallel.tp_structure import FALLBACK_RATIO, TPStyle, fallback_style
from autoparallel.parallel.tp_trace import trace_model
from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.units import GIB

DEFAULT_MAX_WORLD_SIZE = 8
"""The seed's default: one node of eight GPUs."""

DEFAULT_MEMORY_BUDGET_BYTES = 40 * GIB
"""Weights budget per device for the suggested world size: half of an 80 GB H100/A100, leaving the rest for
activations and the KV cache (the planner sizes those exactly; this is only the analysis' rule of thumb)."""


@dataclass(frozen=True)
class _Context:
    """What every module's decision may consult."""

    graph: GraphPairs | None
    structural: dict[str, Split]
    token_rows: int
    """Rows of the token embedding (the largest one): a Linear writing that many outputs is the lm_head."""
    experts: dict[str, int]
    """Expert modules → their number of experts."""


def experts_of(module: nn.Module) -> int:
    """Number of experts of a transformers MoE experts module (fused 3-D tensors, one row per expert, and
    transformers' expert-parallel switch ``_is_expert_parallel``); 0 for anything else."""
    count = getattr(module, "num_experts", None)
    tensors = [p for _, p in module.named_parameters(recurse=False)]
    if not isinstance(count, int) or count < 2 or not hasattr(module, "_is_expert_parallel"):
        return 0
    if not any(p.dim() >= 3 for p in tensors) or any(p.dim() < 2 or p.shape[0] != count for p in tensors):
        return 0
    positional = [
        p
        for p in inspect.signature(module.forward).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    return count if len(positional) >= 3 else 0


def _expert_width(module: nn.Module) -> int:
    """The hidden width the experts read and write: the one size (besides the experts) all 3-D tensors share."""
    shapes = [set(p.shape[1:]) for _, p in module.named_parameters(recurse=False) if p.dim() >= 3]
    shared = set.intersection(*shapes) if shapes else set()
    return int(next(iter(shared))) if len(shared) == 1 else 0


def _unpaired_linear(module: nn.Module, token_rows: int, why: str | None) -> Split:
    kind = linear_kind(module)
    if kind is None:
        return Split(TPStyle.NONE, f"{type(module).__name__} with parameters beyond weight/bias: replicated")
    out_features, in_features = _features(module)
    if token_rows and out_features == token_rows:
        reason = f"output projection onto the {token_rows}-token vocabulary: split by rows, logits all-gathered"
        return Split(TPStyle.COLUMN, reason)
    style = fallback_style(in_features, out_features)
    shape = f"in {in_features}, out {out_features}"
    prefix = f"no pair ({why}); " if why else "pairs with nothing; "
    if style is TPStyle.COLUMN:
        return Split(style, f"{prefix}out > {FALLBACK_RATIO}× in ({shape}): split alone, output all-gathered")
    if style is TPStyle.ROW:
        return Split(style, f"{prefix}in > {FALLBACK_RATIO}× out ({shape}): split alone, output all-reduced")
    return Split(style, f"{prefix}near-square ({shape}): a collective of its own would cost more than it saves")


def _other_module(name: str, module: nn.Module, context: _Context) -> Split:
    if isinstance(module, nn.Embedding):
        if module.num_embeddings == context.token_rows:
            return Split(TPStyle.VOCAB, "token embedding: vocabulary rows split, lookups masked and all-reduced")
        return Split(TPStyle.NONE, "embedding smaller than the token embedding (positions, types): replicated")
    kind = type(module).__name__
    if name in context.experts:
        count = context.experts[name]
        reason = f"{count} experts split across the ranks (expert parallel), router replicated, outputs all-reduced"
        return Split(TPStyle.EXPERT, reason, name.rpartition(".")[0], name)
    siblings = {e.rpartition(".")[0]: n for e, n in context.experts.items()}
    weights = [p for _, p in module.named_parameters(recurse=False) if p.dim() == 2]
    if name.rpartition(".")[0] in siblings and any(p.shape[0] == siblings[name.rpartition(".")[0]] for p in weights):
        return Split(TPStyle.NONE, f"{kind}: the router, replicated so that every rank routes every token")
    if isinstance(module, nn.modules.conv._ConvNd):
        return Split(TPStyle.NONE, f"{kind}: DTensor's TP styles split only Linear and Embedding; replicated")
    if any(p.dim() >= 3 for _, p in module.named_parameters(recurse=False)):
        return Split(TPStyle.NONE, f"{kind} holds 3-D tensors without transformers' expert-parallel switch")
    if "norm" in kind.lower():
        return Split(TPStyle.NONE, f"{kind}: normalises replicated activations (between pairs); replicated")
    return Split(TPStyle.NONE, f"{kind} owns parameters directly and is no layer that splits; replicated")


def _decide(name: str, module: nn.Module, context: _Context) -> Split:
    graph = context.graph
    reached = graph is not None and name in graph.reached
    if graph is not None and name in graph.splits:
        return graph.splits[name]
    if not reached and name in context.structural:
        split = context.structural[name]
        unseen = "not reached by the traced forward; by module structure: " if graph is not None else ""
        return replace(split, reason=unseen + split.reason)
    if linear_kind(module) is not None or isinstance(module, nn.Linear):
        return _unpaired_linear(module, context.token_rows, graph.unpaired.get(name) if graph else None)
    return _other_module(name, module, context)


def _geometry(module: nn.Module, split: Split) -> tuple[int, int]:
    """(size of the split dimension, width of the layer's own collective per token)."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if split.style is TPStyle.EXPERT:
        return experts_of(module), _expert_width(module)
    out_features, in_features = _features(module)
    if split.style is TPStyle.COLUMN:
        return out_features, 0 if split.block is not None else out_features
    return in_features, out_features


def _features(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a Linear or a Conv1D (whose weight is stored transposed)."""
    rows, columns = (int(size) for size in module.get_parameter("weight").shape)
    return (columns, rows) if linear_kind(module) == "conv1d" else (rows, columns)


def _layer(module_name: str, module: nn.Module, split: Split, seen: dict[int, str]) -> LayerAnalysis:
    owned = list(module.named_parameters(recurse=False))
    names = tuple(f"{module_name}.{name}" if module_name else name for name, _ in owned)
    tied_to = next((seen[id(p)] for _, p in owned if id(p) in seen), None)
    fresh = [(name, p) for name, p in owned if id(p) not in seen]
    for _, p in fresh:
        seen[id(p)] = module_name
    memory = sum(p.numel() * p.element_size() for _, p in fresh)
    count = sum(p.numel() for _, p in fresh)
    base = LayerAnalysis(
        module_name, type(module).__name__, split.style, memory, count, names, split.reason, split.block, split.pair
    )
    if split.style is TPStyle.NONE:
        return replace(base, inside_block=split.inside_block)
    split_size, collective = _geometry(module, split)
    bias_stays_whole = split.style is TPStyle.ROW
    split_bytes = sum(p.numel() * p.element_size() for name, p in fresh if not (bias_stays_whole and name == "bias"))
    return replace(
        base,
        split_size=split_size,
        split_bytes=split_bytes,
        heads=split.heads,
        fused_parts=split.fused_parts,
        collective_width=collective,
        tied_to=tied_to,
    )


def _owners(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            yield name, module


def _tie_styles(layers: list[LayerAnalysis]) -> list[LayerAnalysis]:
    """Layers sharing a weight must split it the same way: a linear tied to the vocab-parallel embedding
    (a tied lm_head) splits its rows with it; any other split group stays replicated."""
    groups: dict[str, list[int]] = {}
    for index, layer in enumerate(layers):
        if layer.tied_to is not None:
            groups.setdefault(layer.tied_to, []).append(index)
    by_name = {layer.name: index for index, layer in enumerate(layers)}
    result = list(layers)
    for owner_name, members in groups.items():
        owner = layers[by_name[owner_name]]
        if owner.style is TPStyle.VOCAB and all(layers[i].layer_type == "Linear" for i in members):
            reason = f"weight tied to the vocab-parallel {owner_name}: rows split with it, output all-gathered"
            for index in members:
                result[index] = replace(
                    layers[index],
                    style=TPStyle.COLUMN,
                    reason=reason,
                    block=None,
                    pair=None,
                    split_size=owner.split_size,
                    collective_width=owner.split_size,
                )
        elif owner.parallelizable or any(layers[i].parallelizable for i in members):
            tied = ", ".join(layers[i].name for i in members)
            result[by_name[owner_name]] = replace(owner, style=TPStyle.NONE, reason=f"shares its weight with {tied}")
            for index in members:
                reason = f"weight tied to {owner_name}; kept replicated"
                result[index] = replace(layers[index], style=TPStyle.NONE, reason=reason)
    return result


def _consistent_pairs(layers: list[LayerAnalysis]) -> list[LayerAnalysis]:
    """A pair splits whole or not at all: a column's local output is right only when its row layer splits,
    and a row layer needs every input split. Replicated layers lose their split fields."""
    broken: dict[str, str] = {}
    for layer in layers:
        if layer.pair is not None and not layer.parallelizable:
            broken.setdefault(layer.pair, layer.name)
    blocks = {layer.block for layer in layers if layer.pair in broken}

    def settled(layer: LayerAnalysis) -> LayerAnalysis:
        if layer.pair in broken:
            reason = f"pair {layer.pair} cannot split: {broken[layer.pair]} stays replicated ({layer.reason})"
            layer = replace(layer, style=TPStyle.NONE, reason=reason)
        elif layer.inside_block in blocks:
            reason = f"inside block {layer.inside_block}, which stays whole: replicated"
            layer = replace(layer, inside_block=None, reason=reason)
        if layer.parallelizable:
            return layer
        return replace(
            layer, block=None, pair=None, split_size=0, split_bytes=0, heads=None, fused_parts=(), collective_width=0
        )

    return [settled(layer) for layer in layers]


def _context(model: nn.Module, graph: GraphPairs | None) -> _Context:
    token_rows = max((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=0)
    experts = {name: count for name, module in model.named_modules() if (count := experts_of(module))}
    structural = structural_splits(model)
    if graph is not None:  # the structure decides only whole pairs (and blocks) the traced forward did not reach
        seen = {split.pair or split.inside_block for name, split in structural.items() if name in graph.reached}
        structural = {n: s for n, s in structural.items() if (s.pair or s.inside_block) not in seen - {None}}
    return _Context(graph, structural, token_rows, experts)


def analyze_tp(
    model: nn.Module,
    max_world_size: int = DEFAULT_MAX_WORLD_SIZE,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
    example_inputs: tuple[Any, ...] | None = None,
) -> TPAnalysisReport:
    """Analyse ``model`` for tensor parallelism (any ``nn.Module``, meta-device models included).

    ``example_inputs`` are the positional arguments to trace the forward with (default: guessed, see
    :func:`tp_trace.example_inputs`). The suggested world size is the smallest one up to ``max_world_size``
    that every paired layer divides and at which each rank's weights after the split fit
    ``memory_budget_bytes``; when none fits, the largest valid one.
    """
    if max_world_size < 1:
        raise InvalidConfigurationError(f"max_world_size: must be at least 1 (got {max_world_size})")
    if memory_budget_bytes <= 0:
        raise InvalidConfigurationError(f"memory_budget_bytes: must be positive (got {memory_budget_bytes})")
    traced = trace_model(model, example_inputs)
    graph = None if isinstance(traced, str) else find_pairs(model, traced)
    pairing = f"module structure ({traced})" if isinstance(traced, str) else f"dataflow of the {traced.description}"
    context = _context(model, graph)
    seen: dict[int, str] = {}
    layers = tuple(
        _consistent_pairs(
            _tie_styles([_layer(name, module, _decide(name, module, context), seen) for name, module in _owners(model)])
        )
    )
    valid = tuple(w for w in range(1, max_world_size + 1) if all(layer.divides(w) for layer in layers))
    kept = {layer.block for layer in layers if layer.block is not None and layer.style is not TPStyle.EXPERT}
    structural_blocks = {split.block for split in context.structural.values() if split.block in kept}
    found = (graph.attributes if graph else frozenset()) | head_count_attributes(model, structural_blocks, layers)
    attributes = tuple(sorted(a for a in found if any(_under(a[0], block) for block in kept)))
    draft = TPAnalysisReport(layers, 1, valid, max_world_size, memory_budget_bytes, {}, pairing, graph is not None)
    fitting = [w for w in valid if draft.per_rank_bytes(w) <= memory_budget_bytes]
    suggested = fitting[0] if fitting else valid[-1]
    report = replace(draft, suggested_world_size=suggested, local_attributes=attributes)
    return replace(report, recommendations=recommendations(report, fits=bool(fitting)))


def _under(path: str, block: str) -> bool:
    return block in ("", path) or path.startswith(f"{block}.")
