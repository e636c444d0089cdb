"""Pretrained weights in: where ``--model`` lives, and loading its safetensors into the laid-out model.

``--model`` names a ``config.json``, a folder holding one (and, for a checkpoint, ``*.safetensors``), or a
Hugging Face id, looked up in the local cache only (``HF_HOME``, where the operator's model cache is mounted;
nothing is downloaded).

A pretrained model is built as torchtitan builds one: the skeleton with its parameters on the meta device
(``model.parameters_on_meta``: no memory, no random initialisation), then cut into this rank's pipeline stage,
tensor-parallel shards (DTensor) and FSDP2 shards, then given memory (:func:`materialize`), and finally filled
by ``torch.distributed.checkpoint`` through its Hugging Face storage reader (:func:`load_weights`): DCP plans,
from each tensor's global shape and this rank's chunk of it, which slices of which safetensors files to read,
so every rank reads only the weights it holds and no rank ever holds the full model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoparallel.parallel.tp_convert import retie, tied_parameters
from autoparallel.parallel.train.config import ConfigError
from autoparallel.parallel.train.optim import MasterAdamW

WRAPPER_PREFIX = "model."
"""What ``model.CausalLMLogits`` (its ``model`` attribute) puts before the Hugging Face parameter names."""
WEIGHTS_GLOB = "*.safetensors"


@dataclass(frozen=True)
class ModelSource:
    """A transformers model named by ``--model``: its config file and, unless that was given alone, its folder
    (weights, tokenizer, generation config)."""

    name: str
    config_file: Path
    folder: Path | None

    @property
    def weights(self) -> list[Path]:
        return sorted(self.folder.glob(WEIGHTS_GLOB)) if self.folder is not None else []

    def config(self) -> Any:
        """The transformers config."""
        from transformers import AutoConfig, PretrainedConfig

        config_dict, _ = PretrainedConfig.get_config_dict(str(self.config_file))
        model_type = config_dict.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"model {self.name}: {self.config_file} has no model_type; is it a transformers config?")
        return AutoConfig.for_model(model_type, **config_dict)

    def weights_folder(self, init: str | None) -> Path | None:
        """The folder to load weights from as ``--init`` says (by default: when there are weights), or None for
        a random initialisation."""
        if init == "random":
            return None
        if self.folder is not None and self.weights:
            return self.folder
        if init == "pretrained":
            where = f"{self.folder} holds no {WEIGHTS_GLOB}" if self.folder else "a bare config file has no weights"
            raise ConfigError(
                f"init pretrained: model {self.name}: {where}; use --init random, or a --model folder with the "
                "checkpoint's safetensors"
            )
        return None


def resolve_model(name: str) -> ModelSource:
    """The config file and folder of ``name``: a file, a folder, or a Hugging Face id in the local cache."""
    path = Path(name)
    if path.is_file():
        return ModelSource(name, path, None)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"model {name}: the folder has no config.json; pass a Hugging Face model folder")
        return ModelSource(name, path / "config.json", path)
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(name, local_files_only=True))
    except HFValidationError as error:
        raise ConfigError(f"model {name}: no such file or folder, and not a Hugging Face id ({error})") from None
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"model {name}: not in the Hugging Face cache {constants.HF_HUB_CACHE} (HF_HOME={constants.HF_HOME}); "
            f"download it there first (hf download {name}), point HF_HOME at the model cache, or pass a local "
            "folder"
        ) from None
    return resolve_model(str(folder))


def materialize(model: nn.Module, device: torch.device) -> None:
    """Give the laid-out model's meta parameters uninitialised memory on ``device`` (each rank its own shards,
    DTensor and FSDP2 included), keeping the buffers' values and tied parameters tied."""
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    ties = tied_parameters(model)
    model.to_empty(device=device)
    retie(model, ties)
    with torch.no_grad():
        for name, value in buffers.items():
            model.get_buffer(name).copy_(value)


def hf_state_dict(model: nn.Module, optimizer: MasterAdamW) -> dict[str, torch.Tensor]:
    """This rank's master weights (DTensors where sharded) under their Hugging Face names, without the copies
    of tied weights (transformers' ``all_tied_weights_keys`` of ``model``, a ``CausalLMLogits``), as Hugging
    Face checkpoints store them."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    tied = getattr(model.get_submodule("model"), "all_tied_weights_keys", None) or {}
    state = get_model_state_dict(optimizer.masters)
    hf_names = {name: name.removeprefix(WRAPPER_PREFIX) for name in state}
    return {
        hf_names[name]: tensor
        for name, tensor in state.items()
        if isinstance(tensor, torch.Tensor) and hf_names[name] not in tied
    }


def load_weights(model: nn.Module, optimizer: MasterAdamW, folder: Path) -> None:
    """Read the checkpoint in ``folder`` into the master weights, then the model (collective: every rank
    calls it).

    Checkpoint tensors are converted to the masters' dtype (fp32) as they are read. A weight the checkpoint
    lacks, or holds with another shape, is a :class:`ConfigError` naming it."""
    from torch.distributed.checkpoint.hf_storage import HuggingFaceStorageReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    state = hf_state_dict(model, optimizer)
    reader = HuggingFaceStorageReader(str(folder))
    stored = reader.read_metadata().state_dict_metadata
    missing = [name for name in state if name not in stored]
    if missing:
        raise ConfigError(
            f"model {folder}: its safetensors lack {len(missing)} of the model's {len(state)} weights "
            f"({', '.join(missing[:3])}); the weights do not belong to this config.json"
        )
    for name, tensor in state.items():
        entry = stored[name]
        shape = tuple(entry.size) if isinstance(entry, TensorStorageMetadata) else ()
        if shape != tuple(tensor.shape):
            raise ConfigError(
                f"model {folder}: weight {name} has shape {list(shape)} in the safetensors but "
                f"{list(tensor.shape)} in config.json's model"
            )
    dcp_load(state, storage_reader=reader)
    loaded: dict[str, Any] = {WRAPPER_PREFIX + name: tensor for name, tensor in state.items()}
    set_model_state_dict(optimizer.masters, loaded, options=StateDictOptions(strict=False))  # tied: one storage
    optimizer.copy_masters_to_model()
