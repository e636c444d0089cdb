"""Children of an inference ParallelDeployment: vLLM pods and the Services in front of them.

One node per replica: a Deployment with DP replicas, each pod one vLLM engine on ``gpus_per_pod`` GPUs.
Across nodes, on the statefulSet backend: per replica a StatefulSet of ``nodes_per_replica`` pods behind a
headless Service; pod 0 runs the Ray head and ``vllm serve``, the others join its Ray cluster (the
leaderWorkerSet backend is :mod:`.leaderworkerset`, with the same Ray commands). Either way one ClusterIP Service
``<name>`` is the OpenAI endpoint.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import PurePosixPath

from autoparallel.controller.models import DType, MultiNodeBackend, ParallelDeploymentSpec, ServingSpec
from autoparallel.controller.plan import ChosenPlan, Owner
from autoparallel.controller.render.common import (
    COMPONENT_INFERENCE,
    Manifest,
    container,
    container_port,
    env,
    env_from,
    field_env,
    gpu_resources,
    model_env,
    object_meta,
    pod_template,
    selector_labels,
    service_port,
)
from autoparallel.planner.commands import ServeOptions, vllm_serve_args

HTTP_PORT_NAME = "http"
HEALTH_PATH = "/health"
"""vLLM's OpenAI server answers 200 here once the engine is up, 500 when the engine has died."""

RAY_PORT = 6379
RAY_PORT_NAME = "ray-gcs"
LABEL_REPLICA = "autoparallel.io/replica"
"""Data-parallel replica index of a multi-node group's pods."""
LABEL_POD_INDEX = "apps.kubernetes.io/pod-index"
"""Set by the StatefulSet controller on its pods (Kubernetes ≥ 1.28); the endpoint selects index 0 with it."""
LABEL_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
"""Set by the LeaderWorkerSet controller on its pods: 0 on each group's leader, which runs vLLM's server."""
CLUSTER_DOMAIN = "cluster.local"
"""The cluster's DNS domain, for the Ray head's fully qualified name."""

STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 120
"""The startup probe allows 120 × 10 s = 20 minutes: downloading and loading a 70B checkpoint takes minutes,
and liveness must not restart a pod that is still loading."""
PROGRESS_DEADLINE_SECONDS = 1800
"""Longer than the startup probe's budget, so a slow first model load is not reported as a stalled rollout."""
PROBE_TIMEOUT_SECONDS = 5
HEALTH_CHECK: Manifest = {"httpGet": {"path": HEALTH_PATH, "port": HTTP_PORT_NAME}}
"""Probe handler of a pod running vLLM's server (every probe gets its own copy)."""


def _serving(spec: ParallelDeploymentSpec) -> ServingSpec:
    return spec.serving or ServingSpec()


def serve_options(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> ServeOptions:
    """The ``vllm serve`` flags that follow from the spec rather than from the degrees."""
    serving = _serving(spec)
    return ServeOptions(
        model=spec.model.name,
        max_model_len=plan.planned_sequence_length(spec.workload.sequence_length),
        gpu_memory_utilization=float(serving.gpu_memory_utilization),
        dtype=None if spec.model.dtype is DType.AUTO else spec.model.dtype.value,
        quantization=spec.model.quantization.value if spec.model.quantization else None,
        kv_cache_dtype=serving.kv_cache_dtype.value,
        port=serving.port,
        revision=spec.model.revision,
        served_model_name=served_model_name(spec),
        max_num_seqs=plan.max_num_seqs,
    )


def served_model_name(spec: ParallelDeploymentSpec) -> str | None:
    """For a model at a path, the folder's name (``/model-cache/exports/llama8b-chat`` → ``llama8b-chat``), which
    clients request instead of the path; a Hugging Face id is served under its own name. ``serving.args`` may
    give another ``--served-model-name`` (the later flag wins)."""
    if not spec.model.is_path:
        return None
    return PurePosixPath(spec.model.name).name or None


def vllm_argv(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> list[str]:
    """``vllm serve`` with the planned flags, then the user's ``serving.args`` (later flags win in vLLM)."""
    multi_node = plan.nodes_per_replica > 1
    return [*vllm_serve_args(plan.degrees, serve_options(plan, spec), multi_node=multi_node), *_serving(spec).args]


def serving_probes(handler: Manifest) -> dict[str, Manifest]:
    """Startup (generous: model loading), readiness (out of the Service while unhealthy) and liveness
    (restart a dead engine) checks, each with its own copy of ``handler``."""
    timings = {
        "startupProbe": (STARTUP_PERIOD_SECONDS, STARTUP_FAILURE_THRESHOLD),
        "readinessProbe": (10, 3),
        "livenessProbe": (30, 3),
    }
    return {
        probe: {
            **copy.deepcopy(handler),
            "periodSeconds": period,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
            "failureThreshold": failures,
        }
        for probe, (period, failures) in timings.items()
    }


def render_inference_deployment(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner) -> Manifest:
    """One node per replica: a Deployment of DP pods, each serving the whole model on ``gpus_per_pod`` GPUs."""
    serving = _serving(spec)
    main = container(
        "vllm",
        serving.image,
        vllm_argv(plan, spec),
        ports=[container_port(HTTP_PORT_NAME, serving.port)],
        env_vars=env(model_env(spec), serving.env),
        env_sources=env_from(serving.env_from),
        resources=gpu_resources(plan, spec),
        probes=serving_probes(HEALTH_CHECK),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": object_meta(owner.name, plan.plan_hash, owner, COMPONENT_INFERENCE),
        "spec": {
            # With spec.scaling the autoscaler owns the replica count (from minReplicas up): not applied here.
            **({} if spec.scaling else {"replicas": plan.degrees.data}),
            "selector": {"matchLabels": selector_labels(owner, COMPONENT_INFERENCE)},
            # Replace one pod at a time and never surge: a surge pod would need GPUs beyond the plan, which a
            # full pool does not have, and the rollout would hang on a Pending pod.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}},
            "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
            "template": pod_template(plan, spec, owner, COMPONENT_INFERENCE, main),
        },
    }


def server_selector(owner: Owner, backend: MultiNodeBackend | None) -> dict[str, str]:
    """Labels of the pods that run vLLM's server: every serving pod when a replica is one pod (``backend`` None),
    else the head of every multi-node group (a StatefulSet's pod 0, a LeaderWorkerSet group's leader)."""
    selector = selector_labels(owner, COMPONENT_INFERENCE)
    if backend is MultiNodeBackend.STATEFUL_SET:
        selector[LABEL_POD_INDEX] = "0"
    elif backend is MultiNodeBackend.LEADER_WORKER_SET:
        selector[LABEL_WORKER_INDEX] = "0"
    return selector


def render_inference_service(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner) -> Manifest:
    """The OpenAI endpoint ``<name>``: every serving pod, or the head (the pod running vLLM) of every group."""
    selector = server_selector(owner, plan.multi_node_backend)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner.name, plan.plan_hash, owner, COMPONENT_INFERENCE),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [service_port(HTTP_PORT_NAME, _serving(spec).port)],
        },
    }


def group_name(owner: Owner, replica: int) -> str:
    """Name of replica ``replica``'s StatefulSet and headless Service."""
    return f"{owner.name}-r{replica}"


def _group_selector(owner: Owner, replica: int) -> dict[str, str]:
    return {**selector_labels(owner, COMPONENT_INFERENCE), LABEL_REPLICA: str(replica)}


def ray_head_address(owner: Owner, replica: int) -> str:
    """``host:port`` of replica ``replica``'s Ray head: pod 0 through the group's headless Service."""
    group = group_name(owner, replica)
    return f"{group}-0.{group}.{owner.namespace}.svc.{CLUSTER_DOMAIN}:{RAY_PORT}"


_IS_HEAD = '[ "${POD_NAME##*-}" = 0 ]'
"""True in the group's pod 0: a StatefulSet pod's name ends in its ordinal (POD_NAME is from the downward API)."""


def ray_head_commands(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> list[str]:
    """The head of a multi-node group: start the Ray head, then serve (vLLM waits until the group's GPUs have
    joined Ray). Arguments are shell-quoted, so only Kubernetes' own ``$(VAR)`` expansion applies to them, as in
    the Deployment."""
    return [shlex.join(["ray", "start", "--head", f"--port={RAY_PORT}"]), "exec " + shlex.join(vllm_argv(plan, spec))]


def ray_worker_commands(head: str) -> list[str]:
    """The other pods of a group: wait for the Ray head at ``head`` (``host:port``) without failing (a failed
    container restarts, and on a LeaderWorkerSet restarts the whole group), then join it until its Ray node dies."""
    return [
        f"until {shlex.join(['ray', 'health-check', f'--address={head}'])} >/dev/null 2>&1; do sleep 5; done",
        "exec " + shlex.join(["ray", "start", f"--address={head}", "--block"]),
    ]


def group_script(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, replica: int) -> str:
    """Shell script of every pod of a StatefulSet group: pod 0 starts the Ray head and serves, the others wait
    for the head and join it."""
    head = [f"  {command}" for command in ray_head_commands(plan, spec)]
    workers = ray_worker_commands(ray_head_address(owner, replica))
    return "\n".join(["set -e", f"if {_IS_HEAD}; then", *head, "fi", *workers])


def _group_health_check(port: int) -> Manifest:
    """Probe handler of a group's pods: pod 0 checks vLLM's /health; workers have no server and pass (their
    ``ray start --block`` exits, restarting the container, when their Ray node dies)."""
    fetch = "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=4)"
    check = shlex.join(["python3", "-c", fetch, f"http://127.0.0.1:{port}{HEALTH_PATH}"])
    return {"exec": {"command": ["/bin/sh", "-c", f"! {_IS_HEAD} || {check}"]}}


def render_group_service(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, replica: int) -> Manifest:
    """Headless Service giving replica ``replica``'s pods DNS names, before they are ready (workers must find
    the head while vLLM, and so readiness, waits for them)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(group_name(owner, replica), plan.plan_hash, owner, COMPONENT_INFERENCE),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": _group_selector(owner, replica),
            "ports": [service_port(RAY_PORT_NAME, RAY_PORT)],
        },
    }


def render_group_statefulset(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, replica: int) -> Manifest:
    """Replica ``replica`` across ``nodes_per_replica`` pods of ``gpus_per_pod`` GPUs, joined by Ray."""
    serving = _serving(spec)
    name = group_name(owner, replica)
    main = container(
        "vllm",
        serving.image,
        ["/bin/sh", "-c", group_script(plan, spec, owner, replica)],
        ports=[container_port(HTTP_PORT_NAME, serving.port), container_port(RAY_PORT_NAME, RAY_PORT)],
        env_vars=env([field_env("POD_NAME", "metadata.name"), *model_env(spec)], serving.env),
        env_sources=env_from(serving.env_from),
        resources=gpu_resources(plan, spec),
        probes=serving_probes(_group_health_check(serving.port)),
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(name, plan.plan_hash, owner, COMPONENT_INFERENCE),
        "spec": {
            "replicas": plan.nodes_per_replica,
            "serviceName": name,
            # All pods at once: pod 0 cannot become ready before the others have joined its Ray cluster.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": _group_selector(owner, replica)},
            "template": pod_template(
                plan, spec, owner, COMPONENT_INFERENCE, main, extra_labels={LABEL_REPLICA: str(replica)}
            ),
        },
    }
