"""The status table: every condition derived in one pure function from what a reconcile observed."""

from autoparallel.controller.derive import Facts, derive_status
from autoparallel.controller.feedback import PodProblem, pod_problem
from autoparallel.controller.inventory import NodeGPUs, build_inventory
from autoparallel.controller.models import ConditionStatus, ParallelDeploymentSpec, ParallelDeploymentStatus
from autoparallel.controller.planning import PlanFailure, PlanResult, plan_deployment
from autoparallel.controller.status import ChildReadiness, get_condition

H100 = (("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),)
NODE = NodeGPUs("h0", "NVIDIA-H100-80GB-HBM3", 81559, (("nvidia.com/gpu", 8),), H100, True)


def spec(**fields: object) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate({"model": {"name": "meta-llama/Meta-Llama-3.1-8B"}, **fields})


def planned(spec_: ParallelDeploymentSpec) -> PlanResult:
    outcome = plan_deployment(spec_, build_inventory([NODE], []))
    assert isinstance(outcome, PlanResult)
    return outcome


def verdicts(status: ParallelDeploymentStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status.value, c.reason) for c in status.conditions}


def test_a_new_plan_without_children_is_rolling_out() -> None:
    outcome = planned(spec())
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t1", spec(), outcome=outcome))
    assert verdicts(status) == {
        "Planned": ("True", "Planned"),
        "Ready": ("False", "RollingOut"),
        "Degraded": ("False", "AsPlanned"),
    }
    assert status.plan == outcome.status and status.observed_generation == 1
    assert status.replicas.desired == outcome.status.data and status.replicas.ready == 0


def test_ready_children_of_the_plan_make_it_ready_and_time_moves_only_on_flips() -> None:
    outcome = planned(spec())
    first = derive_status(ParallelDeploymentStatus(), Facts(1, "t1", spec(), outcome=outcome))
    ready = [ChildReadiness("Deployment", "x", outcome.status.data, outcome.status.data, plan_hash=outcome.status.hash)]
    second = derive_status(first, Facts(1, "t2", spec(), children=ready))
    assert verdicts(second)["Ready"] == ("True", "Ready")
    assert get_condition(second.conditions, "Ready").last_transition_time == "t2"  # type: ignore[union-attr]
    assert get_condition(second.conditions, "Planned").last_transition_time == "t1"  # type: ignore[union-attr]
    assert derive_status(second, Facts(1, "t3", spec(), children=ready)) == second  # nothing new: nothing changes


def test_children_of_an_older_plan_do_not_count() -> None:
    outcome = planned(spec())
    old = [ChildReadiness("Deployment", "x", 1, 1, plan_hash="older")]
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", spec(), outcome=outcome, children=old))
    assert verdicts(status)["Ready"] == ("False", "RollingOut")


def test_a_failure_is_planned_false_not_ready_and_degraded_keeping_the_last_plan() -> None:
    outcome = planned(spec())
    first = derive_status(ParallelDeploymentStatus(), Facts(1, "t1", spec(), outcome=outcome))
    failure = PlanFailure("InsufficientGPUs", "no room")
    failed = derive_status(first, Facts(2, "t2", spec(), outcome=failure))
    assert verdicts(failed) == {
        "Planned": ("False", "InsufficientGPUs"),
        "Ready": ("False", "InsufficientGPUs"),
        "Degraded": ("True", "InsufficientGPUs"),
    }
    assert failed.plan == first.plan and failed.observed_generation == 2


def test_an_invalid_spec_needs_no_spec() -> None:
    failure = PlanFailure("InvalidSpec", "spec.x: bad")
    status = derive_status(ParallelDeploymentStatus(), Facts(3, "t", None, outcome=failure))
    assert verdicts(status)["Ready"] == ("False", "InvalidSpec") and status.observed_generation == 3


def test_plan_only_is_never_ready_and_wants_no_replicas() -> None:
    only = spec(planOnly=True)
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", only, outcome=planned(only)))
    assert verdicts(status)["Planned"] == ("True", "PlanOnly")
    assert verdicts(status)["Ready"] == ("False", "PlanOnly")
    assert status.replicas.desired == 0


def test_unschedulable_pods_and_failed_jobs_degrade() -> None:
    outcome = planned(spec())
    pending = [PodProblem("uid", "x-0", "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.")]
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", spec(), outcome=outcome, problems=pending))
    assert verdicts(status)["Ready"] == ("False", "Unschedulable")
    assert verdicts(status)["Degraded"] == ("True", "Unschedulable")
    failed = [ChildReadiness("Job", "j", 1, 0, failed=True, plan_hash=outcome.status.hash)]
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", spec(), outcome=outcome, children=failed))
    assert verdicts(status)["Degraded"] == ("True", "Failed")


def test_training_wants_one_workload() -> None:
    training = spec(workload={"type": "training", "sequenceLength": 2048, "batchSize": 8})
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", training, outcome=planned(training)))
    assert status.replicas.desired == 1
    assert status.conditions[0].status == ConditionStatus.TRUE


def _pod(waiting: dict[str, str] | None = None, unschedulable: str | None = None) -> dict[str, object]:
    status: dict[str, object] = {"phase": "Pending"}
    if waiting:
        status["containerStatuses"] = [{"name": "vllm", "state": {"waiting": waiting}}]
    if unschedulable:
        status["conditions"] = [{"type": "PodScheduled", "reason": "Unschedulable", "message": unschedulable}]
    return {"metadata": {"name": "x-0", "labels": {"autoparallel.io/owner-uid": "uid"}}, "status": status}


# The kubelet's own texts (pkg/kubelet/kubelet_pods.go makeEnvironmentVariables; the secret manager's NotFound).
MISSING_SECRET = 'secret "hf-token" not found'
MISSING_KEY = "couldn't find key HF_TOKEN in Secret team-a/hf-token"


def test_the_kubelets_missing_secret_errors_are_secret_not_found() -> None:
    for message in (MISSING_SECRET, MISSING_KEY):
        problem = pod_problem(_pod({"reason": "CreateContainerConfigError", "message": message}))
        assert problem is not None and problem.reason == "SecretNotFound" and message in problem.message
    other = pod_problem(_pod({"reason": "CreateContainerConfigError", "message": 'configmap "otel" not found'}))
    assert other is not None and other.reason == "ContainerConfigError"
    assert pod_problem(_pod({"reason": "ContainerCreating", "message": ""})) is None
    assert pod_problem(_pod(unschedulable="0/2 nodes are available")).reason == "Unschedulable"  # type: ignore[union-attr]


def test_a_missing_secret_keeps_the_plan_and_says_what_to_create() -> None:
    outcome = planned(spec(model={"name": "meta-llama/Meta-Llama-3.1-8B", "tokenSecretRef": {"name": "hf-token"}}))
    problem = pod_problem(_pod({"reason": "CreateContainerConfigError", "message": MISSING_SECRET}))
    assert problem is not None
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", spec(), outcome=outcome, problems=[problem]))
    assert verdicts(status) == {
        "Planned": ("True", "Planned"),
        "Ready": ("False", "SecretNotFound"),
        "Degraded": ("True", "SecretNotFound"),
    }
    ready = get_condition(status.conditions, "Ready")
    assert ready is not None and MISSING_SECRET in ready.message and "create the Secret" in ready.message


CACHED = {"name": "meta-llama/Meta-Llama-3.1-8B", "cache": {"size": "100Gi"}}


def test_model_cached_follows_the_download_job_and_gates_ready() -> None:
    cached = spec(model=CACHED)
    outcome = planned(cached)
    job = ChildReadiness("Job", "x-download-1", 1, 0, plan_hash="d", component="model-download")
    downloading = derive_status(ParallelDeploymentStatus(), Facts(1, "t", cached, outcome=outcome, children=[job]))
    assert verdicts(downloading)["ModelCached"] == ("False", "Downloading")
    assert verdicts(downloading)["Ready"] == ("False", "Downloading")
    assert verdicts(downloading)["Degraded"] == ("False", "AsPlanned")
    done = ChildReadiness("Job", "x-download-1", 1, 1, plan_hash="d", component="model-download", complete=True)
    serving = ChildReadiness("Deployment", "x", 1, 1, plan_hash=outcome.status.hash, component="inference")
    ready = derive_status(downloading, Facts(1, "t2", cached, children=[done, serving]))
    assert verdicts(ready)["ModelCached"] == ("True", "Cached") and verdicts(ready)["Ready"] == ("True", "Ready")
    assert ready.replicas.desired == ready.replicas.ready == 1  # the download Job is no replica
    failed = ChildReadiness(
        "Job", "x-download-1", 1, 0, failed=True, plan_hash="d", component="model-download", message="401 Unauthorized"
    )
    broken = derive_status(downloading, Facts(1, "t3", cached, children=[failed]))
    assert verdicts(broken)["ModelCached"] == ("False", "DownloadFailed")
    assert verdicts(broken)["Degraded"] == ("True", "DownloadFailed")
    cached_condition = get_condition(broken.conditions, "ModelCached")
    assert cached_condition is not None and "401 Unauthorized" in cached_condition.message


def test_no_model_cached_condition_without_prefetch() -> None:
    lazy = spec(model={**CACHED, "cache": {"size": "100Gi", "prefetch": False}})
    status = derive_status(ParallelDeploymentStatus(), Facts(1, "t", lazy, outcome=planned(lazy)))
    assert "ModelCached" not in verdicts(status)
    # and a condition left from an earlier spec goes away
    with_cache = derive_status(ParallelDeploymentStatus(), Facts(1, "t", spec(model=CACHED), outcome=planned(spec())))
    assert "ModelCached" in verdicts(with_cache)
    assert "ModelCached" not in verdicts(derive_status(with_cache, Facts(2, "t", lazy, outcome=planned(lazy))))


def test_a_read_write_once_cache_refuses_a_plan_of_several_pods() -> None:
    two = spec(model=CACHED, parallelism={"tensor": 1, "data": 2})
    outcome = plan_deployment(two, build_inventory([NODE], []))
    assert isinstance(outcome, PlanFailure) and outcome.reason == "InvalidSpec"
    assert "spec.model.cache.accessModes" in outcome.message and "ReadWriteMany" in outcome.message
    shared = spec(
        model={**CACHED, "cache": {"size": "100Gi", "accessModes": ["ReadWriteMany"]}},
        parallelism=two.parallelism.model_dump(),
    )
    assert isinstance(plan_deployment(shared, build_inventory([NODE], [])), PlanResult)
