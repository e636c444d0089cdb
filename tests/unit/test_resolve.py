"""Model resolution: inline dict → config.json path → catalog → transformers."""

import json
from pathlib import Path

import pytest

from autoparallel.planner.errors import InvalidConfigurationError, ModelNotFoundError
from autoparallel.planner.resolve import catalog_ids, resolve_model, suggestions

GPT2 = {
    "model_type": "gpt2",
    "n_embd": 64,
    "n_head": 4,
    "n_layer": 2,
    "n_positions": 128,
    "vocab_size": 1000,
}


def test_inline_dict() -> None:
    model = resolve_model(GPT2)
    assert model.shape.num_layers == 2
    # wte + wpe + 2 × (2 LN + attn + MLP) + ln_f, tied head
    h = 64
    assert (
        model.shape.parameter_count == 1000 * h + 128 * h + 2 * (4 * h + 4 * h * h + 4 * h + 8 * h * h + 5 * h) + 2 * h
    )


def test_config_json_path_and_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(GPT2))
    assert resolve_model(str(tmp_path / "config.json")).shape.hidden_size == 64
    assert resolve_model(tmp_path).shape.hidden_size == 64


def test_catalog_is_case_insensitive_and_has_aliases() -> None:
    assert resolve_model("META-LLAMA/llama-3.1-70b").model_id == "meta-llama/Llama-3.1-70B"
    alias = resolve_model("meta-llama/Llama-3.3-70B-Instruct")
    assert alias.shape.num_layers == 80


def test_catalog_covers_the_popular_families() -> None:
    ids = {i.lower() for i in catalog_ids()}
    for wanted in (
        "meta-llama/llama-2-7b-hf",
        "meta-llama/meta-llama-3-8b",
        "meta-llama/llama-3.1-405b",
        "meta-llama/llama-3.3-70b-instruct",
        "mistralai/mistral-7b-v0.1",
        "mistralai/mixtral-8x22b-v0.1",
        "qwen/qwen2.5-72b",
        "qwen/qwen3-8b",
        "qwen/qwen3-30b-a3b",
        "deepseek-ai/deepseek-v3",
        "google/gemma-2-9b",
        "microsoft/phi-3-mini-4k-instruct",
        "openai-community/gpt2",
    ):
        assert wanted in ids


def test_falcon_refinedweb_config_is_converted() -> None:
    falcon = resolve_model("tiiuae/falcon-40b")
    assert falcon.config.model_type == "falcon"
    assert falcon.shape.num_kv_heads == 8 and falcon.shape.num_layers == 60


def test_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(InvalidConfigurationError, match="model_type 'wizard' is not known to transformers"):
        resolve_model({"model_type": "wizard", "hidden_size": 8})
    with pytest.raises(InvalidConfigurationError, match="config field model_type: the config has none"):
        resolve_model({"hidden_size": 8})


def test_unknown_id_suggests_near_ids() -> None:
    with pytest.raises(ModelNotFoundError, match="did you mean"):
        resolve_model("mistralai/Mixtral-8x7B-v9")
    assert suggestions("llama-70b")[0].endswith("70B") or "70b" in suggestions("llama-70b")[0].lower()


def test_missing_config_file() -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("/nonexistent/config.json")
