"""Parameter layout of any transformers model, counted on the ``meta`` device (no memory is allocated).

This is the fallback for architectures without an analytic rule in :mod:`shapes`, and the reference the
tests compare the analytic rules against. It needs torch (the ``torch`` extra).
"""

from __future__ import annotations

import re
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.shapes import LayerParams, ModelShape, shape_from_layers

_LAYER_INDEX = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")
_EMBEDDING = re.compile(r"(embed_tokens|wte|wpe|word_embeddings|embed_positions|model\.embeddings)\.")
_KV = re.compile(r"\.(k_proj|v_proj)\.")
_VISION = ("vision", "visual")
"""Names of vision-tower parameters (``vision_tower``, Qwen's ``visual``): outside the decoder stack."""


def build_meta_model(config: Any) -> Any:
    """The transformers model for ``config`` with every tensor on the meta device."""
    try:
        import torch
        import transformers
    except ImportError as error:  # torch is an optional extra
        raise InvalidConfigurationError(
            f"model config: architecture {config.model_type!r} has no analytic parameter rule and counting it "
            "needs torch; install autoparallel[torch]"
        ) from error
    auto_classes = (transformers.AutoModelForCausalLM, transformers.AutoModelForImageTextToText)
    with torch.device("meta"):
        for auto_class in auto_classes:
            try:
                return auto_class.from_config(config)  # type: ignore[no-untyped-call]
            except ValueError:
                continue
    raise InvalidConfigurationError(
        f"model config: transformers has no causal-LM class for model_type {config.model_type!r}"
    )


def meta_parameter_count(config: Any) -> int:
    """``sum(p.numel())`` of the transformers model built from ``config`` on the meta device."""
    return sum(int(p.numel()) for p in build_meta_model(config).parameters())


def _classify(name: str, numel: int, ndim: int) -> LayerParams:
    if ".experts." in name:
        return LayerParams(experts=numel)
    if ndim < 2 or "norm" in name or ".gate.weight" in name or "router" in name:
        return LayerParams(small=numel)
    if _KV.search(name):
        return LayerParams(kv=numel)
    return LayerParams(sharded=numel)


def meta_shape(config: Any) -> ModelShape:
    """A :class:`ModelShape` whose layout comes from the meta-device model's named parameters."""
    model = build_meta_model(config)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    num_layers = int(text_config.num_hidden_layers)
    per_layer: list[list[LayerParams]] = [[] for _ in range(num_layers)]
    embedding = lm_head = final = extra = 0
    for name, param in model.named_parameters():
        numel = int(param.numel())
        match = _LAYER_INDEX.search("." + name)
        vision = any(word in name for word in _VISION)
        if match and not vision and int(match.group(1)) < num_layers:
            per_layer[int(match.group(1))].append(_classify(name, numel, param.dim()))
        elif _EMBEDDING.search(name) and not vision:
            embedding += numel
        elif name.startswith("lm_head"):
            lm_head += numel
        elif "norm" in name and not vision and "multi_modal" not in name:
            final += numel
        else:
            extra += numel
    layers = [
        LayerParams(
            sharded=sum(p.sharded for p in parts),
            kv=sum(p.kv for p in parts),
            small=sum(p.small for p in parts),
            experts=sum(p.experts for p in parts),
        )
        for parts in per_layer
    ]
    return shape_from_layers(text_config, layers, embedding, lm_head, final, extra)
