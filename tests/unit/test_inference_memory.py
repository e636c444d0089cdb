"""The inference memory model's rules, each checked on a model where the rule matters."""

import pytest

from autoparallel.planner.inference import (
    Degrees,
    ServingSettings,
    estimate_inference,
    hybrid_layer_slots,
    pipeline_partition,
)
from autoparallel.planner.precision import (
    assumed_checkpoint,
    checkpoint_format,
    kv_cache_bytes,
    resolve_dtype,
    unquantized,
)
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

H100 = int(79.19 * GIB)


def _settings(dtype: str = "bfloat16", kv: str = "auto", util: float = 0.9) -> ServingSettings:
    return ServingSettings(dtype, unquantized(dtype), kv_cache_bytes(kv, dtype), util)


def test_kv_bytes_per_token_gqa() -> None:
    # Llama-3.1-8B: 2 × 32 layers × 8 KV heads × 128 × 2 bytes = 128 KiB per token.
    shape = resolve_model("meta-llama/Meta-Llama-3.1-8B").shape
    stage = estimate_inference(shape, Degrees(), _settings(), H100, 8192).stages[0]
    assert stage.kv_bytes_per_token == 128 * 1024
    fp8 = estimate_inference(shape, Degrees(), _settings(kv="fp8"), H100, 8192).stages[0]
    assert fp8.kv_bytes_per_token == 64 * 1024


def test_kv_heads_replicate_when_tp_exceeds_them() -> None:
    # Llama-3.1-70B has 8 KV heads: at TP=16 each rank still stores one whole head per layer.
    shape = resolve_model("meta-llama/Llama-3.1-70B").shape
    tp8 = estimate_inference(shape, Degrees(tensor=8), _settings(), H100, 4096).stages[0]
    tp16 = estimate_inference(shape, Degrees(tensor=16), _settings(), H100, 4096).stages[0]
    assert tp8.kv_bytes_per_token == tp16.kv_bytes_per_token == 2 * 80 * 1 * 128 * 2


def test_mla_latent_is_replicated_across_tp() -> None:
    # DeepSeek-V3 stores kv_lora_rank + rope dim = 576 elements per layer and token, on every TP rank.
    shape = resolve_model("deepseek-ai/DeepSeek-V3").shape
    for tp in (1, 8):
        stage = estimate_inference(shape, Degrees(tensor=tp, pipeline=2), _settings(), H100, 4096).stages[0]
        assert stage.kv_bytes_per_token == stage.num_layers * 576 * 2


def test_sliding_window_caps_what_one_sequence_needs() -> None:
    # Mistral-7B-v0.1 slides over 4096 tokens on every layer: a 32k sequence needs only 4096 tokens of KV.
    shape = resolve_model("mistralai/Mistral-7B-v0.1").shape
    stage = estimate_inference(shape, Degrees(), _settings(), H100, 32768).stages[0]
    assert stage.kv_bytes_per_sequence == stage.kv_bytes_per_token * 4096


def test_hybrid_models_pay_for_padded_layer_groups() -> None:
    assert hybrid_layer_slots(21, 21) == 42  # gemma-2: equal halves
    assert hybrid_layer_slots(10, 52) == 70  # gemma-3-27b: groups of 10, the sliding type padded to 60
    assert hybrid_layer_slots(0, 32) == 32


def test_weights_split_by_tp_and_pp_as_vllm_does() -> None:
    shape = resolve_model("meta-llama/Meta-Llama-3.1-8B").shape
    one = estimate_inference(shape, Degrees(), _settings(), H100, 8192).stages[0].weights
    tp2 = estimate_inference(shape, Degrees(tensor=2), _settings(), H100, 8192).stages[0].weights
    assert tp2 == pytest.approx(one / 2, rel=0.01)
    pp2 = estimate_inference(shape, Degrees(pipeline=2), _settings(), H100, 8192).stages
    # Stage 0 holds the embedding, the last stage the lm_head (same size, untied): equal weights.
    assert pp2[0].weights == pytest.approx(pp2[1].weights, rel=0.001)


def test_pipeline_partition_matches_vllm() -> None:
    assert pipeline_partition(32, 4) == [8, 8, 8, 8]
    assert pipeline_partition(80, 3) == [27, 27, 26]  # remainder before the last stage
    assert pipeline_partition(61, 4) == [15, 15, 16, 15]
    assert pipeline_partition(62, 4) == [15, 16, 16, 15]
    assert sum(pipeline_partition(126, 16)) == 126


def test_tied_embeddings_cost_once_on_one_stage_and_twice_across_stages() -> None:
    shape = resolve_model("google/gemma-2-9b").shape
    vocab_bytes = 256000 * 3584 * 2
    single = estimate_inference(shape, Degrees(), _settings(), H100, 4096).stages[0].weights
    split = estimate_inference(shape, Degrees(pipeline=2), _settings(), H100, 4096).stages
    assert split[0].weights + split[1].weights == pytest.approx(single + vocab_bytes, rel=0.001)


def test_quantized_checkpoints_are_counted_as_stored() -> None:
    dtype = "bfloat16"
    fp8_block = checkpoint_format({"quant_method": "fp8", "weight_block_size": [128, 128]}, dtype)
    assert fp8_block is not None and fp8_block.bytes_for(128 * 128) == 128 * 128 + 4
    awq = checkpoint_format({"quant_method": "awq", "bits": 4, "group_size": 128}, dtype)
    assert awq is not None and awq.bytes_for(128) == 64 + 2.5  # 4-bit weights, fp16 scale, 4-bit zero
    gptq = assumed_checkpoint("gptq", dtype)
    assert gptq.bytes_for(1024) == 512 + 8 * 2
    llama = resolve_model("meta-llama/Meta-Llama-3.1-8B").shape
    full = estimate_inference(llama, Degrees(), _settings(), H100, 8192).stages[0].weights
    int4 = ServingSettings(dtype, assumed_checkpoint("int4", dtype), 2)
    quarter = estimate_inference(llama, Degrees(), int4, H100, 8192).stages[0].weights
    # Linear layers shrink 4×; the 2 × 1 GiB of embedding and lm_head stay bf16.
    assert 0.30 < quarter / full < 0.40


def test_awq_and_gptq_catalog_configs_are_read() -> None:
    awq = resolve_model("TheBloke/Llama-2-7B-AWQ")
    gptq = resolve_model("TheBloke/Llama-2-7B-GPTQ")
    assert checkpoint_format(awq.quantization_config, "float16").name == "awq"
    assert checkpoint_format(gptq.quantization_config, "float16").name == "gptq"


def test_dtype_rules() -> None:
    assert resolve_dtype(None, "float32") == "bfloat16"  # vLLM downcasts fp32 checkpoints
    assert resolve_dtype(None, "bfloat16", bf16_supported=False) == "float16"
    assert resolve_dtype("float32", "bfloat16") == "float32"


def test_budget_exceeded_gives_negative_kv_and_zero_tokens() -> None:
    shape = resolve_model("meta-llama/Llama-3.1-70B").shape
    estimate = estimate_inference(shape, Degrees(), _settings(), H100, 4096)
    assert estimate.peak_stage.kv_cache < 0
    assert estimate.kv_cache_tokens == 0 and estimate.max_concurrent_sequences == 0
