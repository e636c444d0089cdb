"""Per-GPU memory of mixed-precision training under TP × PP × DP.

Model states follow Megatron-LM's ``theoretical_memory_usage.py``: bf16 weights (2 bytes), fp32 gradients
(4), fp32 master weights (4) and Adam's two fp32 moments (8) — 18 bytes per parameter — with ZeRO stage 1/2
sharding the optimizer states, then gradients, over the data-parallel ranks. Stage 3 is what autoparallel's
training runtime runs at DP > 1, FSDP2 (``fully_shard``), measured on the runtime (``docs/training.md``): the
fp32 parameter shard is the master, so a rank holds (4 + 4 + 8) / DP bytes per parameter, plus the units FSDP2
gathers for compute (:func:`fsdp_gathered_bytes`). Activations follow Korthikanti et al., "Reducing Activation
Recomputation in Large Transformer Models" (2022), Table 2, with the MLP term generalised to any FFN width as
Megatron does (34 = 18 + 4·f/h at f = 4h).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoparallel.planner.inference import Degrees, pipeline_partition
from autoparallel.planner.precision import DTYPE_BYTES
from autoparallel.planner.shapes import LayerParams, ModelShape
from autoparallel.planner.units import GIB

MASTER_WEIGHT_BYTES = 4
"""fp32 master copy of every parameter kept by the optimizer (under FSDP2, the fp32 parameter shard itself)."""
ADAM_STATE_BYTES = 8
"""Adam's first and second moments, fp32 each."""
FSDP_STAGE = 3
"""The ZeRO stage of FSDP2 full sharding, the runtime's data parallelism."""
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
    """Bytes per gradient element (fp32 accumulation and reduction; 2 for bf16 gradients)."""
    zero_stage: int = FSDP_STAGE
    """0: plain DDP; 1: optimizer states sharded over DP; 2: + gradients (Megatron's distributed optimizer);
    3: FSDP2 full sharding, what the training runtime runs at DP > 1 (at DP = 1 it shards nothing)."""
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
    """Weights as held between steps: bf16 copies (ZeRO 0–2) or FSDP2's fp32 shards, which are the masters."""
    gradients: int
    optimizer_states: int
    """Adam's moments, plus the fp32 masters where they are a separate copy (ZeRO 0–2)."""
    activations: int
    overhead: int
    parameter_count: int
    """Parameters held by this rank before ZeRO sharding."""
    gathered: int = 0
    """FSDP2's working set at its peak: all-gathered weights, unsharded gradients, reduce-scatter inputs."""

    @property
    def total(self) -> int:
        return (
            self.parameters + self.gradients + self.optimizer_states + self.activations + self.gathered + self.overhead
        )


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


@dataclass(frozen=True)
class StageParams:
    """Parameters one rank of a pipeline stage holds (after tensor parallelism), split into FSDP2's units: one
    per decoder layer (``layout.apply_data_parallel``), and the root holding everything else."""

    layers: int
    largest_layer: int
    root: int
    """Embedding (and the extra parameters) on the first stage, final norm and lm_head on the last."""
    head: int
    """The part of the root whose gradients exist from the start of the backward pass: final norm and lm_head
    (the embedding where it is tied to the head)."""

    @property
    def total(self) -> int:
        return self.layers + self.root


def _layer_params(layer: LayerParams, tp: int) -> int:
    return (layer.total - layer.replicated_linear - layer.small) // tp + layer.replicated_linear + layer.small


def stage_params(shape: ModelShape, tp: int, stage: int, pipeline: int, first: int, count: int) -> StageParams:
    """What one rank of ``stage`` holds: layers ``first .. first + count`` ÷ TP (norms and MLA down-projections
    whole), the embedding on stage 0, lm_head and final norm on the last."""
    layers = [_layer_params(layer, tp) for layer in shape.layers[first : first + count]]
    root = head = 0
    if stage == 0:
        root += shape.embedding_params // tp + shape.extra_params
    if stage == pipeline - 1:
        lm_head = shape.lm_head_params or (shape.vocab_size * shape.hidden_size if pipeline > 1 else 0)
        root += lm_head // tp + shape.final_norm_params
        head = (lm_head or shape.embedding_params) // tp + shape.final_norm_params
    return StageParams(layers=sum(layers), largest_layer=max(layers, default=0), root=root, head=head)


def fsdp_gathered_bytes(params: StageParams, settings: TrainingSettings, pipelined: bool) -> int:
    """Peak bytes FSDP2 holds beyond its shards on one rank: w and g bytes per compute and gradient element,
    R the root unit, H its head, L the largest layer, P all the rank's parameters (``params``).

    - No pipeline: the largest of three moments. A layer's backward: the root's gathered
      weights (the root is not resharded after forward) and its head's gradients, this layer's and the
      prefetched previous layer's weights, this layer's gradients, and the next layer's fp32 reduce-scatter
      input still in flight — w·(R + H) + 3w·L + g·L. The root's own backward: its weights and gradients and the
      last layer's reduce-scatter input — 2w·R + g·L. The root's reduce-scatter: its gradients and their fp32
      copy — (w + g)·R.
    - More micro-batches change nothing: the runtime reduce-scatters after each one into the sharded gradients.
    - Pipeline stages: ``torch.distributed.pipelining`` runs every backward without reduce-scatter or reshard
      and reduces once at the end, so every weight stays gathered and every gradient unreduced — (w + g)·P —
      plus one layer's communication buffer, w·L.
    """
    w, g = DTYPE_BYTES[settings.dtype], settings.gradient_bytes
    root, head, layer, total = params.root, params.head, params.largest_layer, params.total
    if pipelined:
        return (w + g) * total + w * layer
    return max(w * (root + head) + 3 * w * layer + g * layer, 2 * w * root + g * layer, (w + g) * root)


def _model_states(params: StageParams, settings: TrainingSettings, dp: int, pipelined: bool) -> dict[str, int]:
    """Weights, gradients, optimizer states and FSDP2's gathered working set of one rank."""
    count = params.total
    if settings.zero_stage >= FSDP_STAGE and dp > 1:
        return {
            "parameters": count * MASTER_WEIGHT_BYTES // dp,
            "gradients": count * settings.gradient_bytes // dp,
            "optimizer_states": count * ADAM_STATE_BYTES // dp,
            "gathered": fsdp_gathered_bytes(params, settings, pipelined),
        }
    return {
        "parameters": count * DTYPE_BYTES[settings.dtype],
        "gradients": count * settings.gradient_bytes // (dp if settings.zero_stage >= 2 else 1),
        "optimizer_states": count * (MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES) // (dp if settings.zero_stage >= 1 else 1),
    }


def estimate_training_stages(
    shape: ModelShape, degrees: Degrees, settings: TrainingSettings, sequence_length: int
) -> list[TrainingMemory]:
    """Memory of one rank of each pipeline stage."""
    dp, tp, pp = degrees.data, degrees.tensor, degrees.pipeline
    in_flight = min(pp, settings.num_micro_batches)  # 1F1B: stage 0 holds up to PP micro-batches
    per_layer = activation_bytes_per_layer(shape, settings, tp, sequence_length)
    results = []
    first = 0
    for stage, count in enumerate(pipeline_partition(shape.num_layers, pp)):
        params = stage_params(shape, tp, stage, pp, first, count)
        activations = per_layer * count * max(1, in_flight - stage)
        if stage == pp - 1:  # fp32 logits and their gradient for the cross-entropy loss
            activations += 4 * sequence_length * settings.micro_batch_size * shape.vocab_size // tp * 2
        results.append(
            TrainingMemory(
                stage=stage,
                **_model_states(params, settings, dp, pipelined=pp > 1),
                activations=activations,
                overhead=TRAINING_RUNTIME_OVERHEAD,
                parameter_count=params.total,
            )
        )
        first += count
    return results


def estimate_training(
    shape: ModelShape, degrees: Degrees, settings: TrainingSettings, sequence_length: int
) -> TrainingMemory:
    """Memory of the most-loaded rank (the largest of the first and last pipeline stages)."""
    return max(estimate_training_stages(shape, degrees, settings, sequence_length), key=lambda r: r.total)
