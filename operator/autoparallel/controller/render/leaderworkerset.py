"""Multi-node replicas on LeaderWorkerSet (lws.sigs.k8s.io, spec.serving.multiNodeBackend): one object for all
replicas, a group of ``nodes_per_replica`` pods per replica. The group's leader starts the Ray head and serves,
its workers join the head at the address the LWS controller gives them (``LWS_LEADER_ADDRESS``). A failed pod or
restarted container restarts the whole group (a vLLM engine with a dead Ray worker is dead), and a new plan rolls
out group by group.

The LeaderWorkerSet is named ``<name>-lws``, not ``<name>``: its controller creates a headless Service named
after it for the group's DNS names, and ``<name>`` is the OpenAI endpoint's ClusterIP Service.
"""

from __future__ import annotations

from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import ParallelDeploymentSpec, ServingSpec
from autoparallel.controller.plan import ChosenPlan, Owner
from autoparallel.controller.render.common import (
    COMPONENT_INFERENCE,
    Manifest,
    container,
    container_port,
    env,
    env_from,
    gpu_resources,
    model_env,
    object_meta,
    pod_template,
)
from autoparallel.controller.render.inference import (
    HEALTH_CHECK,
    HTTP_PORT_NAME,
    RAY_PORT,
    RAY_PORT_NAME,
    ray_head_commands,
    ray_worker_commands,
    serving_probes,
)

LEADER_WORKER_SET = BY_KIND["LeaderWorkerSet"]
ANNOTATION_EXCLUSIVE_TOPOLOGY = "leaderworkerset.sigs.k8s.io/exclusive-topology"
"""One group per domain of this node label, all of a group's pods in it (LWS's exclusive placement)."""
LEADER_ADDRESS = "$(LWS_LEADER_ADDRESS)"
"""The group leader's DNS name, set by the LWS controller in every pod's environment; Kubernetes expands
``$(VAR)`` in a container's command, inside the shell's quotes too."""


def leader_worker_set_name(owner: Owner) -> str:
    return f"{owner.name}-lws"


def leader_script(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> str:
    """The leader: the Ray head, then ``vllm serve`` with the planned flags."""
    return "\n".join(["set -e", *ray_head_commands(plan, spec)])


def worker_script() -> str:
    """A worker: wait for the leader's Ray head, then join it."""
    return "\n".join(["set -e", *ray_worker_commands(f"{LEADER_ADDRESS}:{RAY_PORT}")])


def _template(
    plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, script: str, ports: list[Manifest], *, serves: bool
) -> Manifest:
    serving = spec.serving or ServingSpec()
    main = container(
        "vllm",
        serving.image,
        ["/bin/sh", "-c", script],
        ports=ports,
        env_vars=env(model_env(spec), serving.env),
        env_sources=env_from(serving.env_from),
        resources=gpu_resources(plan, spec),
        # A worker serves nothing (it connects to the leader): ready once running; a dead Ray node ends it.
        probes=serving_probes(HEALTH_CHECK) if serves else None,
    )
    return pod_template(plan, spec, owner, COMPONENT_INFERENCE, main)


def render_leader_worker_set(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner) -> Manifest:
    """DP groups of ``nodes_per_replica`` pods of ``gpus_per_pod`` GPUs each, joined by Ray."""
    serving = spec.serving or ServingSpec()
    metadata = object_meta(leader_worker_set_name(owner), plan.plan_hash, owner, COMPONENT_INFERENCE)
    if spec.placement.topology_key:
        metadata["annotations"][ANNOTATION_EXCLUSIVE_TOPOLOGY] = spec.placement.topology_key
    leader_ports = [container_port(HTTP_PORT_NAME, serving.port), container_port(RAY_PORT_NAME, RAY_PORT)]
    return {
        "apiVersion": LEADER_WORKER_SET.api_version,
        "kind": LEADER_WORKER_SET.kind,
        "metadata": metadata,
        "spec": {
            # With spec.scaling the autoscaler owns the group count (through the scale subresource): not applied.
            **({} if spec.scaling else {"replicas": plan.degrees.data}),
            # Workers start with their leader, not once it is ready: it is ready only after they joined Ray.
            "startupPolicy": "LeaderCreated",
            # One group at a time and no surge: a surge group would need GPUs beyond the plan.
            "rolloutStrategy": {
                "type": "RollingUpdate",
                "rollingUpdateConfiguration": {"maxUnavailable": 1, "maxSurge": 0},
            },
            "leaderWorkerTemplate": {
                "size": plan.nodes_per_replica,
                "restartPolicy": "RecreateGroupOnPodRestart",
                "leaderTemplate": _template(plan, spec, owner, leader_script(plan, spec), leader_ports, serves=True),
                "workerTemplate": _template(plan, spec, owner, worker_script(), [], serves=False),
            },
        },
    }
