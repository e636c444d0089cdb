"""``spec.podTemplate``: the user's additions merged into every pod template the operator renders.

The plan's fields win. A user value that would change one of them (the GPU count, a variable or volume the
operator sets, a label the selectors use, a node affinity that excludes the planned pool) is not dropped: the
merge raises :class:`PodTemplateConflict` naming the field, which the operator reports as ``Planned=False``
with reason ``PodTemplateConflict``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from autoparallel.controller.models import ParallelDeploymentSpec, WorkloadType
from autoparallel.controller.models_pod import ContainerOverride, PodTemplate

Manifest = dict[str, Any]
PATH = "spec.podTemplate"
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "autoparallel.io/")
"""Label keys the operator's selectors and bookkeeping use."""
RESERVED_ANNOTATION_PREFIXES = ("autoparallel.io/",)
CPU_MEMORY = ("cpu", "memory")


class PodTemplateConflict(ValueError):
    """``spec.podTemplate`` contradicts what the plan sets; the message names the field and the fix."""


def main_containers(spec: ParallelDeploymentSpec) -> tuple[str, ...]:
    """Names a ``containers[]`` override may use: the serving or training container, and the download Job's."""
    main = "trainer" if spec.workload.type is WorkloadType.TRAINING else "vllm"
    return (main, "download") if spec.prefetched else (main,)


def check_containers(spec: ParallelDeploymentSpec) -> None:
    """Every container override names a container the resource's pods have."""
    if spec.pod_template is None:
        return
    names = main_containers(spec)
    for index, override in enumerate(spec.pod_template.spec.containers):
        if override.name not in names:
            raise PodTemplateConflict(
                f"{PATH}.spec.containers[{index}].name: the pods of this resource have no container "
                f"{override.name!r}; use one of {', '.join(names)}"
            )


def merge_pod_template(template: Manifest, spec: ParallelDeploymentSpec, gpu_resource: str | None = None) -> Manifest:
    """``template`` (a pod template: metadata and spec) with ``spec.podTemplate`` merged in. ``gpu_resource``
    names the extended resource whose planned count no override may change."""
    override = spec.pod_template
    if override is None:
        return template
    merged = copy.deepcopy(template)
    _merge_metadata(merged["metadata"], override)
    pod = merged["spec"]
    _merge_pod_fields(pod, override)
    _merge_volumes(pod, override)
    for index, container_override in enumerate(override.spec.containers):
        for container in pod["containers"]:
            if container["name"] == container_override.name:
                where = f"{PATH}.spec.containers[{index}]"
                _merge_container(container, container_override, where, pod, gpu_resource)
    return merged


def _merge_metadata(metadata: Manifest, override: PodTemplate) -> None:
    fields = (
        ("labels", override.metadata.labels, RESERVED_LABEL_PREFIXES),
        ("annotations", override.metadata.annotations, RESERVED_ANNOTATION_PREFIXES),
    )
    for field, values, reserved in fields:
        planned = metadata.setdefault(field, {})
        for key, value in values.items():
            if key in planned or key.startswith(reserved):
                raise PodTemplateConflict(
                    f"{PATH}.metadata.{field}[{key}]: {', '.join(reserved)} keys are the operator's "
                    f"(selectors and plan bookkeeping); use a key of your own"
                )
            planned[key] = value


def _dump(values: Iterable[Any]) -> list[Manifest]:
    return [value.model_dump(by_alias=True, exclude_none=True, mode="json") for value in values]


def _merge_pod_fields(pod: Manifest, override: PodTemplate) -> None:
    fields = override.spec
    user = {
        "serviceAccountName": fields.service_account_name,
        "priorityClassName": fields.priority_class_name,
        "runtimeClassName": fields.runtime_class_name,
        "securityContext": fields.security_context,
        "affinity": fields.affinity,
    }
    for field, value in user.items():
        if value is None:
            continue
        if field in pod and pod[field] != value:
            raise PodTemplateConflict(f"{PATH}.spec.{field}: the plan sets it to {pod[field]!r}; remove it")
        pod[field] = copy.deepcopy(value)
    if fields.affinity:
        _check_node_affinity(fields.affinity, pod.get("nodeSelector", {}))
    if fields.image_pull_secrets:
        pod["imagePullSecrets"] = _dump(fields.image_pull_secrets)


def _excludes(expression: Mapping[str, Any], node_selector: Mapping[str, str]) -> bool:
    """Whether a node selector requirement can never hold on a node carrying ``node_selector``'s labels."""
    key, operator = str(expression.get("key")), expression.get("operator")
    if key not in node_selector:
        return False
    value, values = node_selector[key], expression.get("values") or []
    return (
        (operator == "In" and value not in values)
        or (operator == "NotIn" and value in values)
        or operator == "DoesNotExist"
    )


def _check_node_affinity(affinity: Mapping[str, Any], node_selector: Mapping[str, str]) -> None:
    required = (affinity.get("nodeAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    terms = required.get("nodeSelectorTerms") or []
    if terms and all(any(_excludes(e, node_selector) for e in t.get("matchExpressions") or []) for t in terms):
        raise PodTemplateConflict(
            f"{PATH}.spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution: no term admits "
            f"the planned pool's nodes ({', '.join(f'{k}={v}' for k, v in node_selector.items())}); choose the "
            "pool with spec.placement.nodeSelector instead"
        )


def _merge_volumes(pod: Manifest, override: PodTemplate) -> None:
    planned = {volume["name"] for volume in pod.get("volumes", [])}
    for index, volume in enumerate(override.spec.volumes):
        if volume.get("name") in planned:
            raise PodTemplateConflict(
                f"{PATH}.spec.volumes[{index}].name: {volume['name']} is the operator's volume; use another name"
            )
        pod.setdefault("volumes", []).append(copy.deepcopy(volume))
        planned.add(volume.get("name"))


def _merge_container(
    container: Manifest, override: ContainerOverride, where: str, pod: Manifest, gpu_resource: str | None
) -> None:
    planned_env = {variable["name"] for variable in container.get("env", [])}
    for index, variable in enumerate(_dump(override.env)):
        if variable["name"] in planned_env:
            raise PodTemplateConflict(
                f"{where}.env[{index}].name: {variable['name']} is already set for this container (by the plan "
                "or by serving/training env); set it in one place"
            )
        container.setdefault("env", []).append(variable)
        planned_env.add(variable["name"])
    if override.env_from:
        container.setdefault("envFrom", []).extend(_dump(override.env_from))
    volumes = {volume["name"] for volume in pod.get("volumes", [])}
    for index, mount in enumerate(override.volume_mounts):
        taken = {(m["name"], m["mountPath"]) for m in container.get("volumeMounts", [])}
        if mount.get("name") not in volumes:
            raise PodTemplateConflict(
                f"{where}.volumeMounts[{index}].name: no volume {mount.get('name')} in {PATH}.spec.volumes"
            )
        if any(mount.get("name") == name or mount.get("mountPath") == path for name, path in taken):
            raise PodTemplateConflict(
                f"{where}.volumeMounts[{index}]: {mount.get('name')} at {mount.get('mountPath')} collides with a "
                "mount of the operator's (/dev/shm, the weight cache)"
            )
        container.setdefault("volumeMounts", []).append(copy.deepcopy(mount))
    if override.resources:
        _merge_resources(container.setdefault("resources", {}), override.resources, f"{where}.resources", gpu_resource)


def _merge_resources(planned: Manifest, user: Mapping[str, Any], where: str, gpu_resource: str | None) -> None:
    for field in ("requests", "limits"):
        for key, value in (user.get(field) or {}).items():
            current = planned.get(field, {}).get(key)
            if key == gpu_resource:
                if str(value) != str(current):
                    raise PodTemplateConflict(
                        f"{where}.{field}[{key}]: the plan gives each pod {current} (spec.parallelism pins the "
                        "degrees); remove it"
                    )
                continue  # the same count: the plan's value stays
            planned.setdefault(field, {})[key] = value
            if field == "limits" and key in CPU_MEMORY and key not in (user.get("requests") or {}):
                # A limit without a request: Kubernetes takes the limit as the request, never above it.
                planned.get("requests", {}).pop(key, None)
    if "claims" in user:
        planned["claims"] = copy.deepcopy(user["claims"])
