"""Deterministic batches: step ``n``'s global batch depends only on the seed and ``n``, never on the layout.

Each data-parallel rank takes a contiguous slice of the global batch, so any DP degree (and a resumed run)
sees exactly the sequences a single process would.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

SYNTHETIC = "synthetic"
_STEP_STRIDE = 1_000_003
"""Mixes the step into the generator seed (a prime, so seeds of neighbouring runs do not collide)."""


@dataclass(frozen=True)
class Batch:
    """Token ids and next-token targets, each (sequences, seq_len)."""

    inputs: torch.Tensor
    targets: torch.Tensor


class TokenSource:
    """Global batches for a run: synthetic arithmetic patterns (learnable, so the loss falls) or byte windows
    of a text file."""

    def __init__(self, data: str, vocab_size: int, seq_len: int, global_batch_size: int, seed: int) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.text: torch.Tensor | None = None
        if data != SYNTHETIC:
            raw = Path(data).read_bytes()
            if len(raw) <= seq_len + 1:
                raise ValueError(f"{data}: {len(raw)} bytes, fewer than one sequence of {seq_len + 1} tokens")
            self.text = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long() % vocab_size

    def global_batch(self, step: int) -> Batch:
        generator = torch.Generator().manual_seed(self.seed * _STEP_STRIDE + step)
        length = self.seq_len + 1
        if self.text is None:
            start = torch.randint(0, self.vocab_size, (self.global_batch_size, 1), generator=generator)
            stride = torch.randint(1, 8, (self.global_batch_size, 1), generator=generator)
            tokens = (start + stride * torch.arange(length)) % self.vocab_size
        else:
            offsets = torch.randint(0, len(self.text) - length, (self.global_batch_size,), generator=generator)
            tokens = torch.stack([self.text[o : o + length] for o in offsets.tolist()])
        return Batch(inputs=tokens[:, :-1].contiguous(), targets=tokens[:, 1:].contiguous())

    def rank_batch(self, step: int, dp_rank: int, dp_size: int) -> Batch:
        """This data-parallel rank's contiguous share of step ``step``'s global batch."""
        batch = self.global_batch(step)
        share = self.global_batch_size // dp_size
        rows = slice(dp_rank * share, (dp_rank + 1) * share)
        return Batch(inputs=batch.inputs[rows], targets=batch.targets[rows])
