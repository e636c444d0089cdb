"""One rank of the training memory test (run by torchrun on CPU with gloo).

For each layout given as JSON in the second argument, the rank builds the runtime's trainer (tiny GPT, bf16,
FSDP2 over the data-parallel ranks), runs one optimizer step's forward and backward passes under
:class:`GatheredMeter`, reads the bytes of its sharded states, and measures one micro-batch's saved activations
(single-stage layouts); it writes ``rank{N}.json`` to the folder given as the first argument.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from autoparallel.parallel.train.config import TrainConfig
from autoparallel.parallel.train.data import Batch
from autoparallel.parallel.train.loop import build_trainer, causal_lm_loss
from autoparallel.parallel.train.memory import GatheredMeter, saved_activation_bytes
from autoparallel.parallel.train.model import TinyGPTConfig


def measure(layout: dict[str, int]) -> dict[str, Any]:
    config = TrainConfig(
        data_parallel=layout["data"],
        pipeline_parallel=layout["pipeline"],
        tensor_parallel=layout["tensor"],
        micro_batches=layout["micro_batches"],
        global_batch_size=layout["micro_batch_size"] * layout["micro_batches"] * layout["data"],
        seq_len=layout["seq_len"],
        precision="bf16",
        tiny=TinyGPTConfig(vocab_size=layout["vocab_size"]),
    )
    trainer = build_trainer(config)
    rows = config.global_batch_size // config.data_parallel
    generator = torch.Generator().manual_seed(trainer.coordinates.dp_rank)
    inputs, targets = (
        torch.randint(0, layout["vocab_size"], (rows, config.seq_len), generator=generator) for _ in "io"
    )
    positions = torch.arange(config.seq_len).expand(rows, -1)
    count = config.global_batch_size * config.seq_len  # random tokens: every target counts
    meter = GatheredMeter(trainer.model, config.data_parallel)
    with meter:
        trainer.forward_backward(Batch(inputs, targets, positions, count))
    trainer.optimizer.collect_gradients()
    report: dict[str, Any] = {
        "layout": layout,
        "stage": trainer.coordinates.pp_rank,
        "states": trainer.optimizer.state_bytes(),
        "gathered": meter.peak,
        "gathered_parts": meter.peak_parts,
    }
    trainer.optimizer.step()
    if config.pipeline_parallel == 1:
        micro = layout["micro_batch_size"]
        micro_inputs, micro_targets, micro_positions = inputs[:micro], targets[:micro], positions[:micro]
        model = trainer.model
        report["activations"] = saved_activation_bytes(
            model, lambda: causal_lm_loss(model(micro_inputs, micro_positions), micro_targets, micro * config.seq_len)
        )
    return report


def main() -> None:
    out, layouts = Path(sys.argv[1]), json.loads(sys.argv[2])
    reports = [measure(layout) for layout in layouts]
    rank = dist.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "reports": reports}))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
