"""convert_to_tp on real process groups: torchrun starts 2 and 4 CPU ranks (gloo) running
tp_workers/tp_convert_worker.py, which converts an MLP, a GPT-style transformer, a flat-block transformer (norms
and projections side by side in one module), a transformer with fused qkv and gate_up projections, and
transformers' Llama, Qwen3 (per-head q/k norms, whose gradients must be summed over ranks), GPT-2 (Conv1D, fused
c_attn) and Qwen3-MoE (experts split across the ranks), and writes what it measured; these tests assert on every
rank's report."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from torchrun import torchrun

pytestmark = pytest.mark.torch

WORKER = Path(__file__).parent / "tp_workers" / "tp_convert_worker.py"
EXAMPLE = Path(__file__).parents[2] / "examples" / "parallel" / "tp_convert.py"
MODELS = ("mlp", "gpt", "llama", "qwen3", "flat", "fused", "gpt2", "qwen3_moe")
TOLERANCE = 1e-5


@pytest.fixture(scope="module", params=[2, 4], ids=lambda world: f"world{world}")
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every rank's JSON report from one torchrun launch of the worker."""
    world: int = request.param
    out = tmp_path_factory.mktemp(f"tp{world}")
    torchrun(world, WORKER, str(out))
    reports = [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(world)]
    assert [r["world_size"] for r in reports] == [world] * world
    return reports


@pytest.mark.parametrize("model", MODELS)
def test_outputs_match_the_original(ranks: list[dict[str, Any]], model: str) -> None:
    for report in ranks:
        assert report["models"][model]["output_max_diff"] <= TOLERANCE, (report["rank"], model)


@pytest.mark.parametrize("model", MODELS)
def test_gradients_match_the_original(ranks: list[dict[str, Any]], model: str) -> None:
    for report in ranks:
        assert report["models"][model]["grad_max_diff"] <= TOLERANCE, (report["rank"], model)


@pytest.mark.parametrize("model", MODELS)
def test_each_rank_holds_exactly_its_slice(ranks: list[dict[str, Any]], model: str) -> None:
    for report in ranks:
        result = report["models"][model]
        assert result["dtensor_parameters"] > 0
        assert result["shard_max_diff"] == 0.0, (report["rank"], model)


@pytest.mark.parametrize("model", MODELS)
def test_memory_per_rank_matches_the_estimate(ranks: list[dict[str, Any]], model: str) -> None:
    world = len(ranks)
    for report in ranks:
        result = report["models"][model]
        assert result["local_bytes"] == result["estimated_bytes"], (report["rank"], model)
        assert result["local_bytes"] < result["base_bytes"] * (1 / world + 0.1)


def test_uneven_vocabulary_gives_the_first_ranks_more_rows(ranks: list[dict[str, Any]]) -> None:
    # DTensor chunks like torch.chunk: ⌈vocab / world⌉ rows per rank, the last rank what is left.
    world = len(ranks)
    row_bytes = {"gpt": 32 * 4, "llama": 2 * 64 * 4}  # the GPT's lm_head is tied; the Llama's is not
    for model, vocab in (("gpt", 97), ("llama", 101)):
        chunk = -(-vocab // world)
        extra_rows = chunk - (vocab - (world - 1) * chunk)
        local = [report["models"][model]["local_bytes"] for report in ranks]
        assert local[0] - local[-1] == extra_rows * row_bytes[model] > 0
        assert len(set(local[:-1])) == 1


def test_bias_placement_column_sharded_row_added_once(ranks: list[dict[str, Any]]) -> None:
    placements = ranks[0]["models"]["gpt"]["placements"]
    assert placements["blocks.0.attn.q_proj.weight"] == placements["blocks.0.attn.q_proj.bias"] == "S(0)"
    assert placements["blocks.0.fc.bias"] == "S(0)"
    assert placements["blocks.0.attn.out_proj.weight"] == placements["blocks.0.proj.weight"] == "S(1)"
    assert placements["blocks.0.attn.out_proj.bias"] == placements["blocks.0.proj.bias"] == "R"
    assert placements["wte.weight"] == "S(0)"
    assert placements["wpe.weight"] == placements["blocks.0.ln_1.weight"] == "plain"
    llama = ranks[0]["models"]["llama"]["placements"]
    for name in ("q_proj", "k_proj", "v_proj"):
        assert llama[f"model.layers.1.self_attn.{name}.weight"] == "S(0)"
    assert llama["model.layers.1.self_attn.o_proj.weight"] == llama["model.layers.1.mlp.down_proj.weight"] == "S(1)"
    assert llama["lm_head.weight"] == llama["model.embed_tokens.weight"] == "S(0)"
    qwen3 = ranks[0]["models"]["qwen3"]["placements"]
    assert qwen3["model.layers.0.self_attn.q_norm.weight"] == qwen3["model.layers.0.self_attn.k_norm.weight"] == "plain"


def test_flat_blocks_split_their_projections_and_keep_their_norms(ranks: list[dict[str, Any]]) -> None:
    flat = ranks[0]["models"]["flat"]["placements"]
    for name in ("wq", "wk", "wv", "w_gate", "w_up"):
        assert flat[f"blocks.1.{name}.weight"] == "S(0)"
    assert flat["blocks.1.wo.weight"] == flat["blocks.1.w_down.weight"] == "S(1)"
    assert flat["blocks.1.norm1.weight"] == flat["blocks.1.norm2.weight"] == "plain"


def test_conv1d_and_experts_take_their_own_placements(ranks: list[dict[str, Any]]) -> None:
    gpt2 = ranks[0]["models"]["gpt2"]["placements"]  # Conv1D stores its weight [in, out]
    assert gpt2["transformer.h.0.attn.c_attn.weight"] == gpt2["transformer.h.0.mlp.c_fc.weight"] == "S(1)"
    assert gpt2["transformer.h.0.attn.c_attn.bias"] == "S(0)"
    assert gpt2["transformer.h.0.attn.c_proj.weight"] == gpt2["transformer.h.0.mlp.c_proj.weight"] == "S(0)"
    assert gpt2["transformer.h.0.attn.c_proj.bias"] == "R"
    moe = ranks[0]["models"]["qwen3_moe"]["placements"]
    assert moe["model.layers.0.mlp.experts.gate_up_proj"] == moe["model.layers.0.mlp.experts.down_proj"] == "S(0)"
    assert moe["model.layers.0.mlp.gate.weight"] == "plain"  # the router: every rank routes every token


def test_tied_lm_head_stays_tied_and_global_sizes_become_local(ranks: list[dict[str, Any]]) -> None:
    world = len(ranks)
    expected = {
        "gpt": {"blocks.0.attn.n_head": 4, "blocks.1.attn.n_head": 4},
        "flat": {"blocks.1.n_heads": 8, "blocks.1.n_kv_heads": 4},
        "fused": {"blocks.0.n_head": 4, "blocks.0.width": 32},  # the size qkv is split by
        "gpt2": {"transformer.h.1.attn.num_heads": 4, "transformer.h.1.attn.split_size": 32},
    }
    for report in ranks:
        assert report["models"]["gpt"]["tied_lm_head"] is True
        for model, sizes in expected.items():
            local = report["models"][model]["local_attributes"]
            assert {name: local[name] for name in sizes} == {name: size // world for name, size in sizes.items()}


@pytest.mark.parametrize("model", MODELS)
def test_a_converted_model_is_not_converted_twice(ranks: list[dict[str, Any]], model: str) -> None:
    for report in ranks:
        assert report["models"][model]["second_conversion_same_object"] is True
        assert report["models"][model]["second_conversion_same_parameters"] is True


def test_non_divisible_dimensions_are_rejected_naming_the_layer(ranks: list[dict[str, Any]]) -> None:
    world = len(ranks)
    for report in ranks:
        heads, mlp = report["rejections"]["odd_heads"], report["rejections"]["odd_mlp"]
        assert heads["error"] == (
            "layer 'blocks.0.attn.q_proj' (Linear): the number of attention heads (3 = 36 / head_dim 12) "
            f"must be divisible by the tensor-parallel world size ({world})"
        )
        assert mlp["error"].startswith(
            f"layer '0' (Linear): out_features (33) must be divisible by the tensor-parallel world size ({world})"
        )
        assert heads["untouched"] is True
        assert mlp["untouched"] is True


def test_the_example_converts_and_matches() -> None:
    out = torchrun(2, EXAMPLE).stdout
    lines = re.findall(
        r"rank (\d)/2: max \|logits - original\| = ([\d.e+-]+); weights held ([\d,]+) bytes "
        r"\(estimate ([\d,]+)\)",
        out,
    )
    assert sorted(rank for rank, *_ in lines) == ["0", "1"], out
    for _, difference, held, estimate in lines:
        assert float(difference) <= TOLERANCE
        assert held == estimate
