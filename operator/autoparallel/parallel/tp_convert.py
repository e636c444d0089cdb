"""Convert a model to tensor parallelism with ``torch.distributed.tensor.parallel``, following the analysis.

The plan maps every split layer to one of DTensor's styles:

* paired column layers: ``ColwiseParallel()`` — weight and bias sharded on the output features, the output
  left local (each rank computes its heads, its slice of the MLP width);
* paired row layers: ``RowwiseParallel()`` — weight sharded on the input features, the partial outputs
  all-reduced once, the bias (replicated) added once after the sum;
* unpaired column layers (a lm_head): ``ColwiseParallel(output_layouts=Replicate())`` — output all-gathered;
* unpaired row layers: ``RowwiseParallel(input_layouts=Replicate())`` — the input sliced locally;
* vocab-parallel embeddings: ``RowwiseParallel(input_layouts=Replicate())`` — rows sharded, lookups outside a
  rank's rows masked, the result all-reduced.

Attention modules that store their head counts (``num_heads``, ``n_head``, …) get them divided by the world
size, as vLLM and torchtitan do; modules that reshape with ``-1`` (transformers) need nothing. Per-head norms
inside a block (Qwen3's q_norm/k_norm) stay replicated and get their gradients summed over the ranks, as
transformers' ``replicated_with_grad_allreduce`` does.
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

from autoparallel.parallel.tp_analysis import analyze_tp, declared_head_dim
from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
from autoparallel.parallel.tp_structure import TPStyle
from autoparallel.planner.errors import InvalidConfigurationError

logger = logging.getLogger(__name__)

HEAD_COUNT_ATTRIBUTES = (
    "num_heads",
    "n_heads",
    "n_head",
    "num_attention_heads",
    "num_key_value_heads",
    "num_kv_heads",
    "n_kv_heads",
)
"""Head-count attributes of attention modules (transformers, nanoGPT, torchtitan) that become per-rank counts."""


class TensorParallelError(InvalidConfigurationError):
    """The model cannot be split over the given mesh; the message names the layer and the numbers."""


def is_tensor_parallel(model: nn.Module) -> bool:
    """Whether any parameter of ``model`` is already a DTensor (converted before)."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def _check_layer(layer: LayerAnalysis, world_size: int) -> None:
    if not layer.parallelizable or layer.tied_to is not None:
        return
    dimension = {TPStyle.COLUMN: "out_features", TPStyle.ROW: "in_features", TPStyle.VOCAB: "num_embeddings"}
    what = f"{dimension[layer.style]} ({layer.split_size})"
    where = f"layer {layer.name!r} ({layer.layer_type})"
    if layer.paired and layer.split_size % world_size:
        raise TensorParallelError(
            f"{where}: {what} must be divisible by the tensor-parallel world size ({world_size}) to split it "
            f"{layer.style}-wise in block {layer.block or '(root)'}"
        )
    if layer.paired and layer.heads is not None and layer.heads % world_size:
        raise TensorParallelError(
            f"{where}: the number of attention heads ({layer.heads} = {layer.split_size} / head_dim "
            f"{layer.split_size // layer.heads}) must be divisible by the tensor-parallel world size ({world_size})"
        )
    if layer.split_size < world_size:
        raise TensorParallelError(
            f"{where}: {what} is smaller than the tensor-parallel world size ({world_size}); some ranks "
            "would hold nothing"
        )


def _style(layer: LayerAnalysis) -> ParallelStyle:
    if layer.style is TPStyle.COLUMN:
        return ColwiseParallel() if layer.paired else ColwiseParallel(output_layouts=Replicate())
    if layer.style is TPStyle.ROW:
        return RowwiseParallel() if layer.paired else RowwiseParallel(input_layouts=Replicate())
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


def _local_head_counts(model: nn.Module, report: TPAnalysisReport, world_size: int) -> dict[tuple[str, str], int]:
    """(block, attribute) → per-rank value for head-count attributes of the paired attention blocks.

    An attribute counts heads only when, times the block's head_dim, it equals a column layer's output width."""
    updates: dict[tuple[str, str], int] = {}
    for block in sorted({layer.block for layer in report.layers if layer.block is not None}):
        module = model.get_submodule(block)
        head_dim = declared_head_dim(module)
        widths = {layer.split_size for layer in report.layers if layer.block == block and layer.style is TPStyle.COLUMN}
        for attribute in HEAD_COUNT_ATTRIBUTES:
            value = getattr(module, attribute, None)
            if isinstance(value, int) and head_dim and value * head_dim in widths:
                updates[(block, attribute)] = value // world_size
    return updates


def _tied_parameters(model: nn.Module) -> list[list[tuple[str, str]]]:
    """Groups of (module path, parameter name) that share one parameter, the owner first."""
    places: dict[int, list[tuple[str, str]]] = {}
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            places.setdefault(id(parameter), []).append((module_name, name))
    return [group for group in places.values() if len(group) > 1]


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
    head_counts = _local_head_counts(model, report, world_size)
    ties = _tied_parameters(model)
    root_style = plan.pop("", None)
    if plan:
        parallelize_module(model, device_mesh, plan)
    if root_style is not None:
        parallelize_module(model, device_mesh, root_style)
    for (owner_module, owner_name), *others in ties:  # parallelize_module gives each module its own copy
        shared = getattr(model.get_submodule(owner_module), owner_name)
        for module_name, name in others:
            setattr(model.get_submodule(module_name), name, shared)
    for (block, attribute), value in head_counts.items():
        setattr(model.get_submodule(block), attribute, value)
    for layer in report.layers:
        if layer.inside_block is not None:
            for parameter in model.get_submodule(layer.name).parameters(recurse=False):
                hook = _sum_over_ranks(device_mesh.get_group())
                parameter.register_hook(hook)  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    return model
