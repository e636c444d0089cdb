"""AdamW over fp32 master weights; data-parallel gradient averaging is FSDP2's (``layout.apply_data_parallel``).

Under ``fp32`` the master weights are the model's parameters. Under ``bf16`` the model computes in bf16 and the
optimizer keeps Megatron's mixed-precision state: an fp32 master copy of every weight, fp32 gradients (the bf16
gradients of the step are converted after the backward passes) and Adam's two fp32 moments. That is the
planner's 2 + 4 + 4 + 8 = 18 bytes per parameter (``autoparallel.planner.training``).

A model sharded by ``fully_shard`` (FSDP2, data parallel) keeps its fp32 parameters sharded over the
data-parallel ranks and casts them to bf16 itself for compute (``MixedPrecisionPolicy``); they are then the
masters, and their gradients arrive already averaged over the replicas, reduce-scattered in fp32.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.fsdp import FSDPModule

ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """A DTensor's local shard, or the tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if to_local is not None else tensor


def _module_of(named: dict[str, torch.Tensor]) -> nn.Module:
    """A plain module holding ``named`` as parameters under the same dotted names (for state dict helpers)."""
    root = nn.Module()
    for name, tensor in named.items():
        *path, leaf = name.split(".")
        parent = root
        for part in path:
            child = getattr(parent, part, None)
            if child is None:
                child = nn.Module()
                parent.add_module(part, child)
            parent = child
        parent.register_parameter(leaf, nn.Parameter(tensor, requires_grad=True))
    return root


class MasterAdamW:
    """AdamW stepping fp32 masters keyed by the model's parameter names.

    :attr:`masters` is a module whose parameters are the masters under the model's names: the model itself
    when its parameters are fp32 (``fp32``, or any precision under FSDP2), else a module of the fp32 copies."""

    def __init__(self, model: nn.Module, precision: str, lr: float, weight_decay: float) -> None:
        self.params = dict(model.named_parameters())
        self.separate_masters = precision == "bf16" and not isinstance(model, FSDPModule)
        if self.separate_masters:
            self.masters = _module_of({name: p.detach().to(torch.float32).clone() for name, p in self.params.items()})
            with torch.no_grad():  # the parameters only: buffers (rotary frequencies) keep fp32, as in transformers
                for param in self.params.values():
                    param.data = param.data.to(torch.bfloat16)
        else:
            self.masters = model
        self.master_params = dict(self.masters.named_parameters())
        self.adamw = torch.optim.AdamW(
            list(self.master_params.values()), lr=lr, weight_decay=weight_decay, foreach=False
        )
        for master in self.master_params.values():  # allocated now, so a checkpoint can load into them
            self.adamw.state[master] = {
                "step": torch.tensor(0.0),
                **{moment: torch.zeros_like(master) for moment in ADAM_MOMENTS},
            }

    @torch.no_grad()
    def collect_gradients(self) -> None:
        """Move this step's gradients onto the fp32 masters (a no-op when the masters are the parameters)."""
        if self.separate_masters:
            for name, param in self.params.items():
                grad = param.grad
                self.master_params[name].grad = None if grad is None else grad.to(torch.float32)
                param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.adamw.step()
        self.adamw.zero_grad(set_to_none=True)
        for param in self.params.values():
            param.grad = None
        if self.separate_masters:
            self.copy_masters_to_model()

    @torch.no_grad()
    def copy_masters_to_model(self) -> None:
        """Copy the masters into the bf16 model (after a step or a checkpoint load); a no-op without copies."""
        if self.separate_masters:
            for name, param in self.params.items():
                param.copy_(self.master_params[name])

    def state_bytes(self) -> dict[str, int]:
        """Bytes this rank holds for weights, gradients and optimizer states (local shards only; the scalar
        Adam step counters are left out, as in the planner)."""

        def nbytes(tensors: list[torch.Tensor]) -> int:
            return sum(_local(t).numel() * _local(t).element_size() for t in tensors)

        masters = list(self.master_params.values())
        optimizer = [self.adamw.state[m][moment] for m in masters for moment in ADAM_MOMENTS]
        if self.separate_masters:
            optimizer += masters
        return {
            "parameters": nbytes(list(self.params.values())),
            "gradients": nbytes([m.grad for m in masters if m.grad is not None]),
            "optimizer_states": nbytes(optimizer),
        }
