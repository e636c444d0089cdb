"""Measured memory of one rank, to check the planner's training memory model against reality.

Model states come from :meth:`MasterAdamW.state_bytes`; activations are the tensors autograd saves for the
backward pass of one micro-batch, captured with ``torch.autograd.graph.saved_tensors_hooks`` and counted once
per storage (views share one), leaving out the weights themselves.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _storage_key(tensor: torch.Tensor) -> tuple[int, int]:
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.nbytes()


def saved_activation_bytes(model: nn.Module, forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct tensors saved for backward while ``forward`` runs (parameters excluded)."""
    weights = {_storage_key(p.detach()) for p in model.parameters()}
    seen: dict[tuple[int, int], int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        local = getattr(tensor, "to_local", lambda: tensor)()
        key = _storage_key(local)
        if key not in weights and local.device.type != "meta":
            seen[key] = key[1]
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = forward()
    torch.autograd.backward(loss)
    return sum(seen.values())
