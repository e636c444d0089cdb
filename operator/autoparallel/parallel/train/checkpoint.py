"""Distributed checkpoints (``torch.distributed.checkpoint``): one directory per saved step.

The model and optimizer state come from ``torch.distributed.checkpoint.state_dict.get_state_dict`` on the fp32
masters, with the optimizer state flattened (``state.<name>.exp_avg``, ``param_groups.<name>.lr``): every
tensor is saved under the full model's parameter name with its global shape, whatever the rank holds (an FSDP2
shard over the data-parallel ranks, a DTensor tensor-parallel shard, a pipeline stage's layers), so a
checkpoint loads under other TP/PP/DP degrees, and ``set_state_dict`` puts it back into the local shards. The data
position (epoch, index into its order, fingerprint of the rows) is the same on every rank.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from autoparallel.parallel.train.data import DataStream
from autoparallel.parallel.train.optim import MasterAdamW

STEP_DIR = "step-{step:08d}"
_STEP_DIR = re.compile(r"^step-(\d{8})$")
METADATA_FILE = ".metadata"
"""Written by DCP once every rank has saved: a directory without it is an interrupted save."""
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
"""Optimizer state keyed by parameter name, not by position in a param group: pipeline stages hold different
parameters, so positions would collide across ranks."""


def _state(optimizer: MasterAdamW, step: int, data: DataStream) -> dict[str, Any]:
    model, optim = get_state_dict(optimizer.masters, optimizer.adamw, options=OPTIONS)
    return {
        "model": model,
        "optimizer": optim,
        "step": torch.tensor(step),
        "rng": torch.get_rng_state(),
        "data": data.state_dict(),
    }


def save(directory: str, step: int, optimizer: MasterAdamW, data: DataStream) -> Path:
    """Save the model, optimizer, step, RNG and data position of ``step`` (collective: every rank calls it)."""
    path = Path(directory) / STEP_DIR.format(step=step)
    dcp_save(_state(optimizer, step, data), checkpoint_id=str(path))
    return path


def latest(directory: str) -> Path | None:
    """The newest complete checkpoint under ``directory``."""
    root = Path(directory)
    steps = [
        (int(match.group(1)), child)
        for child in (root.iterdir() if root.is_dir() else [])
        if (match := _STEP_DIR.match(child.name)) and (child / METADATA_FILE).is_file()
    ]
    return max(steps)[1] if steps else None


def load(path: Path, optimizer: MasterAdamW, data: DataStream) -> int:
    """Restore model, optimizer, RNG and data position from ``path`` in place; returns the step it was saved at
    (:class:`ConfigError` when it was saved over other data)."""
    state = _state(optimizer, 0, data)
    dcp_load(state, checkpoint_id=str(path))
    data.load_state_dict(state["data"])
    set_state_dict(
        optimizer.masters,
        optimizer.adamw,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=OPTIONS,
    )
    optimizer.copy_masters_to_model()
    torch.set_rng_state(state["rng"])
    return int(state["step"])
