"""A tiny Hugging Face checkpoint for the training tests, built offline: a Llama from ``LlamaConfig`` and a word-level
tokenizer trained on the test corpus with ``tokenizers`` (BOS added to every text, EOS, a chat template), saved
together with ``save_pretrained`` as a real model folder is."""

from __future__ import annotations

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


def write_checkpoint(folder: Path, *, chat_template: bool = True, tokenizer: bool = True) -> Any:
    """Save a 2-layer Llama (random weights) and, unless told not to, its tokenizer into ``folder``; returns
    the model."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(folder)
    if tokenizer:
        words = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        words.pre_tokenizer = pre_tokenizers.Whitespace()
        corpus = [*DOCUMENTS, *(m["content"] for c in CONVERSATIONS for m in c), "user assistant :"]
        words.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[BOS]", "[EOS]"]))
        words.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 1)])
        fast = PreTrainedTokenizerFast(tokenizer_object=words, bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]")
        if chat_template:
            fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(folder)
    return model
