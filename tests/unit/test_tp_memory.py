"""The TP memory estimate: its own arithmetic, and agreement with the planner's weights for the same model.

The planner (``estimate_inference(...).stages[0].weights`` on one pipeline stage) counts what vLLM loads on
one GPU; the estimate counts what DTensor puts on one rank. They agree byte for byte once the planner's
rotary cos/sin cache (a buffer, not a parameter) is taken out — except for biases of column layers, which
the planner keeps whole (``LayerParams.small``) while DTensor (and vLLM's QKVParallelLinear) split them with
the output features: Qwen2.5-7B's q/k/v biases are that whole difference, to the byte.
"""

from __future__ import annotations

from functools import cache

import pytest
from torch import nn

from autoparallel.parallel import TPAnalysisReport, analyze_tp, estimate_tp_memory
from autoparallel.parallel.tp_memory import DEFAULT_TOKENS
from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.inference import Degrees, ServingSettings, estimate_inference
from autoparallel.planner.metacount import build_meta_model
from autoparallel.planner.precision import DTYPE_BYTES, unquantized
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

pytestmark = pytest.mark.torch

WORLD_SIZES = (1, 2, 4, 8)


@cache
def _analysis(model_id: str) -> TPAnalysisReport:
    return analyze_tp(build_meta_model(resolve_model(model_id).config))


def _planner_weights_without_rotary(model_id: str, tensor_parallel: int) -> int:
    shape = resolve_model(model_id).shape
    settings = ServingSettings(dtype=shape.dtype, weights=unquantized(shape.dtype), kv_cache_bytes_per_element=2)
    stage = estimate_inference(shape, Degrees(tensor=tensor_parallel), settings, 80 * GIB, 2048).stages[0]
    rotary_cache = shape.max_position_embeddings * shape.rotary_dim * DTYPE_BYTES[shape.dtype]
    return stage.weights - rotary_cache


@pytest.mark.parametrize(
    "model_id",
    [
        "meta-llama/Llama-3.1-70B",  # GQA, untied lm_head
        "meta-llama/Llama-3.2-1B",  # tied lm_head (free on one stage in the planner, counted once here)
        "google/gemma-2-9b",  # tied, four norms per layer
        "Qwen/Qwen3-8B",  # per-head q/k norms
    ],
)
@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_weights_per_rank_equal_the_planners(model_id: str, world_size: int) -> None:
    estimate = estimate_tp_memory(_analysis(model_id), world_size)
    assert estimate.memory_per_rank_bytes == _planner_weights_without_rotary(model_id, world_size)


@pytest.mark.parametrize("world_size", WORLD_SIZES)
def test_qwen2_differs_from_the_planner_by_its_split_qkv_biases_only(world_size: int) -> None:
    config = resolve_model("Qwen/Qwen2.5-7B").config
    head_dim = config.hidden_size // config.num_attention_heads
    q_bias, kv_bias = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    # Per rank: q's bias split evenly, k/v's by KV heads, one whole head each when heads < ranks (vLLM's rule).
    kv_heads_per_rank = max(1, config.num_key_value_heads // world_size)
    split_bias = q_bias // world_size + 2 * kv_heads_per_rank * head_dim
    difference = (q_bias + 2 * kv_bias - split_bias) * config.num_hidden_layers * 2  # bf16 bytes
    estimate = estimate_tp_memory(_analysis("Qwen/Qwen2.5-7B"), world_size)
    planner = _planner_weights_without_rotary("Qwen/Qwen2.5-7B", world_size)
    assert planner - estimate.memory_per_rank_bytes == difference
    assert difference / planner < 2e-4
    # 4 KV heads and 28 query heads: only 1, 2 and 4 ranks can be converted.
    assert estimate.convertible == (world_size in (1, 2, 4))


def test_llama_70b_figures() -> None:
    report = _analysis("meta-llama/Llama-3.1-70B")
    one, eight = estimate_tp_memory(report, 1), estimate_tp_memory(report, 8)
    assert one.base_memory_bytes == eight.base_memory_bytes == 141_107_412_992
    assert one.memory_per_rank_bytes == one.base_memory_bytes
    assert one.communication_buffer_bytes == 0
    assert one.memory_savings_percentage == 0.0
    assert eight.memory_per_rank_bytes == 17_640_734_720
    assert eight.rank_memory_bytes == (17_640_734_720,) * 8  # 128,256 rows split evenly
    # The widest collective is the lm_head's gathered logits: 2048 tokens × 128,256 × 2 bytes.
    assert eight.communication_buffer_bytes == DEFAULT_TOKENS * 128_256 * 2
    total = eight.memory_per_rank_bytes + eight.communication_buffer_bytes
    assert eight.total_memory_per_rank_bytes == total
    assert eight.memory_savings_percentage == pytest.approx(100 * (1 - total / one.base_memory_bytes))
    assert 87 < eight.memory_savings_percentage < 87.5
    assert "Weights per rank: 16.4 GiB" in eight.summary()


def test_uneven_vocabulary_and_buffers_of_a_small_model() -> None:
    model = nn.ModuleDict(
        {
            "embed": nn.Embedding(97, 16),
            "up": nn.Linear(16, 64),
            "down": nn.Linear(64, 16),
            "head": nn.Linear(16, 97, bias=False),
        }
    )
    estimate = estimate_tp_memory(model, 4, tokens=10)
    embed_rows = [25, 25, 25, 22]  # torch.chunk: ⌈97 / 4⌉ rows, the last rank what is left
    dense = (16 * 64 + 64) // 4 + (64 * 16) // 4 + 16  # up split with its bias; down split, bias whole
    expected = [4 * (2 * rows * 16 + dense) for rows in embed_rows]
    assert estimate.rank_memory_bytes == tuple(expected)
    assert estimate.memory_per_rank_bytes == expected[0]
    assert estimate.communication_buffer_bytes == 10 * 97 * 4  # the head's gathered logits
    assert estimate.convertible


def test_estimate_from_the_model_equals_the_estimate_from_its_report() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8))
    assert estimate_tp_memory(model, 2) == estimate_tp_memory(analyze_tp(model), 2)
    assert estimate_tp_memory(model, 2).rank_memory_bytes == (4 * (4 * 32 + 16 + 4 * 32 + 8),) * 2


def test_estimate_rejects_nonsense() -> None:
    model = nn.Linear(4, 4)
    with pytest.raises(InvalidConfigurationError, match="world_size: must be at least 1"):
        estimate_tp_memory(model, 0)
    with pytest.raises(InvalidConfigurationError, match="tokens: must be at least 1"):
        estimate_tp_memory(model, 2, tokens=0)


def test_kv_heads_fewer_than_ranks_are_replicated_and_the_estimate_says_so() -> None:
    report = _analysis("meta-llama/Llama-3.1-70B")  # 8 KV heads
    sixteen = estimate_tp_memory(report, 16)
    layers = {name.rsplit(".", 1)[-1] for name in sixteen.replicated_heads}
    assert (len(sixteen.replicated_heads), layers) == (160, {"k_proj", "v_proj"})
    k_proj = report.layer("model.layers.0.self_attn.k_proj")
    assert k_proj.rank_bytes(16) == k_proj.memory_bytes // 8  # one whole KV head on each rank
    assert not sixteen.convertible
    assert "KV heads replicated: 160 layer(s) have fewer heads than ranks" in sixteen.summary()
    assert sixteen.to_dict()["replicated_heads"][0] == "model.layers.0.self_attn.k_proj"
    assert estimate_tp_memory(report, 8).replicated_heads == ()
