"""Status of a ParallelDeployment: conditions in the Kubernetes convention and readiness of its children.

Pure. A condition's ``lastTransitionTime`` moves only when its status flips, so a reconcile that finds
nothing new computes an identical status and writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from autoparallel.controller.models import Condition, ConditionStatus, ParallelDeploymentStatus, Replicas

PLANNED = "Planned"
READY = "Ready"
DEGRADED = "Degraded"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str,
) -> list[Condition]:
    """``conditions`` with ``type_`` set; the transition time is kept unless the status changes."""
    previous = next((c for c in conditions if c.type == type_), None)
    transition = previous.last_transition_time if previous and previous.status == status else timestamp
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=transition,
    )
    others = [c for c in conditions if c.type != type_]
    return sorted([*others, updated], key=lambda c: (c.type != PLANNED, c.type != READY, c.type))


def get_condition(conditions: Iterable[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


@dataclass(frozen=True)
class ChildReadiness:
    """Readiness of one child workload (Deployment, StatefulSet, LeaderWorkerSet or Job), from its status."""

    kind: str
    name: str
    replicas: int
    """Serving replicas (Deployment, LeaderWorkerSet groups) or 1 for a StatefulSet group / Job."""
    ready: int
    failed: bool = False
    plan_hash: str | None = None
    component: str = ""
    """``app.kubernetes.io/component``: inference, training or model-download."""
    complete: bool = False
    """A Job that finished successfully."""
    message: str = ""
    """Why a Job failed (its Failed condition's message)."""


def child_readiness(body: Mapping[str, Any]) -> ChildReadiness | None:
    """What a child's status says about readiness; None for kinds that carry none (Services)."""
    kind = body.get("kind", "")
    meta = body.get("metadata", {})
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    plan_hash = (meta.get("annotations") or {}).get("autoparallel.io/plan-hash")
    component = (meta.get("labels") or {}).get("app.kubernetes.io/component", "")
    if kind == "Deployment":
        desired = int(spec.get("replicas", 1))
        ready = min(desired, int(status.get("readyReplicas") or 0))
        return ChildReadiness(kind, meta["name"], desired, ready, plan_hash=plan_hash, component=component)
    if kind == "StatefulSet":  # one multi-node replica: ready when all its pods are
        desired = int(spec.get("replicas", 1))
        ready = int(int(status.get("readyReplicas") or 0) >= desired)
        return ChildReadiness(kind, meta["name"], 1, ready, plan_hash=plan_hash, component=component)
    if kind == "LeaderWorkerSet":  # one group per replica, ready when all its pods are (LWS counts them)
        desired = int(spec.get("replicas", 1))
        # Groups both ready and of the current template: during a rollout, old groups still count as ready.
        ready = min(desired, int(status.get("readyReplicas") or 0), int(status.get("updatedReplicas") or 0))
        return ChildReadiness(kind, meta["name"], desired, ready, plan_hash=plan_hash, component=component)
    if kind == "Job":
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        parallelism = int(spec.get("parallelism", 1))
        running = int(status.get("ready") or 0) >= parallelism
        complete = (conditions.get("Complete") or {}).get("status") == "True"
        failed = conditions.get("Failed") or {}
        return ChildReadiness(
            kind,
            meta["name"],
            1,
            int(running or complete),
            failed=failed.get("status") == "True",
            plan_hash=plan_hash,
            component=component,
            complete=complete,
            message=str(failed.get("message") or failed.get("reason") or ""),
        )
    return None


def replicas(children: Iterable[ChildReadiness], plan_hash: str | None) -> Replicas:
    """Desired and ready replicas over the children of the current plan."""
    current = [c for c in children if plan_hash is None or c.plan_hash == plan_hash]
    return Replicas(desired=sum(c.replicas for c in current), ready=sum(c.ready for c in current))


def readiness_condition(
    desired: int, children: Sequence[ChildReadiness], plan_hash: str | None
) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the Ready condition."""
    counts = replicas(children, plan_hash)
    if any(c.failed for c in children):
        failed = ", ".join(f"{c.kind}/{c.name}" for c in children if c.failed)
        return ConditionStatus.FALSE, "Failed", f"{failed} failed"
    if desired and counts.desired >= desired and counts.ready >= desired:
        return ConditionStatus.TRUE, "Ready", f"{counts.ready}/{desired} replicas ready"
    return ConditionStatus.FALSE, "RollingOut", f"{counts.ready}/{desired} replicas ready"


def status_body(status: ParallelDeploymentStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase, no nulls)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)
