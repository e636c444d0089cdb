"""Packing tokenized documents into fixed rows, with document masking.

A document of tokens ``t_0 … t_n`` (the tokenizer's BOS when it adds one, then the text, then EOS) gives ``n``
next-token pairs ``t_i → t_{i+1}``. An epoch shuffles the documents (the order depends on the seed and the epoch
only), concatenates their pairs and cuts them into rows of ``seq_len`` pairs: concat-then-split, as torchtitan's
``ConcatThenSplitPackingConfig``. A pair never joins two documents, so no target crosses a boundary and no slot
is spent on one. ``position_ids`` restart at 0 where a document starts, and where a row boundary split one (its
second part is attended as a document of its own); the models attend within a run of consecutive positions only.
The epoch's last row is padded (input EOS, target ``IGNORE_INDEX``, positions restarting at 0).

Row ``r`` of the run is row ``r mod rows_per_epoch`` of epoch ``r // rows_per_epoch``: any rank reads any row
without reading the rows before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from autoparallel.parallel.train.data import IGNORE_INDEX

Fetch = Callable[[Sequence[int]], Sequence[np.ndarray]]
"""Token ids of the documents at the given indices, in that order."""


class PackedRows:
    """The rows of a run over tokenized documents (at least one of two tokens or more), each epoch in its own
    seeded order."""

    def __init__(self, lengths: np.ndarray, fetch: Fetch, seq_len: int, seed: int, pad_id: int) -> None:
        pairs = np.asarray(lengths, dtype=np.int64) - 1
        self.documents = np.flatnonzero(pairs > 0)
        """Documents with at least one pair (a lone EOS has none)."""
        self.pairs = pairs[self.documents]
        self.total_pairs = int(self.pairs.sum())
        self.fetch = fetch
        self.seq_len = seq_len
        self.seed = seed
        self.pad_id = pad_id
        self.rows_per_epoch = -(-self.total_pairs // seq_len)
        self._layouts: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def order(self, epoch: int) -> np.ndarray:
        """Indices into :attr:`documents` in ``epoch``'s order."""
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.documents))

    def _layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``epoch``'s order and the end (in pairs from the epoch's start) of each document in it."""
        if epoch not in self._layouts:
            if len(self._layouts) > 1:  # a step spans two epochs at most
                self._layouts.pop(min(self._layouts))
            order = self.order(epoch)
            self._layouts[epoch] = (order, np.cumsum(self.pairs[order]))
        return self._layouts[epoch]

    def pieces(self, row: int) -> list[tuple[int, int, int]]:
        """``(document, first pair, end pair)`` of each document part in ``row``, in row order."""
        epoch, index = divmod(row, self.rows_per_epoch)
        order, ends = self._layout(epoch)
        begin = index * self.seq_len
        end = min(begin + self.seq_len, self.total_pairs)
        slot = int(np.searchsorted(ends, begin, side="right"))
        found: list[tuple[int, int, int]] = []
        while begin < end:
            document = int(order[slot])
            start = int(ends[slot]) - int(self.pairs[document])
            stop = min(int(ends[slot]), end)
            found.append((int(self.documents[document]), begin - start, stop - start))
            begin, slot = stop, slot + 1
        return found

    def valid_targets(self, row: int) -> int:
        """Pairs (non-ignored targets) in ``row``: ``seq_len``, less the padding of an epoch's last row."""
        index = row % self.rows_per_epoch
        return min(self.seq_len, self.total_pairs - index * self.seq_len)

    def target_count(self, first: int, count: int) -> int:
        return sum(self.valid_targets(row) for row in range(first, first + count))

    def read(self, first: int, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, targets and position ids of rows ``first … first + count - 1``, each (count, seq_len)."""
        rows = [self.pieces(row) for row in range(first, first + count)]
        wanted = sorted({document for row in rows for document, _, _ in row})
        tokens = dict(zip(wanted, self.fetch(wanted), strict=True))
        shape = (count, self.seq_len)
        inputs = np.full(shape, self.pad_id, dtype=np.int64)
        targets = np.full(shape, IGNORE_INDEX, dtype=np.int64)
        positions = np.zeros(shape, dtype=np.int64)
        for i, row in enumerate(rows):
            column = 0
            for document, lo, hi in row:
                ids, width = tokens[document], hi - lo
                inputs[i, column : column + width] = ids[lo:hi]
                targets[i, column : column + width] = ids[lo + 1 : hi + 1]
                positions[i, column : column + width] = np.arange(width)
                column += width
            positions[i, column:] = np.arange(self.seq_len - column)
        return torch.from_numpy(inputs), torch.from_numpy(targets), torch.from_numpy(positions)
