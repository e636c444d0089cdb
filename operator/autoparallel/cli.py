"""The ``autoparallel`` command line: plan, memory, cost, gpus, and ``operator run``.

Errors print one line to stderr and exit non-zero: 2 invalid input, 3 unknown model, 4 does not fit.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from autoparallel.controller.run import add_parser as add_operator_parser
from autoparallel.parallel.cli import add_parser as add_tp_analyze_parser
from autoparallel.planner import (
    AutoParallelError,
    InsufficientMemoryError,
    ModelNotFoundError,
    analyze,
    check_memory_requirements,
    estimate_cost,
)
from autoparallel.planner.gpus import GPU_CATALOG
from autoparallel.planner.precision import DTYPES, KV_CACHE_DTYPES, QUANTIZATIONS, WEIGHT_FORMATS
from autoparallel.planner.search import OBJECTIVES, WORKLOADS
from autoparallel.planner.units import to_gib

EXIT_INVALID = 2
EXIT_MODEL_NOT_FOUND = 3
EXIT_INSUFFICIENT_MEMORY = 4

_PLANNER_FLAGS = (
    ("--gpu-memory-utilization", float, None),
    ("--dtype", str, DTYPES),
    ("--quantization", str, QUANTIZATIONS),
    ("--weight-format", str, WEIGHT_FORMATS),
    ("--kv-cache-dtype", str, KV_CACHE_DTYPES),
    ("--workload", str, WORKLOADS),
    ("--max-num-batched-tokens", int, None),
    ("--tensor-parallel", int, None),
    ("--pipeline-parallel", int, None),
    ("--expert-parallel", int, None),
    ("--data-parallel", int, None),
    ("--max-gpus", int, None),
    ("--micro-batch-size", int, None),
    ("--zero-stage", int, (0, 1, 2, 3)),
)


def _add_planner_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="Hugging Face id, path to a config.json, or a catalog id")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="sequence length (max model len; default 2048 or the model's maximum)"
    )
    parser.add_argument("--batch", type=int, default=32, help="concurrent sequences (inference) or global batch")
    for flag, kind, choices in _PLANNER_FLAGS:
        parser.add_argument(flag, type=kind, choices=choices, default=None)
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gpu", help="GPU type from `autoparallel gpus` (e.g. H100-80GB)")
    parser.add_argument("--gpu-memory-gb", type=float, help="memory per GPU in GiB (for GPUs not in the catalog)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--cluster", type=Path, help="YAML/JSON file with a list of node pools (overrides --gpu)")
    parser.add_argument("--allow-cross-node-tensor-parallel", action="store_true", default=None)


def _options(args: argparse.Namespace) -> dict[str, Any]:
    names = [flag[2:].replace("-", "_") for flag, _, _ in _PLANNER_FLAGS]
    names.append("allow_cross_node_tensor_parallel")
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _cluster(args: argparse.Namespace) -> object:
    if args.cluster:
        try:
            return yaml.safe_load(args.cluster.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise AutoParallelError(f"--cluster: cannot read {args.cluster}: {error}") from error
    pool: dict[str, Any] = {"gpus_per_node": args.gpus_per_node, "num_nodes": args.nodes}
    if args.gpu:
        pool["gpu_type"] = args.gpu
    if args.gpu_memory_gb:
        pool["gpu_memory_gb"] = args.gpu_memory_gb
    if "gpu_type" not in pool and "gpu_memory_gb" not in pool:
        raise AutoParallelError("--gpu or --gpu-memory-gb (or --cluster) is required")
    return pool


def _plan(args: argparse.Namespace, console: Console) -> None:
    options = {**_options(args), "objective": args.objective, "explain": args.explain}
    configs = analyze(args.model, _cluster(args), args.seq_len, args.batch, args.max_configs, **options)
    if args.json:
        console.print_json(json.dumps(configs))
        return
    table = Table(title=f"{configs[0]['model']} — {configs[0]['workload']}, objective {args.objective}")
    for column in (
        "#",
        "TP",
        "PP",
        "EP",
        "DP",
        "GPUs",
        "GPU",
        "nodes",
        "GiB/GPU",
        "util",
        "KV tokens",
        "max seqs",
    ):
        table.add_column(column, justify="right")
    for rank, c in enumerate(configs, 1):
        table.add_row(
            str(rank),
            *(str(c[k]) for k in ("tensor_parallel", "pipeline_parallel", "expert_parallel", "data_parallel")),
            str(c["total_gpus"]),
            c["gpu_type"],
            str(c["nodes"]),
            f"{c['memory_per_gpu_gb']:.2f}",
            f"{c['memory_utilization']:.0%}",
            f"{c['kv_cache_tokens']:,}",
            str(c["max_concurrent_sequences"]),
        )
    console.print(table)
    best = configs[0]
    parts = ", ".join(f"{k} {v:.2f}" for k, v in best["memory_breakdown"].items())
    console.print(f"[bold]Best:[/bold] {best['reason']}")
    console.print(f"[bold]Memory per GPU (GiB):[/bold] {parts}")
    console.print(f"[bold]Run:[/bold] {best['deployment_command']}", soft_wrap=True)
    if args.explain:
        console.print(f"[bold]Rejected ({len(best['rejected'])}):[/bold]")
        for line in best["rejected"]:
            console.print(f"  - {line}", soft_wrap=True)


def _memory(args: argparse.Namespace, console: Console) -> None:
    result = check_memory_requirements(args.model, args.seq_len, batch_size=args.batch, **_options(args))
    if args.json:
        console.print_json(json.dumps(result))
        return
    table = Table(title=f"{result['model']} — memory on one GPU")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        if key != "model":
            table.add_row(key, f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def _cost(args: argparse.Namespace, console: Console) -> None:
    prices = {}
    for item in args.price or []:
        name, _, value = item.partition("=")
        try:
            prices[name] = float(value)
        except ValueError as error:
            raise AutoParallelError(f"--price: expected GPU=USD, got {item!r}") from error
    options = {**_options(args), **({"prices": prices} if prices else {})}
    result = estimate_cost(
        args.model,
        _cluster(args),
        args.hours_per_month,
        sequence_length=args.seq_len,
        batch_size=args.batch,
        **options,
    )
    if args.json:
        console.print_json(json.dumps(result))
        return
    if result["cost_per_gpu_hour"] is None:
        console.print(f"{result['gpus_needed']}× {result['gpu_type']} at an unknown price (pass --price)")
    else:
        console.print(
            f"{result['gpus_needed']}× {result['gpu_type']} at ${result['cost_per_gpu_hour']:.2f}/GPU-hour → "
            f"[bold]${result['estimated_monthly_cost_usd']:,.2f}[/bold] per month"
        )
    console.print(f"Assumptions: {result['assumptions']}", soft_wrap=True)


def _gpus(args: argparse.Namespace, console: Console) -> None:
    rows: list[dict[str, Any]] = [
        {
            "name": g.name,
            "products": list(g.products),
            "memory_gib": to_gib(g.usable_bytes),
            "memory_mib_nvidia_smi": g.memory_mib,
            "architecture": g.architecture,
            "compute_capability": g.compute_capability,
            "fp8": g.supports_fp8,
            "price_per_hour_usd": g.price_per_hour_usd,
            "resource": g.resource,
        }
        for g in GPU_CATALOG
    ]
    if args.json:
        console.print_json(json.dumps(rows))
        return
    table = Table(title="Built-in GPU catalog (memory as CUDA sees it; prices are defaults you can override)")
    for column in ("name", "GFD product", "GiB", "arch", "cc", "fp8", "$/GPU-h"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["name"]),
            str(r["products"][0]),
            f"{r['memory_gib']:.2f}",
            str(r["architecture"]),
            str(r["compute_capability"]),
            "yes" if r["fp8"] else "no",
            f"{r['price_per_hour_usd']:.2f}",
        )
    console.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autoparallel", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    plan = commands.add_parser("plan", help="rank TP/PP/EP/DP configurations for a model on a cluster")
    _add_planner_flags(plan)
    _add_cluster_flags(plan)
    plan.add_argument("--objective", choices=OBJECTIVES, default="minimize_gpus")
    plan.add_argument("--max-configs", type=int, default=5)
    plan.add_argument("--explain", action="store_true", help="also list every rejected candidate and why")
    plan.set_defaults(handler=_plan)
    memory = commands.add_parser("memory", help="memory a model needs on one GPU")
    _add_planner_flags(memory)
    memory.set_defaults(handler=_memory)
    cost = commands.add_parser("cost", help="monthly cost of the cheapest configuration")
    _add_planner_flags(cost)
    _add_cluster_flags(cost)
    cost.add_argument("--hours-per-month", type=float, default=730)
    cost.add_argument("--price", action="append", help="price override GPU=USD per GPU-hour (repeatable)")
    cost.set_defaults(handler=_cost)
    gpus = commands.add_parser("gpus", help="list the built-in GPU catalog")
    gpus.add_argument("--json", action="store_true")
    gpus.set_defaults(handler=_gpus)
    add_operator_parser(commands)
    add_tp_analyze_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "operator":
        args.handler(args)
        return 0
    console = Console(soft_wrap=bool(getattr(args, "json", False)), width=None if sys.stdout.isatty() else 160)
    handler: Callable[[argparse.Namespace, Console], None] = args.handler
    try:
        handler(args, console)
    except ModelNotFoundError as error:
        print(f"autoparallel: error: {error}", file=sys.stderr)
        return EXIT_MODEL_NOT_FOUND
    except InsufficientMemoryError as error:
        print(f"autoparallel: error: {error}", file=sys.stderr)
        return EXIT_INSUFFICIENT_MEMORY
    except AutoParallelError as error:
        print(f"autoparallel: error: {error}", file=sys.stderr)
        return EXIT_INVALID
    return 0


if __name__ == "__main__":
    sys.exit(main())
