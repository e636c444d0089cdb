"""Dtypes and quantized weight formats: how many bytes a parameter takes as stored on the GPU."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPES = tuple(DTYPE_BYTES)
QUANTIZATIONS = ("fp8", "int8", "int4", "awq", "gptq")
KV_CACHE_DTYPES = ("auto", "fp8")

# A scale per output channel is one number per row of a weight matrix; this row length stands in for
# in_features when the scale cost is spread over parameters (it changes weights by < 0.05%).
_PER_CHANNEL_GROUP = 4096


@dataclass(frozen=True)
class WeightFormat:
    """How the linear (matmul) weights of a checkpoint are stored."""

    name: str
    """``bfloat16``/``float16``/``float32`` for unquantized weights, else the quantization method."""
    bits: int
    """Bits per stored weight element."""
    group_size: int = 0
    """Elements that share one scale (0: no scales)."""
    scale_bytes: float = 0.0
    """Bytes of scale (plus zero point) per group."""
    experts_only: bool = False
    """Only routed experts are quantized (MXFP4 checkpoints such as gpt-oss)."""

    @property
    def quantized(self) -> bool:
        return self.name not in DTYPE_BYTES

    def bytes_for(self, params: int) -> float:
        """Bytes that ``params`` weight elements occupy in this format, scales included."""
        scales = params / self.group_size * self.scale_bytes if self.group_size else 0.0
        return params * self.bits / 8 + scales


def unquantized(dtype: str) -> WeightFormat:
    return WeightFormat(dtype, DTYPE_BYTES[dtype] * 8)


def runtime_quantization(method: str, dtype: str) -> WeightFormat:
    """Formats vLLM produces when asked to quantize at load time (``--quantization``), or a caller override.

    fp8: one byte per weight and a per-tensor scale (vLLM's dynamic fp8); int8: per-channel scales;
    int4/awq/gptq: 4-bit weights with a 16-bit scale per group of 128 (AWQ adds a 4-bit zero point).
    """
    scale = DTYPE_BYTES[dtype]
    formats = {
        "fp8": WeightFormat("fp8", 8),
        "int8": WeightFormat("int8", 8, _PER_CHANNEL_GROUP, scale),
        "int4": WeightFormat("int4", 4, 128, scale),
        "gptq": WeightFormat("gptq", 4, 128, scale),
        "awq": WeightFormat("awq", 4, 128, scale + 0.5),
    }
    if method not in formats:
        raise InvalidConfigurationError(
            f"quantization: unknown method {method!r}; choose one of {', '.join(QUANTIZATIONS)} or None"
        )
    return formats[method]


def _compressed_tensors(config: Mapping[str, Any], dtype: str) -> WeightFormat:
    groups = config.get("config_groups") or {}
    weights = next((g.get("weights") for g in groups.values() if g.get("weights")), None)
    if not weights:
        raise InvalidConfigurationError("quantization_config: compressed-tensors config without weight groups")
    bits = int(weights.get("num_bits", 8))
    strategy = weights.get("strategy", "tensor")
    kind = "fp8" if weights.get("type") == "float" else f"int{bits}"
    if strategy == "group":
        zero = 0.0 if weights.get("symmetric", True) else bits / 8
        return WeightFormat(kind, bits, int(weights["group_size"]), DTYPE_BYTES[dtype] + zero)
    if strategy == "channel":
        return WeightFormat(kind, bits, _PER_CHANNEL_GROUP, DTYPE_BYTES[dtype])
    return WeightFormat(kind, bits)


def checkpoint_format(quantization_config: Mapping[str, Any] | None, dtype: str) -> WeightFormat | None:
    """The stored weight format a config's ``quantization_config`` describes (None: not quantized)."""
    if not quantization_config:
        return None
    method = str(quantization_config.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        block = quantization_config.get("weight_block_size")
        if block:  # fp32 scale per block (DeepSeek-V3: 128 × 128)
            return WeightFormat("fp8", 8, int(block[0]) * int(block[1]), 4)
        return WeightFormat("fp8", 8, _PER_CHANNEL_GROUP, 4)
    if method == "compressed-tensors":
        return _compressed_tensors(quantization_config, dtype)
    if method in ("awq", "gptq"):
        bits = int(quantization_config.get("bits", quantization_config.get("w_bit", 4)))
        group = int(quantization_config.get("group_size", quantization_config.get("q_group_size", 128)))
        group = group if group > 0 else _PER_CHANNEL_GROUP
        zero = bits / 8 if method == "awq" or not quantization_config.get("sym", True) else 0.0
        return WeightFormat(method, bits, group, DTYPE_BYTES[dtype] + zero)
    if method == "bitsandbytes":
        if quantization_config.get("load_in_4bit"):
            return WeightFormat("bnb-4bit", 4, 64, 4)
        return WeightFormat("bnb-8bit", 8, _PER_CHANNEL_GROUP, 4)
    if method == "mxfp4":  # OCP microscaling: 4-bit values, one e8m0 byte per 32, experts only
        return WeightFormat("mxfp4", 4, 32, 1, experts_only=True)
    raise InvalidConfigurationError(
        f"quantization_config.quant_method: {method!r} is not supported; supported: fp8, fbgemm_fp8, "
        "compressed-tensors, awq, gptq, bitsandbytes, mxfp4 — or pass quantization= explicitly"
    )


def resolve_dtype(requested: str | None, checkpoint: str, bf16_supported: bool = True) -> str:
    """The activation/weight dtype vLLM runs with (its ``--dtype auto`` rule, v0.19).

    A float32 checkpoint runs in bfloat16 (float16 on GPUs without bf16), as vLLM downcasts it by default.
    """
    if requested is not None and requested != "auto":
        if requested not in DTYPE_BYTES:
            raise InvalidConfigurationError(f"dtype: {requested!r} is not one of {', '.join(DTYPES)}")
        return requested
    dtype = checkpoint if checkpoint in DTYPE_BYTES else "bfloat16"
    if dtype == "float32":
        dtype = "bfloat16"
    if dtype == "bfloat16" and not bf16_supported:
        dtype = "float16"
    return dtype


def kv_cache_bytes(kv_cache_dtype: str, dtype: str) -> int:
    """Bytes per KV-cache element: the model dtype for ``auto``, one byte for ``fp8``."""
    if kv_cache_dtype == "auto":
        return DTYPE_BYTES[dtype]
    if kv_cache_dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        return 1
    raise InvalidConfigurationError(f"kv_cache_dtype: {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
