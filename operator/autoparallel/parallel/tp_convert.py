"""Convert a model to tensor parallelism with ``torch.distributed.tensor.parallel``, following the analysis.

The plan maps every split layer to one of DTensor's styles:

* paired column layers: ``ColwiseParallel()`` — weight and bias sharded on the output features, the output
  left local (each rank computes its heads, its slice of the MLP width); a fused one (``qkv``, ``gate_up``)
  first has its rows re-ordered so that each rank's shard holds its slice of every part;
* paired row layers: ``RowwiseParallel()`` — weight sharded on the input features, the partial outputs
  all-reduced once, the bias (replicated) added once after the sum;
* unpaired column layers (a lm_head): ``ColwiseParallel(output_layouts=Replicate())`` — output all-gathered;
* unpaired row layers: ``RowwiseParallel(input_layouts=Replicate())`` — the input sliced locally;
* vocab-parallel embeddings: ``RowwiseParallel(input_layouts=Replicate())`` — rows sharded, lookups outside a
  rank's rows masked, the result all-reduced;
* transformers' ``Conv1D`` takes the same styles with its transposed weight, MoE experts
  :class:`tp_styles.ExpertParallel` (see :mod:`tp_styles`).

Attributes holding global sizes that the split activations are reshaped or cut with (head counts such as
``num_heads``, a fused projection's split size) are divided by the world size, as vLLM and torchtitan do;
modules that reshape with ``-1`` (transformers) need nothing. Replicated parameters applied to split activations
(Qwen3's per-head q_norm/k_norm) get their gradients summed over the ranks, as transformers'
``replicated_with_grad_allreduce`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

from autoparallel.parallel.tp_analysis import analyze_tp
from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
from autoparallel.parallel.tp_structure import TPStyle
from autoparallel.parallel.tp_styles import Conv1DColwiseParallel, Conv1DRowwiseParallel, ExpertParallel, fused_order
from autoparallel.planner.errors import InvalidConfigurationError

logger = logging.getLogger(__name__)


class TensorParallelError(InvalidConfigurationError):
    """The model cannot be split over the given mesh; the message names the layer and the numbers."""


def is_tensor_parallel(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is already a DTensor (converted before)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _check_layer(layer: LayerAnalysis, world_size: int) -> None:
    if not layer.parallelizable or layer.tied_to is not None:
        return
    dimension = {
        TPStyle.COLUMN: "out_features",
        TPStyle.ROW: "in_features",
        TPStyle.VOCAB: "num_embeddings",
        TPStyle.EXPERT: "num_experts",
    }
    what = f"{dimension[layer.style]} ({layer.split_size})"
    where = f"layer {layer.name!r} ({layer.layer_type})"
    odd_part = next((part for part in layer.fused_parts if part % world_size), None)
    if odd_part is not None:
        raise TensorParallelError(
            f"{where}: each part of the fused projection {list(layer.fused_parts)} must be divisible by the "
            f"tensor-parallel world size ({world_size}); {odd_part} is not"
        )
    if layer.paired and layer.split_size % world_size:
        raise TensorParallelError(
            f"{where}: {what} must be divisible by the tensor-parallel world size ({world_size}) to split it "
            f"{layer.style}-wise in block {layer.block or '(root)'}"
        )
    if layer.paired and layer.heads is not None and layer.heads % world_size:
        width = layer.split_size // (len(layer.fused_parts) or 1)  # of one part, for a fused layer
        raise TensorParallelError(
            f"{where}: the number of attention heads ({layer.heads} = {width} / head_dim {width // layer.heads}) "
            f"must be divisible by the tensor-parallel world size ({world_size})"
        )
    if layer.split_size < world_size:
        raise TensorParallelError(
            f"{where}: {what} is smaller than the tensor-parallel world size ({world_size}); some ranks "
            "would hold nothing"
        )


def _style(layer: LayerAnalysis) -> ParallelStyle:
    if layer.style is TPStyle.EXPERT:
        return ExpertParallel(layer.split_size)
    transposed = layer.layer_type == "Conv1D"
    if layer.style is TPStyle.COLUMN:
        column = Conv1DColwiseParallel if transposed else ColwiseParallel
        return column() if layer.paired else column(output_layouts=Replicate())
    if layer.style is TPStyle.ROW:
        row = Conv1DRowwiseParallel if transposed else RowwiseParallel
        return row() if layer.paired else row(input_layouts=Replicate())
    return RowwiseParallel(input_layouts=Replicate())


def build_tp_plan(report: TPAnalysisReport, world_size: int) -> dict[str, ParallelStyle]:
    """The ``parallelize_module`` plan (module path → style) for ``report``'s split layers.

    Raises :class:`TensorParallelError`, naming the layer, when a paired layer (or its heads) does not divide
    by ``world_size``. Unpaired splits may be uneven (DTensor chunks them; their collective re-assembles them).
    """
    if world_size < 1:
        raise TensorParallelError(f"world_size: must be at least 1 (got {world_size})")
    for layer in report.layers:
        _check_layer(layer, world_size)
    return {layer.name: _style(layer) for layer in report.layers if layer.parallelizable}


def _local_attributes(model: nn.Module, report: TPAnalysisReport, world_size: int) -> dict[tuple[str, str], int]:
    """(module, attribute) → per-rank value of the global sizes the report lists; an error when one does not
    divide."""
    updates: dict[tuple[str, str], int] = {}
    for path, attribute in report.local_attributes:
        value = getattr(model.get_submodule(path), attribute)
        if value % world_size:
            raise TensorParallelError(
                f"{path or '(root)'}.{attribute} ({value}) must be divisible by the tensor-parallel world size "
                f"({world_size}): the split activations are reshaped or cut with it"
            )
        updates[(path, attribute)] = value // world_size
    return updates


def _reorder_fused(model: nn.Module, report: TPAnalysisReport, world_size: int) -> None:
    """Re-order fused column layers so that each rank's ``Shard(0)`` holds its slice of every part."""
    for layer in report.layers:
        if layer.fused_parts and layer.parallelizable:
            order = fused_order(layer.fused_parts, world_size)
            module = model.get_submodule(layer.name)
            with torch.no_grad():
                for name, parameter in module.named_parameters(recurse=False):
                    dim = 1 if layer.layer_type == "Conv1D" and name == "weight" else 0
                    parameter.data = parameter.data.index_select(dim, order.to(parameter.device))


def tied_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Groups of (module path, parameter name) that share one parameter, the owner first."""
    places: dict[int, list[tuple[str, str]]] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            places.setdefault(id(parameter), []).append((module_name, name))
    return [group for group in places.values() if len(group) > 1]


def retie(model: nn.Module, ties: list[list[tuple[str, str]]]) -> None:
    """Share each group's owner parameter again (``tied_parameters`` before an operation that gave every
    module its own copy: ``parallelize_module``, ``to_empty``)."""
    for (owner_module, owner_name), *others in ties:
        shared = getattr(model.get_submodule(owner_module), owner_name)
        for module_name, name in others:
            setattr(model.get_submodule(module_name), name, shared)


def _sum_over_ranks(group: dist.ProcessGroup) -> Callable[[torch.Tensor], torch.Tensor]:
    """A gradient hook: each rank's gradient covers its own heads, the parameter's gradient is their sum."""

    def hook(grad: torch.Tensor) -> torch.Tensor:
        summed = grad.clone()
        dist.all_reduce(summed, group=group)
        return summed

    return hook


def convert_to_tp(
    model: nn.Module,
    device_mesh: DeviceMesh,
    *,
    analysis: TPAnalysisReport | None = None,
) -> nn.Module:
    """Split ``model`` in place over the 1-D ``device_mesh`` (its tensor-parallel dimension) and return it.

    Every rank must call this with the same model (``parallelize_module`` scatters rank 0's weights). The plan
    comes from ``analysis`` (default: :func:`analyze_tp` of the model). Nothing is changed when a layer does
    not divide (:class:`TensorParallelError` names it). A model whose parameters are already DTensors on this
    mesh is returned as it is; on another mesh it is an error.
    """
    if device_mesh.ndim != 1:
        raise TensorParallelError(
            f"device_mesh: tensor parallelism needs a 1-D mesh, got {device_mesh.ndim} dimensions "
            f"{device_mesh.mesh_dim_names}; pass the tensor-parallel dimension, e.g. mesh['tp']"
        )
    converted = [(name, p) for name, p in model.named_parameters() if isinstance(p, DTensor)]
    if converted:
        foreign = [name for name, p in converted if p.device_mesh != device_mesh]
        if foreign:
            raise TensorParallelError(f"{foreign[0]}: already a DTensor on another device mesh; convert it once")
        logger.info("model is already tensor parallel on %s; not converting it again", device_mesh)
        return model
    world_size = device_mesh.size()
    report = analysis or analyze_tp(model, max_world_size=world_size)
    plan = build_tp_plan(report, world_size)
    attributes = _local_attributes(model, report, world_size)
    ties = tied_parameters(model)
    _reorder_fused(model, report, world_size)
    root_style = plan.pop("", None)
    if plan:
        parallelize_module(model, device_mesh, plan)
    if root_style is not None:
        parallelize_module(model, device_mesh, root_style)
    retie(model, ties)  # parallelize_module gives each module its own copy
    for (path, attribute), value in attributes.items():
        setattr(model.get_submodule(path), attribute, value)
    for layer in report.layers:
        if layer.inside_block is not None:
            for parameter in model.get_submodule(layer.name).parameters(recurse=False):
                hook = _sum_over_ranks(device_mesh.get_group())
                parameter.register_hook(hook)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return model
