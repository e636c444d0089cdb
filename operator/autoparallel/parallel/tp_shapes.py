"""Where a split dimension goes through reshapes and which dimensions an operator reduces (pure, no torch).

A tensor split over the ranks along one dimension stays split through a reshape only when that dimension is the
outermost one of the group of dimensions the reshape regroups: splitting ``heads × head_dim`` features into
contiguous chunks is splitting the heads, as long as the ranks divide the heads. ``parts`` counts the indivisible
units along the split dimension (features, then heads once reshaped into heads); the world size must divide it.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import gcd, prod


def _groups(source: Sequence[int], target: Sequence[int]) -> list[tuple[range, range]] | None:
    """Pairs of dimension ranges with equal products that a reshape from ``source`` to ``target`` regroups."""
    groups: list[tuple[range, range]] = []
    i = j = 0
    while i < len(source) or j < len(target):
        i0, j0 = i, j
        left = right = 1
        if i < len(source):
            left, i = source[i], i + 1
        if j < len(target):
            right, j = target[j], j + 1
        while left != right:
            if left < right and i < len(source):
                left, i = left * source[i], i + 1
            elif right < left and j < len(target):
                right, j = right * target[j], j + 1
            else:
                return None
        groups.append((range(i0, i), range(j0, j)))
    return groups


def reshape_split(source: Sequence[int], target: Sequence[int], dim: int, parts: int) -> tuple[int, int] | None:
    """(dimension, parts) of the split after reshaping ``source`` into ``target``; None when the split dimension
    does not stay one contiguous outer block (it is merged under another dimension).

    The split goes to the outermost dimension of its group, even one of size 1: a view into ``(1 head,
    head_dim)`` splits the single head (parts 1: only one rank), as a view into ``(heads, head_dim)`` splits the
    heads."""
    if 0 in source:
        return None
    for inputs, outputs in _groups(source, target) or []:
        if dim not in inputs:
            continue
        if prod(source[inputs.start : dim]) != 1:
            return None
        return (outputs.start, gcd(parts, target[outputs.start])) if outputs else None
    return None


def normalized(dims: int | Sequence[int] | None, ndim: int) -> frozenset[int]:
    """Non-negative dimensions; None or an empty list mean all of them (as torch's reductions read them)."""
    if dims is None:
        return frozenset(range(ndim))
    listed = [dims] if isinstance(dims, int) else list(dims)
    return frozenset(d % ndim for d in listed) if listed else frozenset(range(ndim))


def after_reduction(dim: int, reduced: frozenset[int], keepdim: bool) -> int:
    """Index of (unreduced) dimension ``dim`` once ``reduced`` are reduced."""
    return dim if keepdim else dim - sum(1 for d in reduced if d < dim)


def permuted(dim: int, order: Sequence[int]) -> int:
    """Index of dimension ``dim`` after ``permute(order)``."""
    ndim = len(order)
    return [d % ndim for d in order].index(dim)
