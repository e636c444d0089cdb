"""When each ParallelDeployment of a namespace was first seen Planned, from a watch in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from bench.operator.base import BenchError
from bench.operator.cluster import GROUP, PLURAL, VERSION


def planned_condition(obj: dict[str, Any]) -> dict[str, Any] | None:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == "Planned":
            return dict(condition)
    return None


class PlannedWatch:
    """Watches one namespace's ParallelDeployments from a thread and records when each was first seen with
    Planned=True (and the last Planned=False reason, for error messages)."""

    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace
        self.planned: dict[str, float] = {}
        self.not_planned: dict[str, str] = {}
        self.changed = threading.Condition()
        self.failure: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{namespace}", daemon=True)

    def __enter__(self) -> PlannedWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stopping.set()
        self._thread.join(timeout=20)

    def _see(self, obj: dict[str, Any], seen: float) -> None:
        name = obj["metadata"]["name"]
        condition = planned_condition(obj)
        with self.changed:
            if condition and condition.get("status") == "True":
                if name not in self.planned:
                    self.planned[name] = seen
                    self.changed.notify_all()
            elif condition:
                self.not_planned[name] = f"{condition.get('reason')}: {condition.get('message')}"

    def _run(self) -> None:
        version: str | None = None
        errors = 0
        while not self._stopping.is_set():
            try:
                if version is None:
                    listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL)
                    seen = time.monotonic()
                    for item in listing["items"]:
                        self._see(item, seen)
                    version = listing["metadata"]["resourceVersion"]
                stream = watch.Watch()
                for event in stream.stream(
                    self.custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    self.namespace,
                    PLURAL,
                    resource_version=version,
                    timeout_seconds=5,  # return regularly to notice the end of the run
                ):
                    if event["type"] == "ERROR":
                        version = None  # expired: list again
                        break
                    obj = event["object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "DELETED":
                        self._see(obj, time.monotonic())
                    if self._stopping.is_set():
                        stream.stop()
                errors = 0
            except ApiException as error:
                version = None
                if error.status != 410:  # 410 Gone: the resource version expired; list again at once
                    errors += 1
                    if not self._retry(error, errors):
                        return
            except Exception as error:  # noqa: BLE001  (reported to the waiting thread, which raises it)
                version = None
                errors += 1
                if not self._retry(error, errors):
                    return

    def _retry(self, error: BaseException, errors: int) -> bool:
        """Back off before the next attempt (1 s, 2 s, ...); after 5 failures in a row give up and report."""
        if errors > 5:
            self._fail(error)
            return False
        self._stopping.wait(float(errors))  # retry backoff
        return True

    def _fail(self, error: BaseException) -> None:
        with self.changed:
            self.failure = error
            self.changed.notify_all()

    def wait_planned(self, names: Sequence[str], timeout: float, alive: Callable[[], None]) -> dict[str, float]:
        """When each of ``names`` was first seen Planned; fails when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                if self.failure is not None:
                    raise BenchError(f"watching {self.namespace} failed: {self.failure}") from self.failure
                missing = [name for name in names if name not in self.planned]
                if not missing:
                    return {name: self.planned[name] for name in names}
                left = deadline - time.monotonic()
                if left <= 0:
                    reasons = [f"{n} ({self.not_planned.get(n, 'no Planned condition yet')})" for n in missing[:5]]
                    raise BenchError(
                        f"timed out after {timeout:.0f} s: {len(missing)} of {len(names)} ParallelDeployments in "
                        f"{self.namespace} not Planned, e.g. {'; '.join(reasons)}"
                    )
                alive()
                self.changed.wait(timeout=min(left, 1.0))
