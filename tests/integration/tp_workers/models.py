"""Tiny models the tensor-parallel worker converts: an MLP, a GPT-style transformer, a transformers Llama."""

from __future__ import annotations

import torch
import transformers
from torch import nn
from torch.nn import functional


def mlp(hidden: int = 16, inner: int = 64) -> nn.Module:
    """Two biased linears around a GELU: one column/row pair (the Sequential is the block)."""
    return nn.Sequential(nn.Linear(hidden, inner), nn.GELU(), nn.Linear(inner, hidden))


class Attention(nn.Module):
    """Causal self-attention that reshapes with its stored head count (``n_head``), as nanoGPT-style code does."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.n_head = heads
        self.head_dim = width // heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        shape = (batch, tokens, self.n_head, self.head_dim)
        q, k, v = (proj(x).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj))
        y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out_proj(y.transpose(1, 2).reshape(batch, tokens, self.n_head * self.head_dim))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.fc = nn.Linear(width, 4 * width)
        self.proj = nn.Linear(4 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.proj(functional.gelu(self.fc(self.ln_2(x))))


class TinyGPT(nn.Module):
    """GPT-style: token and position embeddings, pre-norm blocks with the MLP flat in the block, tied lm_head."""

    def __init__(self, vocab: int = 97, width: int = 32, heads: int = 4, layers: int = 2, positions: int = 16) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(positions, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for embedding in (self.wte, self.wpe):  # GPT-2's initialisation keeps the logits near 1
            nn.init.normal_(embedding.weight, std=0.02)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.wte(ids) + self.wpe(torch.arange(ids.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.lm_head(self.ln_f(x))
        return logits


def tiny_llama() -> nn.Module:
    """A transformers Llama with grouped-query attention (8 heads, 4 KV heads) and an odd vocabulary."""
    config = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return transformers.LlamaForCausalLM(config).float()


def tiny_qwen3() -> nn.Module:
    """A transformers Qwen3: grouped-query attention with per-head q/k RMSNorms inside the attention block."""
    config = transformers.Qwen3Config(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return transformers.Qwen3ForCausalLM(config).float()
