"""The resync loop: oldest resources first, and a resource deleted while its round runs is no error."""

import asyncio
import logging
from typing import Any

import kopf
import pytest
from kubernetes.client.exceptions import ApiException

from autoparallel.controller import k8s, reconcile
from autoparallel.controller.reconcile import Snapshot, resync_loop

EMPTY = Snapshot(nodes=[], pods=[], children=[], problems=[], reservations={})


def body(name: str, created: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "uid": name, "creationTimestamp": created}}


def one_round(
    monkeypatch: pytest.MonkeyPatch, bodies: list[dict[str, Any]], patch_error: Exception | None
) -> list[str]:
    """Run one round of the loop over ``bodies``; returns the names in the order they were resynced."""
    seen: list[str] = []

    async def fake_resync(body: kopf.Body, patch: kopf.Patch, snapshot: Snapshot, logger: Any) -> None:
        seen.append(body["metadata"]["name"])
        patch.status["touched"] = True

    async def fake_patch(namespace: str, name: str, status: dict[str, Any]) -> None:
        if patch_error is not None:
            raise patch_error

    monkeypatch.setattr(reconcile, "resync", fake_resync)
    monkeypatch.setattr(k8s, "patch_status", fake_patch)

    async def no_optional_crds(names: frozenset[str]) -> frozenset[str]:
        return frozenset()

    monkeypatch.setattr(k8s, "served_crds", no_optional_crds)
    rounds = 0

    def snapshots() -> list[tuple[Any, Snapshot]]:
        nonlocal rounds
        rounds += 1
        if rounds > 1:
            raise asyncio.CancelledError  # one round is enough
        return [(b, EMPTY) for b in bodies]

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(resync_loop(snapshots, 0))
    return seen


def test_rounds_serve_the_oldest_resource_first(monkeypatch: pytest.MonkeyPatch) -> None:
    bodies = [body("new", "2026-01-03T00:00:00Z"), body("old", "2026-01-01T00:00:00Z"), body("mid", "2026-01-02")]
    assert one_round(monkeypatch, bodies, None) == ["old", "mid", "new"]


def test_a_resource_deleted_meanwhile_is_no_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="autoparallel.resync")
    one_round(monkeypatch, [body("gone", "2026-01-01T00:00:00Z")], ApiException(status=404, reason="Not Found"))
    records = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "autoparallel.resync"]
    assert (logging.DEBUG, "resync of ns/gone: deleted meanwhile") in records
    assert not [message for level, message in records if level >= logging.WARNING]


def test_other_api_errors_are_one_warning_line(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="autoparallel.resync")
    error = ApiException(status=500, reason="Internal Server Error")
    one_round(monkeypatch, [body("x", "2026-01-01T00:00:00Z")], error)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == ["resync of ns/x: 500 Internal Server Error"]
