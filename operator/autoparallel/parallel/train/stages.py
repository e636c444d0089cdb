"""Pipeline stages of transformers decoder models, cut the way the tiny GPT is cut (``layout.keep_stage``).

A stage keeps the whole Hugging Face model and its forward: the decoder layers other stages hold become
:class:`SkippedLayer` (no parameters, hidden states through unchanged), a stage after the first loses the
embedding and gets the previous stage's hidden states as ``inputs_embeds``, and a stage before the last has
the identity for its final norm and head, so its "logits" are its hidden states. Every kept parameter keeps the
full model's name (``model.layers.17.mlp.up_proj.weight``), so checkpoints and exports load across layouts.
Each stage runs the model's own mask and rotary code on the ``position_ids`` it is given.

That is only the full model when its forward does nothing but embedding → layers → norm → head: a scaled
embedding (Granite's multiplier), soft-capped or scaled logits (Gemma 2, Cohere) or a per-layer side input
(Gemma 3n) would be applied at the wrong stage. :data:`PIPELINE_MODEL_TYPES` lists the architectures whose
forward is that plain; ``tests/unit/test_train_stages.py`` checks each one stage by stage against the whole.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from autoparallel.parallel.train.config import ConfigError

PIPELINE_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""``model_type`` of the transformers decoders pipeline parallelism splits."""


class SkippedLayer(nn.Module):
    """A decoder layer another pipeline stage holds: returns the hidden states it is given."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states


def check_pipeline(hf_config: Any, num_stages: int) -> None:
    """:class:`ConfigError` unless ``hf_config``'s model splits into ``num_stages`` stages."""
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in PIPELINE_MODEL_TYPES:
        raise ConfigError(
            f"pipeline parallel: transformers model type {model_type!r} is not split into stages (supported: "
            f"{', '.join(PIPELINE_MODEL_TYPES)}); use --pipeline-parallel 1"
        )
    if getattr(hf_config, "tie_word_embeddings", False):
        raise ConfigError(
            "pipeline parallel: the model ties its head to its embedding (tie_word_embeddings), which the first "
            "and last stages would each need; use --pipeline-parallel 1"
        )
    layers = int(hf_config.num_hidden_layers)
    if layers < num_stages:
        raise ConfigError(f"number of layers ({layers}) must be at least the pipeline parallel size ({num_stages})")


def keep_decoder_stage(model: nn.Module, kept: range, first: bool, last: bool) -> nn.Module:
    """Cut ``model`` (a ``CausalLMLogits``) to the stage holding decoder layers ``kept``."""
    causal_lm: Any = model.get_submodule("model")
    decoder = causal_lm.get_decoder()
    layers = decoder.layers
    for index in range(len(layers)):
        if index not in kept:
            layers[index] = SkippedLayer()
    if not first:
        decoder.embed_tokens = None
    if not last:
        decoder.norm = nn.Identity()
        causal_lm.lm_head = nn.Identity()
    return model
