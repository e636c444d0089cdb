"""Model shapes: the numbers the memory model needs, read from a transformers config.

A :class:`ModelShape` holds the exact parameter count of every decoder layer, split by how vLLM's tensor
parallelism shards it, plus the attention geometry the KV cache depends on. The analytic rules below cover
the families of the bundled catalog; :mod:`autoparallel.planner.metacount` gives the same layout for any other
architecture by building the transformers model on the ``meta`` device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from autoparallel.planner.caches import AttentionGeometry, LayerCache, RecurrentState, layer_caches
from autoparallel.planner.caches import config_value as _get
from autoparallel.planner.errors import InvalidConfigurationError

__all__ = ["AttentionGeometry", "LayerCache", "LayerParams", "ModelShape", "RecurrentState"]


@dataclass(frozen=True)
class LayerParams:
    """Parameters of one decoder layer, grouped by how tensor/expert parallelism shards them."""

    sharded: int = 0
    """Linear weights split evenly over TP ranks (q/o projections, dense MLP, MLA up-projections)."""
    kv: int = 0
    """k/v projection weights: split while TP ≤ KV heads, each KV head replicated beyond that."""
    replicated_linear: int = 0
    """Linear weights every TP rank holds whole (MLA down-projections q_a/kv_a in vLLM)."""
    small: int = 0
    """Norms, routers and biases: replicated and never quantized."""
    experts: int = 0
    """Routed-expert weights: sliced by TP, or whole experts spread over EP ranks."""

    @property
    def total(self) -> int:
        return self.sharded + self.kv + self.replicated_linear + self.small + self.experts


@dataclass(frozen=True, eq=False)
class ModelShape:
    """Everything the planner knows about a model's size and structure.

    Compared and hashed by identity: the search caches per-shape tables, and resolution caches shapes.
    """

    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    """KV heads and head dim (of the first layer where they vary per layer; :attr:`caches` holds every layer's)."""
    vocab_size: int
    intermediate_size: int
    """Dense MLP width (the widest per-token MLP activation, for MoE the routed+shared width)."""
    max_position_embeddings: int
    layers: tuple[LayerParams, ...]
    caches: tuple[tuple[LayerCache, ...], ...]
    """Per decoder layer, the caches it holds (see :mod:`autoparallel.planner.caches`)."""
    embedding_params: int
    """Token (and learned position) embeddings, held by the first pipeline stage."""
    lm_head_params: int
    """Output projection (0 when tied to the embedding), held by the last stage."""
    final_norm_params: int
    """Final norm (and lm_head bias), held by the last stage."""
    extra_params: int = 0
    """Parameters outside the decoder stack (vision tower, projector), held by the first stage."""
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    rotary_dim: int = 0
    """Width of vLLM's rotary cos/sin cache (0 without rotary embeddings)."""
    dtype: str = "bfloat16"
    """Checkpoint dtype from the config (``torch_dtype``)."""
    is_mla: bool = False

    @property
    def parameter_count(self) -> int:
        return (
            self.embedding_params
            + self.lm_head_params
            + self.final_norm_params
            + self.extra_params
            + sum(layer.total for layer in self.layers)
        )

    @property
    def has_recurrent_state(self) -> bool:
        """Whether some layer keeps a fixed per-sequence state (linear attention, Mamba, short conv)."""
        return any(isinstance(cache, RecurrentState) for layer in self.caches for cache in layer)

    def layer_kv_heads(self, index: int) -> int:
        """KV heads of decoder layer ``index`` (``num_kv_heads`` unless its attention says otherwise)."""
        for cache in self.caches[index] if index < len(self.caches) else ():
            if isinstance(cache, AttentionGeometry) and cache.kv_heads:
                return cache.kv_heads
        return self.num_kv_heads

    @property
    def kv_head_counts(self) -> tuple[int, ...]:
        """The distinct KV-head counts of the attention layers (several where layers differ: gemma-4)."""
        counts = {c.kv_heads for layer in self.caches for c in layer if isinstance(c, AttentionGeometry) and c.kv_heads}
        return tuple(sorted(counts)) or (self.num_kv_heads,)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def active_parameter_count(self) -> int:
        """Parameters one token touches: routed experts count only ``experts_per_token`` of ``num_experts``."""
        if not self.is_moe:
            return self.parameter_count
        inactive = sum(layer.experts for layer in self.layers) * (self.num_experts - self.experts_per_token)
        return self.parameter_count - inactive // self.num_experts


def _gated_mlp(hidden: int, inner: int, bias: bool = False) -> int:
    """gate, up and down projections of a SwiGLU/GeGLU MLP."""
    return 3 * hidden * inner + (2 * inner + hidden if bias else 0)


@dataclass(frozen=True)
class _Common:
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    inner: int
    tied: bool


def per_layer_configs(config: Any) -> list[Any] | None:
    """transformers' per-layer views of a config whose attention geometry varies by layer, else None.

    transformers 5 marks such attributes per layer (gemma-4: its global layers have 2 KV heads of 512, its
    sliding layers 8 of 256) and raises ``AmbiguousGlobalPerLayerAttributeError`` when they are read globally.
    """
    from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

    try:
        _get(config, "num_key_value_heads", "head_dim")
        _get(config, "head_dim")
    except AmbiguousGlobalPerLayerAttributeError:
        return list(config.per_layer_config)
    return None


def _attention_dims(config: Any, c: _Common) -> tuple[tuple[int, int], ...]:
    """Each decoder layer's (KV heads, head dim)."""
    layers = per_layer_configs(config)
    if layers is None:
        return ((_kv_heads(config, c), c.head_dim),) * c.layers
    return tuple(
        (
            int(_get(layer, "num_key_value_heads", default=c.heads)),
            int(_get(layer, "head_dim", default=c.hidden // c.heads)),
        )
        for layer in layers[: c.layers]
    )


def _common(config: Any) -> _Common:
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model"))
    heads = int(_get(config, "num_attention_heads", "n_head"))
    layers = per_layer_configs(config)
    first = layers[0] if layers else config  # per-layer geometry: the shape's scalars are the first layer's
    return _Common(
        hidden=hidden,
        layers=int(_get(config, "num_hidden_layers", "n_layer")),
        heads=heads,
        kv_heads=int(_get(first, "num_key_value_heads", "num_kv_heads", default=heads)),
        head_dim=int(_get(first, "head_dim", default=hidden // heads)),
        vocab=int(config.vocab_size),
        inner=int(_get(config, "intermediate_size", "n_inner", "ffn_hidden_size", default=4 * hidden)),
        tied=bool(getattr(config, "tie_word_embeddings", False)),
    )


def _dense_attention(c: _Common, qkv_bias: bool, o_bias: bool, qk_norm: bool = False) -> LayerParams:
    q_out = c.heads * c.head_dim
    kv_out = c.kv_heads * c.head_dim
    bias = (q_out + 2 * kv_out if qkv_bias else 0) + (c.hidden if o_bias else 0)
    return LayerParams(
        sharded=2 * c.hidden * q_out,
        kv=2 * c.hidden * kv_out,
        small=bias + (2 * c.head_dim if qk_norm else 0),
    )


def _combine(*parts: LayerParams) -> LayerParams:
    return LayerParams(
        sharded=sum(p.sharded for p in parts),
        kv=sum(p.kv for p in parts),
        replicated_linear=sum(p.replicated_linear for p in parts),
        small=sum(p.small for p in parts),
        experts=sum(p.experts for p in parts),
    )


def _is_sparse_qwen(config: Any, index: int) -> bool:
    """Qwen2-MoE/Qwen3-MoE: which layers use experts (``mlp_only_layers``, ``decoder_sparse_step``)."""
    step = int(_get(config, "decoder_sparse_step", default=1))
    return index not in (getattr(config, "mlp_only_layers", None) or []) and (index + 1) % step == 0


def _decoder_family(config: Any) -> tuple[list[LayerParams], dict[str, int]]:
    """Llama, Mistral, Mixtral, Qwen2/2-MoE/3/3-MoE, Granite, Gemma/Gemma-2, Phi-3 (fused qkv, same counts)."""
    c = _common(config)
    model_type = config.model_type
    qkv_bias = model_type in ("qwen2", "qwen2_moe") or bool(getattr(config, "attention_bias", False))
    o_bias = model_type not in ("qwen2", "qwen2_moe") and bool(getattr(config, "attention_bias", False))
    attention = _dense_attention(c, qkv_bias, o_bias, qk_norm=model_type in ("qwen3", "qwen3_moe"))
    norms = (4 if model_type == "gemma2" else 2) * c.hidden
    mlp_bias = bool(getattr(config, "mlp_bias", False))
    num_experts = int(_get(config, "num_local_experts", "num_experts", default=0))
    moe_inner = int(_get(config, "moe_intermediate_size", default=c.inner))
    shared_inner = int(_get(config, "shared_expert_intermediate_size", default=0))
    layers = []
    for index in range(c.layers):
        if num_experts and (model_type == "mixtral" or _is_sparse_qwen(config, index)):
            mlp = LayerParams(
                sharded=_gated_mlp(c.hidden, shared_inner) if shared_inner else 0,
                small=c.hidden * num_experts + (c.hidden if shared_inner else 0),  # router (+ shared gate)
                experts=num_experts * _gated_mlp(c.hidden, moe_inner),
            )
        else:
            mlp = LayerParams(sharded=_gated_mlp(c.hidden, c.inner, mlp_bias))
        layers.append(_combine(attention, mlp, LayerParams(small=norms)))
    extras = {
        "final_norm": c.hidden,
        "num_experts": num_experts,
        "moe_inner": moe_inner if num_experts else 0,
    }
    return layers, extras


def _deepseek_family(config: Any) -> tuple[list[LayerParams], dict[str, int]]:
    """DeepSeek-V2/V3: multi-head latent attention, shared experts, first dense layers."""
    c = _common(config)
    qk_head = int(config.qk_nope_head_dim) + int(config.qk_rope_head_dim)
    kv_lora = int(config.kv_lora_rank)
    q_lora = getattr(config, "q_lora_rank", None)
    bias = bool(getattr(config, "attention_bias", False))
    heads_out = c.heads * qk_head
    if q_lora:
        q = LayerParams(
            sharded=int(q_lora) * heads_out,
            replicated_linear=c.hidden * int(q_lora),
            small=int(q_lora) + (int(q_lora) if bias else 0),  # q_a_layernorm (+ q_a bias)
        )
    else:
        q = LayerParams(sharded=c.hidden * heads_out)
    kv_a_out = kv_lora + int(config.qk_rope_head_dim)
    attention = _combine(
        q,
        LayerParams(
            sharded=kv_lora * c.heads * (int(config.qk_nope_head_dim) + int(config.v_head_dim))
            + c.heads * int(config.v_head_dim) * c.hidden,
            replicated_linear=c.hidden * kv_a_out,
            small=kv_lora + (kv_a_out + c.hidden if bias else 0),
        ),
    )
    num_experts = int(_get(config, "n_routed_experts", default=0))
    moe_inner = int(config.moe_intermediate_size)
    shared = int(_get(config, "n_shared_experts", default=0))
    first_dense = int(_get(config, "first_k_dense_replace", default=0))
    freq = int(_get(config, "moe_layer_freq", default=1))
    layers = []
    for index in range(c.layers):
        if num_experts and index >= first_dense and index % freq == 0:
            mlp = LayerParams(
                sharded=_gated_mlp(c.hidden, moe_inner * shared) if shared else 0,
                small=c.hidden * num_experts,
                experts=num_experts * _gated_mlp(c.hidden, moe_inner),
            )
        else:
            mlp = LayerParams(sharded=_gated_mlp(c.hidden, c.inner))
        layers.append(_combine(attention, mlp, LayerParams(small=2 * c.hidden)))
    extras = {"final_norm": c.hidden, "num_experts": num_experts, "moe_inner": moe_inner}
    return layers, extras


def _phi_family(config: Any) -> tuple[list[LayerParams], dict[str, int]]:
    """Phi-1/2: biased q/k/v/dense, plain GELU MLP, one LayerNorm per block, biased lm_head."""
    c = _common(config)
    attention = _dense_attention(c, qkv_bias=True, o_bias=True)
    mlp = LayerParams(sharded=2 * c.hidden * c.inner, small=c.inner + c.hidden)
    layer = _combine(attention, mlp, LayerParams(small=2 * c.hidden))
    return [layer] * c.layers, {"final_norm": 2 * c.hidden + c.vocab}


def _gpt2_family(config: Any) -> tuple[list[LayerParams], dict[str, int]]:
    """GPT-2: fused biased c_attn, biased MLP, two LayerNorms per block, learned positions."""
    c = _common(config)
    attention = _dense_attention(c, qkv_bias=True, o_bias=True)
    mlp = LayerParams(sharded=2 * c.hidden * c.inner, small=c.inner + c.hidden)
    layer = _combine(attention, mlp, LayerParams(small=4 * c.hidden))
    return [layer] * c.layers, {"final_norm": 2 * c.hidden, "positions": int(config.n_positions) * c.hidden}


def _falcon_family(config: Any) -> tuple[list[LayerParams], dict[str, int]]:
    """Falcon: fused qkv (multi-query or grouped), parallel attention/MLP, LayerNorms with bias."""
    c = _common(config)
    if not getattr(config, "new_decoder_architecture", False) and getattr(config, "multi_query", True):
        c = _Common(c.hidden, c.layers, c.heads, 1, c.head_dim, c.vocab, c.inner, c.tied)
    bias = bool(getattr(config, "bias", False))
    attention = _dense_attention(c, qkv_bias=bias, o_bias=bias)
    inner = int(_get(config, "ffn_hidden_size", default=4 * c.hidden))
    mlp = LayerParams(sharded=2 * c.hidden * inner, small=inner + c.hidden if bias else 0)
    parallel_norms = getattr(config, "new_decoder_architecture", False) and (
        _get(config, "num_ln_in_parallel_attn", default=2) == 2
    )
    norms = (4 if parallel_norms else 2) * c.hidden
    layer = _combine(attention, mlp, LayerParams(small=norms))
    return [layer] * c.layers, {"final_norm": 2 * c.hidden}


_FAMILIES: dict[str, Callable[[Any], tuple[list[LayerParams], dict[str, int]]]] = {
    **dict.fromkeys(
        (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen2_moe",
            "qwen3",
            "qwen3_moe",
            "granite",
            "gemma",
            "gemma2",
            "phi3",
        ),
        _decoder_family,
    ),
    "deepseek_v2": _deepseek_family,
    "deepseek_v3": _deepseek_family,
    "phi": _phi_family,
    "gpt2": _gpt2_family,
    "falcon": _falcon_family,
}

ANALYTIC_MODEL_TYPES = frozenset(_FAMILIES)


def _is_mla(config: Any) -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3/V3.2, Kimi): the config names a KV LoRA rank."""
    return _get(config, "kv_lora_rank") is not None


def _rotary_dim(config: Any, dims: tuple[tuple[int, int], ...]) -> int:
    """Width of the rotary cos/sin caches: one per distinct rotary embedding (gemma-4 has one for its sliding
    layers and a partial one for its global layers, each ``rope_parameters[layer type]``)."""
    if config.model_type in ("gpt2",):
        return 0
    if _is_mla(config):
        return int(config.qk_rope_head_dim)
    factor = float(_get(config, "partial_rotary_factor", default=1.0))
    by_type = getattr(config, "rope_parameters", None)
    kinds = getattr(config, "layer_types", None)
    if isinstance(by_type, dict) and kinds and all(isinstance(v, dict) for v in by_type.values()):
        widths = {
            (kind, int(head_dim * float(by_type.get(kind, {}).get("partial_rotary_factor", factor))))
            for kind, (_, head_dim) in zip(kinds, dims, strict=False)
        }
        return sum(width for _, width in widths)
    return int(dims[0][1] * factor) if dims else 0


def _kv_heads(config: Any, c: _Common) -> int:
    if config.model_type == "falcon" and not getattr(config, "new_decoder_architecture", False):
        return 1 if getattr(config, "multi_query", True) else c.heads
    return c.kv_heads


def checkpoint_dtype(config: Any) -> str:
    """The dtype name the checkpoint is stored in (transformers 5 calls it ``dtype``, 4.x ``torch_dtype``)."""
    raw = _get(config, "dtype", "torch_dtype", default="bfloat16")
    return str(raw).removeprefix("torch.")


def shape_from_layers(
    config: Any,
    layers: list[LayerParams],
    embedding: int,
    lm_head: int,
    final_norm: int,
    extra: int = 0,
) -> ModelShape:
    """Assemble a :class:`ModelShape` from a per-layer layout (analytic or counted on the meta device)."""
    c = _common(config)
    num_experts = int(_get(config, "num_local_experts", "num_experts", "n_routed_experts", default=0))
    experts_per_token = int(_get(config, "num_experts_per_tok", "num_experts_per_token", "top_k_experts", default=0))
    moe_inner = int(_get(config, "moe_intermediate_size", default=c.inner)) if num_experts else 0
    shared_inner = int(_get(config, "shared_expert_intermediate_size", default=0)) or moe_inner * int(
        _get(config, "n_shared_experts", default=0)
    )
    widest_mlp = max(c.inner, experts_per_token * moe_inner + shared_inner)
    dims = _attention_dims(config, c)
    return ModelShape(
        model_type=config.model_type,
        hidden_size=c.hidden,
        num_layers=c.layers,
        num_heads=c.heads,
        num_kv_heads=c.kv_heads,
        head_dim=c.head_dim,
        vocab_size=c.vocab,
        intermediate_size=widest_mlp,
        max_position_embeddings=int(_get(config, "max_position_embeddings", "n_positions", default=2048)),
        layers=tuple(layers),
        caches=layer_caches(config, dims),
        embedding_params=embedding,
        lm_head_params=lm_head,
        final_norm_params=final_norm,
        extra_params=extra,
        num_experts=num_experts,
        experts_per_token=experts_per_token,
        moe_intermediate_size=moe_inner,
        rotary_dim=_rotary_dim(config, dims),
        dtype=checkpoint_dtype(config),
        is_mla=_is_mla(config),
    )


def analytic_shape(config: Any) -> ModelShape | None:
    """The exact shape of a model of a known family, or None when no analytic rule covers it."""
    family = _FAMILIES.get(config.model_type)
    if family is None:
        return None
    c = _common(config)
    if c.heads <= 0 or c.layers <= 0 or c.hidden <= 0 or c.vocab <= 0:
        raise InvalidConfigurationError(
            f"model config: hidden_size, num_attention_heads, num_hidden_layers and vocab_size must be positive "
            f"(got {c.hidden}, {c.heads}, {c.layers}, {c.vocab})"
        )
    layers, extras = family(config)
    embedding = c.vocab * c.hidden + extras.get("positions", 0)
    lm_head = 0 if c.tied else c.vocab * c.hidden
    return shape_from_layers(config, layers, embedding, lm_head, extras["final_norm"])
