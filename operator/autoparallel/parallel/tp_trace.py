"""Trace a model into a dataflow graph with ``torch.export`` (non-strict), for the tensor-parallel analysis.

Parameters and inputs are fake tensors while exporting, so nothing is computed or allocated: meta-device models
trace as well as real ones. Example inputs come from the caller, or are guessed: token ids for a model whose
first layer is an embedding (transformers' causal LMs among them, called with ``use_cache=False``), a
``(batch, tokens, in_features)`` tensor for one that starts with a Linear.

Repeated blocks are traced once: every ``nn.ModuleList`` keeps, while exporting, only the first of each group of
structurally identical children (same classes, parameter names, shapes and dtypes), and what the analysis finds
in that one holds for its copies. An 80-layer model traces like a 1-layer one (about a second). When the
shortened model does not trace (code that indexes a layer by position), the whole model is traced.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx, nn
from torch.utils import _pytree as pytree

EXAMPLE_BATCH = 2
EXAMPLE_TOKENS = 5
"""Shape of the guessed example inputs: small (tracing is shape-generic past the first dimensions), and distinct
from each other and from 1 so that no reshape of the activations is ambiguous."""

_WRAPPED = "traced"
"""Attribute under which :class:`_TensorOutputs` holds the model (stripped from every path again)."""


@dataclass(frozen=True)
class TracedModel:
    """The exported dataflow graph and how its names map back onto the model."""

    graph: fx.Graph
    parameters: dict[str, str]
    """Placeholder node name → full name of the model parameter it stands for."""
    copies: dict[str, tuple[str, ...]]
    """Module path of a traced block → paths of its structurally identical siblings that were not traced."""
    description: str
    """How it was traced, for the report."""


class _TensorOutputs(nn.Module):
    """Calls the model and returns the tensors in its output (``torch.export`` rejects caches and other objects)."""

    def __init__(self, model: nn.Module, kwargs: dict[str, Any]) -> None:
        super().__init__()
        setattr(self, _WRAPPED, model)
        self.kwargs = kwargs

    def forward(self, *args: Any) -> tuple[torch.Tensor, ...]:
        output = getattr(self, _WRAPPED)(*args, **self.kwargs)
        return tuple(leaf for leaf in pytree.tree_leaves(output) if isinstance(leaf, torch.Tensor))


def _input_embedding(model: nn.Module) -> nn.Embedding | None:
    getter = getattr(model, "get_input_embeddings", None)
    try:
        embedding = getter() if callable(getter) else None
    except (NotImplementedError, AttributeError):
        return None
    return embedding if isinstance(embedding, nn.Embedding) else None


def example_inputs(model: nn.Module) -> tuple[torch.Tensor, ...] | None:
    """Inputs to trace ``model`` with, guessed from its input embedding (transformers' ``get_input_embeddings``:
    a multimodal model's vision tower may come first) or else its first parameter-owning layer (None: no guess)."""
    first = _input_embedding(model) or next(
        (m for m in model.modules() if isinstance(m, nn.Embedding | nn.Linear)), None
    )
    if first is None:
        return None
    device = first.weight.device
    if isinstance(first, nn.Embedding):
        return (torch.zeros(EXAMPLE_BATCH, EXAMPLE_TOKENS, dtype=torch.long, device=device),)
    shape = (EXAMPLE_BATCH, EXAMPLE_TOKENS, first.in_features)
    return (torch.zeros(shape, dtype=first.weight.dtype, device=device),)


def module_path(node: fx.Node) -> str:
    """Path of the innermost model module that ran ``node`` ("" for the model itself)."""
    stack = node.meta.get("nn_module_stack") or {}
    path = str(next(reversed(stack.values()))[0]) if stack else ""
    return "" if path == _WRAPPED else path.removeprefix(f"{_WRAPPED}.")


def _signature(module: nn.Module) -> tuple[Any, ...]:
    return tuple(
        (
            name,
            type(child).__name__,
            tuple((key, tuple(p.shape), p.dtype) for key, p in child.named_parameters(recurse=False)),
        )
        for name, child in module.named_modules()
    )


@contextmanager
def _first_of_each_kind(model: nn.Module) -> Iterator[dict[str, tuple[str, ...]]]:
    """While open, every ModuleList holds only the first child of each structure; yields their copies.

    The kept children keep their keys, so parameter and module paths stay those of the full model. Lists are
    shortened as ``named_modules`` reaches them, so lists inside left-out children are not visited."""
    saved: list[tuple[nn.ModuleList, dict[str, Any]]] = []
    copies: dict[str, tuple[str, ...]] = {}
    try:
        for path, module in model.named_modules():
            if not isinstance(module, nn.ModuleList) or len(module) < 2:
                continue
            kinds: dict[tuple[Any, ...], list[str]] = {}
            for key, child in module._modules.items():
                if child is not None:
                    kinds.setdefault(_signature(child), []).append(key)
            prefix = f"{path}." if path else ""
            copies |= {prefix + keys[0]: tuple(prefix + key for key in keys[1:]) for keys in kinds.values()}
            saved.append((module, module._modules))
            module._modules = {keys[0]: module._modules[keys[0]] for keys in kinds.values()}
        yield copies
    finally:
        for module, children in saved:
            module._modules = children


def _export(model: nn.Module, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    parameters = inspect.signature(model.forward).parameters
    kwargs = {"use_cache": False} if "use_cache" in parameters else {}
    return torch.export.export(_TensorOutputs(model, kwargs), args, strict=False)


def _traced(program: torch.export.ExportedProgram, copies: dict[str, tuple[str, ...]]) -> TracedModel:
    prefix = f"{_WRAPPED}."
    parameters = {
        node: name.removeprefix(prefix) for node, name in program.graph_signature.inputs_to_parameters.items()
    }
    total = sum(1 + len(others) for others in copies.values())
    folded = sum(len(others) for others in copies.values())
    how = f"torch.export graph, {total - folded} of {total} blocks traced" if folded else "torch.export graph"
    return TracedModel(program.graph, parameters, {k: v for k, v in copies.items() if v}, how)


def _why(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"


def trace_model(model: nn.Module, args: tuple[Any, ...] | None = None) -> TracedModel | str:
    """The model's dataflow graph, or why it could not be traced (a sentence for the report).

    Any error the model's forward or the exporter raises only means that this model does not trace: it is
    reported, and the analysis falls back to the module structure."""
    args = args if args is not None else example_inputs(model)
    if args is None:
        return "no example inputs: the model starts with neither an Embedding nor a Linear (pass example_inputs)"
    shortened = ""
    with _first_of_each_kind(model) as copies:
        if any(copies.values()):
            try:
                return _traced(_export(model, args), copies)
            except Exception as error:  # noqa: BLE001  # see the docstring
                shortened = f"; with repeated blocks left out: {_why(error)}"
    try:
        return _traced(_export(model, args), {})
    except Exception as error:  # noqa: BLE001  # see the docstring
        return f"torch.export failed ({_why(error)}){shortened}"
