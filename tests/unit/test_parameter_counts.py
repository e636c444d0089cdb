"""Exact parameter counts: analytic rules equal transformers' meta-device count for every catalog model."""

import csv
from pathlib import Path

import pytest

from autoparallel.planner.metacount import meta_parameter_count, meta_shape
from autoparallel.planner.resolve import catalog_ids, resolve_model
from autoparallel.planner.shapes import ANALYTIC_MODEL_TYPES, analytic_shape

pytestmark = pytest.mark.torch

PUBLISHED = Path(__file__).parents[1] / "data" / "param_counts.csv"


@pytest.mark.parametrize("model_id", catalog_ids())
def test_parameter_count_equals_meta_device_count(model_id: str) -> None:
    model = resolve_model(model_id)
    assert model.shape.parameter_count == meta_parameter_count(model.config)


def test_every_catalog_family_has_an_analytic_rule_or_a_counted_layout() -> None:
    analytic = {resolve_model(m).config.model_type for m in catalog_ids()} & ANALYTIC_MODEL_TYPES
    # The families the issue names must be analytic, not counted.
    assert {
        "llama",
        "mistral",
        "mixtral",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "deepseek_v3",
        "gemma2",
        "phi3",
    } <= analytic
    assert {"gpt2", "falcon"} <= analytic


def test_meta_layout_matches_analytic_layout_per_layer() -> None:
    """The fallback classifies parameters like the analytic rule (weights per TP rank depend on it)."""
    config = resolve_model("meta-llama/Llama-3.1-70B").config
    analytic, counted = analytic_shape(config), meta_shape(config)
    assert analytic is not None
    assert [layer.total for layer in analytic.layers] == [layer.total for layer in counted.layers]
    assert analytic.layers[0].kv == counted.layers[0].kv
    assert analytic.embedding_params == counted.embedding_params
    assert analytic.lm_head_params == counted.lm_head_params


@pytest.mark.parametrize(
    ("model_id", "published"),
    [
        (row["model"], int(row["params"]))
        for row in csv.DictReader(PUBLISHED.open())
        if row["model"] not in ("deepseek-ai/DeepSeek-V3", "tiiuae/falcon-40b")
    ],
)
def test_parameter_count_equals_published_count(model_id: str, published: int) -> None:
    assert resolve_model(model_id).shape.parameter_count == published


def test_published_counts_that_include_more_than_the_model() -> None:
    # DeepSeek-V3's 684.5 B includes the multi-token-prediction layer and fp8 scales; transformers counts
    # 671,026,404,352. falcon-40b's checkpoint stores the tied lm_head twice (+ vocab × hidden).
    assert resolve_model("deepseek-ai/DeepSeek-V3").shape.parameter_count == 671_026_404_352
    falcon = resolve_model("tiiuae/falcon-40b").shape
    assert falcon.parameter_count + falcon.vocab_size * falcon.hidden_size == 41_835_970_560


def test_active_parameters_of_moe_models() -> None:
    mixtral = resolve_model("mistralai/Mixtral-8x7B-v0.1").shape
    # 2 of 8 experts per token: 12.9 B active of 46.7 B (Mistral's published figure).
    assert round(mixtral.active_parameter_count / 1e9, 1) == 12.9
    qwen = resolve_model("Qwen/Qwen3-30B-A3B").shape
    assert 3.3e9 <= qwen.active_parameter_count < 3.4e9  # "3.3 B activated" (Qwen3 model card)
