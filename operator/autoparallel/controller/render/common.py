"""Builders shared by the inference and training renderers: metadata, placement, resources, containers.

Every function is pure and returns plain dicts with Kubernetes field names; unset fields are left out rather
than written as null, so server-side apply owns exactly the fields the operator means to set.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any

from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH, LABEL_OWNER_UID
from autoparallel.controller.models import ParallelDeploymentSpec
from autoparallel.controller.models_pod import EnvFromSource, EnvVar
from autoparallel.controller.plan import LABEL_PRODUCT, ChosenPlan, Owner
from autoparallel.controller.render.overrides import merge_pod_template

Manifest = dict[str, Any]
"""One Kubernetes object (or a part of one) as a plain, JSON-serialisable dict."""

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "autoparallel"
"""Value of ``app.kubernetes.io/managed-by`` on every child; with the owner-uid label it finds stale children."""

COMPONENT_INFERENCE = "inference"
COMPONENT_TRAINING = "training"

CPU_REQUEST_PER_GPU = 2
MEMORY_REQUEST_PER_GPU_GIB = 8
"""CPU cores and GiB of memory requested per GPU: one busy core per GPU worker process plus the API server or
data loader, and host memory for tokenizers and staging buffers. Kept to what the smallest common GPU instances
leave allocatable (4 vCPU and 16 GiB per GPU, e.g. AWS g5.xlarge), so a request never makes a planned pod
unschedulable. Requests only: no CPU limit (throttling stalls NCCL proxy threads) and no memory limit (loading
checkpoints fills the page cache, which a limit would turn into OOM kills)."""

CACHE_VOLUME = "model-cache"
CACHE_PATH = "/model-cache"
"""Where the weight cache (spec.model.cache) is mounted; HF_HOME points here (hub/ holds the snapshots)."""

SHM_VOLUME = "dshm"
SHM_SIZE_LIMIT = "16Gi"
"""/dev/shm as tmpfs: NCCL and vLLM's worker processes exchange tensors through shared memory, and the
container runtime's default 64 MiB makes NCCL fail at start-up."""


def labels(owner: Owner, component: str) -> dict[str, str]:
    """Labels of every child and pod of ``owner``."""
    return {
        LABEL_NAME: f"autoparallel-{component}",
        LABEL_INSTANCE: owner.name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: component,
        LABEL_OWNER_UID: owner.uid,
    }


def selector_labels(owner: Owner, component: str) -> dict[str, str]:
    """The subset of :func:`labels` that selects the pods of ``owner`` (selectors are immutable: keep it stable)."""
    return {LABEL_INSTANCE: owner.name, LABEL_COMPONENT: component, LABEL_OWNER_UID: owner.uid}


def owner_references(owner: Owner) -> list[Manifest]:
    """Make ``owner`` the controller of a child: deleting the ParallelDeployment garbage-collects it."""
    return [
        {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": owner.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def object_meta(name: str, plan_hash: str, owner: Owner, component: str) -> Manifest:
    """``metadata`` of a child object of the plan ``plan_hash``."""
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "annotations": {ANNOTATION_PLAN_HASH: plan_hash},
        "ownerReferences": owner_references(owner),
    }


def node_selector(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> dict[str, str]:
    """The user's node selector, narrowed to the planned pool's GPU product when the nodes carry it."""
    selector = dict(spec.placement.node_selector)
    if plan.gpu_product:
        selector[LABEL_PRODUCT] = plan.gpu_product
    return selector


def tolerations(spec: ParallelDeploymentSpec) -> list[Manifest]:
    """The user's tolerations (spec.placement's, then spec.podTemplate's), plus one for the usual GPU-node
    taint (key = the GPU resource name, any value, NoSchedule: GKE's ``nvidia.com/gpu=present`` and the NVIDIA
    GPU operator's convention). Planning counts the same list."""
    gpu_taint: Manifest = {"key": spec.placement.gpu_resource, "operator": "Exists", "effect": "NoSchedule"}
    extra = spec.pod_template.spec.tolerations if spec.pod_template else []
    user: list[Manifest] = []
    for toleration in [*spec.placement.tolerations, *extra]:
        dumped = toleration.model_dump(by_alias=True, exclude_none=True, mode="json")
        if dumped not in user:
            user.append(dumped)
    return user if gpu_taint in user else [*user, gpu_taint]


def gpu_resources(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> Manifest:
    """Requests and limits of one pod: the planned GPUs (an extended resource: request = limit), and CPU and
    memory in proportion to them."""
    gpus = str(plan.gpus_per_pod)
    return {
        "requests": {
            "cpu": str(CPU_REQUEST_PER_GPU * plan.gpus_per_pod),
            "memory": f"{MEMORY_REQUEST_PER_GPU_GIB * plan.gpus_per_pod}Gi",
            spec.placement.gpu_resource: gpus,
        },
        "limits": {spec.placement.gpu_resource: gpus},
    }


HF_TOKEN = "HF_TOKEN"
"""The variable huggingface_hub (and so vLLM and transformers) reads the Hub token from."""


def token_env(spec: ParallelDeploymentSpec) -> list[Manifest]:
    """HF_TOKEN from ``spec.model.tokenSecretRef`` (resolved by the kubelet; the operator never reads it)."""
    ref = spec.model.token_secret_ref
    if ref is None:
        return []
    return [{"name": HF_TOKEN, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}]


def claim_name(spec: ParallelDeploymentSpec, owner: Owner) -> str | None:
    cache = spec.model.cache
    if cache is None:
        return None
    return cache.claim_name or f"{owner.name}-model-cache"


def cache_env(spec: ParallelDeploymentSpec) -> list[Manifest]:
    """HF_HOME on the cache, and offline loading once the model was prefetched."""
    if spec.model.cache is None:
        return []
    variables = [{"name": "HF_HOME", "value": CACHE_PATH}]
    if spec.prefetched:
        variables.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    return variables


def writable_mounts(spec: ParallelDeploymentSpec, container_name: str) -> list[str]:
    """Where the container ``container_name`` has writable volumes: the cache, and the writable volumeMounts
    spec.podTemplate gives it."""
    mounts = [CACHE_PATH] if spec.model.cache is not None else []
    overrides = spec.pod_template.spec.containers if spec.pod_template else []
    for override in overrides:
        if override.name == container_name:
            mounts += [str(m["mountPath"]) for m in override.volume_mounts if not m.get("readOnly")]
    return mounts


def on_a_volume(path: str, mounts: Sequence[str]) -> bool:
    """Whether ``path`` lies below one of ``mounts`` (mount points, not string prefixes: /model-cache-2 is not
    below /model-cache, nor is /model-cache/../etc)."""
    normal = PurePosixPath(posixpath.normpath(path))
    return any(normal.is_relative_to(mount) for mount in mounts)


def cache_volume(spec: ParallelDeploymentSpec, owner: Owner) -> list[Manifest]:
    claim = claim_name(spec, owner)
    return [] if claim is None else [{"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": claim}}]


def cache_mount(spec: ParallelDeploymentSpec) -> list[Manifest]:
    return [] if spec.model.cache is None else [{"name": CACHE_VOLUME, "mountPath": CACHE_PATH}]


def model_env(spec: ParallelDeploymentSpec) -> list[Manifest]:
    """What every pod that loads the model needs: the token and the cache."""
    return [*token_env(spec), *cache_env(spec)]


def env(planned: Iterable[Manifest], user: Sequence[EnvVar]) -> list[Manifest]:
    """The operator's variables, then the user's. Names are unique (server-side apply merges env by name):
    a user variable named like an operator one is dropped, since the planned values must agree across pods;
    of two user variables with one name the last wins, as the kubelet would."""
    merged = {variable["name"]: variable for variable in planned}
    user_values = {variable.name: variable.model_dump(by_alias=True, exclude_none=True) for variable in user}
    for name, variable in user_values.items():
        merged.setdefault(name, variable)
    return list(merged.values())


def env_from(sources: Sequence[EnvFromSource]) -> list[Manifest]:
    return [source.model_dump(by_alias=True, exclude_none=True) for source in sources]


def field_env(name: str, field_path: str) -> Manifest:
    """An environment variable from the downward API."""
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": field_path}}}


def shm_volume() -> Manifest:
    return {"name": SHM_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE_LIMIT}}


def container(
    name: str,
    image: str,
    command: Sequence[str],
    ports: Sequence[Manifest],
    env_vars: Sequence[Manifest],
    resources: Manifest,
    probes: Mapping[str, Manifest] | None = None,
    env_sources: Sequence[Manifest] = (),
) -> Manifest:
    """A GPU container with /dev/shm mounted; ``probes`` maps ``readinessProbe`` etc. to their specs. When it
    fails, the kubelet keeps the tail of its log as the termination message (FallbackToLogsOnError): the
    operator reads vLLM's out-of-memory line there, without access to pod logs."""
    body: Manifest = {"name": name, "image": image, "command": list(command)}
    if ports:
        body["ports"] = list(ports)
    if env_vars:
        body["env"] = list(env_vars)
    if env_sources:
        body["envFrom"] = list(env_sources)
    body["resources"] = resources
    body["volumeMounts"] = [{"name": SHM_VOLUME, "mountPath": "/dev/shm"}]
    body["terminationMessagePolicy"] = "FallbackToLogsOnError"
    body.update(probes or {})
    return body


def pod_template(
    plan: ChosenPlan,
    spec: ParallelDeploymentSpec,
    owner: Owner,
    component: str,
    main: Manifest,
    extra_labels: Mapping[str, str] | None = None,
    extra_spec: Mapping[str, Any] | None = None,
) -> Manifest:
    """A pod template running ``main`` on the planned pool; ``extra_spec`` adds pod fields (restartPolicy …)."""
    pod_spec: Manifest = {"enableServiceLinks": False}  # no Service env vars: they collide with e.g. VLLM_PORT
    pod_spec.update(extra_spec or {})
    selector = node_selector(plan, spec)
    if selector:
        pod_spec["nodeSelector"] = selector
    pod_spec["tolerations"] = tolerations(spec)
    pod_spec["containers"] = [{**main, "volumeMounts": [*main.get("volumeMounts", []), *cache_mount(spec)]}]
    pod_spec["volumes"] = [shm_volume(), *cache_volume(spec, owner)]
    # The plan hash on the pods too: a reservation counts the pods of its plan that are bound.
    metadata = {
        "labels": {**labels(owner, component), **(extra_labels or {})},
        "annotations": {ANNOTATION_PLAN_HASH: plan.plan_hash},
    }
    return merge_pod_template({"metadata": metadata, "spec": pod_spec}, spec, spec.placement.gpu_resource)


def service_port(name: str, port: int) -> Manifest:
    return {"name": name, "port": port, "targetPort": name, "protocol": "TCP"}


def container_port(name: str, port: int) -> Manifest:
    return {"name": name, "containerPort": port, "protocol": "TCP"}


def children_selector(owner: Owner) -> str:
    """Label selector (``kubectl -l`` syntax) matching every child of ``owner``, of any plan and component."""
    return f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_OWNER_UID}={owner.uid}"
