"""Result out: the trained model written as a Hugging Face folder that transformers and vLLM load.

``--export-dir DIR`` gets ``config.json`` (the model's, with ``architectures`` and ``dtype`` set), the source
model's ``generation_config.json`` and tokenizer, and the weights as ``model-0000N-of-0000M.safetensors`` with
``model.safetensors.index.json``, in the training precision (bf16 under ``--precision bf16``, cast from the
fp32 masters; fp32 otherwise).

The weights are written as torchtitan writes its Hugging Face checkpoints, which scales with the model: DCP's
``HuggingFaceStorageWriter`` has every rank write the shards it holds (a TP slice, an FSDP2 shard, a pipeline
stage's layers; replicated tensors once) with their offsets, then
``consolidate_safetensors_files_on_every_rank`` assembles the full tensors, each rank assembling some of the
output files. No rank gathers the whole model in memory (gathering a full state dict on rank 0 would need the
whole model in one process's memory and send it all through one rank). Ranks must share the export's
filesystem, as they share the checkpoint directory.

Every export, periodic (``--export-every``) or final, replaces ``DIR`` itself: it is written to the hidden
sibling ``.DIR.partial`` and renamed into place once complete (the previous export is renamed aside first and
then deleted), so ``DIR`` is a stable path for a serving resource, and never a half-written folder.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from autoparallel.parallel.train.config import TrainConfig
from autoparallel.parallel.train.optim import MasterAdamW
from autoparallel.parallel.train.pretrained import ModelSource, hf_state_dict

SHARD_BYTES = 5 * 2**30
"""Largest safetensors file written (transformers' customary shard size)."""
GENERATION_CONFIG = "generation_config.json"
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
"""Either one marks a folder that holds a tokenizer."""


def due(config: TrainConfig, step: int) -> bool:
    """Whether ``step`` (counted from 1) is exported under ``--export-dir``: every ``export_every`` steps, and
    the last one."""
    return step == config.steps or (config.export_every > 0 and step % config.export_every == 0)


def _file_indices(sizes: dict[str, int]) -> dict[str, int]:
    """Tensor name → output file number (from 1), filling files up to :data:`SHARD_BYTES` in order."""
    indices: dict[str, int] = {}
    index, filled = 1, 0
    for name, size in sizes.items():
        if filled and filled + size > SHARD_BYTES:
            index, filled = index + 1, 0
        indices[name] = index
        filled += size
    return indices


def _tensor_sizes(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Every rank's tensors and their full sizes in bytes, in rank order (a pipeline stage holds some only)."""
    local = {name: tensor.numel() * tensor.element_size() for name, tensor in state.items()}
    gathered: list[dict[str, int]] = [{} for _ in range(dist.get_world_size())]
    dist.all_gather_object(gathered, local)
    return {name: size for sizes in gathered for name, size in sizes.items()}


def _write_metadata(folder: Path, hf_model: nn.Module, source: ModelSource, dtype: torch.dtype) -> None:
    """config.json, then the source's generation config and tokenizer when it has them."""
    config = copy.deepcopy(getattr(hf_model, "config"))  # noqa: B009  (typed loosely: nn.Module)
    config.architectures = [type(hf_model).__name__]
    config.dtype = dtype
    config.save_pretrained(folder)
    if source.folder is None:
        return
    if (source.folder / GENERATION_CONFIG).is_file():
        shutil.copy2(source.folder / GENERATION_CONFIG, folder / GENERATION_CONFIG)
    if any((source.folder / name).is_file() for name in TOKENIZER_FILES):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(str(source.folder)).save_pretrained(str(folder))


def _replace(target: Path, staging: Path) -> None:
    previous = target.with_name(f".{target.name}.previous")
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)


def export(directory: str, model: nn.Module, optimizer: MasterAdamW, source: ModelSource, precision: str) -> Path:
    """Write ``model`` (a ``CausalLMLogits``) to ``directory`` from its fp32 masters in ``optimizer``
    (collective: every rank calls it)."""
    from torch.distributed.checkpoint._consolidate_hf_safetensors import consolidate_safetensors_files_on_every_rank
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageWriter
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    target = Path(directory)
    staging = target.with_name(f".{target.name}.partial")
    shards = staging / "sharded"
    writer = dist.get_rank() == 0
    if writer:
        shutil.rmtree(staging, ignore_errors=True)
    dist.barrier()
    hf_model = model.get_submodule("model")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    state = {name: tensor.detach().to(dtype) for name, tensor in hf_state_dict(model, optimizer).items()}
    indices = _file_indices(_tensor_sizes(state))
    dcp_save(state, storage_writer=HuggingFaceStorageWriter(str(shards), indices, save_distributed=True))
    consolidate_safetensors_files_on_every_rank(str(shards), str(staging), indices)
    if writer:
        shutil.rmtree(shards)
        _write_metadata(staging, hf_model, source, dtype)
        _replace(target, staging)
    dist.barrier()
    return target
