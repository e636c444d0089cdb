"""Per-GPU memory of vLLM serving a model under given TP/PP/EP degrees (models vLLM 0.19, V1 engine).

vLLM sizes its KV cache after loading the weights and profiling one forward pass (``vllm/v1/worker``):

    kv_cache = total_gpu_memory × gpu_memory_utilization − weights − peak_activation − non_torch_memory

and captures CUDA graphs afterwards, outside that budget. Every constant below is fitted on, and cited to,
the vLLM 0.19 startup logs in ``shared/calibration/vllm_measured.csv``; docs/memory-model.md derives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import accumulate

from autoparallel.planner.caches import AttentionGeometry, LayerCache, RecurrentState
from autoparallel.planner.kvpool import KV_BLOCK_SIZE, KVLayout, hybrid_layer_slots, hybrid_layout
from autoparallel.planner.precision import DTYPE_BYTES, WeightFormat
from autoparallel.planner.shapes import LayerParams, ModelShape
from autoparallel.planner.units import GIB, MIB

__all__ = ["KV_BLOCK_SIZE", "hybrid_layer_slots"]

VLLM_VERSION = "0.19.0"
"""The vLLM release whose memory accounting this module reproduces."""

DEFAULT_GPU_MEMORY_UTILIZATION = 0.90
"""vLLM's default ``--gpu-memory-utilization``."""

DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
"""vLLM V1's default ``--max-num-batched-tokens`` for the OpenAI server: the tokens of the profiling pass."""

DEFAULT_MAX_NUM_SEQS = 1024
"""vLLM V1's default ``--max-num-seqs`` on H100-class GPUs: the rows of the profiled sampler pass."""

SMALL_GPU_MAX_NUM_SEQS = 256
LARGE_GPU_BYTES = 70 * GIB
"""``EngineArgs.get_batch_defaults`` (vLLM 0.19, OpenAI server): ``max_num_seqs`` is 1024 on GPUs of ≥ 70 GiB
that are not an A100, 256 on the rest (A100, L40S, L4, A10 …)."""


def default_max_num_seqs(gpu_name: str, gpu_memory_bytes: int) -> int:
    """The ``max_num_seqs`` ``vllm serve`` 0.19 picks on this GPU when the flag is not given."""
    if gpu_memory_bytes >= LARGE_GPU_BYTES and "A100" not in gpu_name.upper():
        return DEFAULT_MAX_NUM_SEQS
    return SMALL_GPU_MAX_NUM_SEQS


VOCAB_PADDING = 64
"""vLLM's ``VocabParallelEmbedding`` pads the vocabulary to a multiple of 64 before splitting it over TP."""

FORWARD_HIDDEN_FACTOR = 2
FORWARD_MLP_FACTOR = 4
"""Profiled forward peak = batched tokens × (2·hidden + 4·mlp_width/TP) × dtype bytes: the residual and
hidden states plus the fused gate/up output and the activated MLP input. Llama-3.1-8B PP rank 0 measured
1.05–1.10 GiB against 1.00 GiB from the formula; CodeLlama-7B 0.77 GiB against 0.80 GiB."""

SAMPLER_BYTES_PER_LOGIT = 14.55
SAMPLER_BASE_BYTES = 70 * MIB
"""Profiled sampler peak on the last stage = 70 MiB + max_num_seqs × vocab × 14.55 bytes (fp32 logits,
probabilities and sort buffers). Fitted on granite-3.1-2b (0.75 GiB) and gemma-2-2b (3.62 GiB); predicts
Llama-3.1-8B 1.85 GiB (measured 1.89) and Qwen2.5-7B 2.18 GiB (2.21)."""

NON_TORCH_SINGLE_GPU = int(0.25 * GIB)
NON_TORCH_TENSOR_PARALLEL = int(2.10 * GIB)
NON_TORCH_PIPELINE_ONLY = int(0.07 * GIB)
"""Memory outside PyTorch's allocator that grows during profiling: 0.24–0.26 GiB on one GPU, 2.06–2.13 GiB
with TP > 1 (NCCL and custom all-reduce buffers), 0.07 GiB on a PP rank with TP = 1."""

CUDA_GRAPH_BASE = int(0.38 * GIB)
CUDA_GRAPH_PER_LAYER = int(0.0167 * GIB)
CUDA_GRAPH_MOE_EXTRA = int(0.5 * GIB)
"""CUDA-graph pool captured after the KV cache: 0.38 GiB + 0.0167 GiB per layer (Llama-3.1-8B at PP 1/2/4:
0.91/0.65/0.51 GiB), 0.5 GiB more for MoE models (Qwen1.5-MoE 1.10, DeepSeek-V2-Lite 1.57). ±0.3 GiB."""


@dataclass(frozen=True)
class Degrees:
    """Parallel degrees of one plan."""

    tensor: int = 1
    pipeline: int = 1
    expert: int = 1
    """Ranks the routed experts are spread over (1: every expert sliced over the TP ranks)."""
    data: int = 1

    @property
    def gpus_per_replica(self) -> int:
        """GPUs one serving engine uses: TP × PP, times the attention data-parallel ranks under wide EP."""
        return self.tensor * self.pipeline * max(1, self.expert // self.tensor)

    @property
    def total_gpus(self) -> int:
        return self.gpus_per_replica * self.data


@dataclass(frozen=True)
class ServingSettings:
    """The vLLM settings the estimate depends on."""

    dtype: str
    weights: WeightFormat
    kv_cache_bytes_per_element: int
    gpu_memory_utilization: float = DEFAULT_GPU_MEMORY_UTILIZATION
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS


@dataclass(frozen=True)
class StageMemory:
    """Memory of one GPU of one pipeline stage, in bytes."""

    stage: int
    first_layer: int
    num_layers: int
    weights: int
    activations: int
    non_torch: int
    cuda_graphs: int
    kv_cache: int
    """What vLLM allocates for the KV cache on this GPU (negative: the budget is exceeded)."""
    kv_bytes_per_token: int
    """Attention KV bytes per token on this GPU (indexer keys included; group padding included when the
    stage has no state layers)."""
    kv_bytes_per_sequence: int
    """KV bytes one sequence of the planned length needs on this GPU (sliding-window layers capped, recurrent
    states added)."""
    concurrent_sequences: int
    """Sequences of the planned length this GPU's cache holds at once."""
    layout: KVLayout | None = None
    """The page/block layout when the stage has recurrent-state layers; None for attention-only stages,
    whose capacity is counted per token."""

    @property
    def overhead(self) -> int:
        return self.non_torch + self.cuda_graphs

    @property
    def total(self) -> int:
        return self.weights + self.activations + self.overhead + max(0, self.kv_cache)

    @property
    def kv_cache_tokens(self) -> int:
        if self.layout is not None:
            return self.layout.tokens(self.kv_cache)
        if self.kv_cache <= 0 or self.kv_bytes_per_token == 0:
            return 0
        blocks = self.kv_cache // (self.kv_bytes_per_token * KV_BLOCK_SIZE)
        return blocks * KV_BLOCK_SIZE

    @property
    def kv_cache_blocks(self) -> int:
        """Blocks of vLLM's pool on this GPU (for a stage with state layers, each holds one sequence's state
        in a state group)."""
        if self.layout is not None:
            return self.layout.num_blocks(self.kv_cache)
        return self.kv_cache_tokens // KV_BLOCK_SIZE

    @property
    def running_limit(self) -> int:
        """Sequences that can run at once at all (one block each in every group): the largest
        ``max_num_seqs`` that fits."""
        if self.layout is not None:
            return self.layout.running_limit(self.kv_cache)
        return self.kv_cache_blocks


@dataclass(frozen=True)
class InferenceEstimate:
    """Memory of every stage of one replica, and what the replica can serve."""

    stages: tuple[StageMemory, ...]
    gpu_memory_bytes: int
    budget_bytes: int
    """gpu_memory × gpu_memory_utilization: what vLLM may use before CUDA graphs."""

    @cached_property
    def peak_stage(self) -> StageMemory:
        """The stage that decides: the one with the least KV room."""
        return min(self.stages, key=lambda s: (s.kv_cache_tokens, -s.weights))

    @cached_property
    def kv_cache_tokens(self) -> int:
        """KV capacity of the replica: vLLM unifies the block count to the smallest stage's."""
        return min(stage.kv_cache_tokens for stage in self.stages)

    @cached_property
    def max_concurrent_sequences(self) -> int:
        """Whole sequences of the planned length the replica's KV cache holds at once."""
        return min(s.concurrent_sequences for s in self.stages)

    @cached_property
    def max_num_seqs_limit(self) -> int:
        """The largest ``--max-num-seqs`` every stage can hold (vLLM refuses to start past the state blocks)."""
        return min(s.running_limit for s in self.stages)


def pipeline_partition(num_layers: int, pipeline: int) -> list[int]:
    """Layers per stage as vLLM splits them (``get_pp_indices``): even shares, the remainder going to the
    stages before the last, from the second-to-last backwards, so the last stage (lm_head) stays light."""
    sizes = [num_layers // pipeline] * pipeline
    for i in range(2, num_layers % pipeline + 2):
        sizes[-i] += 1
    return sizes


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


MXFP4_HIDDEN_ALIGN = 256
MXFP4_INTERMEDIATE_ALIGN = 128
"""vLLM's MXFP4 MoE kernels on Hopper pad the hidden size to 256 and each rank's expert width to 128
(``Mxfp4MoEMethod``): gpt-oss-20b's 2880 → 3072 and, at TP=2, 1440 → 1536 (measured 7.01 GiB per GPU)."""


def _expert_padding(shape: ModelShape, d: Degrees, s: ServingSettings) -> float:
    if s.weights.name != "mxfp4" or not shape.moe_intermediate_size:
        return 1.0
    width = shape.moe_intermediate_size // (d.tensor if d.expert == 1 else 1)
    return (_round_up(shape.hidden_size, MXFP4_HIDDEN_ALIGN) / shape.hidden_size) * (
        _round_up(width, MXFP4_INTERMEDIATE_ALIGN) / width
    )


def _layer_bytes(layer: LayerParams, kv_heads: int, shape: ModelShape, d: Degrees, s: ServingSettings) -> float:
    linear = s.weights if not s.weights.experts_only else WeightFormat(s.dtype, DTYPE_BYTES[s.dtype] * 8)
    kv_share = max(1, kv_heads // d.tensor) / kv_heads if kv_heads else 0
    expert_share = 1 / d.expert if d.expert > 1 else 1 / d.tensor
    return (
        linear.bytes_for(layer.sharded // d.tensor)
        + linear.bytes_for(int(layer.kv * kv_share))
        + linear.bytes_for(layer.replicated_linear)
        + s.weights.bytes_for(int(layer.experts * expert_share)) * _expert_padding(shape, d, s)
        + layer.small * DTYPE_BYTES[s.dtype]
    )


@dataclass(frozen=True)
class _LayerTables:
    """Prefix sums over layers, so a stage of any split costs O(1) to evaluate."""

    weights: tuple[float, ...]
    kv_per_token: tuple[int, ...]
    """Attention KV bytes per token."""
    layer_token_bytes: tuple[int, ...]
    """Per layer (not a prefix sum), the KV bytes per token of its widest attention cache."""
    kv_per_sequence: tuple[int, ...]
    """KV bytes of one sequence of the planned length (windows capped, recurrent states included)."""
    attention: tuple[int, ...]
    """Prefix count of attention caches."""
    windowed: tuple[int, ...]
    """Prefix count of attention caches that keep a bounded window (sliding or chunked-local)."""
    states: tuple[int, ...]
    """Prefix count of recurrent-state caches."""

    def span(self, table: tuple[float, ...] | tuple[int, ...], first: int, count: int) -> float:
        return table[first + count] - table[first]


def _cache_bytes(cache: LayerCache, tp: int, settings: ServingSettings, seq: int) -> tuple[int, int]:
    """(bytes per token, bytes per sequence of ``seq`` tokens) of one cache on one TP rank."""
    if isinstance(cache, RecurrentState):
        return 0, cache.bytes_per_sequence(tp, settings.dtype)
    per_token = cache.bytes_per_token(tp, settings.kv_cache_bytes_per_element)
    return per_token, per_token * min(seq, cache.tokens_kept or seq)


def _prefix_count(shape: ModelShape, kind: type, windowed: bool = False) -> tuple[int, ...]:
    def counted(cache: LayerCache) -> bool:
        if not isinstance(cache, kind):
            return False
        return not windowed or (isinstance(cache, AttentionGeometry) and cache.tokens_kept is not None)

    return (0, *accumulate(sum(counted(c) for c in layer) for layer in shape.caches))


@lru_cache(maxsize=4096)
def _layer_tables(shape: ModelShape, tp: int, ep: int, settings: ServingSettings, seq: int) -> _LayerTables:
    degrees = Degrees(tp, 1, ep)
    weights = [
        _layer_bytes(layer, shape.layer_kv_heads(i), shape, degrees, settings) for i, layer in enumerate(shape.layers)
    ]
    sizes = [[_cache_bytes(c, tp, settings, seq) for c in layer] for layer in shape.caches]
    return _LayerTables(
        weights=(0.0, *accumulate(weights)),
        kv_per_token=(0, *accumulate(sum(t for t, _ in layer) for layer in sizes)),
        layer_token_bytes=tuple(max((t for t, _ in layer), default=0) for layer in sizes),
        kv_per_sequence=(0, *accumulate(sum(q for _, q in layer) for layer in sizes)),
        attention=_prefix_count(shape, AttentionGeometry),
        windowed=_prefix_count(shape, AttentionGeometry, windowed=True),
        states=_prefix_count(shape, RecurrentState),
    )


def _stage_weights(
    shape: ModelShape,
    d: Degrees,
    s: ServingSettings,
    tables: _LayerTables,
    stage: int,
    first: int,
    count: int,
) -> int:
    dtype_bytes = DTYPE_BYTES[s.dtype]
    vocab_rows = _round_up(shape.vocab_size, VOCAB_PADDING) // d.tensor
    total = tables.span(tables.weights, first, count)
    total += shape.max_position_embeddings * shape.rotary_dim * dtype_bytes  # rotary cos/sin cache
    if stage == 0:
        extra = shape.embedding_params - shape.vocab_size * shape.hidden_size
        total += (vocab_rows * shape.hidden_size + extra + shape.extra_params // d.tensor) * dtype_bytes
    if stage == d.pipeline - 1:
        # A tied lm_head is free on a single stage; the last of several stages keeps its own copy.
        lm_head = shape.lm_head_params or (shape.vocab_size * shape.hidden_size if d.pipeline > 1 else 0)
        if lm_head:
            total += vocab_rows * shape.hidden_size * dtype_bytes
        total += shape.final_norm_params * dtype_bytes
    return int(total)


def _stage_activations(shape: ModelShape, d: Degrees, s: ServingSettings, last: bool) -> int:
    dtype_bytes = DTYPE_BYTES[s.dtype]
    width = FORWARD_HIDDEN_FACTOR * shape.hidden_size + FORWARD_MLP_FACTOR * shape.intermediate_size // d.tensor
    forward = s.max_num_batched_tokens * width * dtype_bytes
    if not last:
        return forward
    sampler = SAMPLER_BASE_BYTES + s.max_num_seqs * shape.vocab_size * SAMPLER_BYTES_PER_LOGIT
    return int(max(forward, sampler))


def _non_torch(d: Degrees) -> int:
    if d.tensor > 1 or d.expert > 1:
        return NON_TORCH_TENSOR_PARALLEL
    return NON_TORCH_PIPELINE_ONLY if d.pipeline > 1 else NON_TORCH_SINGLE_GPU


def estimate_inference(
    shape: ModelShape,
    degrees: Degrees,
    settings: ServingSettings,
    gpu_memory_bytes: int,
    sequence_length: int,
) -> InferenceEstimate:
    """Per-stage memory of one replica of ``shape`` under ``degrees`` on GPUs of ``gpu_memory_bytes``."""
    budget = int(gpu_memory_bytes * settings.gpu_memory_utilization)
    tables = _layer_tables(shape, degrees.tensor, degrees.expert, settings, sequence_length)
    stages = []
    first = 0
    for stage, count in enumerate(pipeline_partition(shape.num_layers, degrees.pipeline)):
        weights = _stage_weights(shape, degrees, settings, tables, stage, first, count)
        activations = _stage_activations(shape, degrees, settings, last=stage == degrees.pipeline - 1)
        non_torch = _non_torch(degrees)
        graphs = CUDA_GRAPH_BASE + CUDA_GRAPH_PER_LAYER * count + (CUDA_GRAPH_MOE_EXTRA if shape.is_moe else 0)
        kv_cache = budget - weights - activations - non_torch
        per_token = int(tables.span(tables.kv_per_token, first, count))
        per_sequence = int(tables.span(tables.kv_per_sequence, first, count))
        layout = None
        if tables.span(tables.states, first, count):
            caches = [c for layer in shape.caches[first : first + count] for c in layer]
            layout = hybrid_layout(caches, degrees.tensor, settings.dtype, settings.kv_cache_bytes_per_element)
            sequences = layout.sequences(kv_cache, sequence_length)
        else:
            attention = int(tables.span(tables.attention, first, count))
            windowed = int(tables.span(tables.windowed, first, count))
            if 0 < windowed < attention:
                # Full and windowed layers: pages are counted over padded layer groups, every page as large as the
                # widest layer's (vLLM gives layers of narrower pages more tokens per block: gemma-4's global layers).
                widest = max(tables.layer_token_bytes[first : first + count])
                per_token = hybrid_layer_slots(attention - windowed, windowed) * widest
            sequences = max(0, kv_cache) // per_sequence if per_sequence else 0
        stages.append(
            StageMemory(
                stage=stage,
                first_layer=first,
                num_layers=count,
                weights=weights,
                activations=activations,
                non_torch=non_torch,
                cuda_graphs=graphs,
                kv_cache=kv_cache,
                kv_bytes_per_token=per_token,
                kv_bytes_per_sequence=per_sequence,
                concurrent_sequences=sequences,
                layout=layout,
            )
        )
        first += count
    return InferenceEstimate(tuple(stages), gpu_memory_bytes, budget)


def kv_bytes_per_sequence(shape: ModelShape, settings: ServingSettings, sequence_length: int, tp: int = 1) -> int:
    """KV and state bytes one sequence of ``sequence_length`` needs over all layers on one TP rank."""
    return int(_layer_tables(shape, tp, 1, settings, sequence_length).kv_per_sequence[-1])
