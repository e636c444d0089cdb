"""Per-layer cache specs: what each decoder layer keeps for a running sequence, read from a transformers config.

One class per cache kind, as vLLM's ``vllm/v1/kv_cache_interface.py`` has one spec per kind:

* :class:`AttentionGeometry` — per-token KV (``FullAttentionSpec``, ``SlidingWindowSpec``,
  ``ChunkedLocalAttentionSpec``, ``MLAAttentionSpec``), plus DeepSeek-V3.2's sparse-attention indexer keys;
* :class:`Mamba2State`, :class:`GatedDeltaNetState`, :class:`KimiDeltaState`, :class:`ShortConvState`,
  :class:`Mamba1State` — a fixed recurrent state per running sequence (``MambaSpec``), sized as
  ``vllm/model_executor/layers/mamba/mamba_utils.py`` (``MambaStateShapeCalculator``) sizes it per TP rank.

A decoder layer holds zero (MLP/MoE-only layers of Nemotron-H), one, or several caches (Falcon-H1 runs attention
and Mamba-2 side by side). The memory code never asks which model family it has; it asks each spec for bytes.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.precision import DTYPE_BYTES

SPARSE_INDEXER_QUANT_BLOCK = 128
"""DeepSeek-V3.2's indexer caches its keys as fp8 with one fp32 scale per 128 elements
(``vllm/model_executor/models/deepseek_v2.py``: ``head_size = index_head_dim + index_head_dim // 128 * 4``, uint8)."""


@dataclass(frozen=True)
class AttentionGeometry:
    """What one attention layer stores in the KV cache per token."""

    kv_heads: int
    """KV heads (0 for MLA, which stores one latent per token)."""
    head_dim: int
    """Dimension of a K or V head."""
    latent_dim: int = 0
    """MLA: kv_lora_rank + qk_rope_head_dim elements per token, replicated on every TP rank."""
    sliding_window: int | None = None
    """Tokens a sliding-window layer keeps; None for full attention."""
    chunk_size: int | None = None
    """Chunked-local attention (Llama 4): tokens of the attention chunk; None otherwise."""
    indexer_bytes: int = 0
    """Sparse-attention indexer key bytes per token (DeepSeek-V3.2), replicated on every TP rank."""

    def elements_per_token(self, tp: int) -> int:
        """KV-cache elements one TP rank stores per token for this layer."""
        if self.latent_dim:
            return self.latent_dim
        return 2 * max(1, self.kv_heads // tp) * self.head_dim

    def bytes_per_token(self, tp: int, kv_bytes: int) -> int:
        """KV-cache bytes one TP rank stores per token for this layer (indexer keys included)."""
        return self.elements_per_token(tp) * kv_bytes + self.indexer_bytes

    @property
    def tokens_kept(self) -> int | None:
        """Tokens of a sequence this layer keeps at most (None: all of them)."""
        return self.sliding_window or self.chunk_size

    @property
    def alignment(self) -> int:
        """Attention block-size alignment vLLM's kernels need next to Mamba pages (``HybridAttentionMambaModelConfig``):
        16 tokens for FlashAttention, 64 for the MLA backends."""
        return 64 if self.latent_dim else 16


def _divide(value: int, tp: int) -> int:
    return value // tp


@dataclass(frozen=True)
class RecurrentState(ABC):
    """A linear-attention/SSM layer's state per running sequence: conv state(s) plus the SSM/recurrent state.
    Each layer kind below gives its element counts per TP rank."""

    ssm_dtype: str | None
    """dtype of the SSM/recurrent state (``mamba_ssm_cache_dtype``/``mamba_ssm_dtype``); None: the model dtype."""

    @abstractmethod
    def conv_elements(self, tp: int) -> int:
        """Elements of the conv state(s) on one TP rank."""

    @abstractmethod
    def ssm_elements(self, tp: int) -> int:
        """Elements of the SSM/recurrent state on one TP rank."""

    def bytes_per_sequence(self, tp: int, dtype: str) -> int:
        """Bytes of one sequence's state on one TP rank (vLLM's ``MambaSpec.page_size_bytes`` before padding);
        conv states are kept in the model dtype."""
        ssm_bytes = DTYPE_BYTES.get(self.ssm_dtype or dtype, DTYPE_BYTES[dtype])
        return self.conv_elements(tp) * DTYPE_BYTES[dtype] + self.ssm_elements(tp) * ssm_bytes


@dataclass(frozen=True)
class Mamba2State(RecurrentState):
    """Mamba-2 (``MambaStateShapeCalculator.mamba2_state_shape``): conv over x, B and C;
    SSM state heads × head_dim × state_size."""

    heads: int
    head_dim: int
    state_size: int
    groups: int
    conv_kernel: int
    intermediate: int

    def _groups(self, tp: int) -> int:
        # extra_groups_for_head_shards: one B/C group is replicated onto every rank when groups do not split.
        return self.groups if self.groups % tp == 0 else tp

    def conv_elements(self, tp: int) -> int:
        return _divide(self.intermediate + 2 * self._groups(tp) * self.state_size, tp) * (self.conv_kernel - 1)

    def ssm_elements(self, tp: int) -> int:
        return _divide(self.heads, tp) * self.head_dim * self.state_size


@dataclass(frozen=True)
class Mamba1State(RecurrentState):
    """Mamba-1 (Jamba; ``mamba1_state_shape``): conv over the expanded stream; SSM intermediate × state."""

    intermediate: int
    state_size: int
    conv_kernel: int

    def conv_elements(self, tp: int) -> int:
        return _divide(self.intermediate, tp) * (self.conv_kernel - 1)

    def ssm_elements(self, tp: int) -> int:
        return _divide(self.intermediate, tp) * self.state_size


@dataclass(frozen=True)
class GatedDeltaNetState(RecurrentState):
    """Gated DeltaNet (Qwen3-Next, Qwen3.5/3.6; ``gated_delta_net_state_shape``): conv over q, k, v;
    recurrent state value heads × v_dim × k_dim."""

    key_heads: int
    value_heads: int
    key_dim: int
    value_dim: int
    conv_kernel: int

    def conv_elements(self, tp: int) -> int:
        channels = 2 * self.key_heads * self.key_dim + self.value_heads * self.value_dim
        return _divide(channels, tp) * (self.conv_kernel - 1)

    def ssm_elements(self, tp: int) -> int:
        return _divide(self.value_heads, tp) * self.value_dim * self.key_dim


@dataclass(frozen=True)
class KimiDeltaState(RecurrentState):
    """Kimi Delta Attention (Kimi-Linear; ``kda_state_shape``): three short convs (q, k, v); recurrent
    state heads × head_dim × head_dim."""

    heads: int
    head_dim: int
    conv_kernel: int

    def conv_elements(self, tp: int) -> int:
        return 3 * _divide(self.heads * self.head_dim, tp) * (self.conv_kernel - 1)

    def ssm_elements(self, tp: int) -> int:
        return _divide(self.heads, tp) * self.head_dim * self.head_dim


@dataclass(frozen=True)
class ShortConvState(RecurrentState):
    """Gated short convolution (LFM2; ``short_conv_state_shape``): one conv state, no SSM state."""

    channels: int
    conv_kernel: int

    def conv_elements(self, tp: int) -> int:
        return _divide(self.channels, tp) * (self.conv_kernel - 1)

    def ssm_elements(self, tp: int) -> int:
        return 0


LayerCache = AttentionGeometry | RecurrentState
"""One cache a decoder layer holds."""


def config_value(config: Any, *names: str, default: Any = None) -> Any:
    """The first attribute of ``names`` that the config sets to something other than None."""
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def _ssm_dtype(config: Any) -> str | None:
    raw = config_value(config, "mamba_ssm_cache_dtype", "mamba_ssm_dtype")
    return None if raw in (None, "auto") else str(raw).removeprefix("torch.")


def recurrent_state(config: Any) -> RecurrentState | None:
    """The state of the config's linear-attention/SSM layers, from the keys its family uses; None without any."""
    ssm_dtype = _ssm_dtype(config)
    hidden = int(config_value(config, "hidden_size", default=0))
    kda = getattr(config, "linear_attn_config", None)
    if isinstance(kda, dict) and kda.get("kda_layers"):
        return KimiDeltaState(
            ssm_dtype, int(kda["num_heads"]), int(kda["head_dim"]), int(kda.get("short_conv_kernel_size", 4))
        )
    if config_value(config, "linear_num_value_heads") is not None:
        return GatedDeltaNetState(
            ssm_dtype,
            key_heads=int(config.linear_num_key_heads),
            value_heads=int(config.linear_num_value_heads),
            key_dim=int(config.linear_key_head_dim),
            value_dim=int(config.linear_value_head_dim),
            conv_kernel=int(config_value(config, "linear_conv_kernel_dim", default=4)),
        )
    heads = config_value(config, "mamba_num_heads", "mamba_n_heads")
    if heads is not None:
        head_dim = int(config_value(config, "mamba_head_dim", "mamba_d_head"))
        # Nemotron-H: heads × head_dim; Granite 4 / Falcon-H1: mamba_d_ssm or mamba_expand × hidden.
        expand = config_value(config, "mamba_expand")
        intermediate = config_value(config, "mamba_d_ssm") or (
            int(expand) * hidden if expand else int(heads) * head_dim
        )
        return Mamba2State(
            ssm_dtype,
            heads=int(heads),
            head_dim=head_dim,
            state_size=int(config_value(config, "ssm_state_size", "mamba_d_state")),
            groups=int(config_value(config, "n_groups", "mamba_n_groups", default=1)),
            conv_kernel=int(config_value(config, "conv_kernel", "mamba_d_conv", default=4)),
            intermediate=int(intermediate),
        )
    if config_value(config, "mamba_d_state") is not None:
        return Mamba1State(
            ssm_dtype,
            intermediate=int(config_value(config, "mamba_expand", default=2)) * hidden,
            state_size=int(config.mamba_d_state),
            conv_kernel=int(config_value(config, "mamba_d_conv", default=4)),
        )
    if config_value(config, "conv_L_cache") is not None:
        return ShortConvState(ssm_dtype, channels=hidden, conv_kernel=int(config.conv_L_cache))
    return None


_STATE_TYPES = frozenset({"linear_attention", "mamba", "conv"})
_NO_CACHE_TYPES = frozenset({"mlp", "moe"})
_PATTERN_TYPES = {"M": "mamba", "*": "full_attention", "-": "mlp", "E": "moe"}
"""Nemotron-H's ``hybrid_override_pattern``: ``M`` Mamba-2, ``*`` attention, ``-`` MLP, ``E`` MoE."""


def layer_types(config: Any, num_layers: int) -> tuple[str, ...]:
    """Each decoder layer's kind, from ``layer_types`` or the older keys that say the same thing."""
    types = getattr(config, "layer_types", None) or getattr(config, "layers_block_type", None)
    if types:
        return tuple(str(t) for t in types[:num_layers])
    pattern = getattr(config, "hybrid_override_pattern", None)
    if pattern:
        return tuple(_PATTERN_TYPES[ch] for ch in pattern[:num_layers])
    kda = getattr(config, "linear_attn_config", None)
    if isinstance(kda, dict) and kda.get("kda_layers"):  # 1-based layer numbers
        return tuple("linear_attention" if i + 1 in kda["kda_layers"] else "full_attention" for i in range(num_layers))
    interval = getattr(config, "full_attention_interval", None)
    if interval:
        return tuple(
            "full_attention" if (i + 1) % int(interval) == 0 else "linear_attention" for i in range(num_layers)
        )
    window = config_value(config, "sliding_window")
    if window and getattr(config, "use_sliding_window", True):
        return ("sliding_attention",) * num_layers
    return ("full_attention",) * num_layers


def _attention(config: Any, kind: str, kv_heads: int, head_dim: int) -> AttentionGeometry:
    latent = 0
    if config_value(config, "kv_lora_rank") is not None:  # multi-head latent attention (DeepSeek-V2/V3, Kimi)
        latent = int(config.kv_lora_rank) + int(config.qk_rope_head_dim)
    indexer = 0
    if kind == "indexed_attention" or config_value(config, "index_topk") is not None:
        index_dim = int(config.index_head_dim)
        indexer = index_dim + index_dim // SPARSE_INDEXER_QUANT_BLOCK * 4
    window = config_value(config, "sliding_window") if kind == "sliding_attention" else None
    chunk = config_value(config, "attention_chunk_size") if kind == "chunked_attention" else None
    return AttentionGeometry(
        kv_heads=0 if latent else kv_heads,
        head_dim=0 if latent else head_dim,
        latent_dim=latent,
        sliding_window=int(window) if window else None,
        chunk_size=int(chunk) if chunk else None,
        indexer_bytes=indexer,
    )


def layer_caches(config: Any, dims: Sequence[tuple[int, int]]) -> tuple[tuple[LayerCache, ...], ...]:
    """The caches of every decoder layer (the per-layer cache-spec table).

    ``dims`` holds each layer's (KV heads, head dim): one value for most models, per layer where the config sets
    them per layer (gemma-4's global layers have fewer, wider KV heads than its sliding ones).
    """
    state = recurrent_state(config)
    kinds = layer_types(config, len(dims))
    # A config with SSM keys but no state layers in its layer list (Falcon-H1) runs both mixers in every layer.
    parallel_hybrid = state is not None and not _STATE_TYPES & set(kinds)
    caches: list[tuple[LayerCache, ...]] = []
    for kind, (kv_heads, head_dim) in zip(kinds, dims, strict=False):
        if kind in _NO_CACHE_TYPES:
            caches.append(())
        elif kind in _STATE_TYPES and state is not None:
            caches.append((state,))
        else:
            attention = _attention(config, kind, kv_heads, head_dim)
            caches.append((attention, state) if parallel_hybrid and state is not None else (attention,))
    return tuple(caches)
