"""The planner's ``**options``: their names and defaults, validation, and the typed request they build."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.inference import DEFAULT_MAX_NUM_BATCHED_TOKENS, DEFAULT_MAX_NUM_SEQS, ServingSettings
from autoparallel.planner.precision import (
    QUANTIZATIONS,
    checkpoint_format,
    kv_cache_bytes,
    resolve_dtype,
    runtime_quantization,
    unquantized,
)
from autoparallel.planner.resolve import ResolvedModel, resolve_model
from autoparallel.planner.search import OBJECTIVES, WORKLOADS, Request
from autoparallel.planner.training import RECOMPUTE_MODES, TrainingSettings

ModelRef = str | Path | Mapping[str, Any]

_OPTION_DEFAULTS: dict[str, Any] = {
    "gpu_memory_utilization": 0.90,
    "dtype": None,
    "quantization": None,
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
    "zero_stage": 1,
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
    if options["quantization"] is not None and options["quantization"] not in QUANTIZATIONS:
        raise InvalidConfigurationError(
            f"quantization: {options['quantization']!r} is not one of {', '.join(QUANTIZATIONS)} or None"
        )
    if options["quantization"] == "int8" and options["workload"] == "inference":
        raise InvalidConfigurationError(
            "quantization: vLLM has no load-time int8 quantization; serve an int8 (w8a8) checkpoint, whose "
            "quantization_config is read automatically, or use fp8"
        )
    if options["quantization"] is not None and options["workload"] == "training":
        raise InvalidConfigurationError("quantization: applies to inference; training runs in dtype")
    if options["recompute"] not in RECOMPUTE_MODES:
        raise InvalidConfigurationError(f"recompute: expected one of {', '.join(RECOMPUTE_MODES)}")
    if options["zero_stage"] not in (0, 1, 2, 3):
        raise InvalidConfigurationError(f"zero_stage: expected 0, 1, 2 or 3, got {options['zero_stage']!r}")
    prices = options["prices"] or {}
    if not isinstance(prices, Mapping) or any(
        isinstance(v, bool) or not isinstance(v, int | float) or v < 0 for v in prices.values()
    ):
        raise InvalidConfigurationError("prices: expected a mapping of GPU name to USD per GPU-hour (≥ 0)")
    return options


@dataclass(frozen=True)
class Context:
    model: ResolvedModel
    request: Request
    options: dict[str, Any]


def _serving_settings(model: ResolvedModel, options: Mapping[str, Any], bf16: bool) -> ServingSettings:
    dtype = resolve_dtype(options["dtype"], model.shape.dtype, bf16)
    stored = checkpoint_format(model.quantization_config, dtype)
    if options["quantization"] is not None:
        weights = runtime_quantization(options["quantization"], dtype)
    else:
        weights = stored or unquantized(dtype)
    return ServingSettings(
        dtype=dtype,
        weights=weights,
        kv_cache_bytes_per_element=kv_cache_bytes(options["kv_cache_dtype"], dtype),
        gpu_memory_utilization=float(options["gpu_memory_utilization"]),
        max_num_batched_tokens=options["max_num_batched_tokens"],
        max_num_seqs=options["max_num_seqs"],
    )


def build_context(model: ModelRef, sequence_length: int, batch_size: int, options: Mapping[str, Any]) -> Context:
    opts = parse_options({**options, "batch_size": batch_size})
    if isinstance(sequence_length, bool) or not isinstance(sequence_length, int) or sequence_length < 1:
        raise InvalidConfigurationError(f"sequence_length: expected a positive integer, got {sequence_length!r}")
    resolved = resolve_model(model)
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
