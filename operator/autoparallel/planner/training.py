"""Per-GPU memory of mixed-precision training under TP × PP × DP (Megatron-style accounting).

Model states follow Megatron-LM's ``theoretical_memory_usage.py``: bf16 weights (2 bytes), fp32 gradients
(4), fp32 master weights (4) and Adam's two fp32 moments (8) — 18 bytes per parameter — with ZeRO stage
1/2/3 (FSDP) sharding the optimizer states, then gradients, then weights over the data-parallel ranks.
Activations follow Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models"
(2022), Table 2, with the MLP term generalised to any FFN width as Megatron does (34 = 18 + 4·f/h at f = 4h).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoparallel.planner.inference import Degrees, pipeline_partition
from autoparallel.planner.precision import DTYPE_BYTES
from autoparallel.planner.shapes import ModelShape
from autoparallel.planner.units import GIB

MASTER_WEIGHT_BYTES = 4
"""fp32 master copy of every parameter kept by the optimizer."""
ADAM_STATE_BYTES = 8
"""Adam's first and second moments, fp32 each."""
TRAINING_RUNTIME_OVERHEAD = 1 * GIB
"""CUDA context, cuBLAS workspaces and NCCL buffers of one training rank (PyTorch 2.x on Hopper: ~0.5 GiB
of context plus ~0.5 GiB of communicator buffers)."""
RECOMPUTE_MODES = ("none", "selective", "full")


@dataclass(frozen=True)
class TrainingSettings:
    """Training options that change memory."""

    dtype: str = "bfloat16"
    """Weights and activations dtype."""
    gradient_bytes: int = 4
    """Bytes per gradient element (fp32 accumulation; 2 for bf16 gradients)."""
    zero_stage: int = 1
    """0: plain DDP; 1: optimizer states sharded over DP; 2: + gradients; 3 (FSDP full shard): + weights."""
    micro_batch_size: int = 1
    """Sequences per micro-batch."""
    num_micro_batches: int = 1
    """Micro-batches per optimizer step on each data-parallel rank (gradient accumulation / 1F1B)."""
    recompute: str = "selective"
    """``none`` keeps every activation; ``selective`` recomputes attention scores (as flash attention
    does); ``full`` keeps only each layer's input."""
    sequence_parallel: bool = True
    """Split LayerNorm/dropout activations over TP ranks too (Megatron's sequence parallelism)."""


@dataclass(frozen=True)
class TrainingMemory:
    """Bytes on the most-loaded GPU."""

    stage: int
    parameters: int
    gradients: int
    optimizer_states: int
    activations: int
    overhead: int
    parameter_count: int
    """Parameters held by this rank before ZeRO sharding."""

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.overhead


def activation_bytes_per_layer(shape: ModelShape, settings: TrainingSettings, tp: int, seq: int) -> int:
    """Korthikanti Table 2 for one layer and one micro-batch, in bytes (16-bit activations)."""
    s, b, h, a = seq, settings.micro_batch_size, shape.hidden_size, shape.num_heads
    ffn_ratio = shape.intermediate_size / h
    attention_scores = 5 * a * s / h
    if settings.recompute == "full":
        return int(2 * s * b * h / (tp if settings.sequence_parallel else 1))
    keep_scores = settings.recompute == "none"
    if settings.sequence_parallel or tp == 1:
        per_token = (18 + 4 * ffn_ratio) / tp + (attention_scores / tp if keep_scores else 0)
    else:
        per_token = 10 + (8 + 4 * ffn_ratio) / tp + (attention_scores / tp if keep_scores else 0)
    return int(s * b * h * per_token)


def _stage_parameters(shape: ModelShape, tp: int, stage: int, pipeline: int, first: int, count: int) -> int:
    layers = shape.layers[first : first + count]
    params = sum(layer.total - layer.replicated_linear - layer.small for layer in layers) // tp
    params += sum(layer.replicated_linear + layer.small for layer in layers)
    if stage == 0:
        params += shape.embedding_params // tp + shape.extra_params
    if stage == pipeline - 1:
        head = shape.lm_head_params or (shape.vocab_size * shape.hidden_size if pipeline > 1 else 0)
        params += head // tp + shape.final_norm_params
    return params


def estimate_training(
    shape: ModelShape, degrees: Degrees, settings: TrainingSettings, sequence_length: int
) -> TrainingMemory:
    """Memory of the most-loaded rank (the largest of the first and last pipeline stages)."""
    dp, tp, pp = degrees.data, degrees.tensor, degrees.pipeline
    dtype_bytes = DTYPE_BYTES[settings.dtype]
    in_flight = min(pp, settings.num_micro_batches)  # 1F1B: stage 0 holds up to PP micro-batches
    per_layer = activation_bytes_per_layer(shape, settings, tp, sequence_length)
    results = []
    first = 0
    for stage, count in enumerate(pipeline_partition(shape.num_layers, pp)):
        params = _stage_parameters(shape, tp, stage, pp, first, count)
        activations = per_layer * count * max(1, in_flight - stage)
        if stage == pp - 1:  # fp32 logits and their gradient for the cross-entropy loss
            activations += 4 * sequence_length * settings.micro_batch_size * shape.vocab_size // tp * 2
        results.append(
            TrainingMemory(
                stage=stage,
                parameters=params * dtype_bytes // (dp if settings.zero_stage >= 3 else 1),
                gradients=params * settings.gradient_bytes // (dp if settings.zero_stage >= 2 else 1),
                optimizer_states=params
                * (MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES)
                // (dp if settings.zero_stage >= 1 else 1),
                activations=activations,
                overhead=TRAINING_RUNTIME_OVERHEAD,
                parameter_count=params,
            )
        )
        first += count
    return max(results, key=lambda r: r.total)
