"""Batches: each step's global batch is the next ``global_batch_size`` rows of the run, whatever the layout.

A run reads rows 0, 1, 2, … of a row source: synthetic arithmetic patterns (endless), or real documents packed to
the sequence length (``packing``, ``corpus``), one seeded order per epoch. Each data-parallel rank reads only its
contiguous share of a step's rows, so any DP degree trains on the rows one process would. The position (epoch,
index into the epoch's order) and a fingerprint of the rows are saved in checkpoints: a resumed run continues
the same order, and a resume onto other data, tokenizer, sequence length or seed is an error.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import torch
import torch.distributed as dist

from autoparallel.parallel.train.config import ConfigError, TrainConfig

IGNORE_INDEX = -100
"""Target of a position without loss (padding): ``torch.nn.functional.cross_entropy``'s default ``ignore_index``."""
SYNTHETIC = "synthetic"
_ROW_STRIDE = 1_000_003
"""Mixes the row into the generator seed (a prime, so seeds of neighbouring runs do not collide)."""


@dataclass(frozen=True)
class Batch:
    """This rank's rows of one step, each tensor (rows, seq_len)."""

    inputs: torch.Tensor
    targets: torch.Tensor
    """The next token of each input, ``IGNORE_INDEX`` where there is no loss."""
    position_ids: torch.Tensor
    """Each token's position in its document: 0 where a packed document starts."""
    target_count: int
    """Targets that are not ignored in the step's whole global batch (all ranks, all micro-batches): every rank
    divides its summed loss by it, so each layout's loss and gradients are one process's."""


class RowSource(Protocol):
    """Rows of fixed length, addressed by their index in the run."""

    @property
    def rows_per_epoch(self) -> int | None:
        """Rows before the order starts again; ``None`` for an endless source."""

    def read(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, targets and position ids of rows ``first … first + count - 1``."""

    def target_count(self, first: int, count: int) -> int:
        """Targets that are not ignored in those rows."""


class SyntheticRows:
    """Learnable arithmetic rows (``start + stride · i`` mod the vocabulary), row ``r`` drawn from the seed and
    ``r`` alone: one document per row."""

    rows_per_epoch = None

    def __init__(self, vocab_size: int, seq_len: int, seed: int) -> None:
        self.vocab_size = vocab_size
        self.seq_len = seq_len
        self.seed = seed

    def read(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = []
        for row in range(first, first + count):
            generator = torch.Generator().manual_seed(self.seed * _ROW_STRIDE + row)
            start = torch.randint(0, self.vocab_size, (1,), generator=generator)
            stride = torch.randint(1, 8, (1,), generator=generator)
            rows.append((start + stride * torch.arange(self.seq_len + 1)) % self.vocab_size)
        tokens = torch.stack(rows)
        positions = torch.arange(self.seq_len).expand(count, self.seq_len).contiguous()
        return tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous(), positions

    def target_count(self, first: int, count: int) -> int:
        return count * self.seq_len


class DataStream:
    """The run's position in its rows: each step's batch, this rank's share of it, and the checkpointed state."""

    def __init__(self, rows: RowSource, global_batch_size: int, fingerprint: str) -> None:
        self.rows = rows
        self.global_batch_size = global_batch_size
        self.fingerprint = fingerprint
        self.position = 0
        """Rows read so far by all ranks together: the first row of the next step."""

    def next_batch(self, dp_rank: int, dp_size: int) -> Batch:
        """Data-parallel rank ``dp_rank``'s contiguous share of the next step's rows; every rank moves on."""
        share = self.global_batch_size // dp_size
        inputs, targets, positions = self.rows.read(self.position + dp_rank * share, share)
        count = self.rows.target_count(self.position, self.global_batch_size)
        self.position += self.global_batch_size
        return Batch(inputs, targets, positions, count)

    def state_dict(self) -> dict[str, Any]:
        per_epoch = self.rows.rows_per_epoch
        epoch, index = divmod(self.position, per_epoch) if per_epoch else (0, self.position)
        return {"epoch": torch.tensor(epoch), "index": torch.tensor(index), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue where ``state`` was saved; :class:`ConfigError` when it was saved over other rows."""
        if state["fingerprint"] != self.fingerprint:
            raise ConfigError(
                "--resume: the checkpoint was saved over other data (dataset, tokenizer, --seq-len or --seed "
                "differ); resume with the run's own options, or start a new --checkpoint-dir"
            )
        epoch, index = int(state["epoch"]), int(state["index"])
        self.position = epoch * (self.rows.rows_per_epoch or 0) + index


def fingerprint(*parts: object) -> str:
    return hashlib.sha256("\0".join(map(str, parts)).encode()).hexdigest()


@contextmanager
def _local_rank_zero_first() -> Iterator[None]:
    """Each node's first rank goes first (it tokenizes and fills the ``datasets`` cache), the others then read
    the cache instead of tokenizing again."""
    leader = int(os.environ.get("LOCAL_RANK", "0")) == 0
    distributed = dist.is_initialized() and dist.get_world_size() > 1
    if distributed and not leader:
        dist.barrier()
    yield
    if distributed and leader:
        dist.barrier()


def build_stream(config: TrainConfig, vocab_size: int) -> DataStream:
    """The run's rows: synthetic, or ``config.data`` tokenized by the model's tokenizer and packed."""
    if config.data == SYNTHETIC:
        rows: RowSource = SyntheticRows(vocab_size, config.seq_len, config.seed)
        return DataStream(
            rows, config.global_batch_size, fingerprint(SYNTHETIC, vocab_size, config.seq_len, config.seed)
        )
    from autoparallel.parallel.train.corpus import load_corpus
    from autoparallel.parallel.train.packing import PackedRows

    with _local_rank_zero_first():
        corpus = load_corpus(config.data, config.data_field, config.model, vocab_size)
    packed = PackedRows(corpus.lengths, corpus.fetch, config.seq_len, config.seed, corpus.eos_id)
    return DataStream(packed, config.global_batch_size, fingerprint(corpus.content_hash, config.seq_len, config.seed))
