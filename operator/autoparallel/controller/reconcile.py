"""Reconciliation of one ParallelDeployment: validate → inventory → plan → render → apply → status.

``reconcile`` runs on create, update (a spec change) and resume: it always plans anew. ``resync`` runs on a
timer: it keeps the current plan while that plan still fits the inventory (so it never flaps), replans when
it does not (a node lost, GPUs taken by others), retries failed plans, and refreshes readiness. Both compute
the whole status and patch it once, only when it changed; unchanged plans apply nothing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import kopf
import urllib3
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from autoparallel.controller import capabilities, k8s, metrics
from autoparallel.controller.capabilities import OPTIONAL_CRDS
from autoparallel.controller.config import OperatorConfig
from autoparallel.controller.derive import Facts, derive_status
from autoparallel.controller.events import event_once, warn_on_degradation
from autoparallel.controller.feedback import Endpoint, PodProblem, failed_plan, oom_record, pinned, recorded_for
from autoparallel.controller.inventory import (
    Inventory,
    NodeGPUs,
    PodGPUs,
    Reservation,
    build_inventory,
)
from autoparallel.controller.kinds import BY_KIND, CAPABILITY_KINDS
from autoparallel.controller.measure import measure
from autoparallel.controller.models import (
    ConditionStatus,
    OutOfMemoryRecord,
    ParallelDeploymentSpec,
    ParallelDeploymentStatus,
    PlanStatus,
    ServingSpec,
)
from autoparallel.controller.plan import Owner
from autoparallel.controller.planning import (
    LWS_CRD,
    PlanFailure,
    PlanResult,
    backend_changed,
    inventory_status,
    plan_deployment,
)
from autoparallel.controller.render import LABEL_COMPONENT, render_children, render_integrations
from autoparallel.controller.render.cache import COMPONENT_DOWNLOAD, download_job_name
from autoparallel.controller.render.common import tolerations
from autoparallel.controller.render.overrides import PodTemplateConflict
from autoparallel.controller.reservations import Ledger, reservation_for
from autoparallel.controller.status import PLANNED, ChildReadiness, get_condition, now, status_body
from autoparallel.planner.search import placement

REPLACE_RETRY_SECONDS = 2

CONFIG = OperatorConfig.from_env()
"""This operator's settings (flags of ``autoparallel operator run``, or ``AUTOPARALLEL_*`` variables)."""
PRICES = CONFIG.prices()
"""GPU price overrides of this operator (``--gpu-prices`` / ``AUTOPARALLEL_GPU_PRICES``)."""
LEDGER = Ledger()
"""This operator's planning decisions not yet visible in the resources' status (see :mod:`reservations`)."""
INTEGRATIONS_APPLIED: dict[str, frozenset[str]] = {}
"""Per resource (uid), the served CRDs its optional children were last applied for: a CRD installed later
(e.g. the Prometheus Operator's) gets the children of the existing resources without a watch on that kind."""


@dataclass(frozen=True)
class Snapshot:
    """What the operator's indexes know when a handler runs."""

    nodes: Sequence[NodeGPUs]
    pods: Sequence[PodGPUs]
    children: Sequence[ChildReadiness]
    problems: Sequence[PodProblem]
    reservations: Mapping[str, Reservation | None]
    """Every ParallelDeployment (uid) with the reservation its stored status records."""
    own_pods: Sequence[PodGPUs] = ()
    """This resource's bound pods."""
    schedulable_nodes: frozenset[str] = frozenset()
    """Names of the Ready, uncordoned GPU nodes."""
    served: frozenset[str] = frozenset()
    """The optional integrations' CRDs the API server serves (:mod:`capabilities`)."""
    endpoints: Sequence[Endpoint] = ()
    """This resource's ready vLLM servers."""


def _current_status(body: kopf.Body) -> ParallelDeploymentStatus:
    raw = {
        k: v
        for k, v in (body.get("status") or {}).items()
        if k in ParallelDeploymentStatus.model_fields
        or k in {f.alias for f in ParallelDeploymentStatus.model_fields.values()}
    }
    try:
        return ParallelDeploymentStatus.model_validate(raw)
    except ValidationError:  # written by an older operator version: start afresh
        return ParallelDeploymentStatus()


def _inventory(spec: ParallelDeploymentSpec, snapshot: Snapshot, uid: str) -> Inventory:
    """The pools ``spec`` may use: free GPUs minus what other resources' plans hold (bound or reserved)."""
    return build_inventory(
        snapshot.nodes,
        snapshot.pods,
        spec.placement.gpu_resource,
        spec.placement.node_selector,
        owner_uid=uid,
        tolerations=tolerations(spec),
        reservations=LEDGER.merged(snapshot.reservations),
    )


def _cache_filled_since(spec: ParallelDeploymentSpec, plan: PlanStatus, snapshot: Snapshot, body: kopf.Body) -> bool:
    """The download Job completed and the plan's workloads do not exist yet: time to create them."""
    if spec.plan_only or not spec.prefetched:
        return False
    owner = _owner(body)
    has_workloads = any(c.plan_hash == plan.hash and c.component != COMPONENT_DOWNLOAD for c in snapshot.children)
    return not has_workloads and _model_cached(spec, owner, snapshot)


def _bound_as_planned(plan: PlanStatus, snapshot: Snapshot) -> bool:
    """Whether every pod of the plan is bound to a schedulable node: then it fits, with no inventory to build
    (the common case of a resync, and the one that must stay cheap with thousands of resources)."""
    bound = [pod for pod in snapshot.own_pods if pod.plan_hash == plan.hash]
    return (
        bool(plan.pods)
        and len(bound) >= (plan.pods or 0)
        and all(pod.node in snapshot.schedulable_nodes for pod in bound)
    )


def _still_fits(plan: PlanStatus, inventory: Inventory) -> bool:
    """Whether the pool of the current plan can still hold all its replicas (our own GPUs count as free)."""
    pool = next((p for p in inventory.pools if p.name == plan.pool), None)
    if pool is None:
        return False
    capacity, _ = placement(pool, plan.gpus_per_replica)
    return capacity >= plan.data


def _facts(body: kopf.Body, snapshot: Snapshot, spec: ParallelDeploymentSpec | None, **decided: Any) -> Facts:
    return Facts(
        generation=body["metadata"].get("generation"),
        now=now(),
        spec=spec,
        children=snapshot.children,
        problems=snapshot.problems,
        **decided,
    )


def _patch(body: kopf.Body, patch: kopf.Patch, status: ParallelDeploymentStatus) -> None:
    """Put into ``patch`` the top-level status fields that differ from the stored status."""
    new = status_body(status)
    old = body.get("status") or {}
    for key, value in new.items():
        if old.get(key) != value:
            patch.status[key] = value


def _parse_spec(body: kopf.Body) -> ParallelDeploymentSpec | PlanFailure:
    try:
        return ParallelDeploymentSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return PlanFailure("InvalidSpec", f"spec.{where}: {first['msg']}")


def _of_the_plan(manifest: Mapping[str, Any]) -> bool:
    """A workload rendered for the plan, of a kind the operator indexes (not a Service, not the weight cache's
    PVC or download Job, not an integration's object)."""
    component = manifest["metadata"].get("labels", {}).get(LABEL_COMPONENT)
    return BY_KIND[manifest["kind"]].watched and component != COMPONENT_DOWNLOAD


def _model_cached(spec: ParallelDeploymentSpec, owner: Owner, snapshot: Snapshot) -> bool:
    """Whether serving pods may start: no prefetch asked, or its download Job completed."""
    if not spec.prefetched:
        return True
    name = download_job_name(spec, owner)
    return any(c.kind == "Job" and c.name == name and c.complete for c in snapshot.children)


def _owner(body: kopf.Body) -> Owner:
    meta = body["metadata"]
    return Owner(name=meta["name"], namespace=meta["namespace"], uid=meta["uid"])


async def _sync(
    manifests: list[dict[str, Any]],
    owner: Owner,
    prune: bool,
    served: frozenset[str],
    unchanged: frozenset[tuple[str, str]] = frozenset(),
    kinds: frozenset[str] | None = None,
) -> list[str]:
    try:
        deleted = await k8s.sync_children(manifests, owner.namespace, owner.uid, prune, served, unchanged, kinds)
    except k8s.ChildReplacing as waiting:
        raise kopf.TemporaryError(str(waiting), delay=REPLACE_RETRY_SECONDS) from waiting
    except ApiException as error:
        raise kopf.TemporaryError(f"applying children failed: {error.status} {error.reason}", delay=10) from error
    INTEGRATIONS_APPLIED[owner.uid] = served
    return deleted


def _render(
    result: PlanResult, spec: ParallelDeploymentSpec, owner: Owner, snapshot: Snapshot
) -> list[dict[str, Any]] | PlanFailure:
    """The children of the plan, or why spec.podTemplate contradicts it."""
    if spec.plan_only:
        return []
    try:
        cached = _model_cached(spec, owner, snapshot)
        return render_children(result.plan, spec, owner, cached, snapshot.served, CONFIG.training_image)
    except PodTemplateConflict as conflict:
        return PlanFailure("PodTemplateConflict", str(conflict))


async def _apply(result: PlanResult, manifests: list[dict[str, Any]], owner: Owner, snapshot: Snapshot) -> list[str]:
    plan_hash = result.plan.plan_hash
    workloads = {(m["kind"], m["metadata"]["name"]) for m in manifests if _of_the_plan(m)}
    current = {(c.kind, c.name) for c in snapshot.children if c.plan_hash == plan_hash}
    stale = any(c.plan_hash != plan_hash for c in snapshot.children if c.component != COMPONENT_DOWNLOAD)
    if workloads and workloads <= current and not stale:
        # The children of this exact plan exist: nothing to write, unless an integration appeared since.
        if INTEGRATIONS_APPLIED.get(owner.uid) != snapshot.served:
            integrations = [m for m in manifests if m["kind"] in CAPABILITY_KINDS]
            await _sync(integrations, owner, True, snapshot.served, kinds=CAPABILITY_KINDS)
        return []
    # A completed download stays as it is (its pod template is immutable, and the weights are in the cache).
    downloaded = frozenset(
        (c.kind, c.name) for c in snapshot.children if c.component == COMPONENT_DOWNLOAD and c.complete
    )
    # Children of earlier plans (or of another kind) can only exist when the index has seen workloads.
    return await _sync(manifests, owner, bool(snapshot.children), snapshot.served, downloaded)


async def _sync_integrations(
    spec: ParallelDeploymentSpec, plan: PlanStatus, body: kopf.Body, snapshot: Snapshot
) -> None:
    """Apply the current plan's children that follow the served CRDs, pruning those of their kinds no longer
    rendered (an HPA replaced by KEDA's ScaledObject); a removed CRD takes its own objects with it."""
    owner = _owner(body)
    served = snapshot.served
    if spec.plan_only:
        INTEGRATIONS_APPLIED[owner.uid] = served
        return
    manifests = render_integrations(spec, owner, plan.hash, plan.multi_node_backend, plan.max_replicas, served)
    await _sync(manifests, owner, True, served, kinds=CAPABILITY_KINDS)


async def _plan_and_apply(
    body: kopf.Body,
    patch: kopf.Patch,
    snapshot: Snapshot,
    logger: kopf.Logger | logging.Logger,
    trigger: str,
    out_of_memory: Sequence[OutOfMemoryRecord] | None = None,
) -> None:
    """Plan, render, apply and derive the status; ``out_of_memory`` (default: the stored records) are the plans
    vLLM ran out of memory on, which the new plan must leave more room than."""
    meta = body["metadata"]
    old = _current_status(body)
    records = recorded_for(old.out_of_memory if out_of_memory is None else out_of_memory, meta.get("generation"))
    spec = _parse_spec(body)
    if isinstance(spec, PlanFailure):
        LEDGER.record(meta["uid"], None)
        new = derive_status(old, _facts(body, snapshot, None, outcome=spec))
        await event_once(body, old, new, "Warning", spec.reason, spec.message)
        metrics.RECONCILES.labels("invalid").inc()
        _patch(body, patch, new)
        return
    # From the inventory to the ledger entry nothing awaits: no other resource plans in between.
    inventory = _inventory(spec, snapshot, meta["uid"])
    started = time.perf_counter()
    failed = [] if pinned(spec) else [failed_plan(record) for record in records]
    outcome: PlanResult | PlanFailure = plan_deployment(spec, inventory, PRICES, failed, snapshot.served)
    metrics.PLANNING_SECONDS.observe(time.perf_counter() - started)
    manifests: list[dict[str, Any]] = []
    if isinstance(outcome, PlanResult):
        rendered = _render(outcome, spec, _owner(body), snapshot)
        outcome, manifests = (rendered, []) if isinstance(rendered, PlanFailure) else (outcome, rendered)
    planned = None if isinstance(outcome, PlanFailure) else reservation_for(spec, outcome.status, meta)
    LEDGER.record(meta["uid"], planned)
    facts = _facts(body, snapshot, spec, outcome=outcome, inventory=inventory_status(inventory), out_of_memory=records)
    new = derive_status(old, facts)
    if isinstance(outcome, PlanFailure):
        await event_once(body, old, new, "Warning", outcome.reason, outcome.message)
        metrics.RECONCILES.labels("failed").inc()
        _patch(body, patch, new)
        return
    deleted = await _apply(outcome, manifests, _owner(body), snapshot)
    reason = "PlanOnly" if spec.plan_only else "Planned"
    verb = "Replanned" if trigger in ("inventory", "oom", "backend") and old.plan is not None else reason
    extra = f"; removed {', '.join(deleted)}" if deleted else ""
    await event_once(body, old, new, "Normal", verb, f"{outcome.status.reason}{extra}")
    metrics.record_plan(meta["namespace"], meta["name"], outcome.status)
    metrics.RECONCILES.labels("planned").inc()
    logger.info(f"{verb}: {outcome.status.reason}{extra}")
    _patch(body, patch, new)


async def _fell_back_after_oom(
    body: kopf.Body,
    patch: kopf.Patch,
    snapshot: Snapshot,
    logger: kopf.Logger | logging.Logger,
    spec: ParallelDeploymentSpec,
    status: ParallelDeploymentStatus,
) -> bool:
    """A serving pod of the current plan ran out of memory: record it, and replan past it while fallbacks are
    left and nothing is pinned (else the plan stays and Ready says OutOfMemory). True when it replanned."""
    assert status.plan is not None
    meta = body["metadata"]
    if any(
        record.plan_hash == status.plan.hash for record in recorded_for(status.out_of_memory, meta.get("generation"))
    ):
        return False  # recorded already: the plan stays (pinned, or no fallback left)
    problem = next(
        (p for p in snapshot.problems if p.reason == "OutOfMemory" and p.plan_hash == status.plan.hash), None
    )
    if problem is None:
        return False
    record = oom_record(status, problem.name, problem.message, now(), meta.get("generation"))
    records = [*recorded_for(status.out_of_memory, meta.get("generation")), record]
    fallbacks = (spec.serving or ServingSpec()).out_of_memory_fallbacks
    if pinned(spec) or len(records) > fallbacks:
        why = "spec.parallelism pins the degrees" if pinned(spec) else f"{fallbacks} fallback(s) used"
        await k8s.post_event(
            body, "Warning", "OutOfMemory", f"{record.message} on {record.plan}; the plan stays: {why}"
        )
        _patch(body, patch, derive_status(status, _facts(body, snapshot, spec, out_of_memory=records)))
        return True
    await k8s.post_event(
        body, "Warning", "OutOfMemory", f"{record.message} on {record.plan}: replanning with more memory per GPU"
    )
    logger.info(f"vLLM ran out of memory on {record.plan}: replanning")
    await _plan_and_apply(body, patch, snapshot, logger, trigger="oom", out_of_memory=records)
    return True


async def reconcile(body: kopf.Body, patch: kopf.Patch, snapshot: Snapshot, logger: kopf.Logger) -> None:
    """Create, spec change or operator restart: plan anew (deterministic, so a restart changes nothing)."""
    await _plan_and_apply(body, patch, snapshot, logger, trigger="spec")


async def resync(body: kopf.Body, patch: kopf.Patch, snapshot: Snapshot, logger: kopf.Logger | logging.Logger) -> None:
    """Timer: keep a plan that still fits, replan one that does not, retry a failed one, refresh readiness."""
    status = _current_status(body)
    planned = get_condition(status.conditions, PLANNED)
    if planned is None or planned.observed_generation != body["metadata"].get("generation"):
        return  # the change handler has not finished this generation yet
    spec = _parse_spec(body)
    if isinstance(spec, PlanFailure):
        return
    if planned.status == ConditionStatus.TRUE and status.plan is not None:
        uid = body["metadata"]["uid"]
        if await _fell_back_after_oom(body, patch, snapshot, logger, spec, status):
            return
        if _cache_filled_since(spec, status.plan, snapshot, body):
            logger.info("the model is in the cache: starting the serving pods")
            await _plan_and_apply(body, patch, snapshot, logger, trigger="spec")
            return
        if backend_changed(spec, status.plan, snapshot.served):
            served = "served" if LWS_CRD in snapshot.served else "not served"
            logger.info(f"the LeaderWorkerSet CRD is {served}: replanning the multi-node replicas")
            await _plan_and_apply(body, patch, snapshot, logger, trigger="backend")
            return
        if _bound_as_planned(status.plan, snapshot) or _still_fits(status.plan, _inventory(spec, snapshot, uid)):
            if INTEGRATIONS_APPLIED.get(uid, snapshot.served) != snapshot.served:
                logger.info(f"optional integrations served now: {sorted(snapshot.served) or 'none'}")
                await _sync_integrations(spec, status.plan, body, snapshot)
            measured = await measure(body, spec, status.plan, snapshot.endpoints, logger)
            new = derive_status(status, _facts(body, snapshot, spec, measured=measured))
            await warn_on_degradation(body, status, new)
            _patch(body, patch, new)
            return
        logger.info("the current plan no longer fits the inventory: replanning")
    await _plan_and_apply(body, patch, snapshot, logger, trigger="inventory")


RESYNC_ERRORS = (ApiException, kopf.TemporaryError, OSError, urllib3.exceptions.HTTPError)
"""Failures of one object's resync that the loop logs and retries on its next round."""


def _creation_order(item: tuple[kopf.Body, Snapshot]) -> tuple[str, str, str]:
    meta = item[0]["metadata"]
    return str(meta.get("creationTimestamp") or ""), meta["namespace"], meta["name"]


async def resync_loop(snapshots: Callable[[], list[tuple[kopf.Body, Snapshot]]], interval: float) -> None:
    """Resync every ParallelDeployment every ``interval`` seconds, oldest first (a waiting resource older than
    another gets freed GPUs first), writing status only when it changed."""
    logger = logging.getLogger("autoparallel.resync")
    while True:
        await asyncio.sleep(interval)  # pacing between rounds, not waiting for a condition
        try:
            capabilities.SERVED = await k8s.served_crds(OPTIONAL_CRDS)
        except RESYNC_ERRORS as error:
            logger.warning(f"reading the optional integrations' CRDs: {type(error).__name__}: {error}")
        rounds = sorted(snapshots(), key=_creation_order)
        for body, snapshot in rounds:
            patch = kopf.Patch()
            where = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
            try:
                await resync(body, patch, snapshot, logger)
                if patch.get("status"):
                    meta = body["metadata"]
                    await k8s.patch_status(meta["namespace"], meta["name"], dict(patch["status"]))
            except ApiException as error:
                if error.status == 404:  # deleted since this round began: nothing to do, nothing wrong
                    logger.debug(f"resync of {where}: deleted meanwhile")
                else:
                    logger.warning(f"resync of {where}: {error.status} {error.reason}")
            except RESYNC_ERRORS as error:
                logger.warning(f"resync of {where}: {type(error).__name__}: {error}")
            except Exception:  # the loop serves every object: log the bug with its traceback, serve the rest
                logger.exception(f"resync of {where} failed")
        logger.debug(f"resynced {len(rounds)} ParallelDeployment(s)")
