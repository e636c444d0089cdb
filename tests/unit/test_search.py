"""Constraints, objectives, placement and determinism of the search."""

import pytest

import autoparallel
from autoparallel.planner.constraints import (
    expert_parallel_problem,
    pipeline_parallel_problem,
    tensor_parallel_problem,
)
from autoparallel.planner.resolve import resolve_model

H100_NODE = {"gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 1}
TWO_H100_NODES = {"gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 2}


def test_tensor_parallel_must_divide_heads_and_kv_heads() -> None:
    llama70 = resolve_model("meta-llama/Llama-3.1-70B").shape  # 64 heads, 8 KV heads
    assert tensor_parallel_problem(llama70, 8) is None
    assert tensor_parallel_problem(llama70, 16) is None  # TP a multiple of the KV heads: replicate them
    problem = tensor_parallel_problem(llama70, 3)
    assert problem is not None and "64 attention heads are not divisible by TP=3" in problem
    qwen = resolve_model("Qwen/Qwen2.5-7B").shape  # 28 heads, 4 KV heads
    kv_problem = tensor_parallel_problem(qwen, 14)
    assert kv_problem is not None and "4 KV heads" in kv_problem


def test_pipeline_may_split_unevenly_but_not_beyond_the_layers() -> None:
    gpt2 = resolve_model("openai-community/gpt2").shape  # 12 layers
    assert pipeline_parallel_problem(gpt2, 5) is None
    assert pipeline_parallel_problem(gpt2, 13) == "PP=13: more stages than the 12 layers"


def test_expert_parallel_must_divide_experts() -> None:
    mixtral = resolve_model("mistralai/Mixtral-8x7B-v0.1").shape
    assert expert_parallel_problem(mixtral, 4) is None
    assert expert_parallel_problem(mixtral, 3) == "EP=3: 8 experts are not divisible by EP=3"
    dense = resolve_model("meta-llama/Meta-Llama-3.1-8B").shape
    assert expert_parallel_problem(dense, 2) == "EP=2: the model has no routed experts"


def test_rejections_explain_every_invalid_tp() -> None:
    configs = autoparallel.analyze("meta-llama/Llama-3.1-70B", H100_NODE, explain=True)
    rejected = configs[0]["rejected"]
    assert any("TP=3: 64 attention heads are not divisible by TP=3" in line for line in rejected)
    assert any("TP=1 PP=1" in line and "budget" in line for line in rejected)


def test_minimize_gpus_picks_the_fewest_gpus() -> None:
    configs = autoparallel.analyze("meta-llama/Llama-3.1-70B", TWO_H100_NODES, sequence_length=4096)
    best = configs[0]
    assert best["total_gpus"] == min(c["total_gpus"] for c in configs)
    assert best["total_gpus"] >= 2  # 131 GiB of bf16 weights cannot fit one 80 GB GPU
    assert best["memory_per_gpu_gb"] <= 79.19


def test_maximize_batch_uses_more_replicas() -> None:
    few = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", H100_NODE, objective="minimize_gpus")
    many = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", H100_NODE, objective="maximize_batch")
    assert few["data_parallel"] == 1 and few["total_gpus"] == 1
    assert many["total_gpus"] == 8
    assert many["data_parallel"] * many["max_concurrent_sequences"] > few["max_concurrent_sequences"]


def test_batch_size_sets_the_replicas_needed() -> None:
    small = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", H100_NODE, sequence_length=32768, batch_size=4)
    big = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", H100_NODE, sequence_length=32768, batch_size=40)
    assert small["data_parallel"] == 1
    assert big["data_parallel"] * big["max_concurrent_sequences"] >= 40
    assert big["total_gpus"] > small["total_gpus"]


def test_minimize_cost_prefers_the_cheaper_pool() -> None:
    pools = [
        {"name": "h100", "gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 1},
        {"name": "l4", "gpu_type": "L4", "gpus_per_node": 4, "num_nodes": 2},
    ]
    cheap = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", pools, objective="minimize_cost")
    assert cheap["gpu_type"] == "L4"
    priced = autoparallel.best_config(
        "meta-llama/Meta-Llama-3.1-8B", pools, objective="minimize_cost", prices={"L4": 9.0}
    )
    assert priced["gpu_type"] == "H100-80GB"


def test_balanced_avoids_pipelines_then_minimises_gpus() -> None:
    best = autoparallel.best_config(
        "meta-llama/Llama-3.1-70B", TWO_H100_NODES, objective="balanced", sequence_length=8192, batch_size=64
    )
    fewest = autoparallel.best_config(
        "meta-llama/Llama-3.1-70B", TWO_H100_NODES, objective="minimize_gpus", sequence_length=8192, batch_size=64
    )
    assert best["pipeline_parallel"] == 1 and best["nodes_per_replica"] == 1
    assert fewest["pipeline_parallel"] > 1 and fewest["total_gpus"] < best["total_gpus"]
    configs = autoparallel.analyze(
        "meta-llama/Llama-3.1-70B", TWO_H100_NODES, objective="balanced", sequence_length=8192, batch_size=64
    )
    no_pipeline = [c["total_gpus"] for c in configs if c["pipeline_parallel"] == 1]
    assert no_pipeline == sorted(no_pipeline)


def test_pins_are_respected() -> None:
    best = autoparallel.best_config("meta-llama/Llama-3.1-70B", TWO_H100_NODES, tensor_parallel=8)
    assert best["tensor_parallel"] == 8 and best["pipeline_parallel"] == 1
    pinned = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", TWO_H100_NODES, data_parallel=3)
    assert pinned["data_parallel"] == 3


def test_tensor_parallel_stays_in_a_node_unless_allowed() -> None:
    small_nodes = {"gpu_type": "L4", "gpus_per_node": 4, "num_nodes": 4}
    configs = autoparallel.analyze("meta-llama/Llama-3.1-70B", small_nodes, max_configs=20, explain=True)
    assert all(c["tensor_parallel"] <= 4 for c in configs)
    assert configs[0]["nodes_per_replica"] > 1  # pipeline across nodes instead
    assert "--distributed-executor-backend ray" in configs[0]["deployment_command"]
    crossed = autoparallel.analyze(
        "meta-llama/Llama-3.1-70B", small_nodes, max_configs=50, allow_cross_node_tensor_parallel=True
    )
    assert any(c["tensor_parallel"] > 4 for c in crossed)


def test_free_gpus_per_node_limit_placement() -> None:
    busy = {"gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 2, "free_gpus_per_node": [3, 2]}
    configs = autoparallel.analyze("meta-llama/Llama-3.1-70B", busy, max_configs=10)
    assert all(c["gpus_per_replica"] <= 3 for c in configs)


def test_moe_models_can_use_wide_expert_parallelism() -> None:
    configs = autoparallel.analyze("Qwen/Qwen3-30B-A3B", H100_NODE, max_configs=50, objective="maximize_batch")
    wide = [c for c in configs if c["expert_parallel"] > 1]
    assert wide, "expected an EP > 1 candidate"
    assert "--enable-expert-parallel" in wide[0]["deployment_command"]


def test_results_are_deterministic() -> None:
    first = autoparallel.analyze("mistralai/Mixtral-8x7B-v0.1", TWO_H100_NODES, max_configs=10)
    second = autoparallel.analyze("mistralai/Mixtral-8x7B-v0.1", TWO_H100_NODES, max_configs=10)
    assert first == second


@pytest.mark.parametrize("objective", ["minimize_gpus", "maximize_batch", "balanced", "minimize_cost"])
def test_every_objective_returns_a_fitting_plan(objective: str) -> None:
    best = autoparallel.best_config("Qwen/Qwen2.5-72B", TWO_H100_NODES, objective=objective)
    assert best["memory_breakdown"]["kv_cache"] > 0
    assert best["max_concurrent_sequences"] >= 1
    assert best["reason"].startswith(objective)
