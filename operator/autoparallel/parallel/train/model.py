"""The models the runtime trains: a tiny Llama-style GPT, and any transformers causal LM built from a config.

The tiny GPT keeps its decoder layers in an ``nn.ModuleDict`` keyed by layer index, and lets the embedding,
final norm and head be ``None``: a pipeline stage is the full model with the other stages' parts deleted, so
every parameter keeps its fully qualified name under any layout and checkpoints load across layouts.
Its layout is Llama's (RMSNorm, rotary positions, q/k/v/o without bias, SwiGLU gate/up/down, untied head), so
the planner's analytic Llama shape counts its parameters exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

TINY_GPT = "tiny-gpt"
"""The built-in model name accepted by ``--model``."""
ROPE_THETA = 10000.0
"""Rotary base frequency (Llama's)."""
INIT_STD = 0.02
"""Normal init standard deviation of every weight matrix (GPT-2's)."""


@dataclass(frozen=True)
class TinyGPTConfig:
    """Shape of the tiny GPT."""

    vocab_size: int = 128
    hidden_size: int = 32
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 64
    max_seq_len: int = 256
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden size ({self.hidden_size}) must be divisible by the number of heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


def rotary_tables(position_ids: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (batch, 1, seq, head_dim) for positions (batch, seq), Llama's half-split layout."""
    inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = position_ids.to(torch.float32)[..., None] * inv_freq.to(position_ids.device)
    angles = torch.cat((angles, angles), dim=-1)[:, None]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def document_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """Attention allowed (batch, 1, seq, seq): causal, within one packed document. A document starts wherever a
    position does not follow the previous one by 1, transformers' rule (``masking_utils``'
    ``find_packed_sequence_indices``), so both model kinds read a packed batch alike."""
    first = position_ids[:, :1] - 1
    documents = (torch.diff(position_ids, prepend=first, dim=-1) != 1).cumsum(-1)
    seq = position_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=position_ids.device).tril()
    return ((documents[:, :, None] == documents[:, None, :]) & causal)[:, None]


class Attention(nn.Module):
    """Causal self-attention. Head counts are read from the projections' output width, so a column-sharded
    q/k/v (tensor parallel) runs with its local heads unchanged."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.head_dim = config.head_dim
        h = config.hidden_size
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, seq, _ = x.shape
        q, k, v = (
            proj(x).view(batch, seq, -1, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(
            _rotate(q, cos, sin), _rotate(k, cos, sin), v, attn_mask=mask, is_causal=mask is None
        )
        projected: torch.Tensor = self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))
        return projected


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return out


class Block(nn.Module):
    """Pre-norm decoder layer."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.self_attn = Attention(config)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        out: torch.Tensor = x + self.mlp(self.post_attention_layernorm(x))
        return out


class TinyGPT(nn.Module):
    """Token ids (batch, seq) in, logits (batch, seq, vocab) out; a pipeline stage maps hidden states instead
    when it lacks the embedding or the head. With ``position_ids`` (batch, seq) each packed document gets its
    own rotary positions and attends only within itself (:func:`document_mask`); without, a row is one
    document."""

    def __init__(self, config: TinyGPTConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens: nn.Embedding | None = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleDict({str(i): Block(config) for i in range(config.num_layers)})
        self.norm: nn.RMSNorm | None = nn.RMSNorm(config.hidden_size, eps=config.norm_eps)
        self.lm_head: nn.Linear | None = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        for name, param in self.named_parameters():
            if param.dim() == 2:
                nn.init.normal_(param, std=INIT_STD)
            elif not name.endswith("weight"):
                nn.init.zeros_(param)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)
        batch, seq = x.shape[:2]
        mask = None if position_ids is None else document_mask(position_ids)
        if position_ids is None:
            position_ids = torch.arange(seq, device=x.device).expand(batch, seq)
        cos, sin = rotary_tables(position_ids, self.config.head_dim, x.dtype)
        for layer in self.layers.values():
            x = layer(x, cos, sin, mask)
        if self.norm is not None:
            x = self.norm(x)
        if self.lm_head is not None:
            x = self.lm_head(x)
        return x


class CausalLMLogits(nn.Module):
    """A transformers causal LM returning plain logits, so the runtime treats it like the tiny GPT.

    Token ids go in as ``input_ids``; a later pipeline stage (``stages.keep_decoder_stage``) gets the previous
    stage's hidden states, a floating-point tensor, and hands them in as ``inputs_embeds``. Given
    ``position_ids`` and no attention mask, transformers masks packed documents itself: its causal mask
    (``masking_utils.find_packed_sequence_indices``) lets a token attend only within its run of consecutive
    positions."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        key = "inputs_embeds" if inputs.is_floating_point() else "input_ids"
        logits: torch.Tensor = self.model(**{key: inputs}, position_ids=position_ids, use_cache=False).logits
        return logits


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Parameters registered inside go to the meta device as they are created (their initialisation costs
    nothing); buffers stay real, so the non-persistent ones a checkpoint does not hold (rotary frequencies)
    keep the values the model computed. accelerate's ``init_empty_weights(include_buffers=False)`` does the
    same; plain ``torch.device("meta")`` would leave those buffers empty too."""
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def build_model(
    name: str, seed: int, tiny: TinyGPTConfig | None = None, hf_config: Any = None, empty: bool = False
) -> tuple[nn.Module, int]:
    """The full model, initialised identically on every rank from ``seed``, and its vocabulary size.

    ``hf_config`` is the transformers config of a model other than the tiny GPT (``pretrained.ModelSource``);
    ``empty`` leaves its parameters on the meta device, for pretrained weights to fill after the layout."""
    torch.manual_seed(seed)
    if name == TINY_GPT:
        config = tiny or TinyGPTConfig()
        return TinyGPT(config), config.vocab_size
    from transformers import AutoModelForCausalLM

    with parameters_on_meta() if empty else nullcontext():
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)  # type: ignore[no-untyped-call]
    return CausalLMLogits(model), int(hf_config.vocab_size)
