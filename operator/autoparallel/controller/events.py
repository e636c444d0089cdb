"""The Events the operator posts on a ParallelDeployment: one per change of plan or condition, never one per
resync."""

from __future__ import annotations

import kopf

from autoparallel.controller import k8s
from autoparallel.controller.models import ConditionStatus, ParallelDeploymentStatus
from autoparallel.controller.status import DEGRADED, PLANNED, get_condition


async def event_once(
    body: kopf.Body,
    old: ParallelDeploymentStatus,
    new: ParallelDeploymentStatus,
    kind: str,
    reason: str,
    message: str,
) -> None:
    """Post an Event when the Planned condition or the plan changed — not on every resync."""
    before, after = get_condition(old.conditions, PLANNED), get_condition(new.conditions, PLANNED)
    plan_changed = (old.plan.hash if old.plan else None) != (new.plan.hash if new.plan else None)
    condition_changed = (
        before is None or after is None or (before.reason, before.message) != (after.reason, after.message)
    )
    if plan_changed or condition_changed:
        await k8s.post_event(body, kind, reason, message)


async def warn_on_degradation(body: kopf.Body, old: ParallelDeploymentStatus, new: ParallelDeploymentStatus) -> None:
    """A Warning Event when the resource turns Degraded for a new reason (a missing Secret, a failed Job …)."""
    before, after = get_condition(old.conditions, DEGRADED), get_condition(new.conditions, DEGRADED)
    if after is None or after.status != ConditionStatus.TRUE:
        return
    if before is None or (before.status, before.reason) != (after.status, after.reason):
        await k8s.post_event(body, "Warning", after.reason, after.message)
