"""The planner's ``**options``: their names and defaults, validation, and the typed request they build."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.inference import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, ServingSettings
from autoparallel.planner.precision import (
    WEIGHT_FORMATS,
    WeightFormat,
    assumed_checkpoint,
    check_quantization,
    checkpoint_format,
    kv_cache_bytes,
    resolve_dtype,
    runtime_quantization,
    unquantized,
)
from autoparallel.planner.resolve import ResolvedModel, resolve_model
from autoparallel.planner.search import OBJECTIVES, WORKLOADS, Request
from autoparallel.planner.training import FSDP_STAGE, RECOMPUTE_MODES, TrainingSettings

ModelRef = str | Path | Mapping[str, Any] | ResolvedModel
"""A model id, a path to a config.json, an inline config dict, or a model resolved already."""

_OPTION_DEFAULTS: dict[str, Any] = {
    "gpu_memory_utilization": 0.90,
    "dtype": None,
    "quantization": None,
    "weight_format": None,
    "kv_cache_dtype": "auto",
    "workload": "inference",
    "max_num_batched_tokens": DEFAULT_MAX_NUM_BATCHED_TOKENS,
    "max_num_seqs": DEFAULT_MAX_NUM_SEQS,
    "tensor_parallel": None,
    "pipeline_parallel": None,
    "expert_parallel": None,
    "data_parallel": None,
    "max_gpus": None,
    "allow_cross_node_tensor_parallel": False,
    "explain": False,
    "objective": "minimize_gpus",
    "prices": None,
    "micro_batch_size": 1,
    "zero_stage": FSDP_STAGE,
    "recompute": "selective",
    "sequence_parallel": True,
    "batch_size": 32,
}
"""Every ``**option`` the API accepts, with its default (the CLI spells them with dashes)."""


def _positive(options: Mapping[str, Any], name: str, allow_none: bool = True) -> None:
    value = options[name]
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidConfigurationError(f"{name}: expected a positive integer, got {value!r}")


def parse_options(raw: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(raw) - set(_OPTION_DEFAULTS))
    if unknown:
        raise InvalidConfigurationError(
            f"unknown option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(_OPTION_DEFAULTS))}"
        )
    options = {**_OPTION_DEFAULTS, **raw}
    util = options["gpu_memory_utilization"]
    if isinstance(util, bool) or not isinstance(util, int | float) or not 0 < util <= 1:
        raise InvalidConfigurationError(f"gpu_memory_utilization: expected a number in (0, 1], got {util!r}")
    for name in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "data_parallel", "max_gpus"):
        _positive(options, name)
    for name in ("max_num_batched_tokens", "max_num_seqs", "micro_batch_size", "batch_size"):
        _positive(options, name, allow_none=False)
    if options["workload"] not in WORKLOADS:
        raise InvalidConfigurationError(f"workload: {options['workload']!r} is not one of {', '.join(WORKLOADS)}")
    if options["objective"] not in OBJECTIVES:
        raise InvalidConfigurationError(f"objective: {options['objective']!r} is not one of {', '.join(OBJECTIVES)}")
    if options["quantization"] is not None:
        check_quantization(options["quantization"])
    for name in ("quantization", "weight_format"):
        if options[name] is not None and options["workload"] == "training":
            raise InvalidConfigurationError(f"{name}: applies to inference; training runs in dtype")
    if options["quantization"] is not None and options["weight_format"] is not None:
        raise InvalidConfigurationError(
            "quantization, weight_format: give one; quantization quantizes an unquantized checkpoint while vLLM "
            "loads it, weight_format assumes a checkpoint already stored in that format"
        )
    if options["weight_format"] is not None and options["weight_format"] not in WEIGHT_FORMATS:
        raise InvalidConfigurationError(
            f"weight_format: {options['weight_format']!r} is not one of {', '.join(WEIGHT_FORMATS)} or None"
        )
    if options["recompute"] not in RECOMPUTE_MODES:
        raise InvalidConfigurationError(f"recompute: expected one of {', '.join(RECOMPUTE_MODES)}")
    if options["zero_stage"] not in (0, 1, 2, 3):
        raise InvalidConfigurationError(f"zero_stage: expected 0, 1, 2 or 3, got {options['zero_stage']!r}")
    prices = options["prices"] or {}
    if not isinstance(prices, Mapping) or any(
        isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < math.inf for v in prices.values()
    ):
        raise InvalidConfigurationError("prices: expected a mapping of GPU name to USD per GPU-hour (≥ 0)")
    return options


@dataclass(frozen=True)
class Context:
    model: ResolvedModel
    request: Request
    options: dict[str, Any]


def _weights(model: ResolvedModel, options: Mapping[str, Any], dtype: str) -> WeightFormat:
    """The weights vLLM will hold: the checkpoint's format, a load-time quantization of it, or an assumed
    pre-quantized checkpoint (``weight_format``)."""
    stored = checkpoint_format(model.quantization_config, dtype)
    method = options["quantization"]
    if method is not None:
        wanted = runtime_quantization(method)
        if stored is not None and stored.name != wanted.name:
            raise InvalidConfigurationError(
                f"quantization: {model.model_id} is already stored as {stored.name} (its quantization_config); "
                f"vLLM refuses --quantization {method} on it. Drop quantization, or pass weight_format to plan for "
                "another checkpoint"
            )
        return stored or wanted
    if options["weight_format"] is not None:
        assumed = assumed_checkpoint(options["weight_format"], dtype)
        if assumed.experts_only and not model.shape.is_moe:
            raise InvalidConfigurationError(
                f"weight_format: mxfp4 checkpoints quantize routed experts only (gpt-oss); {model.model_id} has "
                "no experts, so pick nvfp4, int4, fp8 or int8"
            )
        return assumed
    return stored or unquantized(dtype)


def _serving_settings(model: ResolvedModel, options: Mapping[str, Any], bf16: bool) -> ServingSettings:
    dtype = resolve_dtype(options["dtype"], model.shape.dtype, bf16)
    return ServingSettings(
        dtype=dtype,
        weights=_weights(model, options, dtype),
        kv_cache_bytes_per_element=kv_cache_bytes(options["kv_cache_dtype"], dtype),
        gpu_memory_utilization=float(options["gpu_memory_utilization"]),
        max_num_batched_tokens=options["max_num_batched_tokens"],
        max_num_seqs=options["max_num_seqs"],
    )


DEFAULT_SEQUENCE_LENGTH = 2048
"""Sequence length when the caller gives none, capped at the model's positions (gpt2 has 1024)."""


def build_context(model: ModelRef, sequence_length: int | None, batch_size: int, options: Mapping[str, Any]) -> Context:
    """Validate the options, resolve the model and build the search request.

    ``sequence_length`` None means :data:`DEFAULT_SEQUENCE_LENGTH`, or the model's maximum when that is shorter.
    """
    opts = parse_options({**options, "batch_size": batch_size})
    if sequence_length is not None and (
        isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1
    ):
        raise InvalidConfigurationError(f"sequence_length: expected a positive integer, got {sequence_length!r}")
    resolved = resolve_model(model)
    if sequence_length is None:
        sequence_length = min(DEFAULT_SEQUENCE_LENGTH, resolved.shape.max_position_embeddings)
    if sequence_length > resolved.shape.max_position_embeddings:
        raise InvalidConfigurationError(
            f"sequence_length: {sequence_length} exceeds the {resolved.shape.max_position_embeddings} positions "
            f"{resolved.model_id} supports; use at most {resolved.shape.max_position_embeddings}"
        )
    serving = _serving_settings(resolved, opts, bf16=True)
    training = TrainingSettings(
        dtype=serving.dtype,
        zero_stage=opts["zero_stage"],
        micro_batch_size=opts["micro_batch_size"],
        recompute=opts["recompute"],
        sequence_parallel=bool(opts["sequence_parallel"]),
    )
    request = Request(
        workload=opts["workload"],
        sequence_length=sequence_length,
        batch_size=batch_size,
        objective=opts["objective"],
        serving=serving,
        training=training if opts["workload"] == "training" else None,
        tensor_parallel=opts["tensor_parallel"],
        pipeline_parallel=opts["pipeline_parallel"],
        expert_parallel=opts["expert_parallel"],
        data_parallel=opts["data_parallel"],
        max_gpus=opts["max_gpus"],
        allow_cross_node_tensor_parallel=bool(opts["allow_cross_node_tensor_parallel"]),
        prices=tuple(sorted((opts["prices"] or {}).items())),
    )
    return Context(resolved, request, opts)
