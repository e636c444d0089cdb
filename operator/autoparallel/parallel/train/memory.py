"""Measured memory of one rank, to check the planner's training memory model against reality.

Model states come from :meth:`MasterAdamW.state_bytes`; activations are the tensors autograd saves for the
backward pass of one micro-batch, captured with ``torch.autograd.graph.saved_tensors_hooks`` and counted once
per storage (views share one), leaving out the weights themselves. Under FSDP2, :class:`GatheredMeter` follows
what ``fully_shard`` holds beyond the sharded states while a step runs (the all-gathered weights, the unsharded
gradients and the communication buffers) and keeps its peak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.fsdp._fully_shard._fsdp_collectives import DefaultAllGather, DefaultReduceScatter
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakIdKeyDictionary

GATHERED_PARTS = ("gathered_weights", "all_gather_buffers", "unsharded_gradients", "reduce_scatter_inputs")
"""What :class:`GatheredMeter` counts, each a set of distinct storages."""


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors saved for backward while ``forward`` runs (parameters excluded: read when
    each tensor is saved, so FSDP2's all-gathered weights count as weights too)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        local = _local(tensor)
        key = _storage_key(local)
        weights = {_storage_key(_local(p.detach())) for p in model.parameters()}
        if key not in weights and local.device.type != "meta":
            seen[key] = key[1]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    torch.autograd.backward(loss)
    return sum(seen.values())


class GatheredMeter(TorchDispatchMode):  # type: ignore[no-untyped-call]  # torch leaves it unannotated
    """Peak bytes FSDP2 holds on this rank beyond the sharded parameters, gradients and optimizer states.

    Within ``with meter:`` every operator is followed by a count of the distinct live storages of four kinds:
    the unsharded (all-gathered) weights of each unit, FSDP's flat all-gather buffers, the unsharded gradients
    autograd produced (also while FSDP holds them for its reduce-scatter) and the reduce-scatter input buffers.
    The buffers are seen through FSDP2's communication hooks (``set_custom_all_gather`` and
    ``set_custom_reduce_scatter`` with the default collectives), the weights and gradients through each unit's
    FSDP parameters. The reduce-scatter outputs are left out: they become the sharded gradients. Buffers a
    process-group backend makes inside a collective (gloo's reduce-scatter copies its input) are not FSDP's and
    are not counted. :attr:`peak` is the largest count, :attr:`peak_parts` its split by kind. The recording
    collectives stay installed on the model (they only add the bookkeeping)."""

    def __init__(self, model: nn.Module, shard_world_size: int) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.peak = 0
        self.peak_parts: dict[str, int] = dict.fromkeys(GATHERED_PARTS, 0)
        self._buffers: dict[str, Any] = {kind: WeakIdKeyDictionary() for kind in GATHERED_PARTS}
        self._fsdp_params: list[Any] = []
        self._pending_input_numel: int | None = None
        meter = self

        class RecordingAllGather(DefaultAllGather):
            def allocate(
                self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device
            ) -> torch.Tensor:
                buffer = super().allocate(size, dtype=dtype, device=device)
                meter._buffers["all_gather_buffers"][buffer.untyped_storage()] = True
                return buffer

        class RecordingReduceScatter(DefaultReduceScatter):
            def allocate(
                self, size: Sequence[int | torch.SymInt], *, dtype: torch.dtype, device: torch.device
            ) -> torch.Tensor:
                buffer = super().allocate(size, dtype=dtype, device=device)
                # FSDP allocates the input, then the output of 1/world its size (the sharded gradients).
                if meter._pending_input_numel == buffer.numel() * shard_world_size:
                    meter._pending_input_numel = None
                else:
                    meter._pending_input_numel = buffer.numel()
                    meter._buffers["reduce_scatter_inputs"][buffer.untyped_storage()] = True
                return buffer

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.set_custom_all_gather(RecordingAllGather())
                module.set_custom_reduce_scatter(RecordingReduceScatter())
                for group in module._get_fsdp_state()._fsdp_param_groups:
                    self._fsdp_params.extend(group.fsdp_params)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        from torch.distributed.tensor import DTensor

        if any(t is DTensor for t in types):
            return NotImplemented  # let DTensor run its local operators, which come back here
        result = func(*args, **(kwargs or {}))
        self._sample()
        return result

    def _sample(self) -> None:
        for fsdp_param in self._fsdp_params:
            for output in fsdp_param.all_gather_outputs:
                self._buffers["gathered_weights"][output.untyped_storage()] = True
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if unsharded is not None and unsharded.grad is not None:
                self._buffers["unsharded_gradients"][_local(unsharded.grad).untyped_storage()] = True
        counted: set[int] = set()
        parts = dict.fromkeys(GATHERED_PARTS, 0)
        for kind in GATHERED_PARTS:
            for storage in list(self._buffers[kind].keys()):
                if storage.nbytes() and storage.data_ptr() not in counted:
                    counted.add(storage.data_ptr())
                    parts[kind] += storage.nbytes()
        total = sum(parts.values())
        if total > self.peak:
            self.peak, self.peak_parts = total, parts
