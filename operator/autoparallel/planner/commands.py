"""The command lines a plan runs: ``vllm serve`` for inference, ``torchrun`` for training."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from autoparallel.planner.inference import DEFAULT_MAX_NUM_BATCHED_TOKENS, Degrees

TORCHRUN_MASTER_PORT = 29500
"""torchrun's conventional rendezvous port (PET_MASTER_PORT in Kubeflow's Trainer)."""


@dataclass(frozen=True)
class ServeOptions:
    """vLLM flags that follow from the request rather than the degrees."""

    model: str
    max_model_len: int
    gpu_memory_utilization: float
    dtype: str | None = None
    quantization: str | None = None
    """A load-time method (``fp8``, ``bitsandbytes``), passed as vLLM's --quantization; a pre-quantized
    checkpoint needs none (vLLM reads its quantization_config)."""
    kv_cache_dtype: str = "auto"
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS
    port: int = 8000
    revision: str | None = None
    """Model revision (branch, tag or commit); None serves the default branch."""
    served_model_name: str | None = None
    """The name clients request (``--served-model-name``); None leaves vLLM's default, the model argument."""
    max_num_seqs: int | None = None
    """``--max-num-seqs`` when vLLM's GPU-dependent default would not fit (or the caller asked for another
    value); None leaves vLLM's default."""


def vllm_serve_args(degrees: Degrees, options: ServeOptions, multi_node: bool) -> list[str]:
    """Arguments of ``vllm serve`` for one replica of ``degrees``."""
    args = [
        "vllm",
        "serve",
        options.model,
        "--tensor-parallel-size",
        str(degrees.tensor),
        "--pipeline-parallel-size",
        str(degrees.pipeline),
        "--max-model-len",
        str(options.max_model_len),
        "--gpu-memory-utilization",
        f"{options.gpu_memory_utilization:g}",
    ]
    if options.revision:
        args += ["--revision", options.revision]
    if options.served_model_name:
        args += ["--served-model-name", options.served_model_name]
    if degrees.expert > 1:
        args += ["--enable-expert-parallel"]
        if degrees.expert > degrees.tensor:
            args += ["--data-parallel-size", str(degrees.expert // degrees.tensor)]
    if options.dtype:
        args += ["--dtype", options.dtype]
    if options.quantization:
        args += ["--quantization", options.quantization]
    if options.kv_cache_dtype != "auto":
        args += ["--kv-cache-dtype", options.kv_cache_dtype]
    if options.max_num_batched_tokens != DEFAULT_MAX_NUM_BATCHED_TOKENS:
        args += ["--max-num-batched-tokens", str(options.max_num_batched_tokens)]
    if options.max_num_seqs is not None:
        args += ["--max-num-seqs", str(options.max_num_seqs)]
    if multi_node:
        args += ["--distributed-executor-backend", "ray"]
    args += ["--port", str(options.port)]
    return args


@dataclass(frozen=True)
class TrainOptions:
    """Flags of ``python -m autoparallel.parallel.train``; None leaves the runtime's default (no flag)."""

    model: str
    sequence_length: int
    global_batch_size: int
    micro_batches: int
    steps: int = 1000
    precision: str = "bf16"
    """The planner's training memory model is bf16 mixed precision (bf16 weights and activations, fp32 gradients,
    masters and Adam states): the runtime's ``--precision bf16``, whose own default is fp32."""
    init: str | None = None
    """``pretrained`` or ``random``."""
    data: str | None = None
    """A Hugging Face dataset id or a path."""
    data_field: str | None = None
    checkpoint_dir: str | None = None
    """Checkpoints go here, and the run resumes from the newest one (``--resume``): a restarted pod continues."""
    checkpoint_every: int | None = None
    export_dir: str | None = None
    """The Hugging Face folder of the trained model."""
    export_every: int | None = None

    def optional_args(self) -> list[str]:
        """The flags of the options that are set, in the runtime's order."""
        flags = {
            "--init": self.init,
            "--data": self.data,
            "--data-field": self.data_field,
            "--checkpoint-dir": self.checkpoint_dir,
            "--checkpoint-every": self.checkpoint_every,
            "--export-dir": self.export_dir,
            "--export-every": self.export_every,
        }
        args = [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]
        return [*args, "--resume"] if self.checkpoint_dir is not None else args


def torchrun_launcher_args(nodes: int, gpus_per_node: int) -> list[str]:
    """``torchrun`` and its rendezvous flags, up to the program it launches (environment per SPEC §3)."""
    return [
        "torchrun",
        f"--nnodes={nodes}",
        f"--nproc-per-node={gpus_per_node}",
        "--node-rank=${PET_NODE_RANK}",
        "--master-addr=${PET_MASTER_ADDR}",
        f"--master-port={TORCHRUN_MASTER_PORT}",
    ]


def torchrun_args(degrees: Degrees, options: TrainOptions, nodes: int, gpus_per_node: int) -> list[str]:
    """``torchrun`` launching the training runtime with the planned degrees (environment per SPEC §3)."""
    return [
        *torchrun_launcher_args(nodes, gpus_per_node),
        "-m",
        "autoparallel.parallel.train",
        "--tensor-parallel",
        str(degrees.tensor),
        "--pipeline-parallel",
        str(degrees.pipeline),
        "--data-parallel",
        str(degrees.data),
        "--model",
        options.model,
        "--seq-len",
        str(options.sequence_length),
        "--global-batch-size",
        str(options.global_batch_size),
        "--micro-batches",
        str(options.micro_batches),
        "--steps",
        str(options.steps),
        "--precision",
        options.precision,
        *options.optional_args(),
    ]


def torchrun_program_args(program: Sequence[str], nodes: int, gpus_per_node: int) -> list[str]:
    """``torchrun`` launching a user's argv as is: ``--no-python`` because the argv names its own interpreter
    (``python train.py``), as it replaces ``python -m autoparallel.parallel.train``."""
    return [*torchrun_launcher_args(nodes, gpus_per_node), "--no-python", *program]


def join(args: list[str]) -> str:
    """A shell command line; ``${VAR}`` references are left for the shell to expand."""
    return " ".join(arg if arg.startswith("--") and "${" in arg else shlex.quote(arg) for arg in args)
