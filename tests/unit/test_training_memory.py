"""Training memory: model states per Megatron and FSDP2, activations per Korthikanti et al., 1F1B in-flight batches.

The FSDP2 figures are checked against the runtime's measured bytes in tests/integration/test_train_memory.py."""

import pytest

from autoparallel.planner.inference import Degrees
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.training import (
    ADAM_STATE_BYTES,
    FSDP_STAGE,
    MASTER_WEIGHT_BYTES,
    TrainingSettings,
    activation_bytes_per_layer,
    estimate_training,
    stage_params,
)

LLAMA2 = "meta-llama/Llama-2-7b-hf"


def test_eighteen_bytes_per_parameter_without_sharding() -> None:
    shape = resolve_model(LLAMA2).shape
    memory = estimate_training(shape, Degrees(), TrainingSettings(zero_stage=0), 2048)
    assert memory.parameter_count == shape.parameter_count
    states = memory.parameters + memory.gradients + memory.optimizer_states
    assert states == 18 * shape.parameter_count
    assert MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES == 12


@pytest.mark.parametrize(("stage", "sharded"), [(1, {"optimizer_states"}), (2, {"optimizer_states", "gradients"})])
def test_zero_stages_shard_over_data_parallel(stage: int, sharded: set[str]) -> None:
    shape = resolve_model(LLAMA2).shape
    plain = estimate_training(shape, Degrees(data=1), TrainingSettings(zero_stage=stage), 2048)
    wide = estimate_training(shape, Degrees(data=8), TrainingSettings(zero_stage=stage), 2048)
    for part in ("parameters", "gradients", "optimizer_states"):
        ratio = getattr(wide, part) / getattr(plain, part)
        assert ratio == pytest.approx(1 / 8 if part in sharded else 1, rel=1e-6)
    assert plain.gathered == wide.gathered == 0


def test_fsdp2_holds_sixteen_bytes_per_parameter_over_dp_plus_what_it_gathers() -> None:
    shape = resolve_model(LLAMA2).shape
    settings = TrainingSettings()
    assert settings.zero_stage == FSDP_STAGE  # the runtime's data parallelism is the default
    alone = estimate_training(shape, Degrees(data=1), settings, 2048)
    assert alone.parameters + alone.gradients + alone.optimizer_states == 18 * shape.parameter_count
    assert alone.gathered == 0  # at DP=1 the runtime does not wrap the model
    wide = estimate_training(shape, Degrees(data=8), settings, 2048)
    assert wide.parameters == MASTER_WEIGHT_BYTES * shape.parameter_count // 8  # the fp32 shard is the master
    assert wide.optimizer_states == ADAM_STATE_BYTES * shape.parameter_count // 8
    assert wide.parameters + wide.gradients + wide.optimizer_states == 16 * shape.parameter_count // 8
    layer = shape.layers[0].total
    assert 10 * layer < wide.gathered < shape.parameter_count  # a few units in bf16, far from the whole model
    assert wide.activations == alone.activations  # activations do not shard with DP


def test_fsdp2_accumulation_reduces_each_micro_batch_but_pipelines_keep_unsharded_gradients() -> None:
    shape = resolve_model(LLAMA2).shape
    one = estimate_training(shape, Degrees(data=8), TrainingSettings(num_micro_batches=1), 2048)
    many = estimate_training(shape, Degrees(data=8), TrainingSettings(num_micro_batches=4), 2048)
    assert many.gathered == one.gathered < shape.parameter_count  # reduce-scattered after every micro-batch
    staged = estimate_training(shape, Degrees(data=8, pipeline=2), TrainingSettings(num_micro_batches=4), 2048)
    held = staged.parameter_count
    assert staged.gathered > (2 + 4) * held  # weights stay gathered and gradients unreduced across micro-batches


def test_fsdp_units_split_the_root_from_the_layers() -> None:
    llama = resolve_model(LLAMA2).shape
    whole = stage_params(llama, 1, 0, 1, 0, llama.num_layers)
    assert whole.total == llama.parameter_count
    assert whole.root == llama.embedding_params + llama.lm_head_params + llama.final_norm_params
    assert whole.head == llama.lm_head_params + llama.final_norm_params
    assert whole.largest_layer == llama.layers[0].total
    first = stage_params(llama, 2, 0, 2, 0, 16)
    last = stage_params(llama, 2, 1, 2, 16, 16)
    assert first.root == llama.embedding_params // 2 and first.head == 0
    assert last.root == last.head == llama.lm_head_params // 2 + llama.final_norm_params
    gpt2 = resolve_model("openai-community/gpt2").shape  # tied: the embedding's gradient starts at the head
    tied = stage_params(gpt2, 1, 0, 1, 0, gpt2.num_layers)
    assert tied.root == tied.head == gpt2.embedding_params + gpt2.final_norm_params


def test_korthikanti_activations() -> None:
    # A GPT-style shape with f = 4h reproduces the paper's coefficients.
    shape = resolve_model("openai-community/gpt2").shape
    s, h, a = 1024, shape.hidden_size, shape.num_heads
    none = TrainingSettings(recompute="none")
    assert activation_bytes_per_layer(shape, none, 1, s) == int(s * h * (34 + 5 * a * s / h))
    selective = TrainingSettings(recompute="selective")
    assert activation_bytes_per_layer(shape, selective, 1, s) == int(s * h * 34)
    assert activation_bytes_per_layer(shape, selective, 4, s) == int(s * h * 34 / 4)  # with SP
    no_sp = TrainingSettings(recompute="selective", sequence_parallel=False)
    assert activation_bytes_per_layer(shape, no_sp, 4, s) == int(s * h * (10 + 24 / 4))
    full = TrainingSettings(recompute="full", sequence_parallel=False)
    assert activation_bytes_per_layer(shape, full, 4, s) == 2 * s * h


def test_one_f_one_b_keeps_pp_micro_batches_in_flight_on_stage_zero() -> None:
    shape = resolve_model(LLAMA2).shape
    few = estimate_training(shape, Degrees(pipeline=4), TrainingSettings(num_micro_batches=1), 2048)
    many = estimate_training(shape, Degrees(pipeline=4), TrainingSettings(num_micro_batches=8), 2048)
    assert many.stage == 0
    per_layer = activation_bytes_per_layer(shape, TrainingSettings(), 1, 2048)
    assert many.activations == per_layer * 8 * 4  # 8 layers on stage 0, 4 micro-batches in flight
    assert many.activations > few.activations
