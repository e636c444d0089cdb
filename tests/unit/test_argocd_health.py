"""The Argo CD health check of ParallelDeployments (argocd/…/health.lua), run with Lua 5.1 as Argo CD runs it.

The table is Argo CD's own `health_test.yaml` next to the script; lupa (PyPI) brings the Lua interpreter. The
copies of the script in `argocd/argocd-cm-patch.yaml` and `docs/install.md` must stay identical to it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51  # type: ignore[import-untyped]

from kube import repo_root

CHECK_DIR = repo_root() / "argocd" / "resource_customizations" / "autoparallel.io" / "ParallelDeployment"
HEALTH_LUA = CHECK_DIR / "health.lua"
CONFIG_KEY = "resource.customizations.health.autoparallel.io_ParallelDeployment"


def argocd_health(obj: dict[str, Any], script: str | None = None) -> dict[str, str]:
    """What Argo CD makes of `obj`: the script runs with the object as the global `obj`, returns `hs`."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = _to_lua(lua, obj)
    result = lua.execute(script if script is not None else HEALTH_LUA.read_text())
    return {"status": result["status"], "message": result["message"]}


def _to_lua(lua: Any, value: Any) -> Any:
    """JSON-like Python values as Lua tables (lists 1-based), as Argo CD hands an object to Lua."""
    if isinstance(value, dict):
        return lua.table_from({key: _to_lua(lua, item) for key, item in value.items()})
    if isinstance(value, list):
        return lua.table_from([_to_lua(lua, item) for item in value])
    return value


def _cases() -> list[Any]:
    table = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
    return [pytest.param(case, id=Path(case["inputPath"]).stem) for case in table]


@pytest.mark.parametrize("case", _cases())
def test_health_table(case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CHECK_DIR / case["inputPath"]).read_text())
    assert argocd_health(obj) == case["healthStatus"]


def test_table_covers_every_status_and_a_stale_generation() -> None:
    table = yaml.safe_load((CHECK_DIR / "health_test.yaml").read_text())["tests"]
    statuses = {case["healthStatus"]["status"] for case in table}
    assert statuses == {"Healthy", "Progressing", "Degraded"}
    stale = [case for case in table if "stale-generation" in case["inputPath"]]
    assert stale and stale[0]["healthStatus"]["status"] == "Progressing"
    used = {Path(case["inputPath"]).name for case in table}
    assert used == {path.name for path in (CHECK_DIR / "testdata").glob("*.yaml")}, "every testdata file is a case"


def test_stale_generation_wins_over_a_ready_condition() -> None:
    """A spec edit Argo CD just synced is not Healthy until the operator has planned it."""
    obj = yaml.safe_load((CHECK_DIR / "testdata" / "healthy.yaml").read_text())
    assert argocd_health(obj)["status"] == "Healthy"
    obj["metadata"]["generation"] = 2
    assert argocd_health(obj)["status"] == "Progressing"
    obj["status"]["observedGeneration"] = 2
    for condition in obj["status"]["conditions"]:
        condition["observedGeneration"] = 2
    assert argocd_health(obj)["status"] == "Healthy"


def test_argocd_cm_patch_holds_the_same_script() -> None:
    patch = yaml.safe_load((repo_root() / "argocd" / "argocd-cm-patch.yaml").read_text())
    assert patch["metadata"]["name"] == "argocd-cm"
    assert patch["data"][CONFIG_KEY] == HEALTH_LUA.read_text()


def test_install_docs_show_the_same_script() -> None:
    docs = (repo_root() / "docs" / "install.md").read_text()
    blocks = [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", docs, flags=re.DOTALL)]
    snippets = [b["data"][CONFIG_KEY] for b in blocks if isinstance(b, dict) and CONFIG_KEY in (b.get("data") or {})]
    assert snippets == [HEALTH_LUA.read_text()]
