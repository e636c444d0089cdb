"""The only module that calls the Kubernetes API directly (kopf does its own watching and patching).

Children are applied with server-side apply under the field manager ``autoparallel``; stale children are
deleted only when their ownerReferences name the ParallelDeployment (never what the operator did not create).
Calls are blocking (the official client) and run in worker threads from the async handlers.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from autoparallel.controller.capabilities import served_crd
from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH, LABEL_OWNER_UID
from autoparallel.controller.kinds import BY_KIND, CHILD_KINDS
from autoparallel.controller.models import GROUP, PLURAL, VERSION

FIELD_MANAGER = "autoparallel"


def configure_client() -> None:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``)."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        # Read KUBECONFIG now: the client's own default was fixed when it was imported.
        kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))


APPLY = "application/apply-patch+yaml"


def _request(
    method: str, path: str, query: Sequence[tuple[str, str]] = (), body: Any = None, content_type: str | None = None
) -> dict[str, Any]:
    """One REST call by path, for every kind of :data:`CHILD_KINDS` alike (built-in or custom); raises
    ``ApiException`` for a non-2xx answer."""
    client = kubernetes.client.ApiClient()
    headers = {"Accept": "application/json", **({"Content-Type": content_type} if content_type else {})}
    request = client.param_serialize(
        method, path, query_params=list(query), header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    response = client.call_api(*request)
    response.read()
    text = response.data.decode() if response.data else ""
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    return json.loads(text) if text else {}


def _served_crds(names: frozenset[str]) -> frozenset[str]:
    served = set()
    for name in names:
        query = [("fieldSelector", f"metadata.name={name}")]
        for crd in _request("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", query).get("items", []):
            if served_crd(crd):
                served.add(name)
    return frozenset(served)


async def served_crds(names: frozenset[str]) -> frozenset[str]:
    """Which of the CRDs ``names`` are established and serve the version the operator writes (with the ``list``
    on CRDs the chart grants)."""
    return await asyncio.to_thread(_served_crds, names)


class ChildReplacing(Exception):
    """An immutable child (a Job) of an older plan is being deleted; apply again once it is gone."""


def _plan_hash(obj: Mapping[str, Any]) -> str | None:
    return (obj["metadata"].get("annotations") or {}).get(ANNOTATION_PLAN_HASH)


def _apply_one(manifest: dict[str, Any]) -> None:
    meta = manifest["metadata"]
    child = BY_KIND[manifest["kind"]]
    path = child.path(meta["namespace"], meta["name"])
    if child.replaced:  # its pod template is immutable: a new plan replaces the object
        try:
            existing = _request("GET", path)
        except ApiException as error:
            if error.status != 404:
                raise
        else:
            if _plan_hash(existing) != _plan_hash(manifest):
                if existing["metadata"].get("deletionTimestamp") is None:
                    _request("DELETE", path, body={"propagationPolicy": "Foreground"})
                raise ChildReplacing(f"{child.kind} {meta['name']} of an older plan is being replaced")
    query = [("fieldManager", FIELD_MANAGER), ("force", "true")]
    _request("PATCH", path, query, body=manifest, content_type=APPLY)


def _owned(item: Mapping[str, Any], owner_uid: str) -> bool:
    return any(ref.get("uid") == owner_uid for ref in item["metadata"].get("ownerReferences") or [])


def _delete_stale(
    namespace: str, owner_uid: str, keep: set[tuple[str, str]], served: frozenset[str], kinds: frozenset[str] | None
) -> list[str]:
    deleted = []
    for child in CHILD_KINDS:
        if not child.pruned or (child.requires is not None and child.requires not in served):
            continue
        if kinds is not None and child.kind not in kinds:
            continue
        query = [("labelSelector", f"{LABEL_OWNER_UID}={owner_uid}")]
        for item in _request("GET", child.path(namespace), query).get("items", []):
            name = item["metadata"]["name"]
            if (child.kind, name) in keep or not _owned(item, owner_uid):
                continue
            if item["metadata"].get("deletionTimestamp") is None:
                _request("DELETE", child.path(namespace, name), body={"propagationPolicy": "Background"})
                deleted.append(f"{child.kind}/{name}")
    return deleted


def _sync(
    manifests: list[dict[str, Any]],
    namespace: str,
    owner_uid: str,
    prune: bool,
    served: frozenset[str],
    unchanged: frozenset[tuple[str, str]],
    kinds: frozenset[str] | None,
) -> list[str]:
    for manifest in manifests:
        if (manifest["kind"], manifest["metadata"]["name"]) not in unchanged:
            _apply_one(manifest)
    if not prune:
        return []
    keep = {(m["kind"], m["metadata"]["name"]) for m in manifests}
    return _delete_stale(namespace, owner_uid, keep, served, kinds)


async def sync_children(
    manifests: Iterable[dict[str, Any]],
    namespace: str,
    owner_uid: str,
    prune: bool = True,
    served: frozenset[str] = frozenset(),
    unchanged: frozenset[tuple[str, str]] = frozenset(),
    kinds: frozenset[str] | None = None,
) -> list[str]:
    """Apply ``manifests`` except the ``unchanged`` ones (kind, name) and, with ``prune``, delete the owner's
    other children (of the built-in kinds and of the optional ones whose CRDs are ``served``; only of ``kinds``
    when given); returns what was deleted."""
    return await asyncio.to_thread(_sync, list(manifests), namespace, owner_uid, prune, served, unchanged, kinds)


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
