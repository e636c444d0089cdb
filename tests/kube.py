"""Helpers for tests that run against a real Kubernetes API server (the `kube_cluster` fixture).

`wait_for` is the only way tests wait: it polls a condition until a deadline and, when the deadline
passes, fails with what was awaited and what was last observed, instead of sleeping a fixed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes import client, config
from kubernetes.client import ApiException

T = TypeVar("T")

# Errors a predicate may raise while the awaited state is not there yet: the object does not exist
# yet (404), a conflict, the API server briefly unreachable.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (ApiException, urllib3.exceptions.HTTPError)
UNREACHABLE: tuple[type[BaseException], ...] = (*TRANSIENT_ERRORS, OSError)


class WaitTimeout(AssertionError):
    """The awaited condition did not hold before the deadline."""


def wait_for(
    predicate: Callable[[], T],
    *,
    timeout: float = 60.0,
    interval: float = 0.25,
    description: str,
    observe: Callable[[], object] | None = None,
    retry_on: tuple[type[BaseException], ...] = TRANSIENT_ERRORS,
) -> T:
    """Call `predicate` every `interval` seconds until it returns a truthy value, and return that value.

    Fails with `WaitTimeout` after `timeout` seconds, naming `description` (what was awaited), the
    predicate's last return value or the last exception it raised (exceptions in `retry_on` count as
    "not yet"), and, when given, what `observe()` reports about the current state.
    """
    deadline = time.monotonic() + timeout
    last: object = "<never evaluated>"
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last = f"{type(exc).__name__}: {_short_error(exc)}"
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            message = f"timed out after {timeout:g} s waiting for {description}; last observed: {last!r}"
            if observe is not None:
                try:
                    message += f"; current state: {observe()!r}"
                except retry_on as exc:
                    message += f"; current state unavailable ({_short_error(exc)})"
            raise WaitTimeout(message)
        time.sleep(interval)


def _short_error(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return str(exc)[:300]


def is_not_found(exc: ApiException) -> bool:
    return bool(exc.status == 404)


def gone(read: Callable[[], object]) -> Callable[[], bool]:
    """A predicate for `wait_for`: true once `read()` answers 404 Not Found."""

    def predicate() -> bool:
        try:
            read()
        except ApiException as exc:
            if is_not_found(exc):
                return True
            raise
        return False

    return predicate


def reachable(kubeconfig: str, timeout: float = 5.0) -> bool:
    """Whether the cluster of `kubeconfig` (a path, or a KUBECONFIG-style list) answers /version."""
    try:
        api = config.new_client_from_config(config_file=kubeconfig)
    except (config.ConfigException, OSError, ValueError):
        return False
    try:
        client.VersionApi(api).get_code(_request_timeout=timeout)
    except UNREACHABLE:
        return False
    finally:
        api.close()
    return True


@dataclass
class KubeCluster:
    """A reachable cluster: its kubeconfig and typed API clients on it."""

    kubeconfig: str
    started_here: bool
    api_client: client.ApiClient = field(repr=False)

    @classmethod
    def connect(cls, kubeconfig: str, *, started_here: bool) -> KubeCluster:
        return cls(kubeconfig, started_here, config.new_client_from_config(config_file=kubeconfig))

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    def close(self) -> None:
        self.api_client.close()


def pod_state(pod: Any) -> dict[str, Any]:
    """What a test wants to see about a pod in a failure message."""
    status = pod.status
    return {
        "phase": status.phase if status else None,
        "node": pod.spec.node_name,
        "deleting": pod.metadata.deletion_timestamp is not None,
        "conditions": {c.type: f"{c.status} {c.reason or ''}".strip() for c in (status.conditions or [])}
        if status
        else {},
    }


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
