"""GPU reservations: planned but unbound pods take their GPUs out of what other resources plan against; taints
and tolerations decide which nodes a resource may use."""

from typing import Any

import pytest
from test_inventory import node, pod

from autoparallel.controller.inventory import Reservation, Taint, build_inventory, node_gpus, pod_gpus, tolerated
from autoparallel.controller.models import ParallelDeploymentSpec
from autoparallel.controller.planning import PlanFailure, PlanResult, plan_deployment
from autoparallel.controller.reservations import Ledger, reservation_for, reservation_of

GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def reservation(owner: str, pods: int, gpus_per_pod: int = 8, created: str = "2026-01-01T00:00:00Z") -> Reservation:
    return Reservation(
        owner_uid=f"uid-{owner}",
        owner=f"ns/{owner}",
        created=created,
        resource="nvidia.com/gpu",
        node_selector=(),
        tolerations=(tuple(sorted(GPU_TAINT.items())),),
        gpu_type="H100-80GB",
        gpus_per_pod=gpus_per_pod,
        pods=pods,
        plan_hash=f"hash-{owner}",
    )


def h100s(count: int) -> list[Any]:
    return [node_gpus(node(f"h{i}")) for i in range(count)]


def test_unbound_pods_of_a_reservation_take_their_gpus() -> None:
    inventory = build_inventory(h100s(2), [], reservations=[reservation("a", pods=1)])
    assert inventory.pools[0].free_gpus == (0, 8)
    assert inventory.holders == (("H100-80GB", "ns/a (reserved) 8"),)


def test_bound_pods_of_the_plan_are_counted_once() -> None:
    bound = pod("a-0", "h1", 8, owner="uid-a")
    bound["metadata"]["annotations"] = {"autoparallel.io/plan-hash": "hash-a"}
    inventory = build_inventory(h100s(2), pod_gpus(bound), reservations=[reservation("a", pods=2)])
    # One pod runs on h1 (used), the other is still reserved: h0 is taken by it.
    assert inventory.pools[0].free_gpus == (0, 0)
    assert dict(inventory.holders)["H100-80GB"] == "ns/a (reserved) 8, ns/a (running) 8"


def test_pods_of_an_older_plan_do_not_count_for_the_new_one() -> None:
    old = pod("a-old", "h1", 8, owner="uid-a")
    old["metadata"]["annotations"] = {"autoparallel.io/plan-hash": "an-older-plan"}
    inventory = build_inventory(h100s(2), pod_gpus(old), reservations=[reservation("a", pods=1)])
    assert inventory.pools[0].free_gpus == (0, 0)


def test_own_reservation_is_not_subtracted() -> None:
    inventory = build_inventory(h100s(1), [], owner_uid="uid-a", reservations=[reservation("a", pods=1)])
    assert inventory.pools[0].free_gpus == (8,)


def test_reservations_are_served_first_come_first_served() -> None:
    older = reservation("older", pods=1, created="2026-01-01T00:00:00Z")
    newer = reservation("newer", pods=1, created="2026-01-02T00:00:00Z")
    # One node: the older reservation holds it, the newer finds nothing left (over-committed, not double-counted).
    inventory = build_inventory(h100s(1), [], reservations=[newer, older])
    assert inventory.pools[0].free_gpus == (0,)
    assert inventory.holders == (("H100-80GB", "ns/older (reserved) 8"),)


def test_reservations_pack_onto_the_fullest_node_that_fits() -> None:
    busy = pod("other", "h0", 6)  # h0 has 2 free, h1 8
    inventory = build_inventory(h100s(2), pod_gpus(busy), reservations=[reservation("a", pods=1, gpus_per_pod=2)])
    assert inventory.pools[0].free_gpus == (0, 8)


def test_a_reservation_stays_on_nodes_its_pods_could_use() -> None:
    other_product = [node_gpus(node("a0", "NVIDIA-A100-SXM4-40GB", memory_mib=40960))]
    inventory = build_inventory([*h100s(1), *other_product], [], reservations=[reservation("a", pods=1)])
    free = {pool.gpu_name: pool.free_gpus for pool in inventory.pools}
    assert free == {"A100-40GB": (8,), "H100-80GB": (0,)}


@pytest.mark.parametrize(
    ("toleration", "taint", "expected"),
    [
        ({"key": "k", "operator": "Equal", "value": "v", "effect": "NoSchedule"}, Taint("k", "v", "NoSchedule"), True),
        ({"key": "k", "value": "v"}, Taint("k", "v", "NoExecute"), True),  # operator Equal and any effect by default
        ({"key": "k", "operator": "Equal", "value": "w"}, Taint("k", "v", "NoSchedule"), False),
        ({"key": "k", "operator": "Exists"}, Taint("k", "anything", "NoSchedule"), True),
        ({"operator": "Exists"}, Taint("any", "thing", "NoExecute"), True),  # empty key + Exists: every taint
        ({"key": "k", "operator": "Exists", "effect": "NoExecute"}, Taint("k", "", "NoSchedule"), False),
    ],
)
def test_toleration_matching_follows_the_scheduler(toleration: dict, taint: Taint, expected: bool) -> None:
    assert tolerated(taint, [toleration]) is expected


def test_untolerated_taints_exclude_a_node_with_the_reason() -> None:
    tainted = node("t0")
    tainted["spec"]["taints"] = [
        {"key": "team", "value": "research", "effect": "NoSchedule"},
        {"key": "soft", "value": "x", "effect": "PreferNoSchedule"},  # only a preference: ignored
    ]
    nodes = [node_gpus(tainted), node_gpus(node("h0"))]
    inventory = build_inventory(nodes, [], tolerations=[GPU_TAINT])
    assert inventory.pools[0].num_nodes == 1
    assert inventory.skipped == ("t0: taint team=research:NoSchedule is not tolerated (spec.placement.tolerations)",)
    tolerating = [GPU_TAINT, {"key": "team", "operator": "Equal", "value": "research", "effect": "NoSchedule"}]
    assert build_inventory(nodes, [], tolerations=tolerating).pools[0].num_nodes == 2


def spec(**fields: object) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate({"model": {"name": "meta-llama/Meta-Llama-3.1-8B"}, **fields})


META = {"uid": "uid-x", "namespace": "ns", "name": "x", "creationTimestamp": "2026-01-01T00:00:00Z"}


def test_a_full_pool_is_refused_naming_what_holds_it() -> None:
    pinned = spec(parallelism={"tensor": 8})
    inventory = build_inventory(h100s(1), [], reservations=[reservation("holder", pods=1)])
    outcome = plan_deployment(pinned, inventory)
    assert isinstance(outcome, PlanFailure) and outcome.reason == "InsufficientGPUs"
    assert "H100-80GB held by ns/holder (reserved) 8" in outcome.message


def test_a_plan_reserves_its_pods() -> None:
    outcome = plan_deployment(spec(parallelism={"tensor": 2, "data": 3}), build_inventory(h100s(1), []))
    assert isinstance(outcome, PlanResult)
    held = reservation_for(spec(parallelism={"tensor": 2, "data": 3}), outcome.status, META)
    assert held is not None
    assert (held.pods, held.gpus_per_pod, held.gpu_type, held.owner) == (3, 2, "H100-80GB", "ns/x")
    assert ("effect", "NoSchedule") in held.tolerations[0]
    assert reservation_for(spec(planOnly=True), outcome.status, META) is None


def _body(planned: str, plan: dict[str, Any] | None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Planned", "status": planned, "reason": "x"}]}
    if plan:
        status["plan"] = plan
    return {"metadata": META, "spec": {"model": {"name": "m"}}, "status": status}


def test_only_a_planned_status_reserves() -> None:
    outcome = plan_deployment(spec(), build_inventory(h100s(1), []))
    assert isinstance(outcome, PlanResult)
    plan = outcome.status.model_dump(mode="json", by_alias=True)
    assert reservation_of(_body("True", plan)) is not None
    assert reservation_of(_body("False", plan)) is None  # a failed replan holds nothing
    assert reservation_of(_body("True", None)) is None
    assert reservation_of(_body("True", {"tensor": "garbage"})) is None


def test_the_ledger_holds_decisions_until_the_status_shows_them() -> None:
    ledger = Ledger()
    stored = {"uid-a": reservation("a", 1), "uid-b": None}
    ledger.record("uid-b", reservation("b", 2))  # planned now, status not written yet
    assert {r.owner for r in ledger.merged(stored)} == {"ns/a", "ns/b"}
    ledger.record("uid-a", None)  # refused on a replan
    assert {r.owner for r in ledger.merged(stored)} == {"ns/b"}
    assert ledger.merged({"uid-a": None}) == []  # b deleted: its decision is dropped
    assert ledger.merged({"uid-a": None, "uid-b": reservation("b", 2)})[0].owner == "ns/b"


def test_many_reservations_on_many_nodes_pack_without_overcommitting() -> None:
    nodes = [node_gpus(node(f"h{i:03d}")) for i in range(200)]
    held = [reservation(f"r{i:03d}", pods=1, gpus_per_pod=3) for i in range(600)]
    inventory = build_inventory(nodes, [], reservations=held)
    # Two 3-GPU pods fit per node (2 GPUs left over): 400 of the 600 pods find room, the rest stay unplaced.
    assert inventory.pools[0].free_gpus == (2,) * 200
    holders = dict(inventory.holders)["H100-80GB"]
    assert holders.count("(reserved) 3") == 400


def test_a_node_taken_by_another_kind_of_reservation_is_refiled() -> None:
    nodes = h100s(2)
    anywhere = reservation("anywhere", pods=1, gpus_per_pod=6, created="2026-01-01T00:00:00Z")
    # A second kind (other tolerations) that may use the same nodes.
    other = Reservation(**{**anywhere.__dict__, "owner_uid": "uid-o", "owner": "ns/o", "tolerations": ()})
    other = Reservation(**{**other.__dict__, "created": "2026-01-02T00:00:00Z", "pods": 2, "gpus_per_pod": 4})
    inventory = build_inventory(nodes, [], reservations=[anywhere, other])
    # anywhere takes 6 of h0; other's first pod finds h0 re-filed at 2 free, so both its pods go to h1 (4 + 4).
    assert inventory.pools[0].free_gpus == (2, 0)
