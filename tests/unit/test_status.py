"""Status conditions and readiness: transition times move only on flips; readiness from children."""

from autoparallel.controller.models import ConditionStatus
from autoparallel.controller.status import (
    ChildReadiness,
    child_readiness,
    readiness_condition,
    replicas,
    set_condition,
)


def test_transition_time_moves_only_when_the_status_flips() -> None:
    first = set_condition([], "Ready", ConditionStatus.FALSE, "RollingOut", "0/2", 1, "t1")
    same = set_condition(first, "Ready", ConditionStatus.FALSE, "RollingOut", "1/2", 1, "t2")
    flipped = set_condition(same, "Ready", ConditionStatus.TRUE, "Ready", "2/2", 1, "t3")
    assert same[0].last_transition_time == "t1" and same[0].message == "1/2"
    assert flipped[0].last_transition_time == "t3"


def test_conditions_are_kept_in_a_stable_order() -> None:
    conditions = set_condition([], "Degraded", ConditionStatus.FALSE, "AsPlanned", "", 1, "t")
    conditions = set_condition(conditions, "Ready", ConditionStatus.FALSE, "RollingOut", "", 1, "t")
    conditions = set_condition(conditions, "Planned", ConditionStatus.TRUE, "Planned", "", 1, "t")
    assert [c.type for c in conditions] == ["Planned", "Ready", "Degraded"]


def test_child_readiness_of_each_kind() -> None:
    deployment = {
        "kind": "Deployment",
        "metadata": {"name": "d", "annotations": {"autoparallel.io/plan-hash": "h"}},
        "spec": {"replicas": 3},
        "status": {"readyReplicas": 2},
    }
    statefulset = {
        "kind": "StatefulSet",
        "metadata": {"name": "s"},
        "spec": {"replicas": 2},
        "status": {"readyReplicas": 2},
    }
    job = {
        "kind": "Job",
        "metadata": {"name": "j"},
        "spec": {"parallelism": 2},
        "status": {"conditions": [{"type": "Failed", "status": "True"}]},
    }
    assert child_readiness(deployment) == ChildReadiness("Deployment", "d", 3, 2, plan_hash="h")
    assert child_readiness(statefulset) == ChildReadiness("StatefulSet", "s", 1, 1)
    failed = child_readiness(job)
    assert failed is not None and failed.failed and failed.ready == 0
    assert child_readiness({"kind": "Service", "metadata": {"name": "x"}}) is None


def test_a_leader_worker_set_counts_the_groups_ready_on_its_current_template() -> None:
    def lws(replicas: int, ready: int, updated: int) -> dict[str, object]:
        return {
            "kind": "LeaderWorkerSet",
            "metadata": {"name": "l-lws", "annotations": {"autoparallel.io/plan-hash": "h"}},
            "spec": {"replicas": replicas, "leaderWorkerTemplate": {"size": 2}},
            "status": {"readyReplicas": ready, "updatedReplicas": updated, "replicas": replicas},
        }

    assert child_readiness(lws(2, 2, 2)) == ChildReadiness("LeaderWorkerSet", "l-lws", 2, 2, plan_hash="h")
    rolling = child_readiness(lws(2, 2, 1))  # one group still runs the old template
    assert rolling is not None and (rolling.replicas, rolling.ready) == (2, 1)
    fresh = child_readiness({"kind": "LeaderWorkerSet", "metadata": {"name": "l-lws"}, "spec": {}})
    assert fresh is not None and (fresh.replicas, fresh.ready) == (1, 0)  # replicas defaulted, no status yet
    assert readiness_condition(2, [ChildReadiness("LeaderWorkerSet", "l-lws", 2, 2, plan_hash="h")], "h")[0] == (
        ConditionStatus.TRUE
    )


def test_ready_counts_only_children_of_the_current_plan() -> None:
    children = [
        ChildReadiness("Deployment", "d", 2, 2, plan_hash="old"),
        ChildReadiness("Deployment", "d", 2, 1, plan_hash="new"),
    ]
    assert replicas(children, "new").ready == 1
    status, reason, message = readiness_condition(2, children, "new")
    assert (status, reason, message) == (ConditionStatus.FALSE, "RollingOut", "1/2 replicas ready")
    done = [ChildReadiness("Deployment", "d", 2, 2, plan_hash="new")]
    assert readiness_condition(2, done, "new")[0] == ConditionStatus.TRUE
