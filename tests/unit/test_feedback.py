"""What vLLM reports back: out-of-memory terminations matched on real texts, the fallback planning past them,
the Ready condition they make, and the KV capacity read from a vLLM-format /metrics body."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from autoparallel.controller.derive import Facts, derive_status
from autoparallel.controller.feedback import (
    CacheReport,
    FailedPlan,
    PodProblem,
    cache_report,
    has_room,
    oom_record,
    out_of_memory_line,
    pod_problem,
    relative_error,
    serving_endpoint,
)
from autoparallel.controller.inventory import NodeGPUs, build_inventory
from autoparallel.controller.models import ConditionStatus, Measured, ParallelDeploymentSpec, ParallelDeploymentStatus
from autoparallel.controller.planning import PlanResult, plan_deployment
from autoparallel.controller.status import get_condition

DATA = Path(__file__).resolve().parent.parent / "data" / "vllm"
A100 = (("nvidia.com/gpu.product", "NVIDIA-A100-SXM4-40GB"),)


def _blocks(text: str) -> list[str]:
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return [block.strip() for block in "\n".join(lines).split("\n\n") if block.strip()]


OOM_TEXTS = _blocks((DATA / "oom_messages.txt").read_text())
NOT_OOM = [
    "INFO 11-02 10:11:12 [gpu_worker.py:298] Available KV cache memory: 58.11 GiB",
    "ValueError: Free memory on device (6.92/8.0 GiB) on startup is less than desired GPU memory utilization",
    "OSError: You are trying to access a gated repo. 401 Client Error",
    "",
]


@pytest.mark.parametrize("text", OOM_TEXTS, ids=range(len(OOM_TEXTS)))
def test_every_known_out_of_memory_text_is_recognised(text: str) -> None:
    line = out_of_memory_line(f"INFO starting\n{text}\nINFO shutting down")
    assert line and line in text


@pytest.mark.parametrize("text", NOT_OOM)
def test_other_failures_are_not_out_of_memory(text: str) -> None:
    assert out_of_memory_line(text) is None


def _pod(
    container: dict[str, Any], ready: bool = False, ip: str = "", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m-0",
            "labels": {"autoparallel.io/owner-uid": "u", "app.kubernetes.io/component": "inference", **(labels or {})},
            "annotations": {"autoparallel.io/plan-hash": "h1"},
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "containerStatuses": [{"name": "vllm", **container}],
        },
    }


def test_a_terminated_container_with_an_oom_tail_is_an_out_of_memory_problem() -> None:
    crashed = {"lastState": {"terminated": {"exitCode": 1, "message": OOM_TEXTS[1]}}, "state": {"waiting": {}}}
    problem = pod_problem(_pod(crashed))
    assert problem is not None and problem.reason == "OutOfMemory" and problem.plan_hash == "h1"
    assert "No available memory for the cache blocks" in problem.message
    clean_exit = {"state": {"terminated": {"exitCode": 0, "message": OOM_TEXTS[1]}}}
    assert pod_problem(_pod(clean_exit)) is None


def test_only_ready_servers_are_endpoints() -> None:
    assert serving_endpoint(_pod({}, ready=True, ip="10.0.0.5")) is not None
    assert serving_endpoint(_pod({}, ready=False, ip="10.0.0.5")) is None
    assert serving_endpoint(_pod({}, ready=True, ip="")) is None
    worker = _pod({}, ready=True, ip="10.0.0.6", labels={"apps.kubernetes.io/pod-index": "1"})
    assert serving_endpoint(worker) is None  # a Ray worker of a multi-node group runs no server
    lws_worker = _pod({}, ready=True, ip="10.0.0.7", labels={"leaderworkerset.sigs.k8s.io/worker-index": "1"})
    assert serving_endpoint(lws_worker) is None  # nor does a LeaderWorkerSet group's worker
    leader = _pod({}, ready=True, ip="10.0.0.8", labels={"leaderworkerset.sigs.k8s.io/worker-index": "0"})
    assert serving_endpoint(leader) is not None


VLLM_METRICS = (DATA / "metrics.txt").read_text()
"""A /metrics body in vLLM 0.19's format (names and labels from vllm/v1/metrics/loggers.py)."""


def test_the_kv_capacity_comes_from_vllms_cache_config_gauge() -> None:
    report = cache_report(VLLM_METRICS)
    assert report == CacheReport(num_gpu_blocks=29745, block_size=16) and report.tokens == 475_920
    assert cache_report("vllm:num_requests_waiting 0\n") is None
    assert cache_report(VLLM_METRICS.replace('num_gpu_blocks="29745"', 'num_gpu_blocks="None"')) is None
    assert relative_error(490_000, 475_920) == pytest.approx(0.0296, abs=1e-4)


def test_room_means_more_memory_per_gpu_after_the_weights() -> None:
    failed = [FailedPlan(gpu_memory_bytes=40, weights_per_gpu=30, label="TP=2")]
    assert has_room(40, 20, failed)  # TP=4 on the same GPUs
    assert has_room(80, 60, failed)  # larger GPUs, same split
    assert not has_room(40, 30, failed)  # the same plan again (or another DP)


def _spec(**fields: Any) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate(
        {"model": {"name": "meta-llama/Llama-3.1-70B"}, "workload": {"sequenceLength": 4096, "batchSize": 8}, **fields}
    )


def _a100(count: int) -> Any:
    nodes = [
        NodeGPUs(f"a{i}", "NVIDIA-A100-SXM4-40GB", 40960, (("nvidia.com/gpu", 8),), A100, True) for i in range(count)
    ]
    return build_inventory(nodes, [])


def test_after_each_oom_the_next_plan_leaves_more_room_until_none_is_left() -> None:
    inventory = _a100(1)
    failed: list[FailedPlan] = []
    plans = []
    outcome = plan_deployment(_spec(), inventory)
    while isinstance(outcome, PlanResult):
        plans.append(outcome.status)
        record = oom_record(ParallelDeploymentStatus(plan=outcome.status), "m-0", OOM_TEXTS[0], "t", 1)
        failed.append(FailedPlan(record.gpu_memory, record.weights_per_gpu, record.plan))
        outcome = plan_deployment(_spec(), inventory, failed=failed)
        assert len(plans) < 20
    weights = [plan.memory_per_gpu.weights for plan in plans]
    assert len(plans) >= 2 and weights == sorted(weights, reverse=True) and len(set(weights)) == len(weights)
    assert outcome.reason == "InsufficientMemory"
    assert all(plan.label in outcome.message for plan in failed)  # what was tried


def test_an_oom_problem_of_the_current_plan_makes_ready_false_and_degraded() -> None:
    inventory = _a100(1)
    result = plan_deployment(_spec(), inventory)
    assert isinstance(result, PlanResult)
    spec = _spec()
    problem = PodProblem("u", "m-0", f"container vllm: {OOM_TEXTS[1]}", "OutOfMemory", result.status.hash)
    facts = Facts(generation=1, now="2026-12-02T00:00:00Z", spec=spec, outcome=result, problems=[problem])
    status = derive_status(ParallelDeploymentStatus(), facts)
    ready, degraded = get_condition(status.conditions, "Ready"), get_condition(status.conditions, "Degraded")
    assert ready is not None and (ready.status, ready.reason) == (ConditionStatus.FALSE, "OutOfMemory")
    assert degraded is not None and degraded.status == ConditionStatus.TRUE
    older = PodProblem("u", "m-0", "x", "OutOfMemory", "an-older-plan")
    facts = Facts(generation=1, now="2026-12-02T00:00:00Z", spec=spec, outcome=result, problems=[older])
    ready = get_condition(derive_status(ParallelDeploymentStatus(), facts).conditions, "Ready")
    assert ready is not None and ready.reason != "OutOfMemory"


def test_a_measurement_is_kept_for_its_plan_only() -> None:
    result = plan_deployment(_spec(), _a100(1))
    assert isinstance(result, PlanResult)
    measured = Measured(
        plan_hash=result.status.hash,
        kv_cache_tokens=100,
        gpu_blocks=10,
        block_size=10,
        error="+1.0%",
        pod="m-0",
        time="2026-12-02T00:00:00Z",
    )
    facts = Facts(generation=1, now="t", spec=_spec(), outcome=result, measured=measured)
    status = derive_status(ParallelDeploymentStatus(), facts)
    assert status.measured == measured
    replanned = plan_deployment(_spec(workload={"sequenceLength": 2048}), _a100(1))
    assert isinstance(replanned, PlanResult)
    status = derive_status(status, Facts(generation=2, now="t", spec=_spec(), outcome=replanned))
    assert status.measured is None
