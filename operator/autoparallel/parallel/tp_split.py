"""The decision the analysis takes for one parameter-owning module, before sizes are attached (pure, no torch)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from autoparallel.parallel.tp_structure import TPStyle


@dataclass(frozen=True)
class Split:
    """How one module splits and why; :mod:`tp_analysis` turns it into a :class:`LayerAnalysis`."""

    style: TPStyle
    reason: str
    block: str | None = None
    """The module holding the pair (the common ancestor of its layers); None for layers split on their own."""
    pair: str | None = None
    """The pair the layer belongs to, named after its row layer(s); None when not paired."""
    heads: int | None = None
    """Attention heads along the split dimension (the size it takes once reshaped into heads)."""
    fused_parts: tuple[int, ...] = ()
    """Sizes of the parts of a fused column layer (q/k/v in one ``qkv``; gate and up in one ``gate_up``)."""
    inside_block: str | None = None
    """For a replicated module applied to split activations (a per-head norm): the block whose pair splits them.
    Its gradient on each rank covers only the local part, so the conversion sums it over the ranks."""

    def moved(self, old: str, new: str) -> Split:
        """The same decision for the copy of a block at ``new`` (names under ``old`` renamed)."""

        def rename(path: str | None) -> str | None:
            if path is None or not (path == old or path.startswith(f"{old}.")):
                return path
            return new + path[len(old) :]

        pair = None if self.pair is None else ", ".join(str(rename(name)) for name in self.pair.split(", "))
        return replace(
            self,
            block=rename(self.block),
            pair=pair,
            inside_block=rename(self.inside_block),
            reason=re.sub(rf"{re.escape(old)}(?![\w])", new, self.reason),
        )
