"""The op rules of the dataflow walk: how each ATen op carries, moves or breaks a split (see :mod:`tp_pairs`).

Each rule takes the walk, the node and its arguments by name, and returns the output's state (a list for ops with
several outputs). An op without a rule that meets a split value breaks its group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from math import gcd
from typing import Any

import torch
from torch import fx

from autoparallel.parallel.tp_dataflow import Expanded, FromParameters, Sharded, Walk, shape_of
from autoparallel.parallel.tp_shapes import after_reduction, normalized, permuted
from autoparallel.parallel.tp_trace import module_path

aten = torch.ops.aten
Rule = Callable[[Walk, fx.Node, dict[str, Any]], Any]

_IGNORED = {aten._assert_tensor_metadata, aten.sym_size, aten._assert_scalar}
_POINTWISE = {aten.masked_fill_, aten.gelu_, aten.silu_, aten.relu_}
"""In-place element-wise ops that carry no ``pointwise`` tag."""
_ALONG_ONE_DIMENSION = {
    aten.softmax,
    aten._softmax,
    aten.log_softmax,
    aten._log_softmax,
    aten.cumsum,
    aten.topk,
    aten.sort,
}
"""Ops that mix values along their ``dim`` only (default: the last) and keep every dimension."""


def _parameters(states: Iterable[Any]) -> frozenset[str]:
    return frozenset(name for state in states if isinstance(state, FromParameters) for name in state.names)


def _joined(walk: Walk, node: fx.Node, states: list[Sharded], dim: int, parts: int | None = None) -> Sharded:
    """One split value from several, their groups merged."""
    origins = {state.origin for state in states}
    origin = origins.pop() if len(origins) == 1 else None
    whole = origin is not None and all(state.whole for state in states)
    index = walk.merge(state.group for state in states)
    return Sharded(index, dim, parts or max(state.parts for state in states), origin, whole)


def _broadcasts(
    walk: Walk, node: fx.Node, split: list[Sharded], others: list[tuple[Any, tuple[int, ...]]], dim: int
) -> None:
    """Check that the other operands (graph value, shape aligned right to the output) broadcast along ``dim``:
    size 1 there (or absent), or expanded from size 1 — and, being whole on every rank, carry no gradient (it
    would cover only the local part; parameters are the exception: their gradients are summed) — or the bias of
    the one column layer the split comes from."""
    rank = len(shape_of(node))
    origins = {state.origin for state in split}
    for value, shape in others:
        state = walk.state(value)
        aligned = dim - (rank - len(shape))
        own = isinstance(state, FromParameters) and {n.rpartition(".")[0] for n in state.names} == origins
        if own and all(s.whole for s in split):
            continue
        if aligned >= len(shape):  # the split dimension lies outside this operand: nothing to check it against
            walk.breaks(split, node, f"the split dimension {dim} is not a dimension of an operand of shape {shape}")
            continue
        broadcast = aligned < 0 or shape[aligned] == 1 or (isinstance(state, Expanded) and aligned in state.dims)
        if broadcast and isinstance(state, FromParameters):
            walk.group(split[0].group).summed |= state.names
        elif broadcast and value in walk.gradful:
            walk.breaks(split, node, "a replicated activation meets the split ones: its gradient would be partial")
        elif not broadcast:
            what = f"parameter {', '.join(sorted(state.names))}" if isinstance(state, FromParameters) else "a value"
            walk.breaks(split, node, f"{what} spans the split dimension (size {shape[aligned]}) without being split")


def _identity(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    return walk.state(arguments["input"])


def _pointwise(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    rank = len(shape_of(node))
    values = [value for value in arguments.values() if isinstance(value, fx.Node)]
    states = [walk.state(value) for value in values]
    split = [state for state in states if isinstance(state, Sharded)]
    if not split:
        if states and all(isinstance(state, FromParameters) for state in states):
            return FromParameters(_parameters(states))
        return states[0] if len(states) == 1 and isinstance(states[0], Expanded) else None
    dims = [s.dim + rank - len(shape_of(v)) for v, s in zip(values, states, strict=True) if isinstance(s, Sharded)]
    dim = dims[0]
    odd = [state for state, at in zip(split, dims, strict=True) if at != dim]
    if odd:
        walk.breaks(split, node, "its operands are split along different dimensions", odd)
    others = [(v, shape_of(v)) for v, s in zip(values, states, strict=True) if not isinstance(s, Sharded)]
    _broadcasts(walk, node, split, others, dim)
    return _joined(walk, node, split, dim)


def _reshape(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    source = arguments["input"]
    state = walk.state(source)
    if not isinstance(state, Sharded):
        return state if isinstance(state, FromParameters) else None
    packet = node.target.overloadpacket  # type: ignore[union-attr]
    if packet in (aten.unsqueeze, aten.squeeze):  # dimensions of size 1 come or go around the split one
        rank = len(shape_of(source))
        dims = normalized(arguments.get("dim"), rank + (packet is aten.unsqueeze))
        if packet is aten.unsqueeze:
            return replace(state, dim=state.dim + sum(1 for d in dims if d <= state.dim))
        if state.dim not in dims or shape_of(source)[state.dim] != 1:
            gone = {d for d in dims if shape_of(source)[d] == 1}
            return replace(state, dim=after_reduction(state.dim, frozenset(gone), keepdim=False))
    moved = walk.reshaped(state, node, shape_of(source))
    if moved is None:
        # The group is refused here; the merged value has no split dimension left to follow (its old one may not
        # even exist any more: Gated DeltaNet flattens (batch, tokens, heads, dim) to (batch × tokens × heads, dim)).
        walk.breaks([state], node, "the reshape merges the split dimension under another dimension")
        return None
    return moved


def _expand(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    state, source, target = walk.state(arguments["input"]), shape_of(arguments["input"]), shape_of(node)
    offset = len(target) - len(source)
    if isinstance(state, Sharded):
        return replace(state, dim=state.dim + offset)
    if isinstance(state, FromParameters):
        return state
    grown = {i + offset for i, size in enumerate(source) if size == 1 and target[i + offset] != 1}
    kept = {d + offset for d in state.dims} if isinstance(state, Expanded) else set()
    return Expanded(frozenset(range(offset)) | grown | kept)


def _transpose(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    """transpose, permute, t, numpy_T, swapaxes."""
    state, rank = walk.state(arguments["input"]), len(shape_of(node))
    order = list(range(rank))[::-1]  # t, numpy_T
    if "dims" in arguments:
        order = list(arguments["dims"])
    elif "dim0" in arguments or "axis0" in arguments:
        first, second = (
            int(arguments[k] if k in arguments else arguments[a]) % rank
            for k, a in (("dim0", "axis0"), ("dim1", "axis1"))
        )
        order = list(range(rank))
        order[first], order[second] = second, first
    if isinstance(state, Sharded):
        return replace(state, dim=permuted(state.dim, order))
    if isinstance(state, Expanded):
        return Expanded(frozenset(permuted(d, order) for d in state.dims))
    return state if isinstance(state, FromParameters) else None


def _fixed(walk: Walk, node: fx.Node, state: Sharded) -> None:
    """A cut of the split dimension at fixed offsets: the local pieces would need the global sizes."""
    if state.whole and state.origin is not None:
        walk.breaks([state], node, f"it cuts fused {state.origin} at fixed offsets, which only the global sizes fit")
    else:
        walk.breaks([state], node, "it cuts the split dimension")


def _fused(walk: Walk, node: fx.Node, state: Sharded, sizes: tuple[int, ...], size: int | None) -> None:
    """A fused column's output cut into equal parts by ``chunk``, or by ``split`` with a size held in an attribute
    of the module (the conversion makes it local); any other cut breaks the group."""
    if not state.whole or state.origin is None or len(set(sizes)) != 1:
        _fixed(walk, node, state)
        return
    group = walk.group(state.group)
    if size is not None:
        where = module_path(node)
        module = walk.model.get_submodule(where)
        names = {name for name, value in vars(module).items() if type(value) is int and value == size}
        if not names:
            why = f"it cuts fused {state.origin} into parts of {size}, a size no attribute of {where} holds"
            walk.breaks([state], node, why)
            return
        group.attributes |= {(where, name) for name in names}
    if group.fused.setdefault(state.origin, sizes) != sizes:
        walk.breaks([state], node, f"it cuts fused {state.origin} in two different ways")


def _cut(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    """slice, narrow, select, split, split_with_sizes, chunk, unbind."""
    source = arguments["input"]
    state, shape = walk.state(source), shape_of(source)
    packet = node.target.overloadpacket  # type: ignore[union-attr]
    dim = arguments.get("dim", 0) % len(shape)
    meta = node.meta.get("val")
    outputs = list(meta) if isinstance(meta, list | tuple) else []
    count = len(outputs)
    result: Any = state if isinstance(state, FromParameters) else None
    if isinstance(state, Sharded) and dim != state.dim:
        removes = packet in (aten.select, aten.unbind) and dim < state.dim
        result = replace(state, dim=state.dim - removes)
    elif isinstance(state, Sharded) and packet in (aten.chunk, aten.split) and count:
        sizes = tuple(int(output.shape[dim]) for output in outputs)
        _fused(walk, node, state, sizes, arguments.get("split_size") if packet is aten.split else None)
        return [Sharded(state.group, dim, gcd(state.parts, size), state.origin) for size in sizes]
    elif isinstance(state, Sharded):
        _fixed(walk, node, state)
        result = state
    return [result] * count if count else result


def _join(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    """cat and stack."""
    values = arguments["tensors"]
    states = [walk.state(value) for value in values]
    split = [state for state in states if isinstance(state, Sharded)]
    if not split:
        return FromParameters(_parameters(states)) if all(isinstance(s, FromParameters) for s in states) else None
    rank = len(shape_of(node))
    at = arguments.get("dim", 0) % rank
    stacked = node.target.overloadpacket is aten.stack  # type: ignore[union-attr]
    dims = {state.dim + (1 if stacked and state.dim >= at else 0) for state in split}
    dim = min(dims)
    if len(dims) > 1 or (dim == at and not stacked):
        walk.breaks(split, node, "it joins values along the split dimension")
    source = dim - (1 if stacked and dim > at else 0)
    for value, state in zip(values, states, strict=True):
        expanded = isinstance(state, Expanded) and source in state.dims and value not in walk.gradful
        if not isinstance(state, Sharded) and not expanded:
            walk.breaks(split, node, "it joins split values with replicated ones, which would need slicing")
    return _joined(walk, node, split, dim)


def _index(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    state, shape = walk.state(arguments["input"]), shape_of(arguments["input"])
    indices = list(arguments["indices"])
    if not isinstance(state, Sharded):
        return None
    used = [i for i, index in enumerate(indices) if index is not None]
    if not used:
        return state
    if state.dim in used or used != list(range(used[0], used[-1] + 1)) or walk.flat(indices).count(None) < len(used):
        walk.breaks([state], node, "it indexes the split dimension or with split indices")
        return state
    if state.dim < used[0]:
        return state
    return replace(state, dim=state.dim + len(shape_of(node)) - len(shape))


def _reduction(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    source = arguments["input"]
    state, rank = walk.state(source), len(shape_of(source))
    packet = node.target.overloadpacket  # type: ignore[union-attr]
    if "normalized_shape" in arguments:
        reduced, keepdim = frozenset(range(rank - len(arguments["normalized_shape"]), rank)), True
    elif packet in _ALONG_ONE_DIMENSION:
        reduced, keepdim = frozenset({arguments.get("dim", -1) % rank}), True
    else:
        reduced, keepdim = normalized(arguments.get("dim"), rank), bool(arguments.get("keepdim", False))
    result: Any = state if isinstance(state, FromParameters) else None
    if isinstance(state, Sharded):
        if state.dim in reduced:
            walk.breaks([state], node, "it reduces over the split dimension")
        params = _parameters(walk.state(arguments.get(name)) for name in ("weight", "bias"))
        walk.group(state.group).summed |= params
        result = replace(state, dim=after_reduction(state.dim, reduced - {state.dim}, keepdim))
    outputs = node.meta.get("val")
    return [result] * len(outputs) if isinstance(outputs, list | tuple) else result


def _layer(walk: Walk, node: fx.Node, source: Any, weight: Any, bias: Any = None) -> Any:
    """A linear layer (or Conv1D's ``addmm``) reading ``source``: a column, a row, or one mapping each part."""
    state, shape, output = walk.state(source), shape_of(source), shape_of(node)
    found = walk.layer(node, weight)
    if isinstance(state, Sharded):
        if state.dim != len(shape) - 1:
            walk.group(state.group).summed |= _parameters([walk.state(weight), walk.state(bias)])
            return replace(state, dim=state.dim + len(output) - len(shape), whole=False)
        if found is None:
            walk.breaks([state], node, "it contracts the split features and is no Linear that can split row-wise")
            return None
        walk.assign(found[0], "row", state.group, node)
        if state.parts < shape[-1]:
            walk.group(state.group).heads[found[0]] = state.parts
        return None
    if found is None or found[0] in walk.excluded:
        return None
    index = walk.new_group(found[0])
    walk.assign(found[0], "column", index, node)
    return Sharded(walk.root(index), len(output) - 1, output[-1], found[0], whole=True)


def _linear(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    return _layer(walk, node, arguments["input"], arguments["weight"], arguments.get("bias"))


def _addmm(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    return _layer(walk, node, arguments["mat1"], arguments["mat2"], arguments["input"])


def _matmul(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    left, right = arguments["input"], arguments.get("mat2", arguments.get("other"))
    if walk.layer(node, right) is not None:
        return _layer(walk, node, left, right)
    a, b = walk.state(left), walk.state(right)
    shape_a, shape_b = shape_of(left), shape_of(right)
    rank = len(shape_of(node))
    split = [state for state in (a, b) if isinstance(state, Sharded)]
    if not split:
        return FromParameters(_parameters([a, b])) if all(isinstance(s, FromParameters) for s in (a, b)) else None
    dims = set()
    for state, shape, contracted, kept in ((a, shape_a, 1, rank - 2), (b, shape_b, 2, rank - 1)):
        if isinstance(state, Sharded):
            if len(shape) < 2 or state.dim == len(shape) - contracted:
                walk.breaks(split, node, "it contracts the split dimension")
            dims.add(kept if state.dim == len(shape) - 3 + contracted else state.dim + rank - len(shape))
    if len(dims) > 1:
        walk.breaks(split, node, "its operands are split along different dimensions")
    dim = min(dims)
    if dim < rank - 2:
        batch = [(v, (*shape_of(v)[:-2], 1, 1)) for v, s in ((left, a), (right, b)) if not isinstance(s, Sharded)]
        _broadcasts(walk, node, split, batch, dim)
    return _joined(walk, node, split, dim)


def _attention(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    names = ("query", "key", "value")
    states = [walk.state(arguments[name]) for name in names]
    split = [state for state in states if isinstance(state, Sharded)]
    if not split:
        return None
    dim = split[0].dim
    odd = [state for state in split if state.dim != dim or dim > 1]
    if odd:
        walk.breaks(split, node, "attention is split along its tokens or features, not its batch or heads", odd)
    others = [arguments[n] for n, s in zip(names, states, strict=True) if not isinstance(s, Sharded)]
    if isinstance(arguments.get("attn_mask"), fx.Node):
        others.append(arguments["attn_mask"])
    _broadcasts(walk, node, split, [(value, shape_of(value)) for value in others], dim)
    query = states[0]
    return _joined(walk, node, split, dim, query.parts if isinstance(query, Sharded) else None)


def _unknown(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    walk.breaks(walk.flat(list(arguments.values())), node, "no rule says how it treats the split dimension")
    return None


_RULES: dict[Any, Rule] = {
    **dict.fromkeys(
        (aten.to, aten._to_copy, aten.dropout, aten.contiguous, aten.alias, aten.detach, aten.clone, aten.type_as),
        _identity,
    ),
    **dict.fromkeys((aten.lift_fresh_copy, aten.zeros_like, aten.ones_like, aten.empty_like), _identity),
    **dict.fromkeys(_POINTWISE, _pointwise),
    **dict.fromkeys(
        (aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.unsqueeze, aten.squeeze),
        _reshape,
    ),
    **dict.fromkeys((aten.expand, aten.broadcast_to), _expand),
    **dict.fromkeys((aten.transpose, aten.permute, aten.t, aten.numpy_T, aten.swapaxes), _transpose),
    **dict.fromkeys(
        (aten.slice, aten.narrow, aten.select, aten.split, aten.split_with_sizes, aten.chunk, aten.unbind), _cut
    ),
    **dict.fromkeys((aten.cat, aten.stack), _join),
    aten.index: _index,
    **dict.fromkeys(
        (aten.sum, aten.mean, aten.amax, aten.amin, aten.var, aten.std, aten.logsumexp, aten.argmax, aten.max),
        _reduction,
    ),
    **dict.fromkeys((aten.min, aten.linalg_vector_norm, aten.topk, aten.sort, aten.cumsum), _reduction),
    **dict.fromkeys((aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax), _reduction),
    **dict.fromkeys((aten.layer_norm, aten.rms_norm, aten.native_layer_norm), _reduction),
    aten.linear: _linear,
    aten.addmm: _addmm,
    **dict.fromkeys((aten.mm, aten.matmul, aten.bmm), _matmul),
    aten.scaled_dot_product_attention: _attention,
}


def visit(walk: Walk, node: fx.Node, arguments: dict[str, Any]) -> Any:
    """The state of ``node``'s output."""
    packet = getattr(node.target, "overloadpacket", None)
    if packet in _IGNORED:
        return None
    rule = _RULES.get(packet)
    if rule is not None:
        return rule(walk, node, arguments)
    if isinstance(node.target, torch._ops.OpOverload) and torch.Tag.pointwise in node.target.tags:
        return _pointwise(walk, node, arguments)
    return _unknown(walk, node, arguments)
