"""Pairs from the dataflow of a traced model: hand-written models laid out any way, the rules for reshapes, what
the report says of each layer, the fallback when a model does not trace, and the figures of every catalog model
against those recorded before the dataflow analysis existed. One process, no distributed backend."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path
from types import ModuleType

import pytest
import torch
import transformers
from torch import nn

from autoparallel.parallel import TPStyle, analyze_tp, estimate_tp_memory
from autoparallel.parallel.tp_shapes import reshape_split
from autoparallel.parallel.tp_styles import fused_order, inverse_order
from autoparallel.planner.metacount import build_meta_model
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

pytestmark = pytest.mark.torch

CATALOG = Path(__file__).parents[2] / "operator" / "autoparallel" / "planner" / "models"
MODELS_FILE = Path(__file__).parents[1] / "integration" / "tp_workers" / "models.py"

PARALLELIZABLE_BEFORE = {
    "Qwen/Qwen2.5-14B": 99.997,
    "Qwen/Qwen2.5-32B": 99.998,
    "Qwen/Qwen2.5-32B-Instruct": 99.998,
    "Qwen/Qwen2.5-72B": 99.998,
    "Qwen/Qwen2.5-7B": 99.997,
    "Qwen/Qwen2.5-7B-Instruct": 99.997,
    "Qwen/Qwen3-14B": 99.997,
    "Qwen/Qwen3-235B-A22B": 3.38,
    "Qwen/Qwen3-30B-A3B": 5.006,
    "Qwen/Qwen3-30B-A3B-Instruct-2507": 5.006,
    "Qwen/Qwen3-32B": 99.998,
    "Qwen/Qwen3-4B": 99.995,
    "Qwen/Qwen3-8B": 99.996,
    "RedHatAI/Meta-Llama-3.1-8B-Instruct-FP8-dynamic": 99.997,
    "TheBloke/Llama-2-7B-AWQ": 99.996,
    "TheBloke/Llama-2-7B-GPTQ": 99.996,
    "deepseek-ai/DeepSeek-R1": 2.535,
    "deepseek-ai/DeepSeek-V2-Lite": 6.524,
    "deepseek-ai/DeepSeek-V3": 2.535,
    "google/gemma-2-2b-it": 99.991,
    "google/gemma-2-9b": 99.993,
    "google/gemma-3-1b-it": 99.987,
    "google/gemma-3-27b-it": 99.952,
    "google/gemma-7b": 99.998,
    "ibm-granite/granite-3.3-8b-instruct": 99.996,
    "meta-llama/Llama-2-13b-hf": 99.997,
    "meta-llama/Llama-2-70b-hf": 99.998,
    "meta-llama/Llama-2-7b-hf": 99.996,
    "meta-llama/Llama-3.1-405B": 99.999,
    "meta-llama/Llama-3.1-70B": 99.998,
    "meta-llama/Llama-3.1-70B-Instruct": 99.998,
    "meta-llama/Llama-3.1-8B-Instruct": 99.997,
    "meta-llama/Llama-3.2-1B": 99.995,
    "meta-llama/Llama-3.2-1B-Instruct": 99.995,
    "meta-llama/Llama-3.2-3B": 99.995,
    "meta-llama/Llama-3.2-3B-Instruct": 99.995,
    "meta-llama/Meta-Llama-3-70B": 99.998,
    "meta-llama/Meta-Llama-3-8B": 99.997,
    "meta-llama/Meta-Llama-3.1-8B": 99.997,
    "microsoft/Phi-3-mini-128k-instruct": 92.092,
    "microsoft/Phi-3-mini-4k-instruct": 92.092,
    "microsoft/phi-2": 99.994,
    "microsoft/phi-4": 82.115,
    "mistralai/Mistral-7B-Instruct-v0.3": 99.996,
    "mistralai/Mistral-7B-v0.1": 99.996,
    "mistralai/Mixtral-8x22B-v0.1": 3.787,
    "mistralai/Mixtral-8x7B-v0.1": 3.435,
    "openai-community/gpt2": 31.017,
    "openai/gpt-oss-20b": 8.585,
    "tiiuae/falcon-40b": 79.279,
    # Added with the hybrid catalog entries (issue 12), recorded with the dataflow analysis itself.
    "deepseek-ai/DeepSeek-V3.2": 99.968,
    "moonshotai/Kimi-Linear-48B-A3B-Instruct": 98.264,
    "nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16": 99.145,
    "nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8": 98.747,
    "openai/gpt-oss-120b": 99.261,
    "zai-org/GLM-4.5": 99.958,
    "Qwen/Qwen3.5-35B-A3B": 98.484,
    "Qwen/Qwen3.6-27B": 79.405,
    "google/gemma-4-26B-A4B": 99.347,
    "moonshotai/Kimi-K2-Instruct": 99.619,
}
"""``parallelizable_percentage`` of every catalog model (rounded to 0.001) from the module-structure analysis
this one replaced, recorded with ``tp-analyze`` before the change."""


@cache
def _models() -> ModuleType:
    """The tiny models the conversion test runs on ranks (``tests/integration/tp_workers/models.py``)."""
    spec = importlib.util.spec_from_file_location("tp_models", MODELS_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _catalog_ids() -> set[str]:
    """The catalog's models, one per config file (aliases share a file)."""
    return {path.stem.replace("__", "/") for path in CATALOG.glob("*.json") if path.name != "aliases.json"}


# --- reshapes -------------------------------------------------------------------------------------------------


def test_a_split_reshaped_into_heads_becomes_a_split_of_the_heads() -> None:
    assert reshape_split((2, 5, 4096), (2, 5, 32, 128), 2, 4096) == (2, 32)
    assert reshape_split((2, 5, 32, 128), (2, 5, 4096), 2, 32) == (2, 32)  # merged back: still 32 heads
    assert reshape_split((2, 8, 5, 64), (16, 5, 64), 1, 8) is None  # merged under the batch: not contiguous
    assert reshape_split((2, 5, 256), (2, 5, 1, 256), 2, 256) == (2, 1)  # a single KV head: one rank only
    assert reshape_split((2, 4, 2, 5, 8), (2, 8, 5, 8), 1, 4) == (1, 4)  # repeated KV heads keep their count


def test_the_fused_order_gives_each_rank_its_slice_of_every_part() -> None:
    order = fused_order((4, 2, 2), 2)
    assert order.tolist() == [0, 1, 4, 6, 2, 3, 5, 7]
    assert torch.equal(order[inverse_order((4, 2, 2), 2)], torch.arange(8))


# --- hand-written models --------------------------------------------------------------------------------------


def test_a_flat_block_pairs_through_the_norms_between_its_projections() -> None:
    report = analyze_tp(_models().FlatTransformer())
    assert report.parallelizable_percentage > 80
    assert report.traced
    for layer in ("wq", "wk", "wv", "wo"):
        assert report.layer(f"blocks.1.{layer}").pair == "blocks.1.wo"
    for layer in ("w_gate", "w_up", "w_down"):
        assert report.layer(f"blocks.1.{layer}").pair == "blocks.1.w_down"
    assert [report.layer(f"blocks.0.{name}").heads for name in ("wq", "wk", "wo")] == [8, 4, 8]
    norm = report.layer("blocks.0.norm2")
    assert (norm.style, norm.collective) == (TPStyle.NONE, "none")
    assert norm.reason == "RMSNorm: normalises replicated activations (between pairs); replicated"
    assert report.local_attributes == tuple(
        (f"blocks.{index}", name) for index in (0, 1) for name in ("n_heads", "n_kv_heads")
    )
    assert report.valid_world_sizes == (1, 2, 4)  # 4 KV heads
    assert "Total layers: 21 (16 parallelizable, 4 paired blocks" in report.summary()


def test_the_suggested_world_size_follows_the_weights_per_rank_after_the_split() -> None:
    with torch.device("meta"):
        model = _models().FlatTransformer(vocab=32_000, width=4096, layers=8)
    budget = 3 * GIB // 2  # 2.5 GiB of fp32 weights: 1.3 GiB per rank at 2
    report = analyze_tp(model, memory_budget_bytes=budget)
    assert report.per_rank_bytes(2) <= budget < report.per_rank_bytes(1)
    assert report.suggested_world_size == 2
    assert report.recommendations["World size"].startswith("2 rank(s) hold")


def test_fused_projections_cut_by_chunk_or_a_stored_size_split_per_part() -> None:
    report = analyze_tp(_models().FusedTransformer())
    qkv, gate_up = report.layer("blocks.0.qkv"), report.layer("blocks.0.gate_up")
    assert (qkv.style, qkv.pair, qkv.fused_parts, qkv.heads) == (TPStyle.COLUMN, "blocks.0.proj", (32, 32, 32), 4)
    assert qkv.reason.startswith("enters pair blocks.0.proj in blocks.0: fused parts [32, 32, 32], each split")
    assert (gate_up.pair, gate_up.fused_parts) == ("blocks.0.down", (64, 64))
    assert {("blocks.0", "width"), ("blocks.0", "n_head")} <= set(report.local_attributes)
    assert gate_up.divides(4) and not gate_up.divides(3)


def test_moe_experts_split_by_experts_and_per_head_norms_sum_their_gradients() -> None:
    report = analyze_tp(_models().tiny_qwen3_moe())
    experts = report.layer("model.layers.0.mlp.experts")
    assert (experts.style, experts.split_size, experts.collective_width) == (TPStyle.EXPERT, 8, 64)
    assert report.layer("model.layers.0.mlp.gate").reason.endswith("every rank routes every token")
    q_norm = report.layer("model.layers.1.self_attn.q_norm")
    assert (q_norm.inside_block, q_norm.collective) == ("model.layers.1.self_attn", "all-reduce of its gradient")
    assert report.valid_world_sizes == (1, 2, 4)
    assert estimate_tp_memory(report, 8).convertible is False  # 4 KV heads
    assert report.parallelizable_percentage > 98


def test_a_model_that_does_not_trace_with_guessed_inputs_takes_example_inputs() -> None:
    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)

        def forward(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
            return self.down(torch.relu(self.up(x)) * gate)

    guessed = analyze_tp(Gated())
    assert not guessed.traced
    assert guessed.pairing.startswith("module structure (torch.export failed (TypeError")
    example = (torch.zeros(2, 5, 16), torch.ones(2, 5, 1))
    traced = analyze_tp(Gated(), example_inputs=example)
    assert traced.traced
    assert (traced.layer("up").pair, traced.layer("down").style) == ("down", TPStyle.ROW)


def test_a_replicated_activation_with_a_gradient_may_not_meet_split_ones() -> None:
    class Mixer(nn.Module):  # a replicated projection broadcast onto split heads: its gradient would be partial
        def __init__(self) -> None:
            super().__init__()
            self.q, self.shared, self.o = nn.Linear(32, 32), nn.Linear(32, 8, bias=False), nn.Linear(32, 32)
            self.norm = nn.LayerNorm(8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            heads = self.q(x).unflatten(-1, (4, 8))
            shared = self.norm(self.shared(x)).unsqueeze(-2)  # one head's worth, broadcast over the 4 heads
            return self.o((heads * shared).flatten(-2))

    report = analyze_tp(Mixer())
    assert not report.layer("q").paired
    assert "its gradient would be partial" in report.layer("q").reason


def test_modules_the_traced_forward_does_not_reach_pair_by_structure() -> None:
    report = analyze_tp(build_meta_model(resolve_model("google/gemma-3-27b-it").config))
    vision = "model.vision_tower.encoder.layers.3.self_attn"
    assert report.layer(f"{vision}.q_proj").pair == f"{vision}.out_proj"
    assert report.layer(f"{vision}.q_proj").reason.startswith("not reached by the traced forward; by module structure")
    assert report.layer("model.language_model.layers.0.self_attn.q_proj").reason.startswith("enters pair")


def test_a_split_flattened_under_the_tokens_is_refused_with_a_reason() -> None:
    class Flattened(nn.Module):  # Gated DeltaNet's gate: (batch, tokens, heads, dim) → (batch × tokens × heads, dim)
        def __init__(self) -> None:
            super().__init__()
            self.z, self.o = nn.Linear(32, 32), nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            gate = self.z(x).unflatten(-1, (4, 8)).reshape(-1, 8)
            value = x.unflatten(-1, (4, 8)).reshape(-1, 8)
            return self.o((value * torch.sigmoid(gate)).reshape(x.shape))

    report = analyze_tp(Flattened())
    assert report.traced
    assert not report.layer("z").paired
    assert "the reshape merges the split dimension under another dimension" in report.layer("z").reason


def test_gemma4_traces_from_its_token_embedding_past_the_vision_tower() -> None:
    report = analyze_tp(build_meta_model(resolve_model("google/gemma-4-26B-A4B").config))
    assert report.traced, report.pairing
    assert report.layer("model.language_model.layers.5.self_attn.q_proj").reason.startswith("enters pair")


def test_olmo2_meta_model_keeps_its_mlp_pairs() -> None:
    config = transformers.Olmo2Config(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8
    )
    with torch.device("meta"):
        report = analyze_tp(transformers.Olmo2ForCausalLM(config))
    assert report.layer("model.layers.1.mlp.gate_proj").pair == "model.layers.1.mlp.down_proj"
    assert report.layer("model.layers.1.self_attn.o_proj").reason.startswith("no pair (")


# --- the catalog ----------------------------------------------------------------------------------------------


def test_the_recorded_figures_cover_the_catalog() -> None:
    assert set(PARALLELIZABLE_BEFORE) == _catalog_ids()


@pytest.mark.parametrize("model_id", sorted(PARALLELIZABLE_BEFORE))
def test_every_catalog_model_splits_at_least_as_much_as_before(model_id: str) -> None:
    report = analyze_tp(build_meta_model(resolve_model(model_id).config))
    assert report.traced, report.pairing
    assert round(report.parallelizable_percentage, 3) >= PARALLELIZABLE_BEFORE[model_id]
