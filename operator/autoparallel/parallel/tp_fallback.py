"""Pairs from the module structure, for models (or parts of models) the dataflow cannot see.

Used when tracing fails (the report says why) and for modules the traced forward does not reach (a vision tower
when the model was traced on token ids). The rule itself is :func:`tp_structure.pair_linears`: among the
direct ``nn.Linear`` children of every module, entries that read the width the exit writes.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from autoparallel.parallel.tp_dataflow import HEAD_COUNT_ATTRIBUTES
from autoparallel.parallel.tp_report import LayerAnalysis
from autoparallel.parallel.tp_split import Split
from autoparallel.parallel.tp_structure import LinearShape, TPStyle, pair_linears

HEAD_DIM_ATTRIBUTES = ("head_dim", "head_size", "attention_head_size")
"""Attributes attention modules use for the per-head width (transformers, GPT-NeoX, BERT)."""


def _child_name(parent: str, child: str) -> str:
    return f"{parent}.{child}" if parent else child


def declared_head_dim(module: nn.Module) -> int:
    """The per-head width an attention module declares (0: none)."""
    for attribute in HEAD_DIM_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def _heads(width: int, head_dim: int) -> int | None:
    return width // head_dim if head_dim and width % head_dim == 0 else None


def _paired(model: nn.Module) -> dict[str, Split]:
    splits: dict[str, Split] = {}
    for parent_name, parent in model.named_modules():
        linears = [
            LinearShape(_child_name(parent_name, name), child.in_features, child.out_features)
            for name, child in parent.named_children()
            if isinstance(child, nn.Linear)
        ]
        head_dim = declared_head_dim(parent)
        for pairing in pair_linears(linears):
            block = parent_name or "(root)"
            short = ", ".join(name.rsplit(".", 1)[-1] for name in pairing.columns)
            for column in pairing.columns:
                width = next(s.out_features for s in linears if s.name == column)
                reason = f"enters block {block}: reads width {pairing.width}, feeds row layer {pairing.row}"
                splits[column] = Split(TPStyle.COLUMN, reason, parent_name, pairing.row, _heads(width, head_dim))
            reason = f"exits block {block}: one all-reduce sums the partial outputs of {short}"
            splits[pairing.row] = Split(TPStyle.ROW, reason, parent_name, pairing.row, _heads(pairing.inner, head_dim))
    return splits


def structural_splits(model: nn.Module) -> dict[str, Split]:
    """Paired layers by module structure, and the other parameter-owning children of their blocks.

    A per-head child (Qwen3's q_norm/k_norm: one ``head_dim`` weight) sees each rank's local heads unchanged but
    its gradient must be summed. A child as wide as a column layer's output (OLMo-2's q_norm over all heads)
    needs that output whole: the pairs of its block stay unsplit."""
    splits = _paired(model)
    blocks = {split.block for split in splits.values() if split.block is not None}
    broken: dict[str, str] = {}
    for block in sorted(blocks):
        module = model.get_submodule(block)
        head_dim = declared_head_dim(module)
        members = [name for name, split in splits.items() if split.block == block]
        widths = {model.get_submodule(n).out_features for n in members if splits[n].style is TPStyle.COLUMN}
        for name, child in module.named_children():
            child_name = _child_name(block, name)
            sizes = {tuple(w.shape) for w in child.parameters(recurse=False)}
            if child_name in splits or not sizes:
                continue
            kind = type(child).__name__
            if head_dim and sizes == {(head_dim,)}:
                reason = (
                    f"per-head {kind} inside block {block or '(root)'}: replicated, it sees each rank's local "
                    "heads, so its gradient is summed over the ranks"
                )
                splits[child_name] = Split(TPStyle.NONE, reason, inside_block=block)
            elif any(size[-1] in widths for size in sizes if size):
                splits[child_name] = Split(TPStyle.NONE, f"{kind} over the whole output of a column layer")
                broken.setdefault(block, child_name)
    for name, split in list(splits.items()):
        if split.block in broken:
            reason = f"block {split.block or '(root)'} cannot split: {broken[split.block]} stays replicated"
            splits[name] = Split(TPStyle.NONE, reason)
    return splits


def head_count_attributes(
    model: nn.Module, blocks: Iterable[str | None], layers: Iterable[LayerAnalysis]
) -> frozenset[tuple[str, str]]:
    """(block, attribute) for head counts that structurally paired blocks store: an attribute counts heads when,
    times the block's ``head_dim``, it equals a column layer's width."""
    widths: dict[str | None, set[int]] = {}
    for layer in layers:
        if layer.style is TPStyle.COLUMN and layer.paired:
            widths.setdefault(layer.block, set()).add(layer.split_size)
    found = set()
    for block in blocks:
        if block is None:
            continue
        module = model.get_submodule(block)
        head_dim = declared_head_dim(module)
        for attribute in HEAD_COUNT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, int) and head_dim and value * head_dim in widths.get(block, set()):
                found.add((block, attribute))
    return frozenset(found)
