"""``autoparallel operator run``: start the operator (kopf) against ``KUBECONFIG`` or the in-cluster config."""

from __future__ import annotations

import argparse
import contextlib
import http.server
import os
import socket
import threading
from collections.abc import Iterator
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
        if kind is bool:
            run.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=f"(default {value})")
            continue
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
    if not config.leader_elect:
        _run_kopf(args, liveness)
        return
    from autoparallel.controller import k8s
    from autoparallel.controller.k8s_lease import LeaseElector

    k8s.configure_client()
    elector = LeaseElector(
        config.leader_election_namespace, config.leader_election_name, f"{socket.gethostname()}_{os.getpid()}"
    )
    with standby_health(config.liveness_port):  # a standby is alive: probes must not restart it
        elector.acquire()
    # A leader that cannot renew stops at once, before a standby that took over could act beside it.
    elector.hold(on_lost=lambda: os._exit(LOST_LEADERSHIP_EXIT_CODE))
    try:
        _run_kopf(args, liveness)
    finally:
        elector.release()


LOST_LEADERSHIP_EXIT_CODE = 3


def _run_kopf(args: argparse.Namespace, liveness: str | None) -> None:
    import kopf

    kopf.run(
        standalone=True,
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        liveness_endpoint=liveness,
    )


class _Healthy(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"standby\n")

    def log_message(self, format: str, *args: object) -> None:  # probes every few seconds: not worth a line
        return


@contextlib.contextmanager
def standby_health(port: int) -> Iterator[None]:
    """Answer ``/healthz`` on ``port`` while this replica waits for the Lease (kopf serves it once leading)."""
    if not port:
        yield
        return
    server = http.server.ThreadingHTTPServer(("0.0.0.0", port), _Healthy)
    thread = threading.Thread(target=server.serve_forever, name="standby-health", daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
