"""Leader election on a ``coordination.k8s.io/v1`` Lease, so that of several operator replicas exactly one acts.

The protocol is client-go's (``tools/leaderelection``): the leader renews ``spec.renewTime`` every
``retry_seconds``; a candidate takes the Lease over once it has seen the same record unchanged for
``lease_seconds`` (measured on its own monotonic clock, so clocks of different nodes need not agree); every write
carries the ``resourceVersion`` it read, so two candidates never both win. A leader that cannot renew for
``renew_deadline_seconds`` stops at once (the process exits and its pod restarts as a candidate): it must not
act after another replica may have taken over. A leader that stops cleanly releases the Lease, and a candidate
takes over on its next try.

Why a Lease and not kopf's peering: peering pauses operators of lower priority, and when peers share a priority
(as the replicas of one Deployment do: one pod template) it pauses *all* of them, itself included, until the
others are gone (kopf 1.45, ``_core/engines/peering.py``): two replicas would both stand still. A Lease is the
Kubernetes-native primitive every controller uses, needs no extra CRD, and ``kubectl get lease`` shows the leader.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import kubernetes
from kubernetes.client.exceptions import ApiException

LOGGER = logging.getLogger("autoparallel.leader")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says: who holds it, when it was renewed, and its version."""

    holder: str
    renew_time: str
    transitions: int
    resource_version: str | None
    acquire_time: str = ""


@dataclass
class Observation:
    """The last Lease record a candidate saw, and when (monotonic seconds) it first saw it."""

    record: LeaseRecord | None = None
    since: float = 0.0

    def update(self, record: LeaseRecord | None, now: float) -> None:
        same = (
            record is not None
            and self.record is not None
            and (record.holder, record.renew_time) == (self.record.holder, self.record.renew_time)
        )
        if not same:
            self.since = now
        self.record = record

    def may_take(self, identity: str, lease_seconds: float, now: float) -> bool:
        """Whether ``identity`` may write the Lease now: it is free, ours, or unrenewed for ``lease_seconds``."""
        record = self.record
        if record is None or not record.holder or record.holder == identity:
            return True
        return now - self.since >= lease_seconds


def _micro_time() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector:
    """Acquire, hold and release the Lease ``namespace/name`` as ``identity``."""

    def __init__(
        self,
        namespace: str,
        name: str,
        identity: str,
        lease_seconds: int = 15,
        renew_deadline_seconds: float = 10.0,
        retry_seconds: float = 2.0,
    ) -> None:
        self.namespace, self.name, self.identity = namespace, name, identity
        self.lease_seconds = lease_seconds
        self.renew_deadline_seconds = renew_deadline_seconds
        self.retry_seconds = retry_seconds
        self._observation = Observation()
        self._api = kubernetes.client.CoordinationV1Api()

    def _read(self) -> LeaseRecord | None:
        try:
            lease = self._api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        spec = lease.spec
        renew = spec.renew_time.isoformat() if spec.renew_time else ""
        acquired = spec.acquire_time.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if spec.acquire_time else ""
        return LeaseRecord(
            spec.holder_identity or "", renew, spec.lease_transitions or 0, lease.metadata.resource_version, acquired
        )

    def _body(self, record: LeaseRecord | None, holder: str) -> dict[str, object]:
        now = _micro_time()
        changed = record is None or record.holder != holder
        # A replace writes the whole object: carry acquireTime and leaseTransitions over unless the holder changes.
        spec: dict[str, object] = {
            "holderIdentity": holder,
            "leaseDurationSeconds": self.lease_seconds,
            "renewTime": now,
            "acquireTime": now if changed or record is None else record.acquire_time or now,
            "leaseTransitions": (record.transitions + 1 if changed else record.transitions) if record else 0,
        }
        metadata: dict[str, object] = {"name": self.name, "namespace": self.namespace}
        if record is not None:
            metadata["resourceVersion"] = record.resource_version
        return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": metadata, "spec": spec}

    def try_acquire_or_renew(self) -> bool:
        """One attempt: True when this process holds the Lease afterwards."""
        try:
            record = self._read()
            self._observation.update(record, time.monotonic())
            if not self._observation.may_take(self.identity, self.lease_seconds, time.monotonic()):
                return False
            body = self._body(record, self.identity)
            if record is None:
                self._api.create_namespaced_lease(self.namespace, body)
            else:
                self._api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as error:
            if error.status == 409:  # another candidate wrote first
                return False
            LOGGER.warning(f"lease {self.namespace}/{self.name}: {error.status} {error.reason}")
            return False
        except OSError as error:
            LOGGER.warning(f"lease {self.namespace}/{self.name}: {error}")
            return False
        return True

    def acquire(self) -> None:
        """Block until this process is the leader."""
        announced = False
        while not self.try_acquire_or_renew():
            if not announced:
                holder = self._observation.record.holder if self._observation.record else "?"
                LOGGER.info(f"standing by: lease {self.namespace}/{self.name} is held by {holder}")
                announced = True
            time.sleep(self.retry_seconds)  # client-go's retry period between attempts
        LOGGER.info(f"became the leader: lease {self.namespace}/{self.name} held by {self.identity}")

    def hold(self, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew in a daemon thread; call ``on_lost`` once renewing has failed for the renew deadline."""

        def renew() -> None:
            last = time.monotonic()
            while True:
                time.sleep(self.retry_seconds)
                if self.try_acquire_or_renew():
                    last = time.monotonic()
                elif time.monotonic() - last >= self.renew_deadline_seconds:
                    LOGGER.error(f"lost the lease {self.namespace}/{self.name}: stopping")
                    on_lost()
                    return

        thread = threading.Thread(target=renew, name="lease-renewal", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up (clean shutdown), so that a standby takes over at its next attempt."""
        try:
            record = self._read()
            if record is not None and record.holder == self.identity:
                self._api.replace_namespaced_lease(self.name, self.namespace, self._body(record, ""))
                LOGGER.info(f"released the lease {self.namespace}/{self.name}")
        except (ApiException, OSError) as error:
            LOGGER.warning(f"releasing the lease {self.namespace}/{self.name}: {error}")
