"""The pod-level parts of the ``ParallelDeployment`` API: environment variables and their sources,
tolerations, and ``spec.podTemplate`` (what users may add to every pod the operator creates).

The Kubernetes types a pod override embeds (affinity, security context, volumes, volume mounts, resources) are
not re-declared here: their schemas come from the Kubernetes project's own OpenAPI document
(``schemas/core-v1.json``, written by ``hack/k8s-schemas.py``), so the API server validates them exactly as in
a pod.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema


class KubeModel(BaseModel):
    """Base of every API model: camelCase aliases, unknown fields refused, docstrings as descriptions."""

    model_config = ConfigDict(populate_by_name=True, extra="forbid", use_attribute_docstrings=True)


_Model = KubeModel


class Toleration(_Model):
    """A Kubernetes toleration added to every pod."""

    key: str | None = None
    """Taint key the toleration matches; empty with operator Exists matches every taint."""
    operator: str | None = Field(default=None, json_schema_extra={"enum": ["Exists", "Equal"]})
    """Exists matches any value; Equal (the default) matches value."""
    value: str | None = None
    """Taint value to match when operator is Equal."""
    effect: str | None = Field(
        default=None, json_schema_extra={"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]}
    )
    """Taint effect to match; empty matches every effect."""
    toleration_seconds: int | None = Field(default=None, alias="tolerationSeconds")
    """How long a NoExecute taint is tolerated before the pod is evicted; unset tolerates it forever."""


class KeyRef(_Model):
    """A key of a Secret or ConfigMap in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret or ConfigMap."""
    key: str = Field(min_length=1, max_length=253)
    """Key within it."""
    optional: bool | None = None
    """Start the pod even when the object or key is missing."""


class FieldRef(_Model):
    """A field of the pod (downward API)."""

    field_path: str = Field(alias="fieldPath", min_length=1)
    """e.g. metadata.name, status.podIP."""
    api_version: str | None = Field(default=None, alias="apiVersion")
    """Version of the schema fieldPath is written in (v1)."""


class EnvVarSource(_Model):
    """Where a variable's value comes from: exactly one of the three."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.secretKeyRef) ? 1 : 0) + (has(self.configMapKeyRef) ? 1 : 0) + "
                    "(has(self.fieldRef) ? 1 : 0) == 1",
                    "message": "valueFrom takes exactly one of secretKeyRef, configMapKeyRef, fieldRef",
                }
            ]
        }
    )

    secret_key_ref: KeyRef | None = Field(default=None, alias="secretKeyRef")
    """A key of a Secret (the kubelet reads it; the operator never does)."""
    config_map_key_ref: KeyRef | None = Field(default=None, alias="configMapKeyRef")
    """A key of a ConfigMap."""
    field_ref: FieldRef | None = Field(default=None, alias="fieldRef")
    """A field of the pod."""


class EnvVar(_Model):
    """An environment variable: a literal value or a reference, as in a pod."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "!(has(self.value) && has(self.valueFrom))", "message": "set value or valueFrom, not both"}
            ]
        }
    )

    name: str = Field(min_length=1)
    """Variable name."""
    value: str | None = None
    """Literal value."""
    value_from: EnvVarSource | None = Field(default=None, alias="valueFrom")
    """A Secret key, ConfigMap key or pod field."""


class ObjectRef(_Model):
    """A Secret or ConfigMap in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Its name."""
    optional: bool | None = None
    """Start the pod even when it is missing."""


class EnvFromSource(_Model):
    """Every key of a Secret or ConfigMap as environment variables, as in a pod."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretRef) != has(self.configMapRef)",
                    "message": "envFrom takes one of secretRef, configMapRef",
                }
            ]
        }
    )

    prefix: str | None = None
    """Prepended to every variable name."""
    secret_ref: ObjectRef | None = Field(default=None, alias="secretRef")
    """A Secret."""
    config_map_ref: ObjectRef | None = Field(default=None, alias="configMapRef")
    """A ConfigMap."""


@cache
def _core_v1_types() -> dict[str, dict[str, Any]]:
    text = resources.files("autoparallel.controller").joinpath("schemas/core-v1.json").read_text()
    types: dict[str, dict[str, Any]] = json.loads(text)["types"]
    return types


CORE_V1_TYPES = tuple(sorted(_core_v1_types()))
"""The Kubernetes core/v1 types spec.podTemplate embeds (Affinity, PodSecurityContext, …)."""


def core_v1(name: str) -> dict[str, Any]:
    """The structural schema of the core/v1 type ``name`` (e.g. Affinity)."""
    return _core_v1_types()[name]


def _kube(name: str) -> Any:
    """A field holding the Kubernetes type ``name`` as a plain dict, with that type's real schema in the CRD."""
    return WithJsonSchema(core_v1(name), mode="validation")


Affinity = Annotated[dict[str, Any], _kube("Affinity")]
PodSecurityContext = Annotated[dict[str, Any], _kube("PodSecurityContext")]
Volume = Annotated[dict[str, Any], _kube("Volume")]
VolumeMount = Annotated[dict[str, Any], _kube("VolumeMount")]
ResourceRequirements = Annotated[dict[str, Any], _kube("ResourceRequirements")]


class LocalObjectReference(_Model):
    """An object in the resource's namespace, by name."""

    name: str = Field(min_length=1, max_length=253)
    """Its name."""


class PodMetadata(_Model):
    """Labels and annotations added to every pod (a service mesh's, Karpenter's, a cost centre's)."""

    labels: dict[str, str] = Field(default_factory=dict)
    """Added to the operator's labels; the operator's own keys (app.kubernetes.io/*, autoparallel.io/*) are
    refused."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Added to every pod; the operator's own keys (autoparallel.io/*) are refused."""


class ContainerOverride(_Model):
    """Additions to the pod's main container (vllm, trainer or the download Job's), matched by name."""

    name: str = Field(min_length=1)
    """The container: vllm (serving pods), trainer (training pods) or download (the weight cache's Job)."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables; a name the operator sets (HF_TOKEN, HF_HOME, …) is refused."""
    env_from: list[EnvFromSource] = Field(default_factory=list, alias="envFrom")
    """Every key of Secrets or ConfigMaps as environment variables."""
    volume_mounts: list[VolumeMount] = Field(default_factory=list, alias="volumeMounts")
    """Extra mounts of podTemplate.spec.volumes (a model on NFS, a local NVMe); /dev/shm and the weight cache's
    mount are the operator's."""
    resources: ResourceRequirements | None = None
    """CPU, memory and other resources, replacing the operator's CPU and memory requests; the GPU resource is
    the plan's and may only repeat the planned count."""


class PodSpecOverride(_Model):
    """Fields added to every pod the operator creates; the plan's own fields (GPUs, command, the pool's node
    selector) win, and a value that contradicts them is refused with a condition naming it."""

    affinity: Affinity | None = None
    """Pod affinity, anti-affinity and node affinity; a required node affinity that excludes the planned pool
    is refused (choose pools with spec.placement.nodeSelector)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations added to every pod (and counted when planning, like spec.placement.tolerations)."""
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list, alias="imagePullSecrets")
    """Secrets to pull the images from a private registry."""
    service_account_name: str | None = Field(default=None, alias="serviceAccountName", min_length=1)
    """The pods' service account (e.g. for workload identity to a model bucket)."""
    priority_class_name: str | None = Field(default=None, alias="priorityClassName", min_length=1)
    """The pods' priority class."""
    runtime_class_name: str | None = Field(default=None, alias="runtimeClassName", min_length=1)
    """The pods' runtime class (e.g. nvidia)."""
    security_context: PodSecurityContext | None = Field(default=None, alias="securityContext")
    """The pods' security context (runAsUser, fsGroup, seccompProfile, …)."""
    volumes: list[Volume] = Field(default_factory=list)
    """Extra volumes; the names dshm and model-cache are the operator's."""
    containers: list[ContainerOverride] = Field(default_factory=list)
    """Additions to the main container, by name (vllm, trainer, download)."""


class PodTemplate(_Model):
    """What to add to every pod the operator creates (serving, training and download pods)."""

    metadata: PodMetadata = Field(default_factory=PodMetadata)
    """Labels and annotations of the pods."""
    spec: PodSpecOverride = Field(default_factory=PodSpecOverride)
    """Pod fields and main-container additions."""
