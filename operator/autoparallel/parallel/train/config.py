"""The runtime's configuration: defaults, then a YAML file, then the environment the operator sets, then flags.

The flag names are fixed by the command line the operator generates (``autoparallel.planner.commands``).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from autoparallel.parallel.train.model import TINY_GPT, TinyGPTConfig

PRECISIONS = ("fp32", "bf16")
INITS = ("pretrained", "random")
DEFAULT_DATA_FIELD = "text"
ENVIRONMENT = {
    "AUTOPARALLEL_TENSOR_PARALLEL": "tensor_parallel",
    "AUTOPARALLEL_PIPELINE_PARALLEL": "pipeline_parallel",
    "AUTOPARALLEL_DATA_PARALLEL": "data_parallel",
    "AUTOPARALLEL_MODEL": "model",
    "AUTOPARALLEL_CHECKPOINT_DIR": "checkpoint_dir",
    "AUTOPARALLEL_EXPORT_DIR": "export_dir",
    "AUTOPARALLEL_METRICS_JSONL": "metrics_jsonl",
}
"""Environment variables the runtime reads (the operator sets the three degrees on every training pod)."""


class ConfigError(ValueError):
    """A configuration that cannot run: the message names the numbers that disagree."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run."""

    tensor_parallel: int = 1
    """Ranks each layer's weights are split over (DTensor tensor parallel)."""
    pipeline_parallel: int = 1
    """Pipeline stages, the layers split evenly between them (1F1B schedule)."""
    data_parallel: int = 1
    """Model replicas; the global batch is split between them and gradients averaged."""
    model: str = TINY_GPT
    """``tiny-gpt``, a transformers ``config.json``, a folder holding one (and ``*.safetensors`` weights), or a
    Hugging Face id in the local cache (``HF_HOME``)."""
    init: str | None = None
    """``pretrained`` (the model's safetensors) or ``random``; unset: pretrained when the model has weights."""
    seq_len: int = 32
    """Tokens per sequence."""
    global_batch_size: int = 8
    """Sequences per optimizer step over all data-parallel ranks."""
    micro_batches: int = 1
    """Micro-batches per optimizer step on each data-parallel rank (gradient accumulation / pipeline)."""
    steps: int = 10
    """Optimizer steps to reach (a resumed run counts from the checkpoint's step)."""
    seed: int = 0
    """Seeds the model's initialisation (identical on every rank) and the data order."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    precision: str = "fp32"
    """``fp32``, or ``bf16``: bf16 weights and activations with fp32 gradients, master weights and Adam states."""
    data: str = "synthetic"
    """``synthetic`` (deterministic token patterns), or a dataset: a local file or folder (jsonl/json, parquet,
    arrow, csv, txt) or a dataset id in the local Hugging Face cache, tokenized by the model's tokenizer."""
    data_field: str = DEFAULT_DATA_FIELD
    """The dataset's text column (when missing, a ``messages`` column goes through the chat template)."""
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    """Save every N steps (0: only at the end); nothing is saved without ``checkpoint_dir``."""
    resume: bool = False
    """Continue from the latest checkpoint in ``checkpoint_dir``."""
    export_dir: str | None = None
    """Where the trained model is written as a Hugging Face folder (``export.py``); nothing without it."""
    export_every: int = 0
    """Export every N steps too (0: only at the end; the last step is always exported with ``export_dir``)."""
    metrics_jsonl: str | None = None
    metrics_csv: str | None = None
    tensorboard_dir: str | None = None
    log_json: bool = False
    """Log each step to stdout as a JSON object instead of a text line."""
    tiny: TinyGPTConfig = field(default_factory=TinyGPTConfig)
    """The tiny GPT's shape (``tiny:`` mapping in YAML, ``--hidden-size`` and friends as flags)."""

    @property
    def world_size(self) -> int:
        return self.tensor_parallel * self.pipeline_parallel * self.data_parallel

    @property
    def micro_batch_size(self) -> int:
        return self.global_batch_size // (self.data_parallel * self.micro_batches)

    def validate(self, world_size: int) -> None:
        """Raise :class:`ConfigError` when the degrees, batch or model do not fit together."""
        tp, pp, dp = self.tensor_parallel, self.pipeline_parallel, self.data_parallel
        if min(tp, pp, dp, self.micro_batches, self.global_batch_size, self.seq_len) < 1:
            raise ConfigError("degrees, micro-batches, global batch size and sequence length must be positive")
        if tp * pp * dp != world_size:
            raise ConfigError(
                f"tensor parallel ({tp}) × pipeline parallel ({pp}) × data parallel ({dp}) = {tp * pp * dp} "
                f"must equal the world size ({world_size})"
            )
        if self.global_batch_size % (dp * self.micro_batches):
            raise ConfigError(
                f"global batch size ({self.global_batch_size}) must be divisible by data parallel ({dp}) × "
                f"micro-batches ({self.micro_batches}) = {dp * self.micro_batches}"
            )
        if pp > 1 and self.micro_batches < pp:
            raise ConfigError(
                f"micro-batches ({self.micro_batches}) must be at least the pipeline parallel size ({pp}) for 1F1B"
            )
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.init is not None and self.init not in INITS:
            raise ConfigError(f"init must be one of {', '.join(INITS)} (got {self.init!r})")
        if self.export_every < 0:
            raise ConfigError(f"export every ({self.export_every}) must be 0 (at the end only) or a number of steps")
        if self.model == TINY_GPT:
            validate_tiny_gpt(self.tiny, tp, pp, self.seq_len)
            if self.init == "pretrained":
                raise ConfigError(
                    f"init pretrained: {TINY_GPT} has no pretrained weights; use --init random, or a --model folder "
                    "or Hugging Face id with *.safetensors"
                )
            if self.export_dir:
                raise ConfigError(
                    f"export dir: {TINY_GPT} has no Hugging Face form to export; drop --export-dir or train a "
                    "transformers --model"
                )


def validate_tiny_gpt(tiny: TinyGPTConfig, tp: int, pp: int, seq_len: int) -> None:
    """The tiny GPT's dimensions that tensor and pipeline parallelism split must divide evenly."""
    for label, size in (
        ("number of attention heads", tiny.num_heads),
        ("intermediate size", tiny.intermediate_size),
        ("vocabulary size", tiny.vocab_size),
    ):
        if size % tp:
            raise ConfigError(f"{label} ({size}) must be divisible by tensor parallel size ({tp})")
    if tiny.num_layers < pp:
        raise ConfigError(f"number of layers ({tiny.num_layers}) must be at least the pipeline parallel size ({pp})")
    if seq_len > tiny.max_seq_len:
        raise ConfigError(f"sequence length ({seq_len}) exceeds the model's maximum ({tiny.max_seq_len})")


_TINY_FLAGS = {f.name: f.type for f in fields(TinyGPTConfig)}
_FLAT_FIELDS = {f.name for f in fields(TrainConfig)} - {"tiny"}


def parser() -> argparse.ArgumentParser:
    """Flags; every default is None so that only flags given on the command line override the file and env."""
    p = argparse.ArgumentParser(
        prog="python -m autoparallel.parallel.train",
        description="Train a causal LM with data × tensor × pipeline parallelism (run under torchrun).",
        argument_default=None,
    )
    p.add_argument("--config", help="YAML file of options (keys as the long flags, with underscores)")
    p.add_argument("--tensor-parallel", type=int)
    p.add_argument("--pipeline-parallel", type=int)
    p.add_argument("--data-parallel", type=int)
    p.add_argument("--model", help=f"{TINY_GPT}, a transformers config.json or model folder, or a cached hub id")
    p.add_argument("--init", choices=INITS, help="default: pretrained when the model has safetensors weights")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--global-batch-size", type=int)
    p.add_argument("--micro-batches", type=int, help="micro-batches per optimizer step per data-parallel rank")
    p.add_argument("--steps", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--data", help="'synthetic', a jsonl/parquet/arrow/txt file or folder, or a cached dataset id")
    p.add_argument("--data-field", help=f"the dataset's text column (default {DEFAULT_DATA_FIELD}; else 'messages')")
    p.add_argument("--checkpoint-dir")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--resume", action="store_true", default=None)
    p.add_argument("--export-dir", help="write the trained model there as a Hugging Face folder")
    p.add_argument("--export-every", type=int, help="export every N steps too (0: at the end only)")
    p.add_argument("--metrics-jsonl")
    p.add_argument("--metrics-csv")
    p.add_argument("--tensorboard-dir")
    p.add_argument("--log-json", action="store_true", default=None, help="log steps to stdout as JSON lines")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size"):
        p.add_argument("--" + name.replace("_", "-"), type=int, dest=f"tiny_{name}", help=f"{TINY_GPT}: {name}")
    return p


def _coerce(name: str, value: Any) -> Any:
    default = getattr(TrainConfig(), name)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float):
        return float(value)
    return value


def _merge(config: TrainConfig, values: Mapping[str, Any], source: str) -> TrainConfig:
    flat: dict[str, Any] = {}
    tiny: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name == "tiny" and isinstance(value, Mapping):
            tiny.update({k.replace("-", "_"): v for k, v in value.items()})
        elif name.startswith("tiny_") and name[5:] in _TINY_FLAGS:
            tiny[name[5:]] = value
        elif name in _FLAT_FIELDS:
            flat[name] = _coerce(name, value)
        else:
            raise ConfigError(f"{source}: unknown option {key!r}")
    unknown = set(tiny) - set(_TINY_FLAGS)
    if unknown:
        raise ConfigError(f"{source}: unknown tiny-gpt option(s) {', '.join(sorted(unknown))}")
    return replace(config, **flat, tiny=replace(config.tiny, **tiny))


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> TrainConfig:
    """Defaults, overridden by ``--config`` YAML, then ``AUTOPARALLEL_*`` variables, then explicit flags."""
    args = vars(parser().parse_args(argv))
    environ = os.environ if environ is None else environ
    config = TrainConfig()
    config_path = args.pop("config")
    if config_path:
        loaded = yaml.safe_load(Path(config_path).read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{config_path}: expected a mapping of options")
        config = _merge(config, loaded, config_path)
    config = _merge(config, {ENVIRONMENT[k]: v for k, v in environ.items() if k in ENVIRONMENT}, "environment")
    return _merge(config, {k: v for k, v in args.items() if v is not None}, "command line")
