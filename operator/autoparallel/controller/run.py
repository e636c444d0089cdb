"""``autoparallel operator run``: start the operator (kopf) against ``KUBECONFIG`` or the in-cluster config."""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from autoparallel.controller.config import OperatorConfig


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    operator = commands.add_parser("operator", help="run the ParallelDeployment operator")
    actions = operator.add_subparsers(dest="operator_command", required=True)
    run = actions.add_parser("run", help="watch ParallelDeployments and reconcile them")
    scope = run.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    defaults = OperatorConfig.from_env()  # AUTOPARALLEL_* variables set the defaults, flags override them
    for field in fields(OperatorConfig):
        flag = "--" + field.name.replace("_", "-")
        value = getattr(defaults, field.name)
        kind = type(value)
        choices = ("plain", "json") if field.name == "log_format" else None
        run.add_argument(flag, type=kind, default=value, choices=choices, help=f"(default {value})")
    run.set_defaults(handler=run_operator)


def run_operator(args: argparse.Namespace) -> None:
    config = OperatorConfig(**{f.name: getattr(args, f.name) for f in fields(OperatorConfig)})
    os.environ.update(config.to_env())  # read by the handlers module when it registers them
    import kopf

    import autoparallel.controller.handlers  # noqa: F401  (registers the handlers)

    kopf.configure(log_format=kopf.LogFormat.JSON if config.log_format == "json" else kopf.LogFormat.FULL)
    liveness = f"http://0.0.0.0:{config.liveness_port}/healthz" if config.liveness_port else None
    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )
