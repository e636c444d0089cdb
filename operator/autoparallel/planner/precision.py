"""Dtypes and quantized weight formats: how many bytes a parameter takes as stored on the GPU."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.errors import InvalidConfigurationError

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2}
DTYPES = tuple(DTYPE_BYTES)
QUANTIZATIONS = ("fp8", "bitsandbytes")
"""Load-time methods: vLLM 0.19 quantizes an unquantized checkpoint while loading it (``--quantization fp8``:
dynamic fp8; ``--quantization bitsandbytes``: in-flight 4-bit). Other values of vLLM's ``QuantizationMethods``
(awq, gptq, compressed-tensors, modelopt, mxfp4 …) name checkpoint formats: vLLM refuses them on a checkpoint that
was not saved that way."""
WEIGHT_FORMATS = ("fp8", "int8", "int4", "awq", "gptq", "nvfp4", "mxfp4")
"""Formats of pre-quantized checkpoints the planner can assume (``weight_format``): "what if I served the quantized
checkpoint of this model"."""
CHECKPOINT_ONLY = ("int8", "int4", "awq", "gptq")
"""Former ``quantization`` values that are checkpoint formats, refused there with a pointer to ``weight_format``."""
KV_CACHE_DTYPES = ("auto", "fp8")

# A scale per output channel is one number per row of a weight matrix; this row length stands in for
# in_features when the scale cost is spread over parameters (it changes weights by < 0.05%).
_PER_CHANNEL_GROUP = 4096
_FP8_SCALE_BYTES = 1
"""NVFP4 stores one fp8 (e4m3) scale per 16 weights; MXFP4/MXFP8 one e8m0 byte per 32."""


@dataclass(frozen=True)
class WeightFormat:
    """How the linear (matmul) weights of a checkpoint are stored."""

    name: str
    """``bfloat16``/``float16``/``float32`` for unquantized weights, else the stored format (``fp8``, ``nvfp4`` …)."""
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


def check_quantization(method: object) -> None:
    """Refuse anything but a load-time method, pointing checkpoint formats at ``weight_format``."""
    if method in QUANTIZATIONS:
        return
    if method in CHECKPOINT_ONLY:
        raise InvalidConfigurationError(
            f"quantization: {method!r} is a checkpoint format, not a load-time method (vLLM refuses "
            f"--quantization {method} on a checkpoint that is not stored that way); to plan for a pre-quantized "
            f"checkpoint pass weight_format={method!r} (CRD: spec.model.weightFormat), or use quantization "
            f"{' or '.join(QUANTIZATIONS)}"
        )
    raise InvalidConfigurationError(
        f"quantization: unknown method {method!r}; choose one of {', '.join(QUANTIZATIONS)} or None "
        f"(pre-quantized checkpoints: weight_format, one of {', '.join(WEIGHT_FORMATS)})"
    )


def runtime_quantization(method: str) -> WeightFormat:
    """What vLLM holds after quantizing an unquantized checkpoint at load time (``--quantization``).

    fp8: one byte per weight and a per-tensor scale (vLLM's dynamic fp8); bitsandbytes: NF4 with an fp32 absmax
    per block of 64 (bitsandbytes' default 4-bit block size).
    """
    check_quantization(method)
    if method == "fp8":
        return WeightFormat("fp8", 8)
    return WeightFormat("bnb-4bit", 4, 64, 4)


def assumed_checkpoint(weight_format: str, dtype: str) -> WeightFormat:
    """The stored format of a typical pre-quantized checkpoint (``weight_format``) of a model.

    int8: w8a8 with per-channel scales; fp8: per-channel scales; int4/gptq: 4-bit with a ``dtype`` scale per group
    of 128 (AWQ adds a 4-bit zero point); nvfp4: an fp8 scale per 16; mxfp4: an e8m0 scale per 32, experts only.
    """
    scale = DTYPE_BYTES[dtype]
    formats = {
        "fp8": WeightFormat("fp8", 8, _PER_CHANNEL_GROUP, 4),
        "int8": WeightFormat("int8", 8, _PER_CHANNEL_GROUP, scale),
        "int4": WeightFormat("int4", 4, 128, scale),
        "gptq": WeightFormat("gptq", 4, 128, scale),
        "awq": WeightFormat("awq", 4, 128, scale + 0.5),
        "nvfp4": WeightFormat("nvfp4", 4, 16, _FP8_SCALE_BYTES),
        "mxfp4": WeightFormat("mxfp4", 4, 32, _FP8_SCALE_BYTES, experts_only=True),
    }
    if weight_format not in formats:
        raise InvalidConfigurationError(
            f"weight_format: {weight_format!r} is not one of {', '.join(WEIGHT_FORMATS)} or None"
        )
    return formats[weight_format]


def _number(config: Mapping[str, Any], key: str, default: int, where: str) -> int:
    value = config.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not -1 <= value < math.inf:
        raise InvalidConfigurationError(f"{where}.{key}: expected an integer, got {value!r}")
    return int(value)


def _compressed_tensors_group(weights: Mapping[str, Any], dtype: str) -> WeightFormat:
    where = "quantization_config.config_groups.weights"
    bits = _number(weights, "num_bits", 8, where)
    strategy = str(weights.get("strategy") or "tensor")
    is_float = weights.get("type") == "float"
    if is_float and bits == 4:  # nvfp4 (tensor_group of 16, fp8 scales) or mxfp4 (group of 32, e8m0 scales)
        group = _number(weights, "group_size", 16, where) or 16
        return WeightFormat("nvfp4" if group == 16 else "mxfp4", 4, group, _FP8_SCALE_BYTES)
    kind = "fp8" if is_float else f"int{bits}"
    if strategy in ("group", "tensor_group"):
        zero = 0.0 if weights.get("symmetric", True) else bits / 8
        group = _number(weights, "group_size", 128, where)
        return WeightFormat(kind, bits, group if group > 0 else _PER_CHANNEL_GROUP, DTYPE_BYTES[dtype] + zero)
    if strategy == "block":
        block = weights.get("block_structure") or [128, 128]
        return WeightFormat(kind, bits, int(block[0]) * int(block[1]), 4)
    if strategy == "channel":
        return WeightFormat(kind, bits, _PER_CHANNEL_GROUP, DTYPE_BYTES[dtype])
    return WeightFormat(kind, bits)


def _compressed_tensors(config: Mapping[str, Any], dtype: str) -> WeightFormat:
    """The format of the widest-reaching group (``Linear`` targets); MoE-only groups mark experts_only."""
    groups = config.get("config_groups") or {}
    if not isinstance(groups, Mapping):
        raise InvalidConfigurationError("quantization_config.config_groups: expected a mapping of groups")
    with_weights = [g for g in groups.values() if isinstance(g, Mapping) and isinstance(g.get("weights"), Mapping)]
    if not with_weights:
        raise InvalidConfigurationError(
            "quantization_config.config_groups: compressed-tensors config without weight groups"
        )
    return _compressed_tensors_group(with_weights[0]["weights"], dtype)


_MODELOPT_ALGOS: dict[str, WeightFormat] = {
    "FP8": WeightFormat("fp8", 8),
    "FP8_PER_CHANNEL_PER_TOKEN": WeightFormat("fp8", 8, _PER_CHANNEL_GROUP, 4),
    "FP8_PB_WO": WeightFormat("fp8", 8, 128 * 128, 4),
    "NVFP4": WeightFormat("nvfp4", 4, 16, _FP8_SCALE_BYTES),
    "MXFP8": WeightFormat("mxfp8", 8, 32, _FP8_SCALE_BYTES),
}
"""ModelOpt's ``quant_algo`` values vLLM 0.19 serves (docs/features/quantization/modelopt.md): per-tensor fp8,
per-channel fp8, 128×128 block fp8 (weight only), NVFP4 (fp8 scale per 16) and MXFP8 (e8m0 scale per 32)."""


def _modelopt(config: Mapping[str, Any]) -> WeightFormat:
    # config.json carries quant_algo at the top; hf_quant_config.json nests it under "quantization".
    nested = config.get("quantization")
    source = nested if isinstance(nested, Mapping) else config
    algo = str(source.get("quant_algo") or "").upper()
    if algo not in _MODELOPT_ALGOS:
        raise InvalidConfigurationError(
            f"quantization_config.quant_algo: ModelOpt algorithm {algo or None!r} is not supported; supported: "
            f"{', '.join(_MODELOPT_ALGOS)}"
        )
    return _MODELOPT_ALGOS[algo]


def checkpoint_format(quantization_config: Mapping[str, Any] | None, dtype: str) -> WeightFormat | None:
    """The stored weight format a config's ``quantization_config`` describes (None: not quantized).

    Embeddings, lm_head, norms and routers are counted in ``dtype`` whatever the format (every format listed here
    leaves them unquantized: compressed-tensors' ``ignore`` and ModelOpt's ``exclude_modules`` name them).
    """
    if not quantization_config:
        return None
    if not isinstance(quantization_config, Mapping):
        raise InvalidConfigurationError("quantization_config: expected a mapping")
    method = str(quantization_config.get("quant_method", "")).lower()
    if method in ("fp8", "fbgemm_fp8"):
        block = quantization_config.get("weight_block_size")
        if block:  # fp32 scale per block (DeepSeek-V3: 128 × 128)
            return WeightFormat("fp8", 8, int(block[0]) * int(block[1]), 4)
        return WeightFormat("fp8", 8, _PER_CHANNEL_GROUP, 4)
    if method == "compressed-tensors":
        return _compressed_tensors(quantization_config, dtype)
    if method in ("modelopt", "modelopt_fp4"):
        return _modelopt(quantization_config)
    if method in ("awq", "gptq"):
        where = "quantization_config"
        bits = _number(quantization_config, "bits", _number(quantization_config, "w_bit", 4, where), where)
        group = _number(
            quantization_config, "group_size", _number(quantization_config, "q_group_size", 128, where), where
        )
        group = group if group > 0 else _PER_CHANNEL_GROUP
        zero = bits / 8 if method == "awq" or not quantization_config.get("sym", True) else 0.0
        return WeightFormat(method, bits, group, DTYPE_BYTES[dtype] + zero)
    if method == "bitsandbytes":
        if quantization_config.get("load_in_4bit"):
            return WeightFormat("bnb-4bit", 4, 64, 4)
        return WeightFormat("bnb-8bit", 8, _PER_CHANNEL_GROUP, 4)
    if method == "mxfp4":  # OCP microscaling: 4-bit values, one e8m0 byte per 32, experts only
        return WeightFormat("mxfp4", 4, 32, _FP8_SCALE_BYTES, experts_only=True)
    raise InvalidConfigurationError(
        f"quantization_config.quant_method: {method!r} is not supported; supported: fp8, fbgemm_fp8, "
        "compressed-tensors, modelopt, awq, gptq, bitsandbytes, mxfp4 — or pass weight_format explicitly"
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
