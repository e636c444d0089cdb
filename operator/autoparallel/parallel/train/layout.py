"""Where each rank sits and what it holds: the (dp, pp, tp) mesh, the pipeline stage, tensor-parallel shards."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from autoparallel.parallel.train.config import ConfigError, TrainConfig
from autoparallel.parallel.train.model import CausalLMLogits, TinyGPT
from autoparallel.parallel.train.stages import check_pipeline, keep_decoder_stage
from autoparallel.planner.inference import pipeline_partition

MESH_DIMS = ("dp", "pp", "tp")
"""Outermost to innermost: tensor-parallel ranks are neighbours (one node, the fastest links), then stages."""


@dataclass(frozen=True)
class Coordinates:
    """This rank's place in the mesh."""

    dp_rank: int
    pp_rank: int
    tp_rank: int

    def is_last_stage(self, config: TrainConfig) -> bool:
        return self.pp_rank == config.pipeline_parallel - 1


def build_mesh(config: TrainConfig, device_type: str, world_size: int) -> tuple[DeviceMesh, Coordinates]:
    """The 3-D device mesh of the planned degrees; :class:`ConfigError` when they do not fit ``world_size``."""
    config.validate(world_size)
    mesh = init_device_mesh(
        device_type,
        (config.data_parallel, config.pipeline_parallel, config.tensor_parallel),
        mesh_dim_names=MESH_DIMS,
    )
    return mesh, Coordinates(*(mesh.get_local_rank(dim) for dim in MESH_DIMS))


def layer_range(num_layers: int, stage: int, num_stages: int) -> range:
    """Layers of ``stage``, split as the planner's memory model splits them."""
    sizes = pipeline_partition(num_layers, num_stages)
    first = sum(sizes[:stage])
    return range(first, first + sizes[stage])


def keep_stage(model: nn.Module, stage: int, num_stages: int) -> nn.Module:
    """Delete what other pipeline stages hold; parameter names stay those of the full model. A transformers
    decoder is cut by :func:`stages.keep_decoder_stage`."""
    if isinstance(model, CausalLMLogits):
        hf_config: Any = model.model.config
        check_pipeline(hf_config, num_stages)
        kept = layer_range(hf_config.num_hidden_layers, stage, num_stages)
        return keep_decoder_stage(model, kept, first=stage == 0, last=stage == num_stages - 1)
    if not isinstance(model, TinyGPT):
        raise ConfigError("pipeline parallelism splits tiny-gpt and transformers decoders; use --pipeline-parallel 1")
    kept = layer_range(model.config.num_layers, stage, num_stages)
    for name in [name for name in model.layers if int(name) not in kept]:
        del model.layers[name]
    if stage > 0:
        model.embed_tokens = None
    if stage < num_stages - 1:
        model.norm = None
        model.lm_head = None
    return model


def apply_tensor_parallel(model: nn.Module, tp_mesh: DeviceMesh, hf_layout: bool = False) -> nn.Module:
    """Megatron pairs of the tiny GPT on ``tp_mesh``: q/k/v and gate/up column-wise, o and down row-wise (one
    all-reduce per pair), the embedding split over the vocabulary and the head over its outputs.

    The one place that knows the tiny GPT's plan; ``autoparallel.parallel.convert_to_tp`` (derived from any
    model's structure) splits transformers models, and can replace this once it splits the embedding and head
    the same way. ``hf_layout``: the shards must stay slices of the Hugging Face tensors (pretrained weights
    are read into them, exports written from them), which a fused projection's re-ordered rows are not."""
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel, parallelize_module

    if not isinstance(model, TinyGPT):
        from autoparallel.parallel import analyze_tp, convert_to_tp

        report = analyze_tp(model, max_world_size=tp_mesh.size())
        fused = next((layer for layer in report.layers if layer.fused_parts and layer.parallelizable), None)
        if hf_layout and fused is not None:
            raise ConfigError(
                f"tensor parallel: the fused projection {fused.name} {list(fused.fused_parts)} is split with its "
                "rows re-ordered, so pretrained weights and exports (Hugging Face layout) cannot be sharded "
                "straight into it; use --tensor-parallel 1"
            )
        converted: nn.Module = convert_to_tp(model, tp_mesh, analysis=report)
        return converted
    plan: dict[str, ParallelStyle] = {}
    for name in model.layers:
        prefix = f"layers.{name}"
        for column in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            plan[f"{prefix}.{column}"] = ColwiseParallel()
        for row in ("self_attn.o_proj", "mlp.down_proj"):
            plan[f"{prefix}.{row}"] = RowwiseParallel()
    if model.embed_tokens is not None:
        plan["embed_tokens"] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate())
    if model.lm_head is not None:
        plan["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    parallelize_module(model, tp_mesh, plan)
    return model


def _shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 gathers one at a time: the tiny GPT's blocks, or a transformers model's decoder layers
    (its ``_no_split_modules``)."""
    if isinstance(model, TinyGPT):
        return list(model.layers.values())
    names = {name for module in model.modules() for name in (getattr(module, "_no_split_modules", None) or ())}
    return [module for module in model.modules() if type(module).__name__ in names]


def apply_data_parallel(model: nn.Module, dp_mesh: DeviceMesh, precision: str) -> nn.Module:
    """FSDP2 over the data-parallel ranks, as torchtitan composes it with tensor parallelism: ``fully_shard``
    each block, then the root, on ``dp_mesh`` after :func:`apply_tensor_parallel` (a TP shard is sharded again
    over the DP ranks: a 2-D DTensor). Parameters, gradients and optimizer states are split over the DP ranks
    (ZeRO stage 3); each block's weights are all-gathered for its forward and backward, and gradients are
    reduce-scattered after each micro-batch, summed, not averaged: each replica's loss is already divided by
    the global batch's target count (``loop.causal_lm_loss``), as torchtitan does. Under ``bf16`` the sharded
    parameters stay fp32 (the masters) and compute runs in bf16, gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if precision == "bf16"
        else MixedPrecisionPolicy()
    )
    for unit in [*_shard_units(model), model]:
        sharded = fully_shard(unit, mesh=dp_mesh, mp_policy=policy)
        sharded.set_gradient_divide_factor(1.0)
        sharded.set_force_sum_reduction_for_comms(True)  # a plain SUM: gloo has no PREMUL_SUM
    return model


def pick_device() -> torch.device:
    """The local GPU under torchrun when there is one, else the CPU."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")
