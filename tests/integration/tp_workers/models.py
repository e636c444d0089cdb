"""Tiny models the tensor-parallel worker converts: an MLP, a GPT-style transformer, a flat-block transformer, a
fused-projection transformer, and transformers' Llama, Qwen3, GPT-2 and Qwen3-MoE."""

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


class FlatBlock(nn.Module):
    """A research-style block holding its norms and every projection directly (no attention/MLP submodules):
    grouped-query attention (8 heads, 4 KV heads) and a gated MLP, RMSNorm before each."""

    def __init__(self, width: int = 64, heads: int = 8, kv_heads: int = 4, inner: int = 96) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = heads, kv_heads, width // heads
        self.norm1 = nn.RMSNorm(width)
        self.wq = nn.Linear(width, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(width, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, width, bias=False)
        self.norm2 = nn.RMSNorm(width)
        self.w_gate = nn.Linear(width, inner, bias=False)
        self.w_up = nn.Linear(width, inner, bias=False)
        self.w_down = nn.Linear(inner, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        h = self.norm1(x)
        q = self.wq(h).view(batch, tokens, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(h).view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(h).view(batch, tokens, self.n_kv_heads, self.head_dim).transpose(1, 2)
        y = functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        x = x + self.wo(y.transpose(1, 2).reshape(batch, tokens, -1))
        h = self.norm2(x)
        return x + self.w_down(functional.silu(self.w_gate(h)) * self.w_up(h))


class FlatTransformer(nn.Module):
    """Token embedding, flat blocks, a final norm and an untied head."""

    def __init__(self, vocab: int = 96, width: int = 64, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(FlatBlock(width) for _ in range(layers))
        self.norm = nn.RMSNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(self.norm(x))
        return logits


class FusedBlock(nn.Module):
    """One ``qkv`` Linear cut by a stored size, one ``gate_up`` Linear cut by ``chunk``, LayerNorms."""

    def __init__(self, width: int = 32, heads: int = 4, inner: int = 64) -> None:
        super().__init__()
        self.width, self.n_head = width, heads
        self.ln_1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln_2 = nn.LayerNorm(width)
        self.gate_up = nn.Linear(width, 2 * inner)
        self.down = nn.Linear(inner, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.qkv(self.ln_1(x)).split(self.width, dim=-1)
        q, k, v = (t.view(batch, tokens, self.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(batch, tokens, -1))
        gate, up = self.gate_up(self.ln_2(x)).chunk(2, dim=-1)
        return x + self.down(functional.gelu(gate) * up)


class FusedTransformer(nn.Module):
    def __init__(self, vocab: int = 97, width: int = 32, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList(FusedBlock(width) for _ in range(layers))
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x)
        logits: torch.Tensor = self.head(x)
        return logits


def tiny_gpt2() -> nn.Module:
    """transformers' GPT-2: fused c_attn and every projection a Conv1D (weights stored [in, out]), tied head."""
    config = transformers.GPT2Config(
        vocab_size=101,
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config).float()


def tiny_qwen3_moe() -> nn.Module:
    """A transformers Qwen3-MoE: 8 fused experts per layer (top-2), the router a plain replicated weight."""
    config = transformers.Qwen3MoeConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=32,
        num_experts=8,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        max_position_embeddings=64,
        attn_implementation="eager",
    )
    return transformers.Qwen3MoeForCausalLM(config).float()
