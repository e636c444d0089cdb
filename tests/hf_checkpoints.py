"""Tiny Hugging Face checkpoints for the training runtime's tests, made offline: a Llama built from its config
and written with ``save_pretrained``, a BPE tokenizer trained locally with ``tokenizers``, and the layout of the
Hugging Face cache (``HF_HOME``) that ``--model ORG/NAME`` is resolved through."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

CORPUS = ["the quick brown fox jumps over the lazy dog", "pack my box with five dozen liquor jugs"]
LLAMA = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "tie_word_embeddings": False,
}
"""A Llama small enough for CPU tests: grouped-query attention, untied head, 4 layers to split."""
REVISION = "0123456789abcdef0123456789abcdef01234567"


def train_tokenizer() -> Any:
    """A BPE tokenizer trained on :data:`CORPUS`, as transformers' fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=LLAMA["vocab_size"], special_tokens=["<unk>", "<s>", "</s>"])
    tokenizer.train_from_iterator(CORPUS * 8, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


def save_tiny_llama(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    """A randomly initialised tiny Llama (``LLAMA`` with ``overrides``) and its tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(**{**LLAMA, **overrides}, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    train_tokenizer().save_pretrained(folder)
    return folder


def cache_model(hf_home: Path, repo_id: str, folder: Path) -> Path:
    """Put ``folder`` into the Hugging Face cache under ``hf_home`` as ``repo_id``'s main revision; returns the
    snapshot folder."""
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    shutil.copytree(folder, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot
