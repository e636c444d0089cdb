"""Training memory: model states per Megatron, activations per Korthikanti et al., 1F1B in-flight batches."""

import pytest

from autoparallel.planner.inference import Degrees
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.training import (
    ADAM_STATE_BYTES,
    MASTER_WEIGHT_BYTES,
    TrainingSettings,
    activation_bytes_per_layer,
    estimate_training,
)

LLAMA2 = "meta-llama/Llama-2-7b-hf"


def test_eighteen_bytes_per_parameter_without_sharding() -> None:
    shape = resolve_model(LLAMA2).shape
    memory = estimate_training(shape, Degrees(), TrainingSettings(zero_stage=0), 2048)
    assert memory.parameter_count == shape.parameter_count
    states = memory.parameters + memory.gradients + memory.optimizer_states
    assert states == 18 * shape.parameter_count
    assert MASTER_WEIGHT_BYTES + ADAM_STATE_BYTES == 12


@pytest.mark.parametrize(
    ("stage", "sharded"),
    [
        (1, {"optimizer_states"}),
        (2, {"optimizer_states", "gradients"}),
        (3, {"optimizer_states", "gradients", "parameters"}),
    ],
)
def test_zero_stages_shard_over_data_parallel(stage: int, sharded: set[str]) -> None:
    shape = resolve_model(LLAMA2).shape
    plain = estimate_training(shape, Degrees(data=1), TrainingSettings(zero_stage=stage), 2048)
    wide = estimate_training(shape, Degrees(data=8), TrainingSettings(zero_stage=stage), 2048)
    for part in ("parameters", "gradients", "optimizer_states"):
        ratio = getattr(wide, part) / getattr(plain, part)
        assert ratio == pytest.approx(1 / 8 if part in sharded else 1, rel=1e-6)


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
