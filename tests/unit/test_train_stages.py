"""Pipeline stages of transformers decoders (``stages.py``): chained, the stages are the full model, for every
supported architecture; the others are refused."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")

from transformers import CONFIG_MAPPING, AutoModelForCausalLM  # noqa: E402

from autoparallel.parallel.train.config import ConfigError  # noqa: E402
from autoparallel.parallel.train.layout import keep_stage, layer_range  # noqa: E402
from autoparallel.parallel.train.model import CausalLMLogits  # noqa: E402
from autoparallel.parallel.train.stages import PIPELINE_MODEL_TYPES, SkippedLayer  # noqa: E402
from tiny_checkpoint import LLAMA  # noqa: E402

pytestmark = pytest.mark.torch

STAGES = 3
"""Four layers over three stages: a middle stage too, and uneven stages."""


def _model(model_type: str, **overrides: object) -> CausalLMLogits:
    config = CONFIG_MAPPING[model_type](**{**LLAMA, "head_dim": 8, **overrides})
    torch.manual_seed(0)
    return CausalLMLogits(AutoModelForCausalLM.from_config(config)).eval()


@pytest.mark.parametrize("model_type", PIPELINE_MODEL_TYPES)
def test_stages_chained_are_the_full_model(model_type: str) -> None:
    full = _model(model_type)
    stages = [keep_stage(copy.deepcopy(full), stage, STAGES) for stage in range(STAGES)]
    names = [{name for name, _ in stage.named_parameters()} for stage in stages]
    assert set().union(*names) == {name for name, _ in full.named_parameters()}
    assert sum(len(n) for n in names) == len(list(full.parameters()))  # each parameter on one stage only
    kept = [[i for i, layer in enumerate(s.model.model.layers) if not isinstance(layer, SkippedLayer)] for s in stages]
    assert kept == [list(layer_range(LLAMA["num_hidden_layers"], stage, STAGES)) for stage in range(STAGES)]

    inputs = torch.randint(0, LLAMA["vocab_size"], (2, 12), generator=torch.Generator().manual_seed(1))
    packed = torch.cat([torch.arange(5), torch.arange(7)]).expand(2, -1)  # two documents per row
    with torch.no_grad():
        expected = full(inputs, position_ids=packed)
        assert not torch.allclose(expected, full(inputs))  # the positions matter, so they must reach each stage
        hidden = inputs
        for stage in stages:
            hidden = stage(hidden, position_ids=packed)
    torch.testing.assert_close(hidden, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("model_type", "overrides", "message"),
    [
        ("gemma2", {}, r"model type 'gemma2' is not split into stages \(supported: llama, mistral"),
        ("llama", {"tie_word_embeddings": True}, r"ties its head to its embedding"),
        ("llama", {"num_hidden_layers": 2}, r"number of layers \(2\) must be at least the pipeline parallel size"),
    ],
)
def test_models_that_do_not_split_are_refused(model_type: str, overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        keep_stage(_model(model_type, **overrides), 0, STAGES)
