"""GPU reservations: a plan holds its GPUs from the moment it is made, not from when its pods bind.

A ParallelDeployment whose ``Planned`` condition is True reserves ``plan.pods`` pods of ``plan.gpusPerPod`` GPUs
on its pool. The reservations are derived from the resources' own status (so an operator that restarts rebuilds
them, and a deleted resource releases its GPUs with its status), and :func:`build_inventory` takes the GPUs of
the pods not yet bound out of the free GPUs other resources plan against.

Between a decision and the watch event that brings its status back, the :class:`Ledger` of the running operator
holds the decision. Planning itself never awaits (the inventory, the plan and the ledger entry are computed in
one step of the event loop), so two resources planned at the same moment never take the same GPUs; between
operator replicas only the leader plans (see :mod:`autoparallel.controller.k8s_lease`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from autoparallel.controller.inventory import Reservation
from autoparallel.controller.models import ConditionStatus, ParallelDeploymentSpec, PlanStatus
from autoparallel.controller.render.common import tolerations


def reservation_for(spec: ParallelDeploymentSpec, plan: PlanStatus, meta: Mapping[str, Any]) -> Reservation | None:
    """What ``plan`` holds for the resource of ``meta``; None with planOnly (nothing is created)."""
    if spec.plan_only:
        return None
    gpus_per_pod = plan.gpus_per_pod or plan.gpus_per_replica
    return Reservation(
        owner_uid=meta["uid"],
        owner=f"{meta['namespace']}/{meta['name']}",
        created=str(meta.get("creationTimestamp") or ""),
        resource=spec.placement.gpu_resource,
        node_selector=tuple(sorted(spec.placement.node_selector.items())),
        tolerations=tuple(tuple(sorted(t.items())) for t in tolerations(spec)),
        gpu_type=plan.gpu_type,
        gpus_per_pod=gpus_per_pod,
        pods=plan.pods or max(1, plan.gpus // gpus_per_pod),
        plan_hash=plan.hash,
    )


def reservation_of(body: Mapping[str, Any]) -> Reservation | None:
    """The reservation a ParallelDeployment's stored status records (Planned=True with a plan), if any."""
    status = body.get("status") or {}
    planned = next((c for c in status.get("conditions") or [] if c.get("type") == "Planned"), None)
    if not planned or planned.get("status") != ConditionStatus.TRUE or not status.get("plan"):
        return None
    try:
        spec = ParallelDeploymentSpec.model_validate(body.get("spec") or {})
        plan = PlanStatus.model_validate(status["plan"])
    except ValidationError:
        return None  # a status of another operator version, or a spec the API server let through: holds nothing
    return reservation_for(spec, plan, body["metadata"])


class Ledger:
    """This operator's latest planning decision per resource, until the resource's status catches up."""

    def __init__(self) -> None:
        self._decisions: dict[str, Reservation | None] = {}

    def record(self, owner_uid: str, reservation: Reservation | None) -> None:
        """A plan was made (``reservation``) or refused (None) for ``owner_uid``."""
        self._decisions[owner_uid] = reservation

    def forget(self, owner_uid: str) -> None:
        self._decisions.pop(owner_uid, None)

    def merged(self, stored: Mapping[str, Reservation | None]) -> list[Reservation]:
        """The reservations of the resources that exist (``stored``: uid → what their status records), where
        this operator's own newer decisions win."""
        for uid in [uid for uid in self._decisions if uid not in stored]:
            del self._decisions[uid]  # the resource is gone
        merged = {**stored, **self._decisions}
        return [reservation for reservation in merged.values() if reservation is not None]
