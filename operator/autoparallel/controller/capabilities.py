"""Which optional integrations the cluster offers, learnt from the CustomResourceDefinitions the API server
serves: read at start-up and once per resync round (a list of each optional CRD by name), never per reconcile.
Not a kopf watch: a handler on CRDs joined kopf's start-up barrier, and fresh operators were seen to stall there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoparallel.controller.kinds import CHILD_KINDS

OPTIONAL_CRDS = frozenset(child.requires for child in CHILD_KINDS if child.requires)
"""The CRDs of every optional integration the operator renders children for."""
SERVED: frozenset[str] = frozenset()
"""Those of :data:`OPTIONAL_CRDS` served at the last look (the resync loop refreshes it)."""


def served_crd(body: Mapping[str, Any]) -> str | None:
    """The CRD's name when it is one of :data:`OPTIONAL_CRDS`, established and serving the version the
    operator writes; else None."""
    name = body.get("metadata", {}).get("name", "")
    if name not in OPTIONAL_CRDS:
        return None
    status = body.get("status") or {}
    established = any(
        c.get("type") == "Established" and c.get("status") == "True" for c in status.get("conditions") or []
    )
    wanted = {child.version for child in CHILD_KINDS if child.requires == name}
    served = {v.get("name") for v in (body.get("spec") or {}).get("versions") or [] if v.get("served")}
    return name if established and wanted <= served else None
