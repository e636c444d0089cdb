"""Input handling (issue 12): quantization semantics, checkpoint formats, architectures, malformed input, honest
answers about GPUs, prices, defaults and advice."""

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from autoparallel.controller.inventory import Inventory
from autoparallel.controller.models import ParallelDeploymentSpec
from autoparallel.controller.planning import PlanFailure, plan_deployment
from autoparallel.planner import analyze, check_memory_requirements, estimate_cost
from autoparallel.planner.cluster import NodePool
from autoparallel.planner.errors import AutoParallelError, InsufficientMemoryError, InvalidConfigurationError
from autoparallel.planner.precision import checkpoint_format
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

CONFIGS = Path(__file__).parents[1] / "data" / "configs"
REPO = Path(__file__).parents[2]
H100 = {"gpu_type": "H100-80GB", "gpus_per_node": 8}
TINY: dict[str, Any] = {
    "model_type": "llama",
    "hidden_size": 512,
    "num_attention_heads": 8,
    "num_hidden_layers": 4,
    "vocab_size": 1000,
    "intermediate_size": 1024,
    "max_position_embeddings": 4096,
}


def config(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((CONFIGS / f"{name}.json").read_text())
    return loaded


# A. quantization is a load-time method; weight_format a pre-quantized checkpoint.


@pytest.mark.parametrize("legacy", ["awq", "gptq", "int4", "int8"])
def test_checkpoint_formats_are_refused_as_quantization_naming_weight_format(legacy: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=rf"quantization: '{legacy}' is a checkpoint format.*weight"):
        analyze("Qwen/Qwen2.5-7B", H100, quantization=legacy)


def test_weight_format_plans_a_quantized_checkpoint_without_a_bogus_flag() -> None:
    plain = analyze("Qwen/Qwen2.5-7B", H100)[0]
    awq = analyze("Qwen/Qwen2.5-7B", H100, weight_format="awq")[0]
    assert "--quantization" not in awq["deployment_command"]
    assert "requires a checkpoint stored as awq" in awq["reason"]
    assert awq["memory_breakdown"]["weights"] < 0.45 * plain["memory_breakdown"]["weights"]


def test_load_time_methods_pass_vllm_flags() -> None:
    assert "--quantization fp8" in analyze("Qwen/Qwen2.5-7B", H100, quantization="fp8")[0]["deployment_command"]
    bnb = analyze("Qwen/Qwen2.5-7B", H100, quantization="bitsandbytes")[0]
    assert "--quantization bitsandbytes" in bnb["deployment_command"]


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"quantization": "fp8", "weight_format": "int4"}, r"quantization, weight_format: give one"),
        ({"weight_format": "int3"}, r"weight_format: 'int3' is not one of"),
        ({"weight_format": "mxfp4"}, r"weight_format: mxfp4 checkpoints quantize routed experts only"),
        ({"weight_format": "fp8", "workload": "training"}, r"weight_format: applies to inference"),
    ],
)
def test_weight_format_contradictions_are_refused(options: dict[str, Any], pattern: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=pattern):
        analyze("Qwen/Qwen2.5-7B", H100, **options)


def test_a_load_time_method_on_a_quantized_checkpoint_is_refused() -> None:
    with pytest.raises(InvalidConfigurationError, match=r"quantization: .* is already stored as fp8"):
        check_memory_requirements("deepseek-ai/DeepSeek-V3", quantization="bitsandbytes")


def test_old_crd_value_becomes_an_invalid_spec_condition_naming_weight_format() -> None:
    spec = ParallelDeploymentSpec.model_validate({"model": {"name": "Qwen/Qwen2.5-7B", "quantization": "awq"}})
    pool = NodePool("h100", "H100-80GB", 80 * GIB, 8, (8,))
    failure = plan_deployment(spec, Inventory(pools=(pool,), products=(), skipped=()))
    assert isinstance(failure, PlanFailure) and failure.reason == "InvalidSpec"
    assert "weightFormat" in failure.message


# B. checkpoint formats read from quantization_config.


def test_modelopt_fp8_and_nvfp4_checkpoints_are_counted_as_stored() -> None:
    nemotron = config("nvidia__NVIDIA-Nemotron-3-Super-120B-A12B-FP8")
    bf16 = check_memory_requirements(nemotron)["model_size_gb"]
    fp8 = check_memory_requirements(
        {**nemotron, "quantization_config": {"quant_method": "modelopt", "quant_algo": "FP8"}}
    )
    nvfp4 = check_memory_requirements(
        {**nemotron, "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"}}
    )
    assert fp8["weight_format"] == "fp8" and 0.45 < fp8["model_size_gb"] / bf16 < 0.55
    assert nvfp4["weight_format"] == "nvfp4" and 0.25 < nvfp4["model_size_gb"] / bf16 < 0.32


@pytest.mark.parametrize(
    ("quantization_config", "name", "bytes_per_1024"),
    [
        ({"quant_method": "modelopt", "quantization": {"quant_algo": "NVFP4"}}, "nvfp4", 512 + 64),
        ({"quant_method": "modelopt", "quant_algo": "FP8_PB_WO"}, "fp8", 1024 + 4 * 1024 / 16384),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "group_0": {
                        "targets": ["Linear"],
                        "weights": {"num_bits": 4, "type": "float", "strategy": "tensor_group", "group_size": 16},
                    }
                },
            },
            "nvfp4",
            512 + 64,
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {
                    "group_0": {"weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 128}}
                },
            },
            "int4",
            512 + 8 * 2,
        ),
        (
            {
                "quant_method": "compressed-tensors",
                "config_groups": {"group_0": {"weights": {"num_bits": 8, "type": "int", "strategy": "channel"}}},
            },
            "int8",
            1024 + 1024 / 4096 * 2,
        ),
        ({"quant_method": "mxfp4"}, "mxfp4", 512 + 32),
        ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8", 1024 + 4 * 1024 / 16384),
    ],
)
def test_checkpoint_formats(quantization_config: dict[str, Any], name: str, bytes_per_1024: float) -> None:
    stored = checkpoint_format(quantization_config, "bfloat16")
    assert stored is not None and stored.name == name
    assert stored.bytes_for(1024) == pytest.approx(bytes_per_1024)


# C. architectures by `architectures`, as vLLM does.


def test_kimi_k2_is_planned_as_the_deepseek_v3_architecture_vllm_serves() -> None:
    kimi = resolve_model(config("moonshotai__Kimi-K2-Instruct"))
    assert kimi.config.model_type == "deepseek_v3"
    assert kimi.shape.num_layers == 61 and kimi.shape.num_experts == 384
    assert 1.0e12 < kimi.shape.parameter_count < 1.1e12  # Kimi-K2: 1.04 T parameters (model card)


# D. malformed input ends in an AutoParallelError naming the field, fast.

MALFORMED_CONFIGS: list[tuple[str, Any, str]] = [
    ("empty", {}, "model_type"),
    ("no layers", {k: v for k, v in TINY.items() if k != "num_hidden_layers"}, "num_hidden_layers"),
    ("null layers", {**TINY, "num_hidden_layers": None}, "num_hidden_layers"),
    ("zero vocab", {**TINY, "vocab_size": 0}, "vocab_size"),
    ("negative hidden", {**TINY, "hidden_size": -512}, "hidden_size"),
    ("string hidden", {**TINY, "hidden_size": "512"}, "hidden_size"),
    ("float layers", {**TINY, "num_hidden_layers": 4.5}, "num_hidden_layers"),
    ("huge layers", {**TINY, "num_hidden_layers": 10**9}, "num_hidden_layers"),
    ("huge hidden", {**TINY, "hidden_size": 2**40}, "hidden_size"),
    ("heads do not divide", {**TINY, "hidden_size": 100, "num_attention_heads": 7}, "hidden size"),
    ("kv heads above heads", {**TINY, "num_key_value_heads": 16}, "num_key_value_heads"),
    ("kv heads not dividing", {**TINY, "num_key_value_heads": 3}, "num_key_value_heads"),
    ("unknown model_type", {**TINY, "model_type": "wizard"}, "model_type"),
    ("string quantization_config", {**TINY, "quantization_config": "fp8"}, "quantization_config"),
    ("unknown quant_method", {**TINY, "quantization_config": {"quant_method": "magic"}}, "quant_method"),
    ("modelopt algo", {**TINY, "quantization_config": {"quant_method": "modelopt", "quant_algo": "W2"}}, "quant_algo"),
    ("string bits", {**TINY, "quantization_config": {"quant_method": "gptq", "bits": "four"}}, "bits"),
]


@pytest.mark.parametrize(("case", "raw", "field"), MALFORMED_CONFIGS, ids=[c[0] for c in MALFORMED_CONFIGS])
def test_malformed_configs_are_named_errors(case: str, raw: Any, field: str) -> None:
    with pytest.raises(AutoParallelError, match=field):
        check_memory_requirements(raw)


MALFORMED_CLUSTERS: list[tuple[str, Any, str]] = [
    ("nan memory", {"gpu_memory_gb": math.nan, "gpus_per_node": 1}, "gpu_memory_gb"),
    ("inf memory", {"gpu_memory_gb": math.inf, "gpus_per_node": 1}, "gpu_memory_gb"),
    ("negative memory", {"gpu_memory_gb": -80, "gpus_per_node": 1}, "gpu_memory_gb"),
    ("string memory", {"gpu_memory_gb": "80", "gpus_per_node": 1}, "gpu_memory_gb"),
    ("a billion nodes", {"gpu_memory_gb": 80, "gpus_per_node": 8, "num_nodes": 10**9}, "num_nodes"),
    ("a billion GPUs a node", {"gpu_memory_gb": 80, "gpus_per_node": 10**9}, "gpus_per_node"),
    ("zero GPUs", {"gpu_memory_gb": 80, "gpus_per_node": 0}, "gpus_per_node"),
    ("unknown GPU", {"gpu_type": "Z9000", "gpus_per_node": 1}, "gpu_type"),
    ("GPU name not a string", {"gpu_type": 100, "gpus_per_node": 1}, "gpu_type"),
    ("nan price", {"gpu_type": "H100", "gpus_per_node": 1, "price_per_gpu_hour": math.nan}, "price_per_gpu_hour"),
    ("no memory", {"gpus_per_node": 1}, "gpu_memory_gb"),
    ("empty list", [], "cluster"),
    ("a string", "8xH100", "cluster"),
]


@pytest.mark.parametrize(("case", "cluster", "field"), MALFORMED_CLUSTERS, ids=[c[0] for c in MALFORMED_CLUSTERS])
def test_malformed_clusters_are_named_errors(case: str, cluster: Any, field: str) -> None:
    with pytest.raises(InvalidConfigurationError, match=field):
        analyze(TINY, cluster)


def test_the_largest_cluster_accepted_is_planned() -> None:
    """5,000 nodes (Kubernetes' limit) plans; its speed is measured by `make bench`, not asserted here."""
    configs = analyze(TINY, {"gpu_type": "H100", "gpus_per_node": 8, "num_nodes": 5000})
    assert configs and configs[0]["total_gpus"] >= 1


@pytest.mark.parametrize("raw", [{**TINY, "hidden_size": "512"}, {"model_type": "llama"}])
def test_the_operator_turns_a_malformed_inline_config_into_invalid_spec(raw: dict[str, Any]) -> None:
    spec = ParallelDeploymentSpec.model_validate({"model": {"name": "custom/model", "config": raw}})
    pool = NodePool("h100", "H100-80GB", 80 * GIB, 8, (8,))
    failure = plan_deployment(spec, Inventory(pools=(pool,), products=(), skipped=()))
    assert isinstance(failure, PlanFailure) and failure.reason == "InvalidSpec"


def test_a_config_with_auto_map_never_reads_stdin(tmp_path: Path) -> None:
    """Custom code is never offered: the CLI answers with stdin an open pipe nobody writes to."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config("moonshotai__Kimi-K2-Instruct")))
    done = subprocess.run(
        [sys.executable, "-m", "autoparallel.cli", "memory", str(path), "--json"],
        stdin=subprocess.PIPE,
        capture_output=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO / "operator"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert b"custom code" not in done.stdout + done.stderr


# E. honest answers.


def test_a_gpu_family_and_memory_pick_the_matching_product() -> None:
    plan = analyze("Qwen/Qwen2.5-7B", {"gpu_memory_gb": 80, "gpu_architecture": "A100", "gpus_per_node": 1})[0]
    assert plan["gpu_type"] == "A100-80GB" and plan["cost_per_hour_usd"] == 5.12
    other = analyze("Qwen/Qwen2.5-7B", {"gpu_memory_gb": 48, "gpu_architecture": "A100", "gpus_per_node": 1})[0]
    assert other["gpu_type"] == "A100-48GiB" and other["cost_per_hour_usd"] is None


def test_an_unknown_price_is_said_not_zero() -> None:
    unnamed = {"gpu_memory_gb": 80, "gpus_per_node": 1}
    assert analyze("Qwen/Qwen2.5-7B", unnamed)[0]["cost_per_hour_usd"] is None
    cost = estimate_cost("Qwen/Qwen2.5-7B", unnamed)
    assert cost["estimated_monthly_cost_usd"] is None and cost["cost_per_gpu_hour"] is None
    assert "unknown price" in cost["assumptions"]
    with pytest.raises(InvalidConfigurationError, match="objective: minimize_cost needs a price"):
        analyze("Qwen/Qwen2.5-7B", unnamed, objective="minimize_cost")
    priced = estimate_cost("Qwen/Qwen2.5-7B", unnamed, prices={"80GiB-GPU": 2.0})
    assert priced["estimated_monthly_cost_usd"] == 2.0 * 730


def test_the_default_sequence_length_never_exceeds_the_model() -> None:
    assert check_memory_requirements("openai-community/gpt2")["sequence_length"] == 1024
    assert analyze("openai-community/gpt2", H100)[0]["deployment_command"].count("--max-model-len 1024") == 1
    with pytest.raises(InvalidConfigurationError, match="sequence_length: 4096 exceeds the 1024 positions"):
        check_memory_requirements("openai-community/gpt2", 4096)


def test_advice_names_the_cheapest_fix_and_grows_only_what_growing_fixes() -> None:
    with pytest.raises(InsufficientMemoryError) as raised:
        analyze(
            "Qwen/Qwen2.5-14B", {"gpu_memory_gb": 24, "gpus_per_node": 2}, gpu_memory_utilization=0.99, batch_size=4
        )
    message = str(raised.value)
    assert "lower gpu_memory_utilization to 0.95" in message and "--enforce-eager" in message
    assert "smallest cluster" not in message and raised.value.gpus_needed is None
    with pytest.raises(InsufficientMemoryError) as raised:
        analyze("Qwen/Qwen2.5-14B", {"gpu_memory_gb": 24, "gpus_per_node": 2})
    message = str(raised.value)
    assert "cheapest fix on this cluster: raise gpu_memory_utilization to 0.92" in message
    assert "kv_cache_dtype fp8" in message and "the smallest cluster that fits is 4×" in message
