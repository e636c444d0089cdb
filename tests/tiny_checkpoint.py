"""Tiny Hugging Face checkpoints for the training runtime's tests, made offline: a Llama built from its config and
written with ``save_pretrained``, a word-level tokenizer trained on the test corpus with ``tokenizers`` (BOS added
to every text, EOS, a chat template) saved beside it, and the layout of the Hugging Face cache (``HF_HOME``) that
``--model ORG/NAME`` is resolved through."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

DOCUMENTS = [
    "the cat sat on the mat",
    "a dog ran to the park and back",
    "birds sing",
    "the sun rose over the quiet hills and the river ran cold and clear",
    "rain fell",
    "we read a long book about the sea and the ships on it",
    "hello there",
    "the old man walked to the town",
]
CONVERSATIONS = [
    [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "the cat sat on the mat"}],
    [{"role": "user", "content": "where did the dog run"}, {"role": "assistant", "content": "to the park and back"}],
    [{"role": "user", "content": "what fell"}, {"role": "assistant", "content": "rain fell"}],
]
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
VOCAB_SIZE = 96
"""The model's vocabulary, above the tokenizer's size (as real checkpoints pad theirs)."""
LLAMA = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 256,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
"""A Llama small enough for CPU tests: grouped-query attention, untied head, 4 layers to split."""
REVISION = "0123456789abcdef0123456789abcdef01234567"


def train_tokenizer(chat_template: bool = True) -> Any:
    """A word-level tokenizer trained on the documents and conversations, as transformers' fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [*DOCUMENTS, *(m["content"] for c in CONVERSATIONS for m in c), "user assistant :"]
    words.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[BOS]", "[EOS]"]))
    words.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def save_tiny_llama(
    folder: Path, seed: int = 0, *, tokenizer: bool = True, chat_template: bool = True, **overrides: Any
) -> Path:
    """A randomly initialised tiny Llama (:data:`LLAMA` with ``overrides``) and, unless told not to, its
    tokenizer, saved to ``folder``."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**LLAMA, **overrides}), dtype=torch.float32)
    model.save_pretrained(folder)
    if tokenizer:
        train_tokenizer(chat_template).save_pretrained(folder)
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


def llama_equivalent(config: Any) -> Any:
    """The transformers ``LlamaConfig`` of a tiny GPT (``TinyGPTConfig``): the same layout, so the planner's
    analytic shape of it counts the tiny GPT's parameters exactly."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        intermediate_size=config.intermediate_size,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
