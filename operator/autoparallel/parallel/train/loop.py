"""The training loop: build the layout, then forward/backward over micro-batches, step, log, save."""

from __future__ import annotations

import os
import resource
import sys
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from autoparallel.parallel.train import checkpoint, export
from autoparallel.parallel.train.config import TrainConfig
from autoparallel.parallel.train.data import IGNORE_INDEX, Batch, DataStream, build_stream
from autoparallel.parallel.train.layout import (
    Coordinates,
    apply_data_parallel,
    apply_tensor_parallel,
    build_mesh,
    keep_stage,
    pick_device,
)
from autoparallel.parallel.train.metrics import MetricsWriter, StepMetrics, logger
from autoparallel.parallel.train.model import TINY_GPT, build_model
from autoparallel.parallel.train.optim import MasterAdamW
from autoparallel.parallel.train.pretrained import ModelSource, load_weights, materialize, resolve_model

PROCESS_GROUP_TIMEOUT = timedelta(minutes=10)
"""Collective timeout: long enough for a slow first step (compilation, checkpoint loads) on big models."""
_RSS_UNIT = 1 if sys.platform == "darwin" else 1024
"""``ru_maxrss`` is in bytes on macOS and in KiB on Linux."""


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor, target_count: int) -> torch.Tensor:
    """Next-token cross-entropy (fp32) summed over the targets that are not ignored, divided by
    ``target_count``, those of the step's whole global batch: the micro-batches' and data-parallel ranks' losses
    add up to the global batch's mean, and so do their gradients (FSDP2 sums them, ``layout``)."""
    summed = F.cross_entropy(
        logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return summed / target_count


@dataclass
class Trainer:
    """One rank's share of a run, built by :func:`build_trainer`."""

    config: TrainConfig
    model: nn.Module
    optimizer: MasterAdamW
    data: DataStream
    coordinates: Coordinates
    device: torch.device
    schedule: object | None
    """The 1F1B schedule when there is more than one pipeline stage."""
    model_source: ModelSource | None = None
    """Where a transformers ``--model`` lives (exports copy its tokenizer); None for the tiny GPT."""

    def forward_backward(self, batch: Batch) -> torch.Tensor:
        """Accumulate one optimizer step's gradients; returns this replica's share of the step's loss on the
        last stage (else 0). Every stage gets the position ids (the schedule passes keyword inputs to all)."""
        config, k, count = self.config, self.config.micro_batches, batch.target_count
        inputs, targets = batch.inputs.to(self.device), batch.targets.to(self.device)
        positions = batch.position_ids.to(self.device)
        if self.schedule is None:
            total = torch.zeros((), device=self.device)
            micro = zip(inputs.chunk(k), targets.chunk(k), positions.chunk(k), strict=True)
            # FSDP2 reduce-scatters after every micro-batch into the sharded gradients (as torchtitan does):
            # skipping the sync would keep every unsharded gradient, in fp32, until the last one (4 bytes per
            # parameter instead of 4 / DP)
            for micro_inputs, micro_targets, micro_positions in micro:
                loss = causal_lm_loss(self.model(micro_inputs, micro_positions), micro_targets, count)
                torch.autograd.backward(loss)
                total += loss.detach()
            return total
        losses: list[torch.Tensor] = []
        step = getattr(self.schedule, "step")  # noqa: B009  (typed loosely: pipelining has no stubs)
        if self.coordinates.pp_rank == 0:
            step(inputs, position_ids=positions)
        elif self.coordinates.is_last_stage(config):
            step(target=targets, losses=losses, loss_kwargs={"target_count": count}, position_ids=positions)
        else:
            step(position_ids=positions)
        if not losses:
            return torch.zeros((), device=self.device)
        return torch.stack([loss.detach().float() for loss in losses]).sum()

    def global_loss(self, local: torch.Tensor) -> float:
        """The step's loss: the replicas' shares summed (read from one TP rank of the last stage)."""
        reporter = self.coordinates.is_last_stage(self.config) and self.coordinates.tp_rank == 0
        value = (local.detach().float() if reporter else torch.zeros((), device=self.device)).reshape(1)
        if dist.get_world_size() > 1:
            dist.all_reduce(value)
        return float(value.item())

    def train_step(self) -> float:
        batch = self.data.next_batch(self.coordinates.dp_rank, self.config.data_parallel)
        local = self.forward_backward(batch)
        self.optimizer.collect_gradients()
        self.optimizer.step()
        return self.global_loss(local)


def peak_memory_bytes(device: torch.device) -> int:
    """The accelerator's peak allocation, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * _RSS_UNIT


def peaks_per_rank(device: torch.device) -> tuple[int, ...]:
    local = torch.tensor([peak_memory_bytes(device)], dtype=torch.int64, device=device)
    gathered = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return tuple(int(t.item()) for t in gathered)


def init_distributed(device: torch.device) -> None:
    """Join torchrun's process group, or a one-process group when started without torchrun."""
    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
    else:
        from torch._C._distributed_c10d import HashStore

        dist.init_process_group(backend, store=HashStore(), rank=0, world_size=1)


def build_trainer(config: TrainConfig) -> Trainer:
    """The model laid out on this rank: random weights from ``--seed`` (the full model built on every rank,
    then cut), or a pretrained checkpoint read shard by shard into the laid-out skeleton (``pretrained.py``)."""
    device = pick_device()
    init_distributed(device)
    mesh, coordinates = build_mesh(config, device.type, dist.get_world_size())
    model_source = None if config.model == TINY_GPT else resolve_model(config.model)
    weights = model_source.weights_folder(config.init) if model_source is not None else None
    pretrained = weights is not None
    hf_config = model_source.config() if model_source is not None else None
    model, vocab_size = build_model(config.model, config.seed, config.tiny, hf_config, empty=pretrained)
    if config.pipeline_parallel > 1:
        model = keep_stage(model, coordinates.pp_rank, config.pipeline_parallel)
    if not pretrained:
        model.to(device)
    if config.tensor_parallel > 1:
        model = apply_tensor_parallel(model, mesh["tp"], hf_layout=pretrained or bool(config.export_dir))
    if config.data_parallel > 1:
        model = apply_data_parallel(model, mesh["dp"], config.precision)
    if pretrained:
        materialize(model, device)
    optimizer = MasterAdamW(model, config.precision, config.lr, config.weight_decay)
    if weights is not None:
        load_weights(model, optimizer, weights)
        logger.info("loaded pretrained weights from %s", weights)
    schedule = None
    if config.pipeline_parallel > 1:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B

        stage = PipelineStage(
            model, coordinates.pp_rank, config.pipeline_parallel, device, group=mesh["pp"].get_group()
        )
        # the loss is already divided by the global batch's target count: no further division by micro-batches
        schedule = Schedule1F1B(stage, n_microbatches=config.micro_batches, loss_fn=causal_lm_loss, scale_grads=False)
    data = build_stream(config, vocab_size)
    return Trainer(config, model, optimizer, data, coordinates, device, schedule, model_source)


def train(config: TrainConfig) -> list[StepMetrics]:
    """Run (or resume) ``config`` to ``config.steps``; returns rank 0's metrics of each step run."""
    trainer = build_trainer(config)
    start = 0
    if config.resume:
        if not config.checkpoint_dir:
            raise ValueError("--resume needs --checkpoint-dir")
        path = checkpoint.latest(config.checkpoint_dir)
        if path is not None:
            start = checkpoint.load(path, trainer.optimizer, trainer.data)
            logger.info("resumed from %s at step %d", path, start)
    is_writer = dist.get_rank() == 0
    history: list[StepMetrics] = []
    tokens_per_step = config.global_batch_size * config.seq_len
    with MetricsWriter(
        config.metrics_jsonl if is_writer else None,
        config.metrics_csv if is_writer else None,
        config.tensorboard_dir if is_writer else None,
        json_stdout=config.log_json and is_writer,
    ) as writer:
        for step in range(start, config.steps):
            began = time.perf_counter()
            loss = trainer.train_step()
            seconds = time.perf_counter() - began
            peaks = peaks_per_rank(trainer.device)
            metrics = StepMetrics(step + 1, loss, tokens_per_step / seconds, seconds, max(peaks), peaks)
            history.append(metrics)
            if is_writer:
                writer.write(metrics)
            due = config.checkpoint_every and (step + 1) % config.checkpoint_every == 0
            if config.checkpoint_dir and (due or step + 1 == config.steps):
                checkpoint.save(config.checkpoint_dir, step + 1, trainer.optimizer, trainer.data)
            if config.export_dir and trainer.model_source and export.due(config, step + 1):
                path = export.export(
                    config.export_dir, trainer.model, trainer.optimizer, trainer.model_source, config.precision
                )
                logger.info("exported step %d to %s", step + 1, path)
    return history
