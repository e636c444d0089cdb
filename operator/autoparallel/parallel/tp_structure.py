"""The pairing rule: which linear layers of a module split column-wise and which row-wise (pure, no torch).

Megatron-style tensor parallelism splits a block's *entry* projections column-wise (each rank computes a
slice of the inner activations: its attention heads, its share of the MLP width) and the block's *exit*
projection row-wise (each rank multiplies its slice of the inner activations and one all-reduce sums the
partial outputs). The pair costs one all-reduce in the forward pass, whatever the number of entries.

The rule reads only shapes and registration order among a module's direct ``nn.Linear`` children, so it
works on any model, not only on names it knows:

* the **exit** (row) is a linear that writes the width the others read: ``row.out_features == width``;
* its **entries** (columns) read that width and produce the exit's input width:
  ``in_features == width and out_features == row.in_features`` (q, gate, up, fc1), in any position;
* narrower entries are attached as well when they come after a full-width entry and before the exit and
  their width divides the exit's input: grouped-query k/v projections (``kv_heads × head_dim``);
* the exit that gathers the most entries is paired first (the last one on a tie): an up/down pair reads
  both ways, but gate+up→down beats down→up, and q+k+v→o beats any square projection taken as the exit;
  the rest is searched again, so a flat block holding attention and MLP side by side yields two pairs.

A linear left unpaired falls back to the seed's shape heuristic (see :func:`fallback_style`); its split is
re-assembled at once (an all-gather of the output, or an all-reduce of the partial sums).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

FALLBACK_RATIO = 2
"""The seed's shape heuristic: a linear more than twice as wide out as in splits column-wise, more than twice
as wide in as out row-wise; anything squarer is not worth a collective of its own."""


class TPStyle(StrEnum):
    """How tensor parallelism splits a layer."""

    COLUMN = "column"
    """Output features split (weight dim 0, bias with it): ``ColwiseParallel``."""
    ROW = "row"
    """Input features split (weight dim 1, bias added once after the all-reduce): ``RowwiseParallel``."""
    VOCAB = "vocab"
    """Embedding rows (the vocabulary) split, lookups masked and all-reduced: ``RowwiseParallel`` on Embedding."""
    EXPERT = "expert"
    """Fused MoE expert tensors split by experts (expert parallel over the TP ranks), outputs all-reduced."""
    NONE = "none"
    """Replicated on every rank."""


@dataclass(frozen=True)
class LinearShape:
    """One ``nn.Linear`` child of a module, in registration order."""

    name: str
    in_features: int
    out_features: int


@dataclass(frozen=True)
class Pairing:
    """Column layers whose outputs feed one row layer: a block that needs one all-reduce."""

    columns: tuple[str, ...]
    row: str
    width: int
    """The width the block reads and writes (the residual stream)."""
    inner: int
    """The row layer's input width (heads × head_dim, the MLP width)."""


def _entries(linears: Sequence[LinearShape], row_index: int) -> tuple[int, ...]:
    """Indices of the column layers that pair with ``linears[row_index]`` (empty: it is no exit)."""
    row = linears[row_index]
    width, inner = row.out_features, row.in_features
    full = [
        i
        for i, linear in enumerate(linears)
        if i != row_index and linear.in_features == width and linear.out_features == inner
    ]
    if not full:
        return ()
    narrow = [
        i
        for i in range(min(full) + 1, row_index)
        if i not in full
        and linears[i].in_features == width
        and 1 < linears[i].out_features < inner
        and inner % linears[i].out_features == 0
    ]
    return tuple(sorted((*full, *narrow)))


def pair_linears(linears: Sequence[LinearShape]) -> tuple[Pairing, ...]:
    """Pairs among the direct linear children of one module (registration order matters, see the module doc)."""
    remaining = list(linears)
    pairings: list[Pairing] = []
    while len(remaining) >= 2:
        candidates = [(len(entries), i, entries) for i in range(len(remaining)) if (entries := _entries(remaining, i))]
        if not candidates:
            break
        _, row_index, entries = max(candidates)
        row = remaining[row_index]
        pairings.append(
            Pairing(
                columns=tuple(remaining[i].name for i in entries),
                row=row.name,
                width=row.out_features,
                inner=row.in_features,
            )
        )
        used = {row_index, *entries}
        remaining = [linear for i, linear in enumerate(remaining) if i not in used]
    return tuple(pairings)


def fallback_style(in_features: int, out_features: int) -> TPStyle:
    """The seed's shape heuristic for a linear that pairs with nothing."""
    if out_features > FALLBACK_RATIO * in_features:
        return TPStyle.COLUMN
    if in_features > FALLBACK_RATIO * out_features:
        return TPStyle.ROW
    return TPStyle.NONE


def rank_rows(size: int, world_size: int, rank: int) -> int:
    """Rows of a dimension of ``size`` that ``rank`` holds when DTensor shards it (``torch.chunk``: the first
    ranks hold ⌈size / world_size⌉ rows, the last ones what is left, possibly nothing)."""
    chunk = -(-size // world_size)
    return max(0, min(chunk, size - rank * chunk))
