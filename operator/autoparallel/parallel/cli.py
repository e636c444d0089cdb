"""``autoparallel tp-analyze MODEL``: the tensor-parallel analysis of a model built on the meta device.

torch is imported only when the command runs, so registering it costs the rest of the CLI nothing.
"""

from __future__ import annotations

import argparse
import json

from rich.console import Console

from autoparallel.planner.errors import InvalidConfigurationError
from autoparallel.planner.units import from_gib, to_gib

DEFAULT_MEMORY_BUDGET_GIB = 40.0
"""Mirrors ``tp_analysis.DEFAULT_MEMORY_BUDGET_BYTES`` (kept here so the parser needs no torch)."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "tp-analyze",
        help="tensor-parallel analysis of a model: layer styles, suggested world size, memory per rank",
    )
    parser.add_argument("model", help="catalog id, Hugging Face id, or path to a config.json (built on meta)")
    parser.add_argument("--world-size", type=int, help="world size of the memory estimate (default: the suggested)")
    parser.add_argument("--max-world-size", type=int, default=8, help="largest world size to suggest (default 8)")
    parser.add_argument(
        "--memory-budget-gib",
        type=float,
        default=DEFAULT_MEMORY_BUDGET_GIB,
        help=f"weights per device the suggestion aims at (default {DEFAULT_MEMORY_BUDGET_GIB:g})",
    )
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per pass for the buffer estimate")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the summary")
    parser.set_defaults(handler=run_tp_analyze)


def run_tp_analyze(args: argparse.Namespace, console: Console) -> None:
    try:
        from autoparallel.parallel.tp_analysis import analyze_tp
        from autoparallel.parallel.tp_memory import estimate_tp_memory
    except ImportError as error:  # torch is an optional extra
        raise InvalidConfigurationError(f"tp-analyze needs torch ({error}); install autoparallel[torch]") from error
    from autoparallel.planner.metacount import build_meta_model
    from autoparallel.planner.resolve import resolve_model

    if args.world_size is not None and args.world_size < 1:
        raise InvalidConfigurationError(f"--world-size: must be at least 1 (got {args.world_size})")
    resolved = resolve_model(args.model)
    model = build_meta_model(resolved.config)
    max_world_size = max(args.max_world_size, args.world_size or 0)
    report = analyze_tp(model, max_world_size, memory_budget_bytes=from_gib(args.memory_budget_gib))
    world_size = args.world_size or report.suggested_world_size
    estimate = estimate_tp_memory(report, world_size, tokens=args.tokens)
    if args.json:
        payload = {"model": resolved.model_id, "analysis": report.to_dict(), "memory": estimate.to_dict()}
        console.print_json(json.dumps(payload))
        return
    console.print(f"Model: {resolved.model_id} ({to_gib(report.total_memory_bytes)} GiB of weights)", markup=False)
    console.print(report.summary(), markup=False, highlight=False)
    console.print()
    console.print(estimate.summary(), markup=False, highlight=False)
