"""Column→row pairs found by following the dataflow of a traced model (:mod:`tp_trace`), not module names.

Every eligible linear layer (``nn.Linear``, transformers' ``Conv1D``) that reads replicated activations starts a
*group*: its output is split along its last dimension. The walk (:mod:`tp_dataflow`, rules in :mod:`tp_ops`)
follows the split through the graph:

* element-wise ops, activations, gating products, casts: the split stays (replicated operands must broadcast
  along it; parameters that do, like a per-head norm's weight, get their gradients summed over the ranks);
* reshapes, views, transposes: the split moves with its dimension while that stays an outer block (the heads);
* attention (``scaled_dot_product_attention``, batched matmuls): split along batch or heads, never contracted;
* reductions and norms: over other dimensions only;
* a linear layer that contracts the split features is the group's *row* layer: its partial outputs are
  all-reduced, and what follows is replicated again — where norms and residual adds sit.

Anything else meeting a split value (a norm over the whole width, a residual add, the model's output, an op
without a rule) breaks its group, with that op and module as the reason. Groups meeting in one op merge (q, k and
v in attention; gate and up). Broken groups' columns are set aside and the walk repeated until every group left
pairs. A fused column (one ``qkv`` or ``gate_up`` Linear) cut into equal parts by ``chunk`` — or by ``split``
with a size its module stores in an attribute, which the conversion makes local — splits per part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from autoparallel.parallel.tp_dataflow import Group, Walk
from autoparallel.parallel.tp_ops import visit
from autoparallel.parallel.tp_split import Split
from autoparallel.parallel.tp_structure import TPStyle
from autoparallel.parallel.tp_trace import TracedModel


@dataclass(frozen=True)
class GraphPairs:
    """What the dataflow decided, by module path (the traced blocks' copies included)."""

    splits: dict[str, Split]
    """Paired layers, and replicated modules applied to split activations (gradients summed)."""
    unpaired: dict[str, str]
    """Linear layers whose group broke → why."""
    reached: frozenset[str]
    """Modules whose parameters the traced forward uses."""
    attributes: frozenset[tuple[str, str]]
    """(module, attribute) holding a global size the conversion makes local (head counts, fused split sizes)."""


def _ancestor(names: list[str]) -> str:
    parts = [name.split(".") for name in names]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    if all(len(p) == len(common) for p in parts):  # a layer is no block of its own
        common = common[:-1]
    return ".".join(common)


def _pair_splits(model: nn.Module, group: Group) -> dict[str, Split]:
    rows, columns = sorted(group.rows), sorted(group.columns)
    pair = ", ".join(rows)
    block = _ancestor(columns + rows)
    where = block or "(root)"
    short = ", ".join(name.rsplit(".", 1)[-1] for name in columns)
    splits: dict[str, Split] = {}
    for column in columns:
        fused = group.fused.get(column, ())
        how = f"fused parts {list(fused)}, each split; " if fused else ""
        reason = f"enters pair {pair} in {where}: {how}its output stays split on its way to {pair}"
        splits[column] = Split(TPStyle.COLUMN, reason, block, pair, group.heads.get(column), fused)
    for row in rows:
        reason = f"exits pair {pair} in {where}: one all-reduce sums its partial products of {short}"
        splits[row] = Split(TPStyle.ROW, reason, block, pair, group.heads.get(row))
    for parameter in sorted(group.summed):
        owner = parameter.rpartition(".")[0]
        if owner not in splits:
            kind = type(model.get_submodule(owner)).__name__
            reason = (
                f"{kind} applied to the split activations of pair {pair}: replicated, it sees each rank's part, "
                "so its gradient is summed over the ranks"
            )
            splits[owner] = Split(TPStyle.NONE, reason, inside_block=block)
    return splits


def _rename(text: str, old: str, new: str) -> str:
    return re.sub(rf"{re.escape(old)}(?![\w])", new, text)


def _with_copies(pairs: GraphPairs, copies: dict[str, tuple[str, ...]]) -> GraphPairs:
    """Decisions taken in a traced block, repeated for its untraced copies (inner blocks first)."""
    splits, unpaired = dict(pairs.splits), dict(pairs.unpaired)
    reached, attributes = set(pairs.reached), set(pairs.attributes)

    def under(path: str, block: str) -> bool:
        return path == block or path.startswith(f"{block}.")

    for block, others in sorted(copies.items(), key=lambda item: -item[0].count(".")):
        for other in others:
            splits |= {_rename(n, block, other): s.moved(block, other) for n, s in splits.items() if under(n, block)}
            unpaired |= {
                _rename(n, block, other): _rename(why, block, other) for n, why in unpaired.items() if under(n, block)
            }
            reached |= {_rename(n, block, other) for n in reached if under(n, block)}
            attributes |= {(_rename(m, block, other), a) for m, a in attributes if under(m, block)}
    return GraphPairs(splits, unpaired, frozenset(reached), frozenset(attributes))


def find_pairs(model: nn.Module, traced: TracedModel) -> GraphPairs:
    """Walk the graph until every group pairs; the layers of broken groups are left to the other rules."""
    unpaired: dict[str, str] = {}
    while True:
        walk = Walk(model, traced, set(unpaired)).run(visit)
        failed = [group for group in walk.final_groups() if group.culprits or not group.rows]
        if not failed:
            break
        for group in failed:
            culprits = group.culprits or dict.fromkeys(group.columns, "no linear layer contracts its split output")
            for column, why in culprits.items():
                unpaired.setdefault(column, why)
    splits: dict[str, Split] = {}
    attributes: set[tuple[str, str]] = set()
    for group in walk.final_groups():
        splits |= _pair_splits(model, group)
        attributes |= group.attributes
    unpaired = {name: why for name, why in unpaired.items() if name not in splits}
    return _with_copies(GraphPairs(splits, unpaired, frozenset(walk.reached), frozenset(attributes)), traced.copies)
