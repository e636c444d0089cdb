"""Every example applied to the real control plane: the expected plan and condition, the children with the
right GPU requests, node selectors and exact commands, pods Running (kwok), Ready=True."""

from __future__ import annotations

from kubernetes import client

import autoparallel
from kube import KubeCluster, wait_for

from . import pd as pds
from .conftest import Operator, example
from .pd import children, condition, create, events, get, wait_condition

DEFAULT_POOLS = {
    "NVIDIA-H100-80GB-HBM3": {"gpu_type": "H100-80GB", "gpus_per_node": 8, "num_nodes": 2},
    "NVIDIA-A100-SXM4-40GB": {"gpu_type": "A100-40GB", "gpus_per_node": 8, "num_nodes": 4},
}


def _expected(body: dict, product: str) -> dict:
    """The planner library's answer for the same spec on the same (free) pool: the operator must agree."""
    spec = body["spec"]
    options = {
        "objective": spec.get("objective", "minimize_gpus"),
        "workload": spec["workload"].get("type", "inference"),
    }
    return autoparallel.best_config(
        spec["model"]["name"],
        [{"name": product, **DEFAULT_POOLS[product]}],
        sequence_length=spec["workload"]["sequenceLength"],
        batch_size=spec["workload"]["batchSize"],
        **options,
    )


def _container_argv(template) -> list[str]:
    container = template.spec.containers[0]
    return [*(container.command or []), *(container.args or [])]


def _gpu_request(template) -> int:
    return int(template.spec.containers[0].resources.limits["nvidia.com/gpu"])


def test_llama70b_runs_on_h100_with_the_planned_flags(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("llama70b.yaml")
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, "llama70b", "Ready", "True", timeout=90)
    plan = pd["status"]["plan"]
    expected = _expected(body, "NVIDIA-H100-80GB-HBM3")
    assert (plan["tensor"], plan["pipeline"], plan["data"]) == (
        expected["tensor_parallel"],
        expected["pipeline_parallel"],
        expected["data_parallel"],
    )
    assert plan["gpuType"] == "H100-80GB" and plan["gpus"] == expected["total_gpus"]
    assert plan["memoryPerGPU"]["total"] <= 79.19 * 2**30
    assert plan["command"] == expected["deployment_command"]
    kids = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    [deployment] = kids["Deployment"]
    template = deployment.spec.template
    assert deployment.spec.replicas == plan["data"]
    assert _gpu_request(template) == plan["gpusPerReplica"]
    assert template.spec.node_selector["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    joined = " ".join(_container_argv(template))
    assert f"--tensor-parallel-size {plan['tensor']}" in joined
    assert f"--pipeline-parallel-size {plan['pipeline']}" in joined
    assert "--max-model-len 8192" in joined
    assert [s.metadata.name for s in kids["Service"]] == ["llama70b"]
    running = [p for p in kids["Pod"] if p.status.phase == "Running"]
    assert len(running) == plan["data"]
    assert pds.TEST_NODES is not None
    assert all(p.spec.node_name.startswith(f"e2e-{pds.TEST_NODES.run}-h100-") for p in running)
    assert pd["status"]["replicas"] == {"desired": plan["data"], "ready": plan["data"]}
    wait_for(
        lambda: any(e.reason == "Planned" for e in events(kube_cluster, pd_namespace, "llama70b")),
        timeout=30,
        description="a Planned event",
    )


def test_moe_example_plans_on_a100(operator: Operator, kube_cluster: KubeCluster, pd_namespace: str) -> None:
    body = example("moe-mixtral.yaml")
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    plan = pd["status"]["plan"]
    expected = _expected(body, "NVIDIA-A100-SXM4-40GB")
    assert plan["gpus"] == expected["total_gpus"] and plan["gpuType"] == "A100-40GB"
    [deployment] = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Deployment"]
    assert _gpu_request(deployment.spec.template) == plan["gpusPerReplica"]


def test_multinode_example_spans_nodes_with_ray(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    """On the local control plane LeaderWorkerSet is installed: the example's replica is one LWS group
    (tests/e2e/test_multinode.py runs both backends)."""
    create(kube_cluster, pd_namespace, example("multinode-405b.yaml"))
    pd = wait_condition(kube_cluster, pd_namespace, "llama405b", "Ready", "True", timeout=120)
    plan = pd["status"]["plan"]
    assert plan["nodesPerReplica"] > 1 and plan["tensor"] == 8
    assert plan["multiNodeBackend"] == "leaderWorkerSet"
    kids = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    assert not kids["StatefulSet"]
    [lws] = kids["LeaderWorkerSet"]
    groups = lws["spec"]["leaderWorkerTemplate"]
    assert (lws["spec"]["replicas"], groups["size"]) == (plan["data"], plan["nodesPerReplica"])
    leader = groups["leaderTemplate"]["spec"]["containers"][0]
    assert leader["resources"]["limits"]["nvidia.com/gpu"] == "8"
    script = " ".join(leader["command"])
    assert "--distributed-executor-backend ray" in script and "ray start --head" in script
    assert len([p for p in kids["Pod"] if p.status.phase == "Running"]) == plan["nodesPerReplica"] * plan["data"]


def test_plan_only_example_creates_nothing(operator: Operator, kube_cluster: KubeCluster, pd_namespace: str) -> None:
    create(kube_cluster, pd_namespace, example("plan-only-deepseek.yaml"))
    pd = wait_condition(kube_cluster, pd_namespace, "deepseek-preview", "Planned", "True", "PlanOnly")
    assert pd["status"]["plan"]["gpus"] >= 8
    assert pd["status"]["candidates"]
    ready = next(c for c in pd["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] == "False" and ready["reason"] == "PlanOnly"
    kids = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
    assert not any(kids.values())


def test_cannot_fit_example_reports_the_error(operator: Operator, kube_cluster: KubeCluster, pd_namespace: str) -> None:
    create(kube_cluster, pd_namespace, example("cannot-fit.yaml"))
    pd = wait_condition(kube_cluster, pd_namespace, "too-big", "Planned", "False", "InsufficientGPUs")
    message = next(c for c in pd["status"]["conditions"] if c["type"] == "Planned")["message"]
    assert "smallest cluster that fits is" in message and "L4" in message
    wait_for(
        lambda: any(
            e.reason == "InsufficientGPUs" and e.type == "Warning"
            for e in events(kube_cluster, pd_namespace, "too-big")
        ),
        timeout=30,
        description="an InsufficientGPUs warning event",
    )
    assert not any(children(kube_cluster, pd_namespace, pd["metadata"]["uid"]).values())
    assert get(kube_cluster, pd_namespace, "too-big")["status"].get("plan") is None


def _volume_for(kube_cluster: KubeCluster, name: str, namespace: str, claim: str, size: str = "200Gi") -> None:
    """A ReadWriteMany PersistentVolume of ``size`` reserved for the claim the operator will create (no provisioner
    here); the test deletes it."""
    kube_cluster.core.create_persistent_volume(
        {
            "metadata": {"name": name},
            "spec": {
                "capacity": {"storage": size},
                "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain",
                "claimRef": {"namespace": namespace, "name": claim},
                "hostPath": {"path": f"/tmp/{name}"},
            },
        }
    )


def _trains_into_the_cache(kube_cluster: KubeCluster, namespace: str, train: dict, claim: str) -> None:
    """The training half: the download Job fetches the model and the dataset, the torchrun pods get the token,
    the cache and the runtime's flags, and the Job completes; the retained PVC keeps the export."""
    create(kube_cluster, namespace, train)
    wait_condition(kube_cluster, namespace, "train-llama8b", "ModelCached", "True", timeout=90)
    pd = wait_condition(kube_cluster, namespace, "train-llama8b", "Ready", "True", timeout=90)
    plan = pd["status"]["plan"]
    assert plan["gpus"] == _expected(train, "NVIDIA-H100-80GB-HBM3")["total_gpus"]
    kids = children(kube_cluster, namespace, pd["metadata"]["uid"])
    [download] = [j for j in kids["Job"] if "download" in j.metadata.name]
    assert download.status.succeeded
    script = download.spec.template.spec.containers[0].command[2]
    assert "download meta-llama/Llama-3.1-8B" in script
    assert "download --repo-type dataset tatsu-lab/alpaca" in script
    [job] = [j for j in kids["Job"] if j.metadata.name == "train-llama8b"]
    assert job.spec.completion_mode == "Indexed"
    pod = job.spec.template.spec
    env = {e.name: e for e in pod.containers[0].env}
    assert {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"} <= set(env)
    assert env["HF_TOKEN"].value_from.secret_key_ref.name == "hf-token"
    assert (env["HF_HOME"].value, env["HF_HUB_OFFLINE"].value) == ("/model-cache", "1")
    assert {v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim} == {claim}
    assert pod.security_context.fs_group == 65532  # the training image's user writes into the cache
    joined = " ".join(_container_argv(job.spec.template))
    assert "torchrun" in joined and "autoparallel.parallel.train" in joined
    assert f"--tensor-parallel {plan['tensor']}" in joined and f"--data-parallel {plan['data']}" in joined
    for flag in (
        "--model meta-llama/Llama-3.1-8B",
        "--init pretrained",
        "--data tatsu-lab/alpaca --data-field text",
        "--checkpoint-dir /model-cache/checkpoints/llama8b-alpaca --checkpoint-every 250",
        "--export-dir /model-cache/exports/llama8b-alpaca",
        "--resume",
        "--precision bf16",
    ):
        assert flag in joined, flag
    assert not kube_cluster.core.read_namespaced_persistent_volume_claim(claim, namespace).metadata.owner_references
    wait_for(
        lambda: (
            (kube_cluster.batch.read_namespaced_job(job.metadata.name, namespace).status.succeeded or 0)
            >= job.spec.completions
        ),
        timeout=60,
        description="the training Job's pods complete",
    )


def _serves_the_export(kube_cluster: KubeCluster, namespace: str, serve: dict, claim: str) -> None:
    """The serving half: planned from configFrom, nothing downloaded, vLLM loads the path from the claim."""
    create(kube_cluster, namespace, serve)
    served = wait_condition(kube_cluster, namespace, "llama8b-alpaca", "Ready", "True", timeout=90)
    base = {**serve, "spec": {**serve["spec"], "model": {"name": serve["spec"]["model"]["configFrom"]}}}
    assert served["status"]["plan"]["gpus"] == _expected(base, "NVIDIA-H100-80GB-HBM3")["total_gpus"]
    assert condition(served, "ModelCached") is None  # a path: nothing to download, nothing to wait for
    kids = children(kube_cluster, namespace, served["metadata"]["uid"])
    assert not kids["Job"]
    [deployment] = kids["Deployment"]
    argv = _container_argv(deployment.spec.template)
    assert argv[:3] == ["vllm", "serve", "/model-cache/exports/llama8b-alpaca"]
    assert argv[argv.index("--served-model-name") + 1] == "llama8b-alpaca"
    volumes = deployment.spec.template.spec.volumes
    assert claim in {v.persistent_volume_claim.claim_name for v in volumes if v.persistent_volume_claim}
    assert "/model-cache" in {m.mount_path for m in deployment.spec.template.spec.containers[0].volume_mounts}


def test_finetune_pair_trains_into_the_cache_then_serves_the_export(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    """examples/training-llama8b.yaml, then examples/serving-llama8b-finetuned.yaml on the PVC it kept."""
    train, serve = example("training-llama8b.yaml"), example("serving-llama8b-finetuned.yaml")
    claim = serve["spec"]["model"]["cache"]["claimName"]
    kube_cluster.core.create_namespaced_secret(
        pd_namespace, {"metadata": {"name": "hf-token"}, "stringData": {"token": "hf_example"}}
    )
    assert pds.TEST_NODES is not None
    volume = f"e2e-{pds.TEST_NODES.run}-{pd_namespace[-6:]}"
    _volume_for(kube_cluster, volume, pd_namespace, claim, train["spec"]["model"]["cache"]["size"])
    try:
        _trains_into_the_cache(kube_cluster, pd_namespace, train, claim)
        _serves_the_export(kube_cluster, pd_namespace, serve, claim)
    finally:
        kube_cluster.core.delete_persistent_volume(volume)


def test_gated_example_downloads_into_its_cache_then_serves(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("llama70b-instruct-gated.yaml")
    kube_cluster.core.create_namespaced_secret(
        pd_namespace, {"metadata": {"name": "hf-token"}, "stringData": {"token": "hf_example"}}
    )
    assert pds.TEST_NODES is not None
    volume = f"e2e-{pds.TEST_NODES.run}-{pd_namespace[-6:]}"
    _volume_for(kube_cluster, volume, pd_namespace, "llama70b-instruct-model-cache")
    try:
        create(kube_cluster, pd_namespace, body)
        wait_condition(kube_cluster, pd_namespace, "llama70b-instruct", "ModelCached", "True", timeout=90)
        pd = wait_condition(kube_cluster, pd_namespace, "llama70b-instruct", "Ready", "True", timeout=90)
        assert pd["status"]["plan"]["pods"] > 1  # several pods share the ReadWriteMany cache
        [deployment] = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])["Deployment"]
        env = {e.name: e for e in deployment.spec.template.spec.containers[0].env}
        assert env["HF_TOKEN"].value_from.secret_key_ref.name == "hf-token"
        assert env["HF_HUB_OFFLINE"].value == "1"
    finally:
        kube_cluster.core.delete_persistent_volume(volume)


def test_production_example_puts_its_pod_template_in_every_pod(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("llama70b-production.yaml")
    override = body["spec"]["podTemplate"]
    assert pds.TEST_NODES is not None
    run = f"e2e-{pds.TEST_NODES.run}-{pd_namespace[-6:]}"
    # The cluster objects the example expects: the Secret, the service account, the priority class (one of this
    # test's own, deleted afterwards), and a volume for the cache the operator claims.
    body["spec"]["podTemplate"]["spec"]["priorityClassName"] = run
    kube_cluster.core.create_namespaced_secret(
        pd_namespace, {"metadata": {"name": "hf-token"}, "stringData": {"token": "hf_example"}}
    )
    kube_cluster.core.create_namespaced_service_account(pd_namespace, {"metadata": {"name": "llm-serving"}})
    scheduling = client.SchedulingV1Api(kube_cluster.api_client)
    scheduling.create_priority_class({"metadata": {"name": run}, "value": 1000})
    _volume_for(kube_cluster, run, pd_namespace, "llama70b-prod-model-cache")
    try:
        create(kube_cluster, pd_namespace, body)
        pd = wait_condition(kube_cluster, pd_namespace, "llama70b-prod", "Ready", "True", timeout=120)
        kids = children(kube_cluster, pd_namespace, pd["metadata"]["uid"])
        download = [j for j in kids["Job"] if "download" in j.metadata.name]
        assert download and download[0].status.succeeded
        serving = [p for p in kids["Pod"] if p.metadata.labels["app.kubernetes.io/component"] == "inference"]
        assert len(serving) == pd["status"]["plan"]["pods"]
        templates = [download[0].spec.template, *[p for p in serving]]
        for pod in templates:
            assert pod.metadata.annotations["sidecar.istio.io/inject"] == "false"
            assert pod.metadata.labels["team"] == "llm-platform"
            assert pod.spec.service_account_name == "llm-serving"
            assert pod.spec.priority_class_name == run
            assert [s.name for s in pod.spec.image_pull_secrets] == ["registry-credentials"]
            assert pod.spec.affinity.pod_anti_affinity is not None
        for pod in serving:
            [vllm] = pod.spec.containers
            assert "/templates" in {m.mount_path for m in vllm.volume_mounts}
            assert (
                vllm.resources.requests["memory"]
                == override["spec"]["containers"][0]["resources"]["requests"]["memory"]
            )
    finally:
        kube_cluster.core.delete_persistent_volume(run)
        scheduling.delete_priority_class(run)
