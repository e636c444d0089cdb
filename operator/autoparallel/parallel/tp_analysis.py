"""Tensor-parallel analysis of any ``nn.Module``: which layers split, how, and what that saves.

Works on a model built on the ``meta`` device as well (sizes come from shapes and dtypes, nothing is
allocated), so a 70B transformers model is analysed in a fraction of a second. The pairing rule itself is in
:mod:`autoparallel.parallel.tp_structure`; this module walks the model and applies it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from torch import nn

from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
from autoparallel.parallel.tp_structure import FALLBACK_RATIO, LinearShape, TPStyle, fallback_style, pair_linears
from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.units import GIB, human_bytes

DEFAULT_MAX_WORLD_SIZE = 8
"""The seed's default: one node of eight GPUs."""

DEFAULT_MEMORY_BUDGET_BYTES = 40 * GIB
"""Weights budget per device for the suggested world size: half of an 80 GB H100/A100, leaving the rest for
activations and the KV cache (the planner sizes those exactly; this is only the analysis' rule of thumb)."""

HEAD_DIM_ATTRIBUTES = ("head_dim", "head_size", "attention_head_size")
"""Attributes attention modules use for the per-head width (transformers, GPT-NeoX, BERT)."""

REPLICATED_WARNING_SHARE = 0.05
"""Replicated weights other than norms above this share of the model earn a recommendation."""

_PARALLELIZATION_TIERS = (
    (80.0, "Highly recommended for this model"),
    (50.0, "Recommended with significant memory savings"),
    (20.0, "Moderate benefit, consider a hybrid approach (pipeline or data parallel)"),
)
"""The seed's tiers over the parallelizable share of the weights."""


@dataclass(frozen=True)
class _Split:
    style: TPStyle
    reason: str
    block: str | None = None
    heads_width: int = 0
    """head_dim of the block's module, to count heads along the split (0: unknown)."""


def _child_name(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def declared_head_dim(module: nn.Module) -> int:
    """The per-head width an attention module declares (0: none)."""
    for attribute in HEAD_DIM_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _paired_splits(model: nn.Module) -> dict[str, _Split]:
    """Column/row styles of every linear that the pairing rule places in a block."""
    splits: dict[str, _Split] = {}
    for parent_name, parent in model.named_modules():
        linears = [
            LinearShape(_child_name(parent_name, name), child.in_features, child.out_features)
            for name, child in parent.named_children()
            if isinstance(child, nn.Linear)
        ]
        head_dim = declared_head_dim(parent)
        for pairing in pair_linears(linears):
            block = parent_name or "(root)"  # for reasons; the split's block is the module path itself
            short = ", ".join(name.rsplit(".", 1)[-1] for name in pairing.columns)
            for column in pairing.columns:
                reason = f"enters block {block}: reads width {pairing.width}, feeds row layer {pairing.row}"
                splits[column] = _Split(TPStyle.COLUMN, reason, parent_name, head_dim)
            reason = f"exits block {block}: one all-reduce sums the partial outputs of {short}"
            splits[pairing.row] = _Split(TPStyle.ROW, reason, parent_name, head_dim)
    return splits


def _block_members(model: nn.Module, paired: dict[str, _Split]) -> tuple[dict[str, str], dict[str, str]]:
    """Parameter-owning children of paired blocks besides the pair itself, which see the split activations.

    Returns (per-head, whole-width), each child name → block. A per-head child (Qwen3's q_norm/k_norm: one
    ``head_dim`` weight) works on each rank's local heads unchanged, but its gradient covers only those heads
    and must be summed. A child as wide as a column layer's output (OLMo-2's q_norm over all heads) would
    need that output whole, so its block cannot split."""
    per_head: dict[str, str] = {}
    whole_width: dict[str, str] = {}
    blocks = {split.block: split.heads_width for split in paired.values() if split.block is not None}
    for block, head_dim in blocks.items():
        widths = {
            model.get_submodule(name).out_features
            for name, split in paired.items()
            if split.block == block and split.style is TPStyle.COLUMN
        }
        for name, child in model.get_submodule(block).named_children():
            child_name = _child_name(block, name)
            sizes = {tuple(w.shape) for w in child.parameters(recurse=False)}
            if child_name in paired or not sizes:
                continue
            if head_dim and sizes == {(head_dim,)}:
                per_head[child_name] = block
            elif any(size[-1] in widths for size in sizes if size):
                whole_width[child_name] = block
    return per_head, whole_width


def _unpaired_linear(linear: nn.Linear, token_rows: int) -> _Split:
    if token_rows and linear.out_features == token_rows:
        reason = f"output projection onto the {token_rows}-token vocabulary: split by rows, logits all-gathered"
        return _Split(TPStyle.COLUMN, reason)
    style = fallback_style(linear.in_features, linear.out_features)
    shape = f"in {linear.in_features}, out {linear.out_features}"
    if style is TPStyle.COLUMN:
        reason = f"pairs with no row layer; out > {FALLBACK_RATIO}× in ({shape}): split alone, output all-gathered"
    elif style is TPStyle.ROW:
        reason = f"pairs with no column layer; in > {FALLBACK_RATIO}× out ({shape}): split alone, output all-reduced"
    else:
        reason = f"pairs with nothing and is near-square ({shape}): a collective of its own would cost more"
    return _Split(style, reason)


def _other_module(module: nn.Module, token_rows: int) -> _Split:
    if isinstance(module, nn.Embedding):
        if module.num_embeddings == token_rows:
            return _Split(TPStyle.VOCAB, "token embedding: vocabulary rows split, lookups masked and all-reduced")
        return _Split(TPStyle.NONE, "embedding smaller than the token embedding (positions, types): replicated")
    kind = type(module).__name__
    if isinstance(module, nn.modules.conv._ConvNd):
        return _Split(TPStyle.NONE, f"{kind}: DTensor's TP styles split only Linear and Embedding; replicated")
    if kind == "Conv1D":
        return _Split(TPStyle.NONE, "transformers Conv1D (a Linear with its weight transposed): replicated")
    if "norm" in kind.lower():
        return _Split(TPStyle.NONE, f"{kind}: normalises the full hidden width; replicated")
    return _Split(TPStyle.NONE, f"{kind} owns parameters directly; DTensor's TP styles do not split it")


def _geometry(module: nn.Module, split: _Split) -> tuple[int, int]:
    """(size of the split dimension, width of the layer's own collective per token)."""
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    assert isinstance(module, nn.Linear)
    if split.style is TPStyle.COLUMN:
        return module.out_features, 0 if split.block is not None else module.out_features
    return module.in_features, module.out_features


def _layer(module_name: str, module: nn.Module, split: _Split, seen: dict[int, str]) -> LayerAnalysis:
    owned = list(module.named_parameters(recurse=False))
    names = tuple(_child_name(module_name, name) for name, _ in owned)
    tied_to = next((seen[id(p)] for _, p in owned if id(p) in seen), None)
    fresh = [(name, p) for name, p in owned if id(p) not in seen]
    for _, p in fresh:
        seen[id(p)] = module_name
    memory = sum(p.numel() * p.element_size() for _, p in fresh)
    count = sum(p.numel() for _, p in fresh)
    if split.style is TPStyle.NONE:
        return LayerAnalysis(
            module_name, type(module).__name__, split.style, memory, count, names, split.reason, split.block
        )
    split_size, collective = _geometry(module, split)
    bias_stays_whole = split.style is TPStyle.ROW
    split_bytes = sum(p.numel() * p.element_size() for name, p in fresh if not (bias_stays_whole and name == "bias"))
    heads = split_size // split.heads_width if split.heads_width and split_size % split.heads_width == 0 else None
    return LayerAnalysis(
        name=module_name,
        layer_type=type(module).__name__,
        style=split.style,
        memory_bytes=memory,
        parameter_count=count,
        parameters=names,
        reason=split.reason,
        block=split.block,
        split_size=split_size,
        split_bytes=split_bytes,
        heads=heads,
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
                    split_size=owner.split_size,
                    collective_width=owner.split_size,
                )
        elif owner.parallelizable or any(layers[i].parallelizable for i in members):
            tied = ", ".join(layers[i].name for i in members)
            reason = f"shares its weight with {tied}; kept replicated"
            result[by_name[owner_name]] = replace(owner, style=TPStyle.NONE, reason=reason)
            for index in members:
                reason = f"weight tied to {owner_name}; kept replicated"
                result[index] = replace(layers[index], style=TPStyle.NONE, reason=reason)
    return result


def _replicated(layer: LayerAnalysis, reason: str) -> LayerAnalysis:
    return replace(
        layer,
        style=TPStyle.NONE,
        reason=reason,
        block=None,
        split_size=0,
        split_bytes=0,
        heads=None,
        collective_width=0,
    )


def _consistent_blocks(layers: list[LayerAnalysis]) -> list[LayerAnalysis]:
    """A block splits whole or not at all: a column's local output is right only when its row layer splits,
    and a row layer needs every input split. Replicated layers lose their split fields."""
    broken: dict[str, str] = {}
    for layer in layers:
        if layer.block is not None and not layer.parallelizable:
            broken.setdefault(layer.block, layer.name)
    result = []
    for layer in layers:
        if layer.block in broken:
            reason = f"block {layer.block or '(root)'} cannot split: {broken[layer.block]} stays replicated"
            result.append(_replicated(layer, reason))
        elif layer.inside_block in broken:
            reason = f"inside block {layer.inside_block}, which stays whole: replicated"
            result.append(replace(layer, inside_block=None, reason=reason))
        elif not layer.parallelizable:
            result.append(_replicated(layer, layer.reason))
        else:
            result.append(layer)
    return result


def _analyse_layers(model: nn.Module) -> list[LayerAnalysis]:
    paired = _paired_splits(model)
    per_head, whole_width = _block_members(model, paired)
    token_rows = max((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=0)
    seen: dict[int, str] = {}
    layers = []
    for name, module in _owners(model):
        if isinstance(module, nn.Linear):
            split = paired.get(name) or _unpaired_linear(module, token_rows)
            if split.style is not TPStyle.NONE and _extra_parameters(module):
                split = _Split(TPStyle.NONE, "Linear with parameters beyond weight/bias: replicated", split.block)
        elif name in per_head:
            reason = (
                f"per-head {type(module).__name__} inside block {per_head[name] or '(root)'}: replicated, it sees "
                "each rank's local heads, so its gradient is summed over the ranks"
            )
            split = _Split(TPStyle.NONE, reason)
        elif name in whole_width:
            reason = f"{type(module).__name__} over the whole output of a column layer: its block cannot split"
            split = _Split(TPStyle.NONE, reason, whole_width[name])
        else:
            split = _other_module(module, token_rows)
        layer = _layer(name, module, split, seen)
        layers.append(replace(layer, inside_block=per_head[name]) if name in per_head else layer)
    return _consistent_blocks(_tie_styles(layers))


def _extra_parameters(module: nn.Module) -> bool:
    return any(name not in ("weight", "bias") for name, _ in module.named_parameters(recurse=False))


def _recommendations(layers: tuple[LayerAnalysis, ...], report: TPAnalysisReport, fits: bool) -> dict[str, str]:
    share = report.parallelizable_percentage
    verdict = next(
        (text for floor, text in _PARALLELIZATION_TIERS if share > floor), "Low benefit, consider other strategies"
    )
    recommendations = {"Parallelization": f"{verdict} ({share:.1f}% of the weights split)"}
    world = report.suggested_world_size
    per_rank = human_bytes(report.per_rank_bytes(world))
    budget = human_bytes(report.memory_budget_bytes)
    if fits:
        recommendations["World size"] = f"{world} rank(s) hold {per_rank} of weights each (budget {budget})"
    else:
        recommendations["World size"] = (
            f"does not fit: at {world} ranks each holds {per_rank} > {budget}; add pipeline parallelism or "
            "use larger devices"
        )
    if world > DEFAULT_MAX_WORLD_SIZE:
        recommendations["Topology"] = f"{world} ranks exceed one 8-GPU node: tensor parallelism across nodes is slow"
    vocab_rows = {layer.split_size for layer in layers if layer.style is TPStyle.VOCAB}
    alone = [  # an output projection (lm_head) gathers its logits whatever the pairing; others need not
        layer.name
        for layer in layers
        if layer.parallelizable
        and not layer.paired
        and layer.layer_type == "Linear"
        and not (layer.style is TPStyle.COLUMN and layer.split_size in vocab_rows)
    ]
    if alone:
        recommendations["Unpaired layers"] = (
            f"{len(alone)} linear layer(s) split on their own, each with its own collective (first: {alone[0]}); "
            "fused projections (qkv, gate_up) pair once split into separate Linear layers"
        )
    replicated = [layer for layer in layers if not layer.parallelizable and "norm" not in layer.layer_type.lower()]
    replicated_bytes = sum(layer.memory_bytes for layer in replicated)
    if report.total_memory_bytes and replicated_bytes > REPLICATED_WARNING_SHARE * report.total_memory_bytes:
        kinds = sorted({layer.layer_type for layer in replicated})
        recommendations["Replicated weights"] = (
            f"{human_bytes(replicated_bytes)} in {', '.join(kinds)} stay whole on every rank"
        )
    powers_of_two = [1 << k for k in range(report.max_world_size.bit_length()) if 1 << k <= report.max_world_size]
    blocked = next((w for w in powers_of_two if w not in report.valid_world_sizes), None)
    if blocked is not None:
        limiting = next(layer for layer in layers if not layer.divides(blocked))
        what = f"{limiting.heads} heads" if limiting.heads is not None else f"width {limiting.split_size}"
        recommendations["Divisibility"] = (
            f"{limiting.name} ({what}) does not divide by {blocked}: valid world sizes are "
            f"{', '.join(map(str, report.valid_world_sizes))}"
        )
    return recommendations


def analyze_tp(
    model: nn.Module,
    max_world_size: int = DEFAULT_MAX_WORLD_SIZE,
    *,
    memory_budget_bytes: int = DEFAULT_MEMORY_BUDGET_BYTES,
) -> TPAnalysisReport:
    """Analyse ``model`` for tensor parallelism (any ``nn.Module``, meta-device models included).

    The suggested world size is the smallest one up to ``max_world_size`` that every paired layer divides
    and at which each rank's weights fit ``memory_budget_bytes``; when none fits, the largest valid one.
    """
    if max_world_size < 1:
        raise InvalidConfigurationError(f"max_world_size: must be at least 1 (got {max_world_size})")
    if memory_budget_bytes <= 0:
        raise InvalidConfigurationError(f"memory_budget_bytes: must be positive (got {memory_budget_bytes})")
    layers = tuple(_analyse_layers(model))
    valid = tuple(w for w in range(1, max_world_size + 1) if all(layer.divides(w) for layer in layers))
    draft = TPAnalysisReport(layers, 1, valid, max_world_size, memory_budget_bytes)
    fitting = [w for w in valid if draft.per_rank_bytes(w) <= memory_budget_bytes]
    suggested = fitting[0] if fitting else valid[-1]
    report = TPAnalysisReport(layers, suggested, valid, max_world_size, memory_budget_bytes)
    recommendations = _recommendations(layers, report, fits=bool(fitting))
    return TPAnalysisReport(layers, suggested, valid, max_world_size, memory_budget_bytes, recommendations)
