"""Hybrid models: per-layer cache specs, vLLM's unified page size, state blocks, concurrency and --max-num-seqs."""

import pytest

import autoparallel
from autoparallel.planner.caches import (
    AttentionGeometry,
    GatedDeltaNetState,
    KimiDeltaState,
    Mamba1State,
    Mamba2State,
    ShortConvState,
)
from autoparallel.planner.inference import Degrees, ServingSettings, estimate_inference
from autoparallel.planner.kvpool import group_size, hybrid_layout
from autoparallel.planner.precision import kv_cache_bytes, unquantized
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB

H100 = int(79.19 * GIB)
H100_CLUSTER = {"gpu_memory_gb": 80, "gpus_per_node": 8, "num_nodes": 1, "gpu_architecture": "H100"}
A100_CLUSTER = {"gpu_memory_gb": 80, "gpus_per_node": 8, "num_nodes": 1, "gpu_architecture": "A100-80GB"}
BF16 = ServingSettings("bfloat16", unquantized("bfloat16"), kv_cache_bytes("auto", "bfloat16"))


def _kinds(model: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in resolve_model(model).shape.caches:
        for cache in layer:
            counts[type(cache).__name__] = counts.get(type(cache).__name__, 0) + 1
    return counts


def test_layer_types_come_from_each_familys_config_keys() -> None:
    # Qwen3.5: layer_types / full_attention_interval 4 → 30 Gated DeltaNet + 10 attention layers.
    assert _kinds("Qwen/Qwen3.5-35B-A3B") == {"GatedDeltaNetState": 30, "AttentionGeometry": 10}
    # Nemotron 3 Nano: hybrid_override_pattern, 23 M + 6 * (the 23 E layers hold no cache).
    assert _kinds("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16") == {"Mamba2State": 23, "AttentionGeometry": 6}
    # Kimi-Linear: kda_layers (1-based) → 20 KDA layers, 7 MLA layers storing a 576-element latent.
    assert _kinds("moonshotai/Kimi-Linear-48B-A3B-Instruct") == {"KimiDeltaState": 20, "AttentionGeometry": 7}
    kimi = resolve_model("moonshotai/Kimi-Linear-48B-A3B-Instruct").shape
    assert kimi.caches[3] == (AttentionGeometry(0, 0, latent_dim=576),)
    # DeepSeek-V3.2: MLA plus the sparse-attention indexer's fp8 keys (128 + 4 scale bytes per token).
    v32 = resolve_model("deepseek-ai/DeepSeek-V3.2").shape
    assert v32.caches[0] == (AttentionGeometry(0, 0, latent_dim=576, indexer_bytes=132),)
    assert v32.is_mla and not v32.has_recurrent_state


def test_state_bytes_per_sequence_per_tp_rank() -> None:
    # gated_delta_net_state_shape: conv (2·16·128 + 32·128)/TP × 3 in bf16, recurrent 32/TP × 128 × 128 in fp32.
    gdn = GatedDeltaNetState("float32", key_heads=16, value_heads=32, key_dim=128, value_dim=128, conv_kernel=4)
    assert gdn.bytes_per_sequence(1, "bfloat16") == 8192 * 3 * 2 + 32 * 128 * 128 * 4 == 2_146_304
    assert gdn.bytes_per_sequence(4, "bfloat16") == 2048 * 3 * 2 + 8 * 128 * 128 * 4 == 536_576
    # mamba2_state_shape: conv (4096 + 2·8·128) × 3; SSM 64 heads × 64 × 128 in fp32 (Nemotron 3 Nano).
    mamba = Mamba2State("float32", heads=64, head_dim=64, state_size=128, groups=8, conv_kernel=4, intermediate=4096)
    assert mamba.bytes_per_sequence(1, "bfloat16") == 6144 * 3 * 2 + 64 * 64 * 128 * 4
    # One B/C group replicates onto every rank when groups do not split (extra_groups_for_head_shards).
    single = Mamba2State(None, heads=128, head_dim=64, state_size=128, groups=1, conv_kernel=4, intermediate=8192)
    assert single.conv_elements(8) == (8192 + 2 * 8 * 128) // 8 * 3
    # kda_state_shape: three convs (q, k, v) and a heads × 128 × 128 recurrent state, model dtype.
    kda = KimiDeltaState(None, heads=32, head_dim=128, conv_kernel=4)
    assert kda.bytes_per_sequence(1, "bfloat16") == (3 * 4096 * 3 + 32 * 128 * 128) * 2
    assert ShortConvState(None, channels=2048, conv_kernel=3).bytes_per_sequence(2, "bfloat16") == 1024 * 2 * 2
    assert Mamba1State(None, intermediate=8192, state_size=16, conv_kernel=4).ssm_elements(2) == 4096 * 16


def test_group_size_follows_vllms_uniform_page_size_grouping() -> None:
    assert group_size([30, 10]) == 10  # Qwen3.5: 3 GDN groups + 1 attention group of 10 layers
    assert group_size([23, 6]) == 6  # Nemotron 3 Nano: 4 Mamba groups + 1 attention group of 6
    assert group_size([21, 21]) == 21
    assert group_size([11, 10]) == 11  # within 1.25×: one group per kind, the smaller padded


def test_qwen35_attention_block_grows_until_its_page_holds_a_state() -> None:
    caches = [c for layer in resolve_model("Qwen/Qwen3.5-35B-A3B").shape.caches for c in layer]
    # TP1: a token is 2 KV heads × 256 × 2 × 2 bytes = 2 KiB; 16 × cdiv(2,146,304, 16 × 2048) = 1056 tokens.
    tp1 = hybrid_layout(caches, 1, "bfloat16", 2)
    assert (tp1.block_tokens, tp1.page_bytes, tp1.layers_per_group) == (1056, 1056 * 2048, 10)
    assert (len(tp1.attention_groups), tp1.state_groups) == (1, 3)
    # TP4: one replicated KV head (1 KiB/token), a quarter of the state: 16 × cdiv(536,576, 16 KiB) = 528.
    assert hybrid_layout(caches, 4, "bfloat16", 2).block_tokens == 528
    # Kimi-Linear's MLA layers align blocks to 64 tokens: 64 × cdiv(1,122,304, 64 × 1152) = 1024.
    kimi = [c for layer in resolve_model("moonshotai/Kimi-Linear-48B-A3B-Instruct").shape.caches for c in layer]
    assert hybrid_layout(kimi, 1, "bfloat16", 2).block_tokens == 1024


def test_hybrid_tokens_state_blocks_and_concurrency_come_from_the_block_pool() -> None:
    shape = resolve_model("Qwen/Qwen3.5-35B-A3B").shape
    stage = estimate_inference(shape, Degrees(tensor=2), BF16, H100, 8192).stages[0]
    layout = stage.layout
    assert layout is not None
    blocks = stage.kv_cache // (layout.page_bytes * 10)
    assert stage.kv_cache_blocks == blocks
    assert stage.kv_cache_tokens == blocks * 1056  # one attention group
    assert stage.running_limit == blocks // 4  # a running sequence holds a block in each of the 4 groups
    assert stage.concurrent_sequences == blocks // (8 + 3)  # cdiv(8192, 1056) attention blocks + 3 states
    # Attention-only models keep per-token accounting.
    llama = estimate_inference(resolve_model("meta-llama/Meta-Llama-3.1-8B").shape, Degrees(), BF16, H100, 8192)
    assert llama.stages[0].layout is None


def test_indexer_keys_add_to_deepseek_v32_kv_bytes() -> None:
    shape = resolve_model("deepseek-ai/DeepSeek-V3.2").shape
    stage = estimate_inference(shape, Degrees(tensor=8, pipeline=2), BF16, H100, 4096).stages[0]
    assert stage.kv_bytes_per_token == stage.num_layers * (576 * 2 + 132)


def _plan(model: str, cluster: dict[str, object], tp: int, **options: object) -> dict[str, object]:
    return autoparallel.analyze(
        model, cluster, sequence_length=8192, batch_size=1, tensor_parallel=tp, pipeline_parallel=1, **options
    )[0]


def test_max_num_seqs_is_set_when_the_state_blocks_cannot_hold_vllms_default() -> None:
    tp1 = _plan("Qwen/Qwen3.5-35B-A3B", H100_CLUSTER, 1)
    assert 0 < tp1["max_num_seqs"] < 1024
    assert f"--max-num-seqs {tp1['max_num_seqs']}" in str(tp1["deployment_command"])
    assert tp1["max_num_seqs"] == tp1["stages"][0]["max_num_seqs_limit"]  # type: ignore[index]
    # At TP4 the states of 1024 sequences fit: vLLM's default stays.
    tp4 = _plan("Qwen/Qwen3.5-35B-A3B", H100_CLUSTER, 4)
    assert tp4["max_num_seqs"] == 1024
    assert "--max-num-seqs" not in str(tp4["deployment_command"])


def test_max_num_seqs_default_depends_on_the_gpu() -> None:
    # The same TP2 plan holds ~800 states: below the H100 default (1024), above the A100 default (256).
    h100 = _plan("Qwen/Qwen3.5-35B-A3B", H100_CLUSTER, 2)
    assert 256 < int(h100["max_num_seqs"]) < 1024  # type: ignore[call-overload]
    assert "--max-num-seqs" in str(h100["deployment_command"])
    a100 = _plan("Qwen/Qwen3.5-35B-A3B", A100_CLUSTER, 2)
    assert a100["max_num_seqs"] == 256
    assert "--max-num-seqs" not in str(a100["deployment_command"])


def test_max_num_seqs_caps_every_model_not_only_hybrids() -> None:
    # Llama-3.1-70B on two H100s: ~11k KV tokens = ~700 blocks, fewer than 1024 sequences could ever run.
    tight = _plan("meta-llama/Llama-3.1-70B", H100_CLUSTER, 2)
    assert tight["max_num_seqs"] == int(tight["kv_cache_tokens"]) // 16  # type: ignore[call-overload]
    assert f"--max-num-seqs {tight['max_num_seqs']}" in str(tight["deployment_command"])
    roomy = _plan("meta-llama/Meta-Llama-3.1-8B", H100_CLUSTER, 1)
    assert roomy["max_num_seqs"] == 1024
    assert "--max-num-seqs" not in str(roomy["deployment_command"])
    # A caller's own value is passed through when it fits.
    assert "--max-num-seqs 64" in str(
        _plan("meta-llama/Meta-Llama-3.1-8B", H100_CLUSTER, 1, max_num_seqs=64)["deployment_command"]
    )


@pytest.mark.parametrize(
    ("model_id", "count"),
    [
        ("Qwen/Qwen3.5-35B-A3B", 34_660_610_688),
        ("Qwen/Qwen3.6-27B", 26_895_998_464),
        ("nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16", 31_577_937_344),
        ("nvidia/NVIDIA-Nemotron-3-Super-120B-A12B-FP8", 120_668_687_360),
        ("moonshotai/Kimi-Linear-48B-A3B-Instruct", 49_122_675_072),
        ("deepseek-ai/DeepSeek-V3.2", 671_877_929_216),
        ("openai/gpt-oss-120b", 116_829_156_672),
        ("zai-org/GLM-4.5", 352_797_814_784),
        ("moonshotai/Kimi-K2-Instruct", 1_026_408_209_408),
        ("google/gemma-4-26B-A4B", 25_805_933_872),  # vision tower (572,792,112) included, as transformers builds it
    ],
)
def test_new_catalog_entries_count_what_transformers_counts(model_id: str, count: int) -> None:
    """Counts of transformers 5.24 on the meta device (the catalog-wide meta comparison re-checks them)."""
    assert resolve_model(model_id).shape.parameter_count == count


def test_gemma4_sliding_and_global_layers_keep_their_own_attention_geometry() -> None:
    shape = resolve_model("google/gemma-4-26B-A4B").shape
    sliding = AttentionGeometry(kv_heads=8, head_dim=256, sliding_window=1024)
    full = AttentionGeometry(kv_heads=2, head_dim=512)  # global_head_dim, num_global_key_value_heads
    assert shape.caches == tuple((full,) if (i + 1) % 6 == 0 else (sliding,) for i in range(30))
    assert shape.kv_head_counts == (2, 8)
    assert (shape.experts_per_token, shape.num_experts) == (8, 128)  # top_k_experts
    # Language model: 25.2 B of which 3.8 B active (model card); the vision tower's 0.57 B on top.
    assert round((shape.parameter_count - shape.extra_params) / 1e9, 1) == 25.2
    assert round((shape.active_parameter_count - shape.extra_params) / 1e9, 1) == 3.8
    # One sequence of 4096: 25 sliding layers keep 1024 tokens × 2×8×256, 5 global ones 4096 × 2×2×512 (bf16).
    one = autoparallel.check_memory_requirements("google/gemma-4-26B-A4B", sequence_length=4096, batch_size=1)
    assert one["kv_cache_gb_per_sequence"] == round((25 * 1024 * 8192 + 5 * 4096 * 4096) / GIB, 4)


def test_gemma4_pages_are_as_wide_as_its_sliding_layers() -> None:
    """vLLM gives every layer the widest page (a global layer's block holds 32 tokens): the token capacity it
    reports is blocks // groups × 16 over 5 sliding groups and 1 global group of 5 layers."""
    shape = resolve_model("google/gemma-4-26B-A4B").shape
    stage = estimate_inference(shape, Degrees(), BF16, H100, 4096).stages[0]
    page = 16 * 8192
    assert stage.kv_bytes_per_token == 30 * 8192
    assert stage.kv_cache_tokens == stage.kv_cache // (page * 5) // 6 * 16


def test_gemma4_tensor_parallel_sizes_respect_both_kv_head_counts() -> None:
    from autoparallel.planner.constraints import tensor_parallel_problem

    shape = resolve_model("google/gemma-4-26B-A4B").shape
    assert tensor_parallel_problem(shape, 4) is None
    assert tensor_parallel_problem(shape, 16) is None  # 16 heads; 8 and 2 KV heads each divide 16
    plan = autoparallel.analyze("google/gemma-4-26B-A4B", H100_CLUSTER)[0]
    assert plan["tensor_parallel"] == 1 and plan["kv_cache_tokens"] > 0


def test_kimi_k2_is_in_the_catalog_as_deepseek_v3() -> None:
    kimi = resolve_model("moonshotai/Kimi-K2-Instruct")
    assert kimi.config.model_type == "deepseek_v3"
    assert kimi.shape.is_mla and kimi.shape.caches[0] == (AttentionGeometry(kv_heads=0, head_dim=0, latent_dim=576),)
    assert round(kimi.shape.active_parameter_count / 1e9) == 33  # "32B activated" (model card), embeddings included
