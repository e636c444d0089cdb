"""One walk over a traced model's graph that follows split activations (:mod:`tp_pairs` summarises the rules).

Values carry a :data:`State`: replicated (None), computed from parameters alone, expanded from size 1, or split
along one dimension by the column layers of a :class:`Group`. The op rules live in :mod:`tp_ops`; this module
holds the states, the groups (a union-find: groups meeting in one op merge) and the walk itself.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import fx, nn
from torch.fx.operator_schemas import normalize_function

from autoparallel.parallel.tp_shapes import reshape_split
from autoparallel.parallel.tp_trace import TracedModel, module_path

HEAD_COUNT_ATTRIBUTES = (
    "num_heads",
    "n_heads",
    "n_head",
    "num_attention_heads",
    "num_key_value_heads",
    "num_kv_heads",
    "n_kv_heads",
)
"""Head-count attributes (transformers, nanoGPT, torchtitan) that reshapes read; made local by the conversion."""


@dataclass(frozen=True)
class Sharded:
    """A value split over the ranks along ``dim`` by the column layers of group ``group``."""

    group: int
    dim: int
    parts: int
    """Indivisible units along ``dim`` (features, heads): the world size must divide it."""
    origin: str | None = None
    """The one column layer it comes from, while no other layer's values mixed in."""
    whole: bool = False
    """Whether ``dim`` is still exactly that column's output features (so it may be cut into fused parts)."""


@dataclass(frozen=True)
class FromParameters:
    """A value computed from parameters alone (a weight, ``1 + weight``, a cast of it)."""

    names: frozenset[str]


@dataclass(frozen=True)
class Expanded:
    """A replicated value expanded from size 1 along ``dims``: its local copy can take the local size."""

    dims: frozenset[int]


State = Sharded | FromParameters | Expanded | None
"""What the walk knows of one value; None: replicated."""


@dataclass
class Group:
    """Column layers whose split outputs meet, the row layers that read them, and what broke them."""

    columns: set[str] = field(default_factory=set)
    rows: set[str] = field(default_factory=set)
    culprits: dict[str, str] = field(default_factory=dict)
    """Column → why its own split broke the group. Only these are set aside, so that the others may pair once
    the culprits are replicated (q with o, when a single KV head cannot split)."""
    summed: set[str] = field(default_factory=set)
    """Parameters applied to the split values that stay whole (their gradients are summed over the ranks)."""
    heads: dict[str, int] = field(default_factory=dict)
    """Layer → the parts its split takes once reshaped into heads."""
    fused: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Fused column layer → sizes of its parts."""
    attributes: set[tuple[str, str]] = field(default_factory=set)
    """(module, attribute) whose value the split makes local (head counts, fused split sizes)."""

    def absorb(self, other: Group) -> None:
        self.columns |= other.columns
        self.rows |= other.rows
        self.culprits = other.culprits | self.culprits
        self.summed |= other.summed
        for name, heads in other.heads.items():
            self.heads[name] = min(heads, self.heads.get(name, heads))
        self.fused |= other.fused
        self.attributes |= other.attributes


def linear_kind(module: nn.Module) -> str | None:
    """The kind of a layer whose only parameters are its weight and bias: ``linear`` (an ``nn.Linear`` or a
    subclass, weight ``[out, in]``) or ``conv1d`` (transformers' Conv1D, weight ``[in, out]``); None otherwise."""
    parameters = dict(module.named_parameters(recurse=False))
    if "weight" not in parameters or set(parameters) - {"weight", "bias"}:
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and parameters["weight"].dim() == 2:
        return "conv1d"
    return None


def shape_of(value: Any) -> tuple[int, ...]:
    """The static shape a graph value had while tracing (() for non-tensors)."""
    meta = value.meta.get("val") if isinstance(value, fx.Node) else None
    return tuple(int(size) for size in meta.shape) if isinstance(meta, torch.Tensor) else ()


class Walk:
    """One pass over the graph; layers in ``excluded`` do not start groups (their groups broke before)."""

    def __init__(self, model: nn.Module, traced: TracedModel, excluded: set[str]) -> None:
        self.model = model
        self.traced = traced
        self.excluded = excluded
        self.groups: list[Group] = []
        self.parent: list[int] = []
        self.roles: dict[str, tuple[str, int]] = {}
        self.states: dict[fx.Node, State | list[State]] = {}
        self.reached: set[str] = set()
        self.gradful: set[fx.Node] = set()
        """Values computed from parameters: their gradients matter."""
        self.layers = {name: kind for name, m in model.named_modules() if (kind := linear_kind(m)) is not None}

    # --- groups -----------------------------------------------------------------------------------------------

    def root(self, index: int) -> int:
        while self.parent[index] != index:
            self.parent[index] = self.parent[self.parent[index]]
            index = self.parent[index]
        return index

    def group(self, index: int) -> Group:
        return self.groups[self.root(index)]

    def new_group(self, column: str) -> int:
        self.groups.append(Group(columns={column}))
        self.parent.append(len(self.parent))
        return len(self.groups) - 1

    def merge(self, indices: Iterable[int]) -> int:
        roots = sorted({self.root(i) for i in indices})
        for other in roots[1:]:
            self.groups[roots[0]].absorb(self.groups[other])
            self.parent[other] = roots[0]
        return roots[0]

    def final_groups(self) -> list[Group]:
        return [group for index, group in enumerate(self.groups) if self.root(index) == index]

    def breaks(self, states: Iterable[Any], node: fx.Node, why: str, culprits: Iterable[Sharded] = ()) -> None:
        """Mark the groups of the split values among ``states`` broken by ``node``, blaming the columns the
        ``culprits`` (default: those states) come from — all of the group's when one of them mixes several."""
        split = [state for state in states if isinstance(state, Sharded)]
        if not split:
            return
        group = self.group(self.merge(state.group for state in split))
        reason = f"{getattr(node.target, '__name__', node.target)} in {module_path(node) or 'the model'}: {why}"
        origins = {state.origin for state in (list(culprits) or split)}
        for column in group.columns if None in origins else {str(origin) for origin in origins}:
            group.culprits.setdefault(column, reason)

    def assign(self, layer: str, role: str, index: int, node: fx.Node) -> None:
        """Record ``layer`` as a column or row of group ``index``; one layer may not play two roles."""
        previous_role, previous = self.roles.setdefault(layer, (role, index))
        if previous_role == role:
            merged = self.groups[self.merge([previous, index])]
            (merged.columns if role == "column" else merged.rows).add(layer)
        else:
            self.breaks([Sharded(previous, 0, 1), Sharded(index, 0, 1)], node, f"{layer} is both column and row")

    # --- the walk ---------------------------------------------------------------------------------------------

    def run(self, visit: Callable[[Walk, fx.Node, dict[str, Any]], Any]) -> Walk:
        """Give every node its state; ``visit`` applies the op rules (:func:`tp_ops.visit`)."""
        for node in self.traced.graph.nodes:
            if node.op == "placeholder":
                name = self.traced.parameters.get(node.name)
                self.states[node] = FromParameters(frozenset({name})) if name else None
                if name and node.users:
                    self.reached.add(name.rpartition(".")[0])
                    self.gradful.add(node)
                continue
            if any(source in self.gradful for source in node.all_input_nodes):
                self.gradful.add(node)
            if node.op == "output":
                self.breaks(self.flat(node.args), node, "split values reach the model's output")
            elif node.target is operator.getitem:
                states = self.state(node.args[0])
                self.states[node] = states[int(node.args[1])] if isinstance(states, list) else None
            elif node.op == "call_function":
                normal = normalize_function(node.target, node.args, node.kwargs, normalize_to_only_use_kwargs=True)
                arguments = dict(normal.kwargs) if normal else {f"arg{i}": value for i, value in enumerate(node.args)}
                self.states[node] = visit(self, node, arguments)
        return self

    def state(self, value: Any) -> Any:
        return self.states.get(value) if isinstance(value, fx.Node) else None

    def flat(self, value: Any) -> list[Any]:
        """States of every graph value in ``value`` (nested lists and tuples included)."""
        if isinstance(value, fx.Node):
            state = self.states.get(value)
            return list(state) if isinstance(state, list) else [state]
        if isinstance(value, list | tuple | dict):
            items = value.values() if isinstance(value, dict) else value
            return [state for item in items for state in self.flat(item)]
        return []

    def layer(self, node: fx.Node, weight: Any) -> tuple[str, str] | None:
        """(layer, kind) when ``weight`` is the weight of an eligible linear layer (the one running ``node``)."""
        state = self.state(weight)
        if not isinstance(state, FromParameters) or len(state.names) != 1:
            return None
        (name,) = state.names
        parameter = self.model.get_parameter(name)
        for candidate in (module_path(node), name.rpartition(".")[0]):
            if candidate in self.layers and self.model.get_submodule(candidate).weight is parameter:
                return candidate, self.layers[candidate]
        return None

    def reshaped(self, state: Sharded, node: fx.Node, source: tuple[int, ...]) -> Sharded | None:
        """``state`` after ``node`` reshapes a value of shape ``source``; records heads and head-count attributes."""
        target = shape_of(node)
        moved = reshape_split(source, target, state.dim, state.parts)
        if moved is None:
            return None
        dim, parts = moved
        if target[dim] != source[state.dim]:
            group = self.group(state.group)
            if state.origin is not None:
                group.heads[state.origin] = min(parts, group.heads.get(state.origin, parts))
            where = module_path(node)
            module = self.model.get_submodule(where)
            for name in HEAD_COUNT_ATTRIBUTES:
                value = getattr(module, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value == target[dim]:
                    group.attributes.add((where, name))
        return replace(state, dim=dim, parts=parts, whole=state.whole and target[dim] == source[state.dim])
