"""Model resolution: inline dict → local config.json → bundled catalog → ``transformers.AutoConfig``."""

from __future__ import annotations

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


def config_from_dict(raw: Mapping[str, Any], source: str) -> Any:
    """A ``transformers.PretrainedConfig`` from a config.json dict (defaults filled in by transformers)."""
    import transformers

    if not isinstance(raw, Mapping):
        raise InvalidConfigurationError(f"{source}: expected a JSON object, got {type(raw).__name__}")
    data = dict(raw)
    if data.get("model_type") in ("RefinedWeb", "RefinedWebModel"):
        data = _refinedweb_to_falcon(data)
    model_type = data.pop("model_type", None)
    if not model_type:
        raise InvalidConfigurationError(f"{source}: the config has no 'model_type'")
    try:
        return transformers.AutoConfig.for_model(model_type, **data)
    except (ValueError, KeyError) as error:
        raise InvalidConfigurationError(
            f"{source}: model_type {model_type!r} is not known to transformers {transformers.__version__} "
            f"({error}); upgrade transformers or pass a config of a supported architecture"
        ) from error


def _shape(config: Any) -> ModelShape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if text is config:
        shape = analytic_shape(config)
        if shape is not None:
            return shape
    return meta_shape(config)


def _resolved(model_id: str, config: Any) -> ResolvedModel:
    quant = getattr(config, "quantization_config", None)
    if quant is not None and not isinstance(quant, Mapping):
        quant = quant.to_dict()
    return ResolvedModel(model_id, config, _shape(config), quant)


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
        config = transformers.AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as error:
        near = suggestions(model)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise ModelNotFoundError(
            f"model: {model!r} is not in the bundled catalog and transformers could not load it "
            f"({str(error).splitlines()[0]}){hint} You can also pass a path to a config.json or a config dict"
        ) from error
    return _resolved(model, config)


def resolve_model(model: str | Path | Mapping[str, Any]) -> ResolvedModel:
    """Resolve a model id, a path to a config.json (or its folder), or an inline config dict."""
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
