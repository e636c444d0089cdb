"""The public API of seed 001: keys, GiB, commands and precise errors."""

import pytest

import autoparallel
from autoparallel import (
    AutoParallelError,
    InsufficientMemoryError,
    InvalidConfigurationError,
    ModelNotFoundError,
)

CLUSTER = {"gpu_memory_gb": 80, "gpus_per_node": 8, "num_nodes": 2, "gpu_architecture": "H100"}
SEED_KEYS = {
    "tensor_parallel",
    "pipeline_parallel",
    "expert_parallel",
    "data_parallel",
    "total_gpus",
    "memory_per_gpu_gb",
    "memory_utilization",
    "memory_breakdown",
    "deployment_command",
}
SPEC_KEYS = {"kv_cache_tokens", "max_concurrent_sequences", "nodes", "gpu_type", "reason"}


def test_analyze_returns_the_seed_and_spec_keys() -> None:
    configs = autoparallel.analyze("meta-llama/Llama-3.1-70B", CLUSTER, sequence_length=8192, batch_size=64)
    assert 1 <= len(configs) <= 5
    for config in configs:
        assert set(config) >= SEED_KEYS | SPEC_KEYS
        breakdown = config["memory_breakdown"]
        assert set(breakdown) >= {"weights", "activations", "kv_cache", "framework_overhead", "total"}
        parts = sum(v for k, v in breakdown.items() if k != "total")
        assert breakdown["total"] == pytest.approx(parts, abs=0.05)
        assert config["memory_per_gpu_gb"] == pytest.approx(breakdown["total"], abs=0.05)


def test_an_80gb_h100_is_planned_with_the_memory_cuda_sees() -> None:
    config = autoparallel.best_config("meta-llama/Meta-Llama-3.1-8B", CLUSTER)
    assert config["gpu_type"] == "H100-80GB"
    assert config["gpu_memory_gb"] == 79.19


def test_deployment_command_carries_the_planned_flags() -> None:
    config = autoparallel.best_config(
        "meta-llama/Llama-3.1-70B", CLUSTER, sequence_length=8192, tensor_parallel=4, kv_cache_dtype="fp8"
    )
    command = config["deployment_command"]
    assert command.startswith("vllm serve meta-llama/Llama-3.1-70B ")
    assert "--tensor-parallel-size 4 --pipeline-parallel-size 1" in command
    assert "--max-model-len 8192" in command and "--gpu-memory-utilization 0.9" in command
    assert "--kv-cache-dtype fp8" in command


def test_training_plan_and_torchrun_command() -> None:
    config = autoparallel.best_config(
        "meta-llama/Meta-Llama-3.1-8B", CLUSTER, workload="training", sequence_length=4096, batch_size=64
    )
    command = config["deployment_command"]
    assert command.startswith("torchrun --nnodes=")
    assert "-m autoparallel.parallel.train" in command
    assert f"--tensor-parallel {config['tensor_parallel']}" in command
    assert f"--data-parallel {config['data_parallel']}" in command
    assert config["memory_breakdown"]["optimizer_states"] > 0
    assert config["memory_per_gpu_gb"] <= 79.19 * 0.9


def test_check_memory_requirements() -> None:
    result = autoparallel.check_memory_requirements("meta-llama/Meta-Llama-3.1-8B", sequence_length=8192)
    assert result["parameter_count"] == 8_030_261_248
    assert result["model_size_gb"] == pytest.approx(14.99, abs=0.01)  # what vLLM logs as model loading
    assert result["model_size_gb"] < result["minimum_memory_gb"] < result["recommended_memory_gb"]
    assert result["supports_quantization"] is True
    assert "H100-80GB" in result["fits_on"] and "T4" not in result["fits_on"]
    moe = autoparallel.check_memory_requirements("mistralai/Mixtral-8x7B-v0.1")
    assert moe["active_parameter_count"] < moe["parameter_count"]
    quantized = autoparallel.check_memory_requirements("TheBloke/Llama-2-7B-AWQ")
    assert quantized["supports_quantization"] is False and quantized["weight_format"] == "awq"


def test_estimate_cost_uses_prices_that_users_can_override() -> None:
    default = autoparallel.estimate_cost("meta-llama/Llama-3.1-70B", CLUSTER)
    assert set(default) >= {"gpus_needed", "estimated_monthly_cost_usd", "cost_per_gpu_hour", "assumptions"}
    assert default["estimated_monthly_cost_usd"] == pytest.approx(
        default["gpus_needed"] * default["cost_per_gpu_hour"] * 730, rel=0.01
    )
    cheap = autoparallel.estimate_cost("meta-llama/Llama-3.1-70B", CLUSTER, prices={"H100-80GB": 2.0})
    assert cheap["cost_per_gpu_hour"] == 2.0
    assert "caller's prices" in cheap["assumptions"]


def test_unknown_model_lists_the_nearest_ids() -> None:
    with pytest.raises(ModelNotFoundError, match=r"meta-llama/Llama-3.1-70B"):
        autoparallel.analyze("meta-llama/Llama-3.1-70B-typo", CLUSTER)
    assert issubclass(ModelNotFoundError, AutoParallelError)


def test_cluster_too_small_names_the_smallest_cluster_that_fits() -> None:
    tiny = {"gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 1, "free_gpus_per_node": [1]}
    # 131 GiB of weights: two GPUs hold one sequence, three hold the default batch of 32.
    with pytest.raises(InsufficientMemoryError, match=r"smallest cluster that fits is 2× H100-80GB"):
        autoparallel.analyze("meta-llama/Llama-3.1-70B", tiny, batch_size=1)
    with pytest.raises(InsufficientMemoryError, match=r"smallest cluster that fits is 3× H100-80GB"):
        autoparallel.analyze("meta-llama/Llama-3.1-70B", tiny, batch_size=32)


@pytest.mark.parametrize(
    ("cluster", "message"),
    [
        ({"gpu_memory_gb": 80, "num_nodes": 2}, r"cluster\.gpus_per_node: expected an integer from 1 to 72"),
        ({"gpu_memory_gb": -1, "gpus_per_node": 8}, r"cluster\.gpu_memory_gb: expected a positive finite number"),
        ({"gpu_type": "Voodoo5", "gpus_per_node": 8}, r"cluster\.gpu_type: unknown GPU 'Voodoo5'"),
        ({"gpu_type": "L4", "gpus_per_node": 4, "colour": "red"}, r"cluster: unknown key\(s\) colour"),
        (
            {"gpu_type": "L4", "gpus_per_node": 4, "num_nodes": 2, "free_gpus_per_node": [4]},
            r"free_gpus_per_node: expected a list of 2",
        ),
        ([], r"cluster: the list of node pools is empty"),
        ("8xH100", r"cluster: expected a dict"),
    ],
)
def test_malformed_cluster_is_rejected_with_the_field(cluster: object, message: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=message):
        autoparallel.analyze("meta-llama/Meta-Llama-3.1-8B", cluster)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"gpu_memory_utilization": 1.5}, r"gpu_memory_utilization: expected a number in \(0, 1\]"),
        ({"objective": "fastest"}, r"objective: 'fastest' is not one of"),
        ({"quantization": "int3"}, r"quantization: unknown method 'int3'"),
        ({"dtype": "int8"}, r"dtype: 'int8' is not one of"),
        ({"tensor_parallel": 0}, r"tensor_parallel: expected a positive integer"),
        ({"sequence_lenght": 4096}, r"unknown option\(s\) sequence_lenght"),
    ],
)
def test_bad_options_are_rejected_with_the_field(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=message):
        autoparallel.analyze("meta-llama/Meta-Llama-3.1-8B", CLUSTER, **options)


def test_sequence_longer_than_the_model_supports() -> None:
    with pytest.raises(InvalidConfigurationError, match=r"sequence_length: 8192 exceeds the 4096 positions"):
        autoparallel.analyze("meta-llama/Llama-2-7b-hf", CLUSTER, sequence_length=8192)


def test_kv_cache_too_small_for_one_sequence_is_infeasible() -> None:
    # 8B on one 24 GB L4 fits its weights but not one 128k-token sequence.
    l4 = {"gpu_type": "L4", "gpus_per_node": 1, "num_nodes": 1}
    with pytest.raises(InsufficientMemoryError, match="less than one sequence of 131072"):
        autoparallel.analyze("meta-llama/Meta-Llama-3.1-8B", l4, sequence_length=131072, batch_size=1)
