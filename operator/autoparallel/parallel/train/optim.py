"""AdamW over fp32 master weights, with the data-parallel gradient all-reduce.

Under ``fp32`` the master weights are the model's parameters. Under ``bf16`` the model computes in bf16 and the
optimizer keeps Megatron's mixed-precision state: an fp32 master copy of every weight, fp32 gradients (the bf16
gradients of the step are converted after the backward passes) and Adam's two fp32 moments. That is the
planner's 2 + 4 + 4 + 8 = 18 bytes per parameter (``autoparallel.planner.training``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


class MasterAdamW:
    """AdamW stepping fp32 masters keyed by the model's parameter names."""

    def __init__(self, model: nn.Module, precision: str, lr: float, weight_decay: float) -> None:
        self.params = dict(model.named_parameters())
        if precision == "bf16":
            self.masters = {name: p.detach().to(torch.float32).clone() for name, p in self.params.items()}
            model.to(torch.bfloat16)
            self.params = dict(model.named_parameters())
        else:
            self.masters = dict(self.params)
        self.separate_masters = precision == "bf16"
        self.adamw = torch.optim.AdamW(list(self.masters.values()), lr=lr, weight_decay=weight_decay, foreach=False)
        for master in self.masters.values():  # allocated now, so a checkpoint can load into them
            self.adamw.state[master] = {
                "step": torch.tensor(0.0),
                **{moment: torch.zeros_like(master) for moment in ADAM_MOMENTS},
            }

    @torch.no_grad()
    def reduce_gradients(self, dp_group: dist.ProcessGroup | None, dp_size: int) -> None:
        """Move this step's gradients onto the masters (fp32) and average them over the data-parallel ranks."""
        if self.separate_masters:
            for name, param in self.params.items():
                grad = param.grad
                self.masters[name].grad = None if grad is None else grad.to(torch.float32)
                param.grad = None
        grads = [m.grad for m in self.masters.values() if m.grad is not None]
        if dp_size == 1 or not grads:
            return
        shards = [_local(g) for g in grads]
        flat = torch.cat([s.reshape(-1) for s in shards])
        dist.all_reduce(flat, group=dp_group)
        flat.div_(dp_size)
        offset = 0
        for shard in shards:
            shard.copy_(flat[offset : offset + shard.numel()].view_as(shard))
            offset += shard.numel()

    @torch.no_grad()
    def step(self) -> None:
        self.adamw.step()
        self.adamw.zero_grad(set_to_none=True)
        for param in self.params.values():
            param.grad = None
        if self.separate_masters:
            for name, param in self.params.items():
                param.copy_(self.masters[name])

    def state_dict(self) -> dict[str, Any]:
        """``{"model": {name: fp32 master}, "optimizer": {name: {step, exp_avg, exp_avg_sq}}}`` (DCP-ready)."""
        return {
            "model": dict(self.masters),
            "optimizer": {name: self.adamw.state[master] for name, master in self.masters.items()},
        }

    @torch.no_grad()
    def after_load(self) -> None:
        """Copy loaded masters into the bf16 model (the fp32 path loaded into the parameters themselves)."""
        if self.separate_masters:
            for name, param in self.params.items():
                param.copy_(self.masters[name])

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds for weights, gradients and optimizer states (local shards only; the scalar
        Adam step counters are left out, as in the planner)."""

        def nbytes(tensors: list[torch.Tensor]) -> int:
            return sum(_local(t).numel() * _local(t).element_size() for t in tensors)

        optimizer = [self.adamw.state[m][moment] for m in self.masters.values() for moment in ADAM_MOMENTS]
        if self.separate_masters:
            optimizer += list(self.masters.values())
        return {
            "parameters": nbytes(list(self.params.values())),
            "gradients": nbytes([m.grad for m in self.masters.values() if m.grad is not None]),
            "optimizer_states": nbytes(optimizer),
        }
