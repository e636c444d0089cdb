"""Compare the inference memory model with measured vLLM startup logs.

The measurements are rows of a CSV in the format of ``shared/calibration/vllm_measured.csv`` (one vLLM
startup each: model, TP/PP, dtype/quantization, utilization, per-GPU weights and KV cache). Users can point
``autoparallel calibrate`` at their own logs the same way; the test suite asserts our error bounds on the
public rows (weights within 2 %, KV-cache tokens within 10 %).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from autoparallel.planner.errors import AutoParallelError
from autoparallel.planner.inference import Degrees, ServingSettings, estimate_inference
from autoparallel.planner.precision import (
    QUANTIZATIONS,
    assumed_checkpoint,
    checkpoint_format,
    kv_cache_bytes,
    runtime_quantization,
    unquantized,
)
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.units import GIB


@dataclass(frozen=True)
class Measurement:
    """One measured vLLM startup."""

    label: str
    """The model as the measurement names it."""
    model: str
    """The model whose config is resolved (a quantized checkpoint's base model when mapped)."""
    tensor: int
    pipeline: int
    dtype: str
    runtime_quantization: str | None
    """vLLM's load-time ``--quantization`` of the run (None: the checkpoint's own format)."""
    weight_format: str | None
    """The stored format of a quantized checkpoint whose config is not at hand (its base model's is)."""
    kv_cache_dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    gpu_memory_gib: float
    weights_gib: float
    kv_cache_tokens: int
    vllm_version: str


@dataclass(frozen=True)
class Comparison:
    """Measured against predicted for one row (predicted weights of pipeline stage 0, as vLLM logs them)."""

    measurement: Measurement
    predicted_weights_gib: float
    predicted_kv_cache_tokens: int
    skipped: str | None = None

    @property
    def weights_error(self) -> float:
        return self.predicted_weights_gib / self.measurement.weights_gib - 1

    @property
    def kv_tokens_error(self) -> float:
        return self.predicted_kv_cache_tokens / self.measurement.kv_cache_tokens - 1


def load_measurements(path: Path, bases: Mapping[str, Mapping[str, str]] | None = None) -> list[Measurement]:
    """Rows of a measurement CSV.

    ``dtype/quant`` is ``dtype`` or ``dtype+method``; a method that the checkpoint's own config carries
    (compressed-tensors, gptq_marlin) is read from the config, ``fp8`` is vLLM's ``--quantization fp8`` applied
    at load time. ``bases`` maps a measured model whose config is not at hand to ``{"model": base id,
    "quantization": format}``: a quantized checkpoint has its base model's architecture and that weight format.
    """
    rows = []
    with path.open(newline="") as handle:
        for raw in csv.DictReader(handle):
            dtype, _, method = raw["dtype/quant"].partition("+")
            base = (bases or {}).get(raw["model"], {})
            stored = base.get("quantization")
            rows.append(
                Measurement(
                    label=raw["model"],
                    model=base.get("model", raw["model"]),
                    tensor=int(raw["tp"]),
                    pipeline=int(raw["pp"]),
                    dtype=dtype,
                    runtime_quantization=method if method in QUANTIZATIONS and not stored else None,
                    weight_format=stored,
                    kv_cache_dtype=raw["kv_cache_dtype"] or "auto",
                    max_model_len=int(raw["max_model_len"]),
                    gpu_memory_utilization=float(raw["gpu_memory_utilization"]),
                    gpu_memory_gib=float(raw["gpu_mem_gib"]),
                    weights_gib=float(raw["weights_gib_per_gpu"]),
                    kv_cache_tokens=int(raw["kv_cache_tokens"]),
                    vllm_version=raw["vllm_version"],
                )
            )
    return rows


def compare(measurement: Measurement) -> Comparison:
    """Predict one measured row; ``skipped`` says why a row cannot be reproduced (model not resolvable)."""
    try:
        model = resolve_model(measurement.model)
    except AutoParallelError as error:
        return Comparison(measurement, 0.0, 0, skipped=str(error).split(";")[0])
    dtype = measurement.dtype
    if measurement.runtime_quantization:
        weights = runtime_quantization(measurement.runtime_quantization)
    elif measurement.weight_format:
        weights = assumed_checkpoint(measurement.weight_format, dtype)
    else:
        weights = checkpoint_format(model.quantization_config, dtype) or unquantized(dtype)
    settings = ServingSettings(
        dtype=dtype,
        weights=weights,
        kv_cache_bytes_per_element=kv_cache_bytes(measurement.kv_cache_dtype, dtype),
        gpu_memory_utilization=measurement.gpu_memory_utilization,
    )
    estimate = estimate_inference(
        model.shape,
        Degrees(measurement.tensor, measurement.pipeline),
        settings,
        int(measurement.gpu_memory_gib * GIB),
        measurement.max_model_len,
    )
    return Comparison(measurement, estimate.stages[0].weights / GIB, estimate.kv_cache_tokens)


def compare_all(path: Path, bases: Mapping[str, Mapping[str, str]] | None = None) -> Iterator[Comparison]:
    for measurement in load_measurements(path, bases):
        yield compare(measurement)


def format_table(comparisons: list[Comparison]) -> list[str]:
    """One line per row (measured / predicted and the error), then a summary line."""
    lines = [
        f"{'model':58} {'TP':>2} {'PP':>2} {'weights GiB meas/pred':>21} {'err':>7} "
        f"{'KV tokens meas/pred':>21} {'err':>7}"
    ]
    usable = [c for c in comparisons if c.skipped is None]
    for c in comparisons:
        m = c.measurement
        if c.skipped:
            lines.append(f"{m.label:58} skipped: {c.skipped}")
            continue
        lines.append(
            f"{m.label:58} {m.tensor:>2} {m.pipeline:>2} {m.weights_gib:>10.2f} /{c.predicted_weights_gib:>9.2f} "
            f"{c.weights_error:>+7.2%} {m.kv_cache_tokens:>10} /{c.predicted_kv_cache_tokens:>9} "
            f"{c.kv_tokens_error:>+7.2%}"
        )
    if usable:
        lines.append(
            f"{len(usable)} rows reproduced, {len(comparisons) - len(usable)} skipped: weights max |error| "
            f"{max(abs(c.weights_error) for c in usable):.2%} (bound 2%), KV tokens max |error| "
            f"{max(abs(c.kv_tokens_error) for c in usable):.2%} (bound 10%)"
        )
    return lines
