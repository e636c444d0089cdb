"""vLLM's KV-cache pool on one GPU: how per-layer cache specs become pages, groups, blocks and capacity.

vLLM 0.19 (``vllm/v1/core/kv_cache_utils.py``) gives every layer of a worker one page size
(``unify_hybrid_kv_cache_specs``/``unify_kv_cache_spec_page_size``), cuts the layers into groups of equal size per
cache kind (``_get_kv_cache_groups_uniform_page_size``) and allocates ``group_size`` tensors of ``num_blocks``
pages that every group shares (``get_kv_cache_config_from_groups``):

    num_blocks = kv_cache_bytes // (page_bytes × group_size)

A block of an attention group holds ``block_tokens`` tokens; a block of a state group holds one running
sequence's recurrent state (``MambaSpec``, ``mamba_cache_mode="none"``: prefix caching is off). When a model has
state layers, ``HybridAttentionMambaModelConfig.verify_and_update_config`` (``vllm/model_executor/models/config.py``)
raises the attention block size to the smallest multiple of the kernel alignment whose page holds a state, and
pads the state page to the attention page.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoparallel.planner.caches import AttentionGeometry, LayerCache, RecurrentState

KV_BLOCK_SIZE = 16
"""Tokens per KV-cache block (vLLM's default ``--block-size``); capacity is a whole number of blocks."""

GROUP_EQUAL_RATIO = 1.25
"""``_get_kv_cache_groups_uniform_page_size``: kinds whose layer counts differ by less than 1.25× share the
larger count as group size; otherwise the group size is the smallest kind's layer count."""


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def group_size(counts: list[int]) -> int:
    """Layers per KV-cache group when cache kinds of these layer counts share one pool."""
    counts = [n for n in counts if n]
    if not counts:
        return 0
    smallest, largest = min(counts), max(counts)
    return largest if largest < smallest * GROUP_EQUAL_RATIO else smallest


def hybrid_layer_slots(full_layers: int, sliding_layers: int) -> int:
    """Layers' worth of KV page space per token when full and sliding-window layers share one pool.

    Each attention kind is cut into groups of :func:`group_size` layers, the last group of a kind padded:
    gemma-3-27b (10 full + 52 sliding) pays for 70 layers, gemma-2 (21 + 21) for 42.
    """
    size = group_size([full_layers, sliding_layers])
    if not size:
        return 0
    return (_cdiv(full_layers, size) + _cdiv(sliding_layers, size)) * size


@dataclass(frozen=True)
class KVLayout:
    """The pool of one pipeline stage on one GPU, in bytes and blocks."""

    page_bytes: int
    """One page: ``block_tokens`` tokens of an attention layer, or one (padded) state of a state layer."""
    block_tokens: int
    """Tokens an attention block holds (16, raised next to state layers)."""
    layers_per_group: int
    attention_groups: tuple[int | None, ...]
    """Per attention group, the tokens its layers keep at most (None: the whole sequence)."""
    state_groups: int
    """Groups of state layers: each running sequence holds one block in each."""
    state_bytes: int
    """Unpadded state bytes of one sequence in one state layer (0 without state layers)."""

    @property
    def groups(self) -> int:
        return len(self.attention_groups) + self.state_groups

    def num_blocks(self, kv_cache: int) -> int:
        if kv_cache <= 0 or not self.page_bytes:
            return 0
        return kv_cache // (self.page_bytes * self.layers_per_group)

    def tokens(self, kv_cache: int) -> int:
        """Tokens the attention layers hold (vLLM's ``num_blocks // attention groups × block_size``)."""
        if not self.attention_groups:
            return 0
        return self.num_blocks(kv_cache) // len(self.attention_groups) * self.block_tokens

    def blocks_per_sequence(self, sequence_length: int) -> int:
        attention = sum(
            _cdiv(min(sequence_length, kept or sequence_length), self.block_tokens) for kept in self.attention_groups
        )
        return attention + self.state_groups

    def sequences(self, kv_cache: int, sequence_length: int) -> int:
        """Sequences of ``sequence_length`` that fit at once (``get_max_concurrency_for_kv_cache_config``)."""
        needed = self.blocks_per_sequence(sequence_length)
        return self.num_blocks(kv_cache) // needed if needed else 0

    def running_limit(self, kv_cache: int) -> int:
        """Sequences that can run at once at all: each holds at least one block in every group (for a state
        group that block is its recurrent state, what vLLM checks ``max_num_seqs`` against)."""
        return self.num_blocks(kv_cache) // self.groups if self.groups else 0


def _kind(cache: LayerCache) -> tuple[str, int | None]:
    if isinstance(cache, RecurrentState):
        return ("state", None)
    return ("attention", cache.tokens_kept)


def hybrid_layout(caches: list[LayerCache], tp: int, dtype: str, kv_bytes: int) -> KVLayout:
    """The pool of a stage whose layers include recurrent-state layers (vLLM's hybrid page-size unification)."""
    attention = [c for c in caches if isinstance(c, AttentionGeometry)]
    states = [c for c in caches if isinstance(c, RecurrentState)]
    state_bytes = max(s.bytes_per_sequence(tp, dtype) for s in states)
    if attention:
        token_bytes = max(a.bytes_per_token(tp, kv_bytes) for a in attention)
        alignment = max(a.alignment for a in attention)
        block_tokens = alignment * _cdiv(state_bytes, alignment * token_bytes)
        page_bytes = block_tokens * token_bytes
    else:
        block_tokens, page_bytes = 0, state_bytes
    kinds: dict[tuple[str, int | None], int] = {}
    for cache in caches:
        kinds[_kind(cache)] = kinds.get(_kind(cache), 0) + 1
    size = group_size(list(kinds.values()))
    attention_groups: list[int | None] = []
    state_groups = 0
    for (kind, kept), count in kinds.items():
        if kind == "state":
            state_groups += _cdiv(count, size)
        else:
            attention_groups += [kept] * _cdiv(count, size)
    return KVLayout(page_bytes, block_tokens, size, tuple(attention_groups), state_groups, state_bytes)
