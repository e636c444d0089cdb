"""Every kind of object the operator creates, in one table: applying, pruning, watching and the chart's RBAC
all follow it (a unit test holds the chart's rules to it).

A kind that belongs to an optional integration names the CustomResourceDefinition that serves it
(``requires``): the operator renders, lists and prunes it only while the API server serves that CRD
(see :mod:`autoparallel.controller.capabilities`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChildKind:
    """One kind of child object and what the operator does with it."""

    api_version: str
    kind: str
    plural: str
    pruned: bool = True
    """Listed by owner label and deleted when a plan no longer renders it."""
    watched: bool = False
    """Indexed by the operator (readiness, or presence for an optional integration)."""
    replaced: bool = False
    """Its pod template is immutable: an older plan's object is read, deleted, then applied anew."""
    requires: str | None = None
    """The CRD (``<plural>.<group>``) that must be served for this kind to exist; None for built-in kinds."""
    capability_dependent: bool = False
    """Rendered by :func:`render_integrations` from the served CRDs: applied (and pruned) anew when they change."""

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    def path(self, namespace: str, name: str | None = None) -> str:
        """The REST path of the kind's objects in ``namespace`` (of one object with ``name``)."""
        root = f"/apis/{self.api_version}" if self.group else f"/api/{self.version}"
        collection = f"{root}/namespaces/{namespace}/{self.plural}"
        return collection if name is None else f"{collection}/{name}"

    def verbs(self) -> frozenset[str]:
        """The RBAC verbs the operator needs on this kind: apply (create + patch), and what the flags add."""
        verbs = {"create", "patch"}
        if self.pruned:
            verbs |= {"list", "delete"}
        if self.watched:
            verbs |= {"list", "watch"}
        if self.replaced:
            verbs |= {"get", "delete"}
        return frozenset(verbs)


CHILD_KINDS: tuple[ChildKind, ...] = (
    ChildKind("v1", "Service", "services"),
    ChildKind("apps/v1", "Deployment", "deployments", watched=True),
    ChildKind("apps/v1", "StatefulSet", "statefulsets", watched=True),
    # Multi-node replicas on LeaderWorkerSet (spec.serving.multiNodeBackend): a workload like the two above, so not
    # capability_dependent (the plan, and its hash, say which backend runs); listed and pruned only while served.
    ChildKind(
        "leaderworkerset.x-k8s.io/v1",
        "LeaderWorkerSet",
        "leaderworkersets",
        watched=True,
        requires="leaderworkersets.leaderworkerset.x-k8s.io",
    ),
    ChildKind("batch/v1", "Job", "jobs", watched=True, replaced=True),
    # The weight cache holds downloaded weights: never pruned, it goes with its owner (garbage collection)
    # or stays (cache.retain).
    ChildKind("v1", "PersistentVolumeClaim", "persistentvolumeclaims", pruned=False),
    ChildKind(
        "monitoring.coreos.com/v1",
        "PodMonitor",
        "podmonitors",
        requires="podmonitors.monitoring.coreos.com",
        capability_dependent=True,
    ),
    # spec.scaling: a KEDA ScaledObject when KEDA is installed, else an HPA (never both: each replaces the other).
    ChildKind(
        "keda.sh/v1alpha1", "ScaledObject", "scaledobjects", requires="scaledobjects.keda.sh", capability_dependent=True
    ),
    ChildKind("autoscaling/v2", "HorizontalPodAutoscaler", "horizontalpodautoscalers", capability_dependent=True),
    ChildKind(
        "inference.networking.k8s.io/v1",
        "InferencePool",
        "inferencepools",
        requires="inferencepools.inference.networking.k8s.io",
        capability_dependent=True,
    ),
)

BY_KIND = {child.kind: child for child in CHILD_KINDS}
CAPABILITY_KINDS = frozenset(child.kind for child in CHILD_KINDS if child.capability_dependent)
"""Kinds rendered from the served CRDs (re-applied and pruned on their own when those change)."""
