"""Model resolution: inline dict → local config.json → bundled catalog → ``transformers.AutoConfig``."""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError, ModelNotFoundError
from autoparallel.planner.metacount import meta_shape
from autoparallel.planner.shapes import ModelShape, analytic_shape

_CATALOG_PACKAGE = "autoparallel.planner"
_CATALOG_DIR = "models"


@dataclass(frozen=True, eq=False)
class ResolvedModel:
    """A model id with its transformers config and shape."""

    model_id: str
    config: Any
    """The ``transformers.PretrainedConfig``."""
    shape: ModelShape
    quantization_config: Mapping[str, Any] | None


@cache
def _catalog_files() -> dict[str, str]:
    """Lower-cased model id → catalog file name, aliases included."""
    folder = resources.files(_CATALOG_PACKAGE).joinpath(_CATALOG_DIR)
    files = {
        entry.name.removesuffix(".json").replace("__", "/").lower(): entry.name
        for entry in folder.iterdir()
        if entry.name.endswith(".json") and entry.name != "aliases.json"
    }
    aliases = folder.joinpath("aliases.json")
    if aliases.is_file():
        for alias, target in json.loads(aliases.read_text()).items():
            files[alias.lower()] = files[target.lower()]
    return files


@cache
def catalog_ids() -> tuple[str, ...]:
    """Every model id the bundled catalog answers for (file names and aliases), sorted."""
    folder = resources.files(_CATALOG_PACKAGE).joinpath(_CATALOG_DIR)
    ids = [
        entry.name.removesuffix(".json").replace("__", "/")
        for entry in folder.iterdir()
        if entry.name.endswith(".json") and entry.name != "aliases.json"
    ]
    aliases = folder.joinpath("aliases.json")
    if aliases.is_file():
        ids.extend(json.loads(aliases.read_text()))
    return tuple(sorted(ids, key=str.lower))


def _tokens(text: str) -> set[str]:
    return {t for t in re.split(r"[^a-z0-9.]+", text.lower().replace("/", " ")) if t}


def suggestions(model: str, limit: int = 3) -> list[str]:
    """Catalog ids nearest to ``model``: most shared name tokens (``llama``, ``70b``), then string similarity."""
    query = model.lower()
    query_tokens = _tokens(query.split("/")[-1])

    def score(candidate: str) -> tuple[int, float]:
        name = candidate.lower().split("/")[-1]
        return (
            len(query_tokens & _tokens(name)),
            difflib.SequenceMatcher(None, query, candidate.lower()).ratio(),
        )

    ranked = sorted(catalog_ids(), key=score, reverse=True)
    return [c for c in ranked if score(c) > (0, 0.4)][:limit]


def _refinedweb_to_falcon(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Convert an original Falcon ``RefinedWeb``/``RefinedWebModel`` config to transformers' ``falcon`` keys.

    The renames are those of transformers' own Falcon conversion: n_head → num_attention_heads,
    n_head_kv → num_kv_heads, n_layer → num_hidden_layers; ``RefinedWeb`` (Falcon-40B/180B) is the
    new decoder architecture (grouped KV heads, two parallel LayerNorms), ``RefinedWebModel`` (7B) the old
    multi-query one.
    """
    converted = {k: v for k, v in raw.items() if k not in ("n_head", "n_head_kv", "n_layer", "auto_map")}
    converted["model_type"] = "falcon"
    converted["architectures"] = ["FalconForCausalLM"]
    converted["num_attention_heads"] = raw["n_head"]
    converted["num_hidden_layers"] = raw["n_layer"]
    new_architecture = raw.get("model_type") == "RefinedWeb"
    converted["new_decoder_architecture"] = new_architecture
    if new_architecture:
        converted["num_kv_heads"] = raw.get("n_head_kv", raw["n_head"])
    else:
        converted["multi_query"] = raw.get("multi_query", True)
    return converted


VLLM_ARCHITECTURES: dict[str, str] = {
    "DeepseekV2ForCausalLM": "deepseek_v2",
    "DeepseekV3ForCausalLM": "deepseek_v3",
    "Gemma2ForCausalLM": "gemma2",
    "Glm4MoeForCausalLM": "glm4_moe",
    "GptOssForCausalLM": "gpt_oss",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "MixtralForCausalLM": "mixtral",
    "NemotronHForCausalLM": "nemotron_h",
    "Phi3ForCausalLM": "phi3",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen2MoeForCausalLM": "qwen2_moe",
    "Qwen3ForCausalLM": "qwen3",
    "Qwen3MoeForCausalLM": "qwen3_moe",
}
"""``architectures`` entries of vLLM's model registry (``vllm/model_executor/models/registry.py``,
``_TEXT_GENERATION_MODELS``) → the transformers ``model_type`` whose config class vLLM's implementation reads.
vLLM picks a model by ``architectures``, not ``model_type``: Kimi-K2 (``model_type: kimi_k2``, custom code in
``auto_map``) is served by vLLM's ``DeepseekV3ForCausalLM`` and planned here from transformers' DeepSeek-V3 config."""

_POSITIVE_FIELDS = (
    "num_hidden_layers",
    "hidden_size",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
    "intermediate_size",
    "max_position_embeddings",
    "head_dim",
)
"""Config fields that must be positive integers when present (checked before transformers sees them)."""
MAX_LAYERS = 4096
"""Decoder layers at most (the largest published models have ~130): the shape holds one entry per layer."""
MAX_DIMENSION = 2**31 - 1
"""Any other size at most: torch's int32 index limit, far above any real model."""


def _check_fields(data: Mapping[str, Any], source: str) -> None:
    for name in _POSITIVE_FIELDS:
        value = data.get(name)
        if value is None:
            continue
        top = MAX_LAYERS if name == "num_hidden_layers" else MAX_DIMENSION
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
            raise InvalidConfigurationError(
                f"{source}: config field {name}: expected an integer from 1 to {top:,}, got {value!r}"
            )
    heads, kv_heads = data.get("num_attention_heads"), data.get("num_key_value_heads")
    if heads is not None and kv_heads is not None and (kv_heads > heads or heads % kv_heads):
        raise InvalidConfigurationError(
            f"{source}: config field num_key_value_heads ({kv_heads}) must divide num_attention_heads ({heads})"
        )


_LAYER_FIELDS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")


def _require_layers(data: Mapping[str, Any], source: str) -> None:
    """A config must say how many layers it has: transformers' class default (32 for llama) would plan a model
    nobody described. Multimodal configs say it in their text config."""
    nested = [v for v in data.values() if isinstance(v, Mapping)]
    if not any(name in part for part in (data, *nested) for name in _LAYER_FIELDS):
        raise InvalidConfigurationError(f"{source}: config field num_hidden_layers is missing")


def _model_type(data: dict[str, Any], source: str) -> str:
    """The transformers model_type to build: the config's own, or the one of an architecture vLLM serves."""
    import transformers

    model_type = data.pop("model_type", None)
    if not model_type or not isinstance(model_type, str):
        raise InvalidConfigurationError(f"{source}: config field model_type: the config has none (got {model_type!r})")
    if model_type in transformers.CONFIG_MAPPING:
        return model_type
    architectures = data.get("architectures") or []
    known = [VLLM_ARCHITECTURES[a] for a in architectures if isinstance(a, str) and a in VLLM_ARCHITECTURES]
    if known:
        return known[0]
    raise InvalidConfigurationError(
        f"{source}: config field model_type {model_type!r} is not known to transformers {transformers.__version__} "
        f"and architectures {architectures!r} names no architecture the planner maps from vLLM's registry "
        f"({', '.join(sorted(VLLM_ARCHITECTURES))}); upgrade transformers or pass a config of a supported "
        "architecture (custom code in auto_map is never run)"
    )


def _transformers_errors() -> tuple[type[Exception], ...]:
    """Exceptions transformers raises on a malformed config: strict-dataclass validation, wrong types and values."""
    from huggingface_hub.errors import StrictDataclassError

    return (StrictDataclassError, ValueError, TypeError, KeyError)


def config_from_dict(raw: Mapping[str, Any], source: str) -> Any:
    """A ``transformers.PretrainedConfig`` from a config.json dict (defaults filled in by transformers).

    Never runs a repository's own code (``auto_map`` is dropped), so nothing can ask on stdin whether to trust it.
    """
    import transformers

    if not isinstance(raw, Mapping):
        raise InvalidConfigurationError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    data = {k: v for k, v in raw.items() if k != "auto_map"}
    if data.get("model_type") in ("RefinedWeb", "RefinedWebModel"):
        data = _refinedweb_to_falcon(data)
    _check_fields(data, source)
    model_type = _model_type(data, source)
    _require_layers(data, source)
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except _transformers_errors() as error:
        detail = " ".join(str(error).split())
        raise InvalidConfigurationError(f"{source}: transformers refuses the {model_type} config: {detail}") from error


def _shape(config: Any, source: str) -> ModelShape:
    from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        if text is config:
            shape = analytic_shape(config)
            if shape is not None:
                return shape
        return meta_shape(config)
    except AmbiguousGlobalPerLayerAttributeError as error:
        # transformers marks attributes that vary per layer. KV heads and head size (gemma-4's sliding and global
        # layers) are read per layer into the cache table; any other such attribute is not modelled.
        field = str(error).split("'")[1] if "'" in str(error) else "per-layer attributes"
        raise InvalidConfigurationError(
            f"{source}: config field {field} differs between layers of this {config.model_type} model, which the "
            "planner does not model (only KV heads and head size may vary per layer); pass an inline config whose "
            "layers agree, or plan another model"
        ) from error
    except (ValueError, TypeError, ZeroDivisionError) as error:
        raise InvalidConfigurationError(
            f"{source}: the config does not describe a buildable model ({error})"
        ) from error


def _resolved(model_id: str, config: Any) -> ResolvedModel:
    quant = getattr(config, "quantization_config", None)
    if quant is not None and not isinstance(quant, Mapping):
        if not hasattr(quant, "to_dict"):
            raise InvalidConfigurationError(f"{model_id}: config field quantization_config: expected a mapping")
        quant = quant.to_dict()
    return ResolvedModel(model_id, config, _shape(config, model_id), quant)


@cache
def _from_json_text(text: str, model_id: str) -> ResolvedModel:
    return _resolved(model_id, config_from_dict(json.loads(text), model_id))


def _from_catalog(file_name: str, model_id: str) -> ResolvedModel:
    folder = resources.files(_CATALOG_PACKAGE).joinpath(_CATALOG_DIR)
    return _from_json_text(folder.joinpath(file_name).read_text(), model_id)


@cache
def _from_transformers(model: str) -> ResolvedModel:
    import transformers

    try:
        # The raw dict only: AutoConfig.from_pretrained would offer to run the repository's auto_map code and
        # ask "Do you wish to run the custom code?" on stdin.
        raw, _ = transformers.PretrainedConfig.get_config_dict(model)
    except (OSError, ValueError) as error:
        near = suggestions(model)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ModelNotFoundError(
            f"model: {model!r} is not in the bundled catalog and transformers could not load it "
            f"({str(error).splitlines()[0]}){hint} You can also pass a path to a config.json or a config dict"
        ) from error
    return _resolved(model, config_from_dict(raw, model))


def resolve_as(model_id: str, config_source: str) -> ResolvedModel:
    """``model_id`` with the architecture of ``config_source``, which is resolved as any model id: for a checkpoint
    the planner cannot read (a fine-tuned export on the pods' volumes) whose base model it can."""
    return dataclasses.replace(resolve_model(config_source), model_id=model_id)


def resolve_model(model: str | Path | Mapping[str, Any] | ResolvedModel) -> ResolvedModel:
    """Resolve a model id, a path to a config.json (or its folder), or an inline config dict; a model resolved
    already (:func:`resolve_as`) is returned as it is."""
    if isinstance(model, ResolvedModel):
        return model
    if isinstance(model, Mapping):
        name = str(model.get("_name_or_path") or "inline-config")
        config = {k: v for k, v in model.items() if k != "_name_or_path"}
        return _from_json_text(json.dumps(config, sort_keys=True), name)
    if not isinstance(model, str | Path) or not str(model).strip():
        raise ModelNotFoundError(f"model: expected a model id, a path or a config dict, got {model!r}")
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            text = path.read_text()
            json.loads(text)
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidConfigurationError(f"model: {path} is not a readable JSON config ({error})") from error
        return _from_json_text(text, str(model))
    file_name = _catalog_files().get(str(model).lower())
    if file_name is not None:
        canonical = file_name.removesuffix(".json").replace("__", "/")
        return _from_catalog(file_name, canonical if str(model).lower() == canonical.lower() else str(model))
    if str(model).endswith(".json"):
        raise ModelNotFoundError(f"model: config file {model} does not exist")
    return _from_transformers(str(model))
