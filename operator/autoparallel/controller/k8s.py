"""The only module that calls the Kubernetes API directly (kopf does its own watching and patching).

Children are applied with server-side apply under the field manager ``autoparallel``; stale children are
deleted only when their ownerReferences name the ParallelDeployment (never what the operator did not create).
Calls are blocking (the official client) and run in worker threads from the async handlers.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH, LABEL_OWNER_UID
from autoparallel.controller.models import GROUP, PLURAL, VERSION

FIELD_MANAGER = "autoparallel"


@dataclass(frozen=True)
class _KindApi:
    patch: Callable[..., Any]
    read: Callable[..., Any]
    list: Callable[..., Any]
    delete: Callable[..., Any]


def configure_client() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # Read KUBECONFIG now: the client's own default was fixed when it was imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


def _apis() -> dict[str, _KindApi]:
    apps, core, batch = kubernetes.client.AppsV1Api(), kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()
    return {
        "Deployment": _KindApi(
            apps.patch_namespaced_deployment,
            apps.read_namespaced_deployment,
            apps.list_namespaced_deployment,
            apps.delete_namespaced_deployment,
        ),
        "StatefulSet": _KindApi(
            apps.patch_namespaced_stateful_set,
            apps.read_namespaced_stateful_set,
            apps.list_namespaced_stateful_set,
            apps.delete_namespaced_stateful_set,
        ),
        "Service": _KindApi(
            core.patch_namespaced_service,
            core.read_namespaced_service,
            core.list_namespaced_service,
            core.delete_namespaced_service,
        ),
        "Job": _KindApi(
            batch.patch_namespaced_job,
            batch.read_namespaced_job,
            batch.list_namespaced_job,
            batch.delete_namespaced_job,
        ),
        "PersistentVolumeClaim": _KindApi(
            core.patch_namespaced_persistent_volume_claim,
            core.read_namespaced_persistent_volume_claim,
            core.list_namespaced_persistent_volume_claim,
            core.delete_namespaced_persistent_volume_claim,
        ),
    }


MANAGED_KINDS = ("Deployment", "StatefulSet", "Service", "Job")
"""Kinds of children that are pruned when a plan no longer needs them. Never the weight cache's PVC: it holds
downloaded weights, and goes with its owner (garbage collection) or stays (``cache.retain``)."""


class ChildReplacing(Exception):
    """An immutable child (a Job) of an older plan is being deleted; apply again once it is gone."""


def _apply_one(apis: dict[str, _KindApi], manifest: dict[str, Any]) -> None:
    kind, meta = manifest["kind"], manifest["metadata"]
    api = apis[kind]
    if kind == "Job":  # a Job's pod template is immutable: a new plan replaces the Job
        try:
            existing = api.read(meta["name"], meta["namespace"])
        except ApiException as error:
            if error.status != 404:
                raise
        else:
            old_hash = (existing.metadata.annotations or {}).get(ANNOTATION_PLAN_HASH)
            if old_hash != meta.get("annotations", {}).get(ANNOTATION_PLAN_HASH):
                if existing.metadata.deletion_timestamp is None:
                    api.delete(meta["name"], meta["namespace"], propagation_policy="Foreground")
                raise ChildReplacing(f"Job {meta['name']} of an older plan is being replaced")
    api.patch(
        meta["name"],
        meta["namespace"],
        manifest,
        field_manager=FIELD_MANAGER,
        force=True,
        _content_type="application/apply-patch+yaml",
    )


def _owned(item: Any, owner_uid: str) -> bool:
    return any(ref.uid == owner_uid for ref in item.metadata.owner_references or [])


def _delete_stale(apis: dict[str, _KindApi], namespace: str, owner_uid: str, keep: set[tuple[str, str]]) -> list[str]:
    deleted = []
    for kind in MANAGED_KINDS:
        items = apis[kind].list(namespace, label_selector=f"{LABEL_OWNER_UID}={owner_uid}").items
        for item in items:
            if (kind, item.metadata.name) in keep or not _owned(item, owner_uid):
                continue
            if item.metadata.deletion_timestamp is None:
                apis[kind].delete(item.metadata.name, namespace, propagation_policy="Background")
                deleted.append(f"{kind}/{item.metadata.name}")
    return deleted


def _sync(manifests: list[dict[str, Any]], namespace: str, owner_uid: str, prune: bool) -> list[str]:
    apis = _apis()
    for manifest in manifests:
        _apply_one(apis, manifest)
    if not prune:
        return []
    keep = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    return _delete_stale(apis, namespace, owner_uid, keep)


async def sync_children(
    manifests: Iterable[dict[str, Any]], namespace: str, owner_uid: str, prune: bool = True
) -> list[str]:
    """Apply ``manifests`` and, with ``prune``, delete the owner's other children; returns what was deleted."""
    return await asyncio.to_thread(_sync, list(manifests), namespace, owner_uid, prune)


def _patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    kubernetes.client.CustomObjectsApi().patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


async def patch_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge ``status`` into a ParallelDeployment's status subresource."""
    await asyncio.to_thread(_patch_status, namespace, name, status)


EVENT_SOURCE = "autoparallel"


def _post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    meta = body["metadata"]
    timestamp = datetime.now(UTC)
    event = kubernetes.client.CoreV1Event(
        metadata=kubernetes.client.V1ObjectMeta(generate_name=f"{meta['name']}.", namespace=meta["namespace"]),
        involved_object=kubernetes.client.V1ObjectReference(
            api_version=body.get("apiVersion", f"{GROUP}/{VERSION}"),
            kind=body.get("kind", "ParallelDeployment"),
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
        ),
        type=type_,
        reason=reason,
        message=message[:1024],
        source=kubernetes.client.V1EventSource(component=EVENT_SOURCE),
        reporting_component=EVENT_SOURCE,
        reporting_instance=socket.gethostname(),
        first_timestamp=timestamp,
        last_timestamp=timestamp,
        count=1,
    )
    kubernetes.client.CoreV1Api().create_namespaced_event(meta["namespace"], event)


async def post_event(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Record a Kubernetes Event on the ParallelDeployment (``kubectl describe pd`` shows it)."""
    await asyncio.to_thread(_post_event, body, type_, reason, message)
