"""The table of child kinds and the capability index that decides which optional kinds exist."""

from __future__ import annotations

from typing import Any

import pytest

from autoparallel.controller.capabilities import OPTIONAL_CRDS, served_crd
from autoparallel.controller.kinds import BY_KIND, CHILD_KINDS


def test_paths_follow_the_api_group() -> None:
    assert BY_KIND["Service"].path("ns") == "/api/v1/namespaces/ns/services"
    assert BY_KIND["Deployment"].path("ns", "a") == "/apis/apps/v1/namespaces/ns/deployments/a"
    assert BY_KIND["PodMonitor"].path("ns", "a") == "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors/a"


def test_verbs_follow_what_the_operator_does_with_a_kind() -> None:
    assert BY_KIND["PersistentVolumeClaim"].verbs() == {"create", "patch"}  # never pruned, never read
    assert BY_KIND["Job"].verbs() == {"create", "patch", "list", "watch", "delete", "get"}
    assert BY_KIND["Service"].verbs() == {"create", "patch", "list", "delete"}
    assert BY_KIND["LeaderWorkerSet"].verbs() == {"create", "patch", "list", "watch", "delete"}  # a workload
    assert all({"create", "patch"} <= child.verbs() for child in CHILD_KINDS)


def _crd(name: str, versions: list[tuple[str, bool]], established: str = "True") -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"versions": [{"name": v, "served": served} for v, served in versions]},
        "status": {"conditions": [{"type": "Established", "status": established}]},
    }


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (_crd("podmonitors.monitoring.coreos.com", [("v1", True)]), "podmonitors.monitoring.coreos.com"),
        (_crd("podmonitors.monitoring.coreos.com", [("v1", True)], established="False"), None),
        (_crd("podmonitors.monitoring.coreos.com", [("v1", False), ("v1beta1", True)]), None),
        (_crd("servicemonitors.monitoring.coreos.com", [("v1", True)]), None),  # not an integration of ours
        ({"metadata": {"name": "podmonitors.monitoring.coreos.com"}}, None),  # no status yet
    ],
)
def test_a_crd_counts_once_established_and_serving_the_version_written(body: dict[str, Any], expected: str) -> None:
    assert served_crd(body) == expected


def test_every_optional_kind_names_its_crd() -> None:
    assert {f"{c.plural}.{c.group}" for c in CHILD_KINDS if c.requires} == OPTIONAL_CRDS
