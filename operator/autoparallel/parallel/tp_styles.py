"""DTensor parallel styles for what ``ColwiseParallel``/``RowwiseParallel`` do not cover, and the fused re-order.

* transformers' ``Conv1D`` (GPT-2) is a Linear whose weight is stored ``[in, out]``: the same styles with the
  weight's split dimension swapped (column: weight ``Shard(1)``, bias ``Shard(0)``; row: weight ``Shard(0)``);
* fused MoE experts (transformers' experts modules: 3-D tensors with one row per expert) split by experts:
  each rank keeps ``num_experts / world`` of them, routes every token like the others (the router stays
  replicated), runs its own experts on the tokens routed to them and the partial outputs are all-reduced —
  expert parallelism over the tensor-parallel ranks. Expert ids of other ranks become transformers' sentinel
  (``num_experts``, with weight 0), which its experts implementations skip;
* a fused column layer (one ``qkv`` or ``gate_up`` Linear) is re-ordered so that ``Shard(0)`` gives every rank
  its slice of each part: ``[q_0, k_0, v_0, q_1, k_1, v_1, …]``. The DTensor's global view is the re-ordered
  weight; ``weight.full_tensor()[inverse_order(parts, world)]`` is the original.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Placement, Replicate, Shard, distribute_module, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel


def _distribute(module: nn.Module, mesh: DeviceMesh, placements: dict[str, Placement], source: int | None) -> None:
    for name, parameter in list(module.named_parameters(recurse=False)):
        tensor = distribute_tensor(parameter, mesh, [placements[name]], src_data_rank=source)
        module.register_parameter(name, nn.Parameter(tensor, requires_grad=parameter.requires_grad))


class Conv1DColwiseParallel(ColwiseParallel):
    """``ColwiseParallel`` for transformers' ``Conv1D``: weight ``[in, out]`` split on dim 1, bias on dim 0."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        placements: dict[str, Placement] = {"weight": Shard(1), "bias": Shard(0)}
        return distribute_module(
            module,
            device_mesh,
            lambda _, m, mesh: _distribute(m, mesh, placements, self.src_data_rank),
            partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
            partial(self._prepare_output_fn, self.output_layouts, self.use_local_output),
        )


class Conv1DRowwiseParallel(RowwiseParallel):
    """``RowwiseParallel`` for transformers' ``Conv1D``: weight ``[in, out]`` split on dim 0, bias whole."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        placements: dict[str, Placement] = {"weight": Shard(0), "bias": Replicate()}
        self.desired_input_layouts = (Shard(-1),)
        return distribute_module(
            module,
            device_mesh,
            lambda _, m, mesh: _distribute(m, mesh, placements, self.src_data_rank),
            partial(self._prepare_input_fn, self.input_layouts, self.desired_input_layouts),
            partial(self._prepare_output_fn, self.output_layouts, self.use_local_output),
        )


def sum_gradient(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """Identity forward; the backward sums the gradient over the ranks (each rank's covers its own experts)."""
    replicated = DTensor.from_local(tensor, mesh, [Replicate()], run_check=False)
    return replicated.to_local(grad_placements=[Partial()])


def sum_outputs(tensor: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
    """All-reduce of the ranks' partial outputs; the (replicated) gradient passes back unchanged."""
    partial_sum = DTensor.from_local(tensor, mesh, [Partial()], run_check=False)
    return partial_sum.redistribute(mesh, [Replicate()]).to_local()


class ExpertParallel(ParallelStyle):
    """Expert parallelism of a transformers experts module (``forward(hidden_states, top_k_index,
    top_k_weights)``, every parameter ``[num_experts, …]``) over the tensor-parallel ranks."""

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        world, rank = device_mesh.size(), device_mesh.get_local_rank()
        local = self.num_experts // world
        first = rank * local
        held: dict[str, nn.Parameter] = {}

        def partition(_: str, experts: nn.Module, mesh: DeviceMesh) -> None:
            _distribute(experts, mesh, dict.fromkeys(experts._parameters, Shard(0)), 0)

        def prepare_inputs(experts: nn.Module, inputs: tuple[Any, ...], mesh: DeviceMesh) -> tuple[Any, ...]:
            hidden, index, weights, *rest = inputs
            owned = (index >= first) & (index < first + local)
            index = torch.where(owned, index - first, torch.full_like(index, local))
            weights = sum_gradient(weights, mesh).masked_fill(~owned, 0)
            for name, parameter in list(experts._parameters.items()):  # the experts' code runs on local shards
                if isinstance(parameter, DTensor):
                    held[name] = parameter
                    experts._parameters[name] = parameter.to_local()
            return (sum_gradient(hidden, mesh), index, weights, *rest)

        def combine_outputs(experts: nn.Module, output: torch.Tensor, mesh: DeviceMesh) -> torch.Tensor:
            experts._parameters.update(held)
            held.clear()
            return sum_outputs(output, mesh)

        for attribute, value in {"num_experts": local, "_is_expert_parallel": True}.items():  # transformers' switch
            setattr(module, attribute, value)
        # torch annotates the two hooks as returning None; they return the new inputs and outputs, as its own do
        return distribute_module(module, device_mesh, partition, prepare_inputs, combine_outputs)  # type: ignore[arg-type]


def fused_order(parts: tuple[int, ...], world_size: int) -> torch.Tensor:
    """Row order that gives every rank its slice of each part once split into ``world_size`` equal chunks."""
    offsets = [sum(parts[:i]) for i in range(len(parts))]
    order = [
        offset + rank * (size // world_size) + row
        for rank in range(world_size)
        for offset, size in zip(offsets, parts, strict=True)
        for row in range(size // world_size)
    ]
    return torch.tensor(order, dtype=torch.long)


def inverse_order(parts: tuple[int, ...], world_size: int) -> torch.Tensor:
    """The order that restores the original rows from the re-ordered ones."""
    return torch.argsort(fused_order(parts, world_size))
