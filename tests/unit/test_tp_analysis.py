"""Tensor-parallel analysis: the structural pairing rule on shapes, real architectures built on the meta device,
odd shapes, the plan it turns into, and the ``tp-analyze`` command. One process, no distributed backend. The
dataflow pairing on hand-written models and the catalog figures are in ``test_tp_dataflow.py``."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import transformers
from torch import nn
from torch.distributed.tensor import Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from autoparallel.cli import main
from autoparallel.parallel import (
    TensorParallelError,
    TPStyle,
    analyze_tp,
    build_tp_plan,
)
from autoparallel.parallel.tp_structure import LinearShape, Pairing, fallback_style, pair_linears, rank_rows
from autoparallel.planner.metacount import build_meta_model
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

pytestmark = pytest.mark.torch


def _meta(model_id: str) -> nn.Module:
    model: nn.Module = build_meta_model(resolve_model(model_id).config)
    return model


def _styles(report: Any) -> dict[str, str]:
    return {layer.name: str(layer.style) for layer in report.layers}


# --- the pairing rule on shapes -------------------------------------------------------------------------------


def test_grouped_query_attention_pairs_q_k_v_with_o() -> None:
    linears = [
        LinearShape("q", 4096, 4096),
        LinearShape("k", 4096, 1024),
        LinearShape("v", 4096, 1024),
        LinearShape("o", 4096, 4096),
    ]
    assert pair_linears(linears) == (Pairing(("q", "k", "v"), "o", 4096, 4096),)


def test_gated_mlp_pairs_in_any_registration_order() -> None:
    # Meta's original Llama registers w1 (gate), w2 (down), w3 (up); w2 → w3 would pair too, but gathers less.
    linears = [LinearShape("w1", 64, 172), LinearShape("w2", 172, 64), LinearShape("w3", 64, 172)]
    assert pair_linears(linears) == (Pairing(("w1", "w3"), "w2", 64, 172),)


def test_flat_block_with_square_attention_yields_two_pairs() -> None:
    square = [LinearShape(name, 32, 32) for name in ("q", "k", "v", "o")]
    linears = [*square, LinearShape("fc1", 32, 128), LinearShape("fc2", 128, 32)]
    assert pair_linears(linears) == (
        Pairing(("q", "k", "v"), "o", 32, 32),
        Pairing(("fc1",), "fc2", 32, 128),
    )


def test_fused_qkv_does_not_pair_and_narrow_layers_before_a_full_entry_are_left_out() -> None:
    assert pair_linears([LinearShape("qkv", 32, 96), LinearShape("proj", 32, 32)]) == ()
    linears = [LinearShape("router", 32, 8), LinearShape("up", 32, 64), LinearShape("down", 64, 32)]
    assert pair_linears(linears) == (Pairing(("up",), "down", 32, 64),)


def test_seed_shape_heuristic_is_the_fallback() -> None:
    assert fallback_style(768, 3072) is TPStyle.COLUMN
    assert fallback_style(3072, 768) is TPStyle.ROW
    assert fallback_style(768, 1536) is TPStyle.NONE


def test_rank_rows_follow_torch_chunk() -> None:
    assert [rank_rows(97, 4, r) for r in range(4)] == [25, 25, 25, 22]
    assert [rank_rows(5, 4, r) for r in range(4)] == [2, 2, 1, 0]
    assert [rank_rows(64, 8, r) for r in range(8)] == [8] * 8


# --- real architectures on the meta device --------------------------------------------------------------------


def test_llama_70b_is_analysed_on_meta_without_allocating() -> None:
    model = _meta("meta-llama/Llama-3.1-70B")
    report = analyze_tp(model)
    assert all(p.is_meta for p in model.parameters())
    assert report.traced
    assert report.pairing == "dataflow of the torch.export graph, 1 of 80 blocks traced"
    params = sum(p.numel() for p in model.parameters())
    assert report.parameter_count == params == 70_553_706_496
    assert report.total_memory_bytes == 2 * params
    styles = _styles(report)
    for index in (0, 79):
        prefix = f"model.layers.{index}"
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            assert styles[f"{prefix}.{name}"] == "column"
        assert styles[f"{prefix}.self_attn.o_proj"] == styles[f"{prefix}.mlp.down_proj"] == "row"
        assert styles[f"{prefix}.input_layernorm"] == "none"
        assert report.layer(f"{prefix}.self_attn.k_proj").heads == 8
        assert report.layer(f"{prefix}.self_attn.q_proj").heads == 64
        assert report.layer(f"{prefix}.self_attn.o_proj").pair == f"{prefix}.self_attn.o_proj"
        assert report.layer(f"{prefix}.mlp.up_proj").pair == f"{prefix}.mlp.down_proj"
        assert report.layer(f"{prefix}.mlp.up_proj").collective.startswith("none: its output stays split")
        assert report.layer(f"{prefix}.mlp.down_proj").collective == "all-reduce"
    assert styles["model.embed_tokens"] == "vocab"
    assert styles["lm_head"] == "column"
    assert not report.layer("lm_head").paired
    assert report.layer("model.layers.3.mlp.down_proj").block == "model.layers.3.mlp"
    assert report.valid_world_sizes == (1, 2, 4, 8)
    # 131.4 GiB of bf16 weights: 32.9 GiB per rank at 4 fits the default 40 GiB budget, 65.7 GiB at 2 does not.
    assert report.suggested_world_size == 4
    assert report.parallelizable_percentage > 99.99


@pytest.mark.parametrize(
    "model_id",
    [
        "meta-llama/Llama-3.1-70B",
        "meta-llama/Llama-2-7b-hf",
        "mistralai/Mistral-7B-v0.1",
        "Qwen/Qwen2.5-7B",
        "Qwen/Qwen3-8B",
        "google/gemma-2-9b",
        "google/gemma-3-1b-it",
        "ibm-granite/granite-3.3-8b-instruct",
        "microsoft/phi-2",
    ],
)
def test_pairs_agree_with_transformers_tp_plan(model_id: str) -> None:
    model = _meta(model_id)
    report = analyze_tp(model)
    plan: dict[str, str] = model.config.get_text_config().base_model_tp_plan
    expected = {"colwise": "column", "rowwise": "row"}
    checked = 0
    for pattern, style in plan.items():
        if style in expected:
            layer = report.layer("model." + pattern.replace("*", "1"))
            assert (str(layer.style), layer.paired) == (expected[style], True), pattern
            checked += 1
    assert checked >= 6


def test_qwen3_per_head_norms_are_replicated_with_summed_gradients() -> None:
    report = analyze_tp(_meta("Qwen/Qwen3-8B"))
    q_norm = report.layer("model.layers.0.self_attn.q_norm")
    assert q_norm.style is TPStyle.NONE
    assert q_norm.inside_block == "model.layers.0.self_attn"
    assert report.layer("model.layers.0.input_layernorm").inside_block is None
    assert report.layer("model.layers.0.self_attn.q_proj").style is TPStyle.COLUMN


def test_olmo2_norm_over_all_heads_leaves_the_attention_unpaired_and_names_the_op() -> None:
    config = transformers.Olmo2Config(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=8,
        num_key_value_heads=4,
        eos_token_id=1,
    )
    with torch.device("meta"):
        model = transformers.Olmo2ForCausalLM(config)
    report = analyze_tp(model)
    attention = "model.layers.0.self_attn"
    for name, breaking_op in (("q", "mean.dim in {}.q_norm"), ("k", "mean.dim in {}.k_norm"), ("v", "scaled_dot")):
        layer = report.layer(f"{attention}.{name}_proj")  # q_norm and k_norm average over all heads
        assert (layer.style, layer.paired) == (TPStyle.NONE, False)
        assert layer.reason.startswith(f"no pair ({breaking_op.format(attention)}")
    assert report.layer(f"{attention}.q_norm").style is TPStyle.NONE
    assert report.layer("model.layers.0.mlp.down_proj").style is TPStyle.ROW


def test_tied_embeddings_count_once_and_split_together() -> None:
    model = _meta("meta-llama/Llama-3.2-1B")
    report = analyze_tp(model)
    lm_head = report.layer("lm_head")
    assert lm_head.tied_to == "model.embed_tokens"
    assert lm_head.style is TPStyle.COLUMN
    assert lm_head.memory_bytes == lm_head.parameter_count == 0
    assert report.parameter_count == sum(p.numel() for p in model.parameters()) == 1_235_814_400


def test_gpt2_conv1d_layers_pair_and_the_fused_c_attn_splits_per_part() -> None:
    report = analyze_tp(_meta("openai-community/gpt2"))
    attention = report.layer("transformer.h.0.attn.c_attn")
    assert (attention.layer_type, attention.style, attention.paired) == ("Conv1D", TPStyle.COLUMN, True)
    assert attention.fused_parts == (768, 768, 768)  # q, k, v cut by split(self.split_size)
    assert attention.heads == 12
    assert report.layer("transformer.h.0.attn.c_proj").style is TPStyle.ROW
    assert report.layer("transformer.h.0.mlp.c_fc").pair == "transformer.h.0.mlp.c_proj"
    assert ("transformer.h.0.attn", "split_size") in report.local_attributes
    assert ("transformer.h.11.attn", "num_heads") in report.local_attributes
    assert report.layer("transformer.wte").style is TPStyle.VOCAB
    assert report.layer("transformer.wpe").style is TPStyle.NONE  # positions: smaller than the vocabulary
    assert report.parallelizable_percentage > 99
    assert report.valid_world_sizes == (1, 2, 3, 4, 6)  # 12 heads
    assert "Replicated weights" not in report.recommendations


def test_phi3_gate_up_splits_per_part_and_qkv_cut_at_fixed_offsets_falls_back() -> None:
    report = analyze_tp(_meta("microsoft/Phi-3-mini-4k-instruct"))
    qkv, gate_up = report.layer("model.layers.0.self_attn.qkv_proj"), report.layer("model.layers.0.mlp.gate_up_proj")
    # q, k and v are sliced at offsets computed from the config: the local pieces would need the global sizes
    assert (qkv.style, qkv.paired, qkv.collective_width) == (TPStyle.COLUMN, False, 9216)
    assert "at fixed offsets" in qkv.reason
    assert (gate_up.style, gate_up.paired, gate_up.fused_parts) == (TPStyle.COLUMN, True, (8192, 8192))  # chunk(2)
    assert report.layer("model.layers.0.mlp.down_proj").pair == "model.layers.0.mlp.down_proj"
    assert report.layer("model.layers.0.self_attn.o_proj").style is TPStyle.NONE
    assert report.recommendations["Unpaired layers"].startswith("32 linear layer(s) split on their own")


def test_mixtral_experts_split_by_experts_with_the_router_replicated() -> None:
    report = analyze_tp(_meta("mistralai/Mixtral-8x7B-v0.1"))
    experts = report.layer("model.layers.0.mlp.experts")
    assert (experts.style, experts.split_size, experts.block) == (TPStyle.EXPERT, 8, "model.layers.0.mlp")
    assert experts.reason.startswith("8 experts split across the ranks (expert parallel)")
    assert experts.collective == "all-reduce"
    assert experts.rank_bytes(8) == experts.memory_bytes // 8
    router = report.layer("model.layers.0.mlp.gate")
    assert router.style is TPStyle.NONE
    assert "router" in router.reason
    assert report.layer("model.layers.0.self_attn.o_proj").style is TPStyle.ROW
    assert report.parallelizable_percentage > 99.9
    assert report.recommendations["Parallelization"].startswith("Highly recommended")
    # 87 GiB of bf16 weights: 21.8 GiB per rank at 4 fits the default 40 GiB budget, 43.6 GiB at 2 does not.
    assert report.suggested_world_size == 4
    assert report.per_rank_bytes(4) <= 40 * GIB < report.per_rank_bytes(2)


def test_budget_and_max_world_size_move_the_suggestion() -> None:
    model = _meta("meta-llama/Llama-3.1-70B")
    assert analyze_tp(model, memory_budget_bytes=20 * GIB).suggested_world_size == 8
    assert analyze_tp(model, memory_budget_bytes=200 * GIB).suggested_world_size == 1
    capped = analyze_tp(model, max_world_size=2)
    assert capped.suggested_world_size == 2
    assert capped.recommendations["World size"].startswith("does not fit: at 2 ranks")


# --- hand-written modules and odd shapes ----------------------------------------------------------------------


class _Scaled(nn.Linear):
    """A Linear carrying an extra parameter (as adapters do): DTensor's styles cannot split it."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        self.scale = nn.Parameter(torch.ones(out_features))


class _Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(20, 30)
        self.down = nn.Linear(30, 20)
        self.conv = nn.Conv2d(3, 128, 3)
        self.wide = nn.Linear(20, 50)
        self.narrow = nn.Linear(50, 20)
        self.gain = nn.Parameter(torch.ones(20))


def test_odd_shapes_limit_the_valid_world_sizes() -> None:
    report = analyze_tp(_Odd())  # no forward: the pairs come from the module structure, and the report says why
    assert not report.traced
    assert 'missing the required "forward" function' in report.pairing
    assert report.recommendations["Pairing"].startswith("found from the module structure")
    styles = _styles(report)
    # Two pairs in the root block: up (20→30) with down, wide (20→50) with narrow; only divisors of 30 and 50.
    assert (styles["up"], styles["down"], styles["wide"], styles["narrow"]) == ("column", "row", "column", "row")
    assert report.layer("narrow").block == report.layer("up").block == ""
    assert report.valid_world_sizes == (1, 2, 5)
    assert report.recommendations["Divisibility"].startswith("up (width 30) does not divide by 4")
    assert styles["conv"] == "none"
    assert "Linear and Embedding" in report.layer("conv").reason
    assert styles[""] == "none"  # the root's own parameter
    assert report.total_memory_bytes == 4 * sum(p.numel() for p in _Odd().parameters())


def test_unpaired_linears_use_the_shape_rule_and_gather() -> None:
    model = nn.ModuleDict({"expand": nn.Linear(8, 40), "square": nn.Linear(8, 8), "reduce": nn.Linear(40, 4)})
    report = analyze_tp(model)
    assert [(layer.name, str(layer.style), layer.paired) for layer in report.layers] == [
        ("expand", "column", False),
        ("square", "none", False),
        ("reduce", "row", False),
    ]
    assert report.layer("expand").collective_width == 40
    assert report.valid_world_sizes == tuple(range(1, 9))  # unpaired splits may be uneven


def test_a_layer_that_cannot_split_row_wise_leaves_its_column_unpaired() -> None:
    model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), _Scaled(64, 16))
    report = analyze_tp(model)
    first, last = report.layer("0"), report.layer("2")
    assert (first.style, first.paired, first.collective) == (TPStyle.COLUMN, False, "all-gather")
    assert first.reason.startswith("no pair (linear.default in 2: it contracts the split features and is no Linear")
    assert last.style is TPStyle.NONE
    assert last.reason == "_Scaled with parameters beyond weight/bias: replicated"


def test_summary_and_json_report_every_figure() -> None:
    report = analyze_tp(_meta("meta-llama/Llama-3.1-70B"))
    summary = report.summary()
    assert summary.startswith("=== TP Model Analysis ===")
    assert "Total layers: 723 (562 parallelizable, 160 paired blocks" in summary
    assert "Suggested world size: 4 (32.9 GiB of weights per rank, budget 40.0 GiB)" in summary
    assert "  model.layers.*.mlp.down_proj" in summary
    assert "- Parallelization: Highly recommended" in summary
    data = json.loads(json.dumps(report.to_dict()))
    assert data["suggested_world_size"] == 4
    assert len(data["layers"]) == 723
    assert data["layers"][0]["style"] == "vocab"


# --- the plan the conversion applies --------------------------------------------------------------------------


def test_plan_maps_styles_to_dtensor_styles() -> None:
    report = analyze_tp(_meta("meta-llama/Llama-3.2-1B"))
    plan = build_tp_plan(report, 4)
    q, o = plan["model.layers.0.self_attn.q_proj"], plan["model.layers.0.self_attn.o_proj"]
    assert isinstance(q, ColwiseParallel)
    assert q.output_layouts == (Shard(-1),)
    assert isinstance(o, RowwiseParallel)
    assert o.input_layouts == (Shard(-1),)
    embedding, lm_head = plan["model.embed_tokens"], plan["lm_head"]
    assert isinstance(embedding, RowwiseParallel)
    assert embedding.input_layouts == (Replicate(),)
    assert isinstance(lm_head, ColwiseParallel)
    assert lm_head.output_layouts == (Replicate(),)
    assert "model.norm" not in plan
    assert len(plan) == 2 + 16 * 7


def test_plan_rejects_non_divisible_layers_by_name() -> None:
    report = analyze_tp(_meta("Qwen/Qwen2.5-7B"))
    with pytest.raises(TensorParallelError, match=r"layer 'model.layers.0.self_attn.q_proj' \(Linear\): the number"):
        build_tp_plan(report, 8)  # 28 query heads
    odd = analyze_tp(nn.Sequential(nn.Linear(16, 33), nn.ReLU(), nn.Linear(33, 16)))
    with pytest.raises(TensorParallelError, match=r"layer '0' \(Linear\): out_features \(33\) must be divisible"):
        build_tp_plan(odd, 2)
    assert set(build_tp_plan(odd, 3)) == {"0", "2"}


# --- the command ----------------------------------------------------------------------------------------------


def test_tp_analyze_command_prints_the_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tp-analyze", "meta-llama/Llama-3.1-70B", "--world-size", "8"]) == 0
    out = capsys.readouterr().out
    assert "=== TP Model Analysis ===" in out
    assert "=== TP memory at world size 8 ===" in out
    assert "Weights per rank: 16.4 GiB (17,640,734,720 bytes)" in out


def test_tp_analyze_command_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tp-analyze", "meta-llama/Llama-3.2-1B", "--json", "--memory-budget-gib", "1"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "meta-llama/Llama-3.2-1B"
    assert data["analysis"]["suggested_world_size"] == 4
    assert data["memory"]["world_size"] == 4
    assert data["memory"]["memory_per_rank_bytes"] < GIB


def test_tp_analyze_command_rejects_a_bad_world_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tp-analyze", "meta-llama/Llama-3.2-1B", "--world-size", "0"]) == 2
    assert "--world-size: must be at least 1" in capsys.readouterr().err
