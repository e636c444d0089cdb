"""Analyse a tiny transformers Llama, convert it to tensor parallelism and check it against the original.

    torchrun --nproc-per-node 2 examples/parallel/tp_convert.py      # CPU (gloo), or one GPU per rank (nccl)

Every rank builds the same model from the same seed; rank 0 prints the analysis, every rank prints how far
its logits are from the unconverted model's and how many bytes of weights it holds against the estimate.
"""

from __future__ import annotations

import copy
import os
import sys

import torch
import torch.distributed as dist
import transformers
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from autoparallel.parallel import analyze_tp, convert_to_tp, estimate_tp_memory


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    model = transformers.LlamaForCausalLM(config).to(device)
    reference = copy.deepcopy(model)

    ids = torch.randint(0, config.vocab_size, (2, 16), device=device)  # the same on every rank (same seed)

    report = analyze_tp(model, max_world_size=world)
    estimate = estimate_tp_memory(report, world, tokens=ids.numel())
    if rank == 0:
        print(report.summary(), estimate.summary(), sep="\n\n", flush=True)
    convert_to_tp(model, init_device_mesh(device.type, (world,)), analysis=report)

    with torch.no_grad():
        difference = (model(ids).logits - reference(ids).logits).abs().max().item()
    held = sum((p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size() for p in model.parameters())
    line = (
        f"rank {rank}/{world}: max |logits - original| = {difference:.2e}; "
        f"weights held {held:,} bytes (estimate {estimate.rank_memory_bytes[rank]:,})\n"
    )
    sys.stdout.write(line)  # one write per line: the ranks share the terminal
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
