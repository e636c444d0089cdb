"""One rank of the tensor-parallel conversion test (run by torchrun on CPU with gloo).

Every rank builds the same models from a fixed seed, keeps an unconverted copy, converts the other with
``convert_to_tp`` and compares outputs, gradients, shards and memory; it writes ``rank{N}.json`` to the folder
given as the only argument, and the test asserts on those files.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from models import FlatTransformer, FusedTransformer, TinyGPT, mlp, tiny_gpt2, tiny_llama, tiny_qwen3, tiny_qwen3_moe
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from torch.nn import functional

from autoparallel.parallel import (
    TensorParallelError,
    TPAnalysisReport,
    TPStyle,
    analyze_tp,
    convert_to_tp,
    estimate_tp_memory,
    is_tensor_parallel,
)
from autoparallel.parallel.tp_styles import fused_order

SEED = 1234
BATCH, TOKENS = 2, 8

Forward = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    out = model(ids)
    return out if isinstance(out, torch.Tensor) else out.logits


def _next_token_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def _regression_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return functional.mse_loss(output, target)


def _layout(report: TPAnalysisReport, parameter: str, world: int) -> tuple[int | None, torch.Tensor | None]:
    """(dimension the analysis splits this parameter on or None, row order of a fused layer or None)."""
    module, _, leaf = parameter.rpartition(".")
    layer = report.layer(module)
    transposed = layer.layer_type == "Conv1D" and leaf == "weight"  # Conv1D stores its weight [in, out]
    order = fused_order(layer.fused_parts, world) if layer.fused_parts else None
    if layer.style is TPStyle.ROW:
        return (0 if transposed else 1) if leaf == "weight" else None, None
    if layer.style is TPStyle.COLUMN:
        return (1 if transposed else 0), order
    return (0 if layer.parallelizable else None), None


def _expected_shard(full: torch.Tensor, dim: int | None, world: int, rank: int) -> torch.Tensor:
    if dim is None:
        return full
    chunk = -(-full.shape[dim] // world)
    start = min(rank * chunk, full.shape[dim])
    return full.narrow(dim, start, min(chunk, full.shape[dim] - start))


def _full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def check_model(
    build: Callable[[], nn.Module], inputs: torch.Tensor, target: torch.Tensor | None, mesh: DeviceMesh
) -> dict[str, Any]:
    world, rank = mesh.size(), mesh.get_local_rank()
    torch.manual_seed(SEED)
    model = build()
    reference = copy.deepcopy(model)
    originals = {name: p.detach().clone() for name, p in model.named_parameters()}
    report = analyze_tp(model, max_world_size=world)
    estimate = estimate_tp_memory(report, world)
    converted = convert_to_tp(model, mesh, analysis=report)

    output, expected = _logits(converted, inputs), _logits(reference, inputs)
    if target is None:
        _next_token_loss(output, inputs).backward()
        _next_token_loss(expected, inputs).backward()
    else:
        _regression_loss(output, target).backward()
        _regression_loss(expected, target).backward()
    reference_params = dict(reference.named_parameters())

    grad_diff = shard_diff = 0.0
    placements: dict[str, str] = {}
    local_bytes = 0
    for name, p in converted.named_parameters():
        assert p.grad is not None, name
        dim, order = _layout(report, name, world)
        original, expected_grad = originals[name], reference_params[name].grad
        if order is not None:  # a fused layer's rows are re-ordered: [part slices of rank 0, of rank 1, …]
            original, expected_grad = original.index_select(dim, order), expected_grad.index_select(dim, order)
        grad_diff = max(grad_diff, (_full(p.grad) - expected_grad).abs().max().item())
        local = p.to_local() if isinstance(p, DTensor) else p
        local_bytes += local.numel() * local.element_size()
        placements[name] = str(p.placements[0]) if isinstance(p, DTensor) else "plain"
        shard = _expected_shard(original, dim, world, rank)
        shard_diff = max(shard_diff, (local.detach() - shard).abs().max().item() if shard.numel() else 0.0)
        if local.shape != shard.shape:
            shard_diff = float("inf")

    ids_before = [id(p) for p in converted.parameters()]
    again = convert_to_tp(converted, mesh)
    return {
        "output_max_diff": (output - expected).abs().max().item(),
        "grad_max_diff": grad_diff,
        "shard_max_diff": shard_diff,
        "placements": placements,
        "dtensor_parameters": sum(isinstance(p, DTensor) for p in converted.parameters()),
        "local_bytes": local_bytes,
        "estimated_bytes": estimate.rank_memory_bytes[rank],
        "base_bytes": estimate.base_memory_bytes,
        "second_conversion_same_object": again is converted,
        "second_conversion_same_parameters": [id(p) for p in again.parameters()] == ids_before,
        "tied_lm_head": getattr(getattr(converted, "lm_head", None), "weight", None)
        is getattr(getattr(converted, "wte", None), "weight", 0),
        "local_attributes": {
            f"{path}.{attribute}": getattr(converted.get_submodule(path), attribute)
            for path, attribute in report.local_attributes
        },
    }


def check_rejections(mesh: DeviceMesh) -> dict[str, Any]:
    """Models that do not divide: the error names the layer and the model stays as it was."""
    results: dict[str, Any] = {}
    for name, build in (("odd_heads", lambda: TinyGPT(width=36, heads=3)), ("odd_mlp", lambda: mlp(16, 33))):
        model = build()
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            convert_to_tp(model, mesh)
            results[name] = {"error": None}
        except TensorParallelError as error:
            results[name] = {"error": str(error)}
        results[name]["untouched"] = not is_tensor_parallel(model) and all(
            torch.equal(p, before[n]) for n, p in model.named_parameters()
        )
    return results


def main(out_dir: Path) -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    generator = torch.Generator().manual_seed(SEED)
    ids = {vocab: torch.randint(0, vocab, (BATCH, TOKENS), generator=generator) for vocab in (96, 97, 101)}
    x = torch.randn(BATCH, TOKENS, 16, generator=generator)
    y = torch.randn(BATCH, TOKENS, 16, generator=generator)
    token_models: dict[str, tuple[Callable[[], nn.Module], int]] = {
        "gpt": (TinyGPT, 97),
        "llama": (tiny_llama, 101),
        "qwen3": (tiny_qwen3, 101),
        "flat": (FlatTransformer, 96),
        "fused": (FusedTransformer, 97),
        "gpt2": (tiny_gpt2, 101),
        "qwen3_moe": (tiny_qwen3_moe, 101),
    }
    models = {"mlp": check_model(mlp, x, y, mesh)}
    models |= {name: check_model(build, ids[vocab], None, mesh) for name, (build, vocab) in token_models.items()}
    result = {
        "rank": dist.get_rank(),
        "world_size": dist.get_world_size(),
        "models": models,
        "rejections": check_rejections(mesh),
    }
    (out_dir / f"rank{dist.get_rank()}.json").write_text(json.dumps(result, indent=2))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
