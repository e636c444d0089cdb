"""The whole status of a ParallelDeployment, derived in one pure function from what reconcile observed.

``derive_status(previous, facts)`` is the only place conditions are decided. Each condition type is a rule in
``RULES``: a function of the facts and the already-derived plan fields that returns (status, reason, message).
Reconcile does the I/O (read the indexes, plan, apply children) and patches what this returns — only where it
differs from the stored status, and ``lastTransitionTime`` moves only when a condition's status flips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from autoparallel.controller.feedback import PodProblem
from autoparallel.controller.models import (
    ConditionStatus,
    Measured,
    OutOfMemoryRecord,
    ParallelDeploymentSpec,
    ParallelDeploymentStatus,
    PlanStatus,
    PoolInventory,
    Replicas,
    WorkloadType,
)
from autoparallel.controller.planning import PlanFailure, PlanResult
from autoparallel.controller.render.cache import COMPONENT_DOWNLOAD, download_subject
from autoparallel.controller.status import (
    DEGRADED,
    PLANNED,
    READY,
    ChildReadiness,
    get_condition,
    readiness_condition,
    replicas,
    set_condition,
)

Verdict = tuple[ConditionStatus, str, str]
"""(status, reason, message) of one condition."""


@dataclass(frozen=True)
class Facts:
    """What one reconcile observed and decided: the inputs of :func:`derive_status`."""

    generation: int | None
    now: str
    spec: ParallelDeploymentSpec | None
    """None when the stored spec is invalid (``outcome`` then says why)."""
    outcome: PlanResult | PlanFailure | None = None
    """A new plan, a failure to plan, or None: the stored plan stands (a resync that kept it)."""
    inventory: tuple[PoolInventory, ...] | None = None
    """The pools planned against, when planning ran."""
    children: Sequence[ChildReadiness] = ()
    problems: Sequence[PodProblem] = ()
    """Pods that cannot run, with the reason."""
    measured: Measured | None = None
    """A new report of vLLM's KV cache for the current plan (None: the stored one stands)."""
    out_of_memory: Sequence[OutOfMemoryRecord] | None = None
    """The plans vLLM ran out of memory on, when that changed (None: the stored list stands)."""


@dataclass(frozen=True)
class _Derived:
    """The facts together with the plan fields already derived (what the condition rules read)."""

    facts: Facts
    planned: Verdict
    plan: PlanStatus | None
    desired: int = 0
    counts: Replicas = field(default_factory=Replicas)


def _planned(facts: Facts, previous: ParallelDeploymentStatus) -> Verdict:
    outcome = facts.outcome
    if isinstance(outcome, PlanFailure):
        return ConditionStatus.FALSE, outcome.reason, outcome.message
    if isinstance(outcome, PlanResult):
        reason = "PlanOnly" if facts.spec is not None and facts.spec.plan_only else "Planned"
        return ConditionStatus.TRUE, reason, outcome.status.reason
    stored = get_condition(previous.conditions, PLANNED)
    if stored is None:
        return ConditionStatus.UNKNOWN, "Planning", "the operator has not planned this generation yet"
    return stored.status, stored.reason, stored.message


def _serving(derived: _Derived) -> bool:
    return derived.planned[0] == ConditionStatus.TRUE and derived.plan is not None and derived.facts.spec is not None


def _workloads(children: Sequence[ChildReadiness]) -> list[ChildReadiness]:
    return [c for c in children if c.component != COMPONENT_DOWNLOAD]


def _model_cached(derived: _Derived) -> Verdict | None:
    """Whether the weight cache holds the model and dataset (only when a download Job prefetches them): that Job's
    state."""
    spec = derived.facts.spec
    if spec is None or spec.plan_only or not spec.prefetched:
        return None
    subject = download_subject(spec)
    job = next((c for c in derived.facts.children if c.component == COMPONENT_DOWNLOAD), None)
    if job is None:
        return ConditionStatus.FALSE, "Downloading", f"the download Job of {subject} is being created"
    if job.complete:
        return ConditionStatus.TRUE, "Cached", f"in the cache: {subject} (Job {job.name} completed)"
    if job.failed:
        return ConditionStatus.FALSE, "DownloadFailed", f"Job {job.name} failed to download {subject}: {job.message}"
    return ConditionStatus.FALSE, "Downloading", f"Job {job.name} is downloading {subject} into the cache"


def _ready(derived: _Derived, decided: dict[str, Verdict | None]) -> Verdict:
    facts = derived.facts
    if not _serving(derived):
        return ConditionStatus.FALSE, derived.planned[1], derived.planned[2]
    assert facts.spec is not None and derived.plan is not None
    if facts.spec.plan_only:
        return ConditionStatus.FALSE, "PlanOnly", "spec.planOnly is set: nothing is created"
    verdict = readiness_condition(derived.desired, _workloads(facts.children), derived.plan.hash)
    problems = [p for p in facts.problems if p.plan_hash in (None, derived.plan.hash)]  # not an older plan's
    if verdict[0] != ConditionStatus.TRUE and problems:
        pod = min(problems, key=lambda p: (p.reason == "Unschedulable", p.name))  # a missing Secret first
        return ConditionStatus.FALSE, pod.reason, f"pod {pod.name}: {pod.message}{FIXES.get(pod.reason, '')}"
    cached = decided.get(MODEL_CACHED)
    if cached is not None and cached[0] != ConditionStatus.TRUE:
        return ConditionStatus.FALSE, cached[1], f"{cached[2]}; serving pods start once it is cached"
    return verdict


FIXES = {
    "SecretNotFound": "; create the Secret (kubectl create secret generic NAME --from-literal=KEY=VALUE) in this "
    "namespace, or fix spec.model.tokenSecretRef / the env references",
    "OutOfMemory": "; the plan stays (its parallel degrees are pinned, or spec.serving.outOfMemoryFallbacks are "
    "used up): unpin spec.parallelism, lower spec.workload.sequenceLength or use larger GPUs",
}
"""What to do, appended to the kubelet's or scheduler's message."""


DEGRADING_REASONS = (
    "Failed",
    "Unschedulable",
    "SecretNotFound",
    "ContainerConfigError",
    "DownloadFailed",
    "OutOfMemory",
)
"""Ready reasons that also make the resource Degraded (besides every planning failure)."""


def _degraded(derived: _Derived, ready: Verdict | None) -> Verdict:
    assert ready is not None
    if derived.planned[0] == ConditionStatus.FALSE:
        return ConditionStatus.TRUE, derived.planned[1], derived.planned[2]
    if ready[1] in DEGRADING_REASONS:
        return ConditionStatus.TRUE, ready[1], ready[2]
    return ConditionStatus.FALSE, "AsPlanned", "the plan is being served as planned"


MODEL_CACHED = "ModelCached"

RULES: tuple[tuple[str, Callable[[_Derived, dict[str, Verdict | None]], Verdict | None]], ...] = (
    (MODEL_CACHED, lambda derived, _: _model_cached(derived)),
    (READY, _ready),
    (DEGRADED, lambda derived, decided: _degraded(derived, decided[READY])),
)
"""Conditions after ``Planned``, in order; each rule sees the verdicts decided before it; None: the condition
does not apply (and is removed)."""


def _desired(spec: ParallelDeploymentSpec | None, plan: PlanStatus | None) -> int:
    if spec is None or plan is None or spec.plan_only:
        return 0
    return 1 if spec.workload.type == WorkloadType.TRAINING else plan.data


def derive_status(previous: ParallelDeploymentStatus, facts: Facts) -> ParallelDeploymentStatus:
    """The whole new status: plan fields from the outcome, then every condition by its rule."""
    updates: dict[str, object] = {}
    if facts.outcome is not None:
        updates["observed_generation"] = facts.generation
    if facts.inventory is not None:
        updates["inventory"] = list(facts.inventory)
    plan = facts.outcome.status if isinstance(facts.outcome, PlanResult) else previous.plan
    measured = facts.measured or previous.measured
    if measured is not None and (plan is None or measured.plan_hash != plan.hash):
        measured = None  # a report about an older plan
    updates["measured"] = measured
    if facts.out_of_memory is not None:
        updates["out_of_memory"] = list(facts.out_of_memory)
    if isinstance(facts.outcome, PlanResult):
        updates["plan"] = facts.outcome.status
        updates["candidates"] = list(facts.outcome.candidates)
    status = previous.model_copy(update=updates)
    planned = _planned(facts, previous)
    derived = _Derived(facts, planned, status.plan)
    if _serving(derived) and not (facts.spec is not None and facts.spec.plan_only):
        desired = _desired(facts.spec, status.plan)
        counts = replicas(_workloads(facts.children), status.plan.hash if status.plan else None)
        derived = _Derived(facts, planned, status.plan, desired, counts.model_copy(update={"desired": desired}))
        status = status.model_copy(update={"replicas": derived.counts})
    elif _serving(derived):
        status = status.model_copy(update={"replicas": Replicas()})
    decided: dict[str, Verdict | None] = {PLANNED: planned}
    for type_, rule in RULES:
        decided[type_] = rule(derived, decided)
    conditions = [c for c in status.conditions if decided.get(c.type, c) is not None]
    for type_, verdict in decided.items():
        if verdict is not None:
            value, reason, message = verdict
            conditions = set_condition(conditions, type_, value, reason, message, facts.generation, facts.now)
    return status.model_copy(update={"conditions": conditions})
