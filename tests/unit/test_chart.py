"""The Helm chart: `helm lint --strict` and `helm template` for each values file under golden/chart/values/, the
rendered manifests against golden files, and what the manifests must say (hardening, least-privilege RBAC with a
comment per rule, the CRD rendered from crds/ — the one source — and the operator's real command line).

Needs the helm binary: `hack/build-helm.sh` builds it from the Go module proxy once (cached under
~/.cache/autoparallel/bin); without Go the fixture fails, it never skips. Regenerate the golden files after an
intended change with ``UPDATE_GOLDEN=1 pytest tests/unit/test_chart.py``.
"""

from __future__ import annotations

import difflib
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoparallel.cli import build_parser
from autoparallel.controller.config import DEFAULT_TRAINING_IMAGE
from autoparallel.controller.kinds import CHILD_KINDS
from kube import repo_root

pytestmark = pytest.mark.helm

CHART = repo_root() / "charts" / "autoparallel-operator"
CRD_FILE = repo_root() / "crds" / "paralleldeployments.autoparallel.io.yaml"
GOLDEN_DIR = Path(__file__).parent / "golden" / "chart"
VALUES = sorted(path.stem for path in (GOLDEN_DIR / "values").glob("*.yaml"))
RELEASE, NAMESPACE = "ap", "autoparallel-system"
# Helm says so on stderr for every command that loads the chart: the CRD source is a symlink (by design).
SYMLINK_NOTICE = re.compile(r"^walk\.go:\d+: found symbolic link in path: .*crd-source/.*$")
BUILD_HELM = repo_root() / "hack" / "build-helm.sh"
CRD_SPEC_PLACEHOLDER = "spec: {}  # verbatim spec of crds/paralleldeployments.autoparallel.io.yaml (test_crd_*)\n"


def build_helm(config: pytest.Config) -> str:
    """The cached helm binary, built by hack/build-helm.sh on first use (its progress goes to the terminal)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        result = subprocess.run([str(BUILD_HELM), "--print-path"], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"hack/build-helm.sh failed (exit {result.returncode}); the chart tests need helm", pytrace=False)
    return result.stdout.strip()


@pytest.fixture(scope="session")
def helm(pytestconfig: pytest.Config) -> str:
    return build_helm(pytestconfig)


def run_helm(helm: str, *args: str) -> str:
    """stdout of a helm command that must succeed with nothing on stderr but the symlink notice."""
    result = subprocess.run([helm, *args], capture_output=True, text=True, check=False)
    noise = [line for line in result.stderr.splitlines() if line.strip() and not SYMLINK_NOTICE.match(line)]
    assert result.returncode == 0 and not noise, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def values_file(name: str) -> str:
    return str(GOLDEN_DIR / "values" / name)


def render(helm: str, values: str, *extra: str) -> str:
    return run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "-f", values_file(values), *extra)


def documents(text: str) -> list[str]:
    """The rendered manifests as text, one per document (comments kept)."""
    return [doc.strip("\n") + "\n" for doc in re.split(r"^---\n", text, flags=re.MULTILINE) if doc.strip()]


def manifests(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(rendered: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in rendered if m["kind"] == kind]


@pytest.fixture(scope="module", params=VALUES)
def case(request: pytest.FixtureRequest, helm: str) -> Iterator[tuple[str, str]]:
    values = f"{request.param}.yaml"
    yield request.param, render(helm, values)


# --- lint and golden files -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUES)
def test_lint_strict(helm: str, values: str) -> None:
    out = run_helm(helm, "lint", "--strict", str(CHART), "--namespace", NAMESPACE, "-f", values_file(f"{values}.yaml"))
    assert "1 chart(s) linted, 0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def _golden_text(rendered: str) -> str:
    """The rendered chart with the CRD's 500-line spec replaced by a marker (checked against crds/ instead)."""
    out = [
        doc[: doc.index("\nspec:\n") + 1] + CRD_SPEC_PLACEHOLDER if "\nkind: CustomResourceDefinition\n" in doc else doc
        for doc in documents(rendered)
    ]
    return "---\n" + "---\n".join(out)


def test_golden(case: tuple[str, str]) -> None:
    name, rendered = case
    text = _golden_text(rendered)
    path = GOLDEN_DIR / f"{name}.yaml"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
        return
    expected = path.read_text() if path.exists() else ""
    if text != expected:
        diff = "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))
        pytest.fail(f"{name}: run UPDATE_GOLDEN=1 pytest tests/unit/test_chart.py\n{diff}", pytrace=False)


def test_values_schema_rejects_typos_and_bad_values(helm: str) -> None:
    for bad in ("watchNamespace={a}", "logFormat=xml", "crds.instal=true", "ports.metrics=0", "gpuPrices.H100-80GB=-1"):
        result = subprocess.run(
            [helm, "template", RELEASE, str(CHART), "--set", bad], capture_output=True, text=True, check=False
        )
        assert result.returncode != 0 and "values don't meet the specifications of the schema" in result.stderr, bad


# --- the CRD: one source -------------------------------------------------------------------------------------------


def test_crd_source_is_a_symlink_to_the_generated_file() -> None:
    source = CHART / "crd-source" / CRD_FILE.name
    assert source.is_symlink(), "the chart must read crds/ through a symlink, not hold a copy"
    assert source.resolve() == CRD_FILE.resolve()


def test_crd_is_the_generated_file_with_helm_metadata(helm: str) -> None:
    rendered = manifests(render(helm, "default.yaml"))
    (crd,) = by_kind(rendered, "CustomResourceDefinition")
    generated = yaml.safe_load(CRD_FILE.read_text())
    assert crd["spec"] == generated["spec"]
    assert crd["metadata"]["name"] == generated["metadata"]["name"]
    assert crd["metadata"]["annotations"] == {
        "helm.sh/resource-policy": "keep",
        "argocd.argoproj.io/sync-options": "Delete=false,Prune=false",
    }


def test_crd_keep_and_install_switches(helm: str) -> None:
    (crd,) = by_kind(manifests(render(helm, "default.yaml", "--set", "crds.keep=false")), "CustomResourceDefinition")
    assert "annotations" not in crd["metadata"]
    assert not by_kind(manifests(render(helm, "no-crd-no-rbac.yaml")), "CustomResourceDefinition")


# --- what the manifests must say -----------------------------------------------------------------------------------


def test_operator_deployment_is_hardened(case: tuple[str, str]) -> None:
    (deployment,) = by_kind(manifests(case[1]), "Deployment")
    spec = deployment["spec"]
    values = yaml.safe_load((GOLDEN_DIR / "values" / f"{case[0]}.yaml").read_text()) or {}
    # One active replica: either the Lease decides (rolling updates are safe) or there is exactly one (Recreate).
    if values.get("leaderElection", {}).get("enabled", True):
        assert spec["replicas"] == values.get("replicaCount", 1) and spec["strategy"] == {"type": "RollingUpdate"}
    else:
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}  # the only writable path


def test_container_args_are_the_operators_own_flags(case: tuple[str, str]) -> None:
    name, rendered = case
    (deployment,) = by_kind(manifests(rendered), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(["operator", "run", *container["args"]])
    values = yaml.safe_load((GOLDEN_DIR / "values" / f"{name}.yaml").read_text()) or {}
    assert args.namespace == values.get("watchNamespaces", [])
    assert args.all_namespaces == (not values.get("watchNamespaces"))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (args.metrics_port, args.liveness_port) == (ports["metrics"], ports["health"])
    assert args.log_format == values.get("logFormat", "json")
    if "trainingImage" in values:
        training = values["trainingImage"]
        assert args.training_image == f"{training['repository']}:{training['tag']}"
    else:  # the chart's default is the operator's own (the name `docker build --target training` is given)
        assert args.training_image == DEFAULT_TRAINING_IMAGE
    leader_election = values.get("leaderElection", {}).get("enabled", True)
    assert args.leader_elect is leader_election
    if leader_election:
        assert (args.leader_election_namespace, args.leader_election_name) == (
            NAMESPACE,
            f"{RELEASE}-autoparallel-operator",
        )


def test_two_replicas_need_leader_election(helm: str) -> None:
    two = render(helm, "default.yaml", "--set", "replicaCount=2")
    (deployment,) = by_kind(manifests(two), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    result = subprocess.run(
        [helm, "template", RELEASE, str(CHART), "--set", "replicaCount=2", "--set", "leaderElection.enabled=false"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0 and "replicaCount > 1 needs leaderElection.enabled" in result.stderr


def _rbac_documents(rendered: str) -> list[str]:
    return [doc for doc in documents(rendered) if re.search(r"^kind: (ClusterRole|Role)$", doc, flags=re.MULTILINE)]


def test_every_rbac_rule_has_a_comment(case: tuple[str, str]) -> None:
    for doc in _rbac_documents(case[1]):
        lines = doc.splitlines()
        rules = [i for i, line in enumerate(lines) if line.lstrip().startswith("- apiGroups:")]
        assert rules, doc
        for i in rules:
            assert lines[i - 1].lstrip().startswith("#"), f"rule without a comment:\n{lines[i]}\n{doc}"


FORBIDDEN_RESOURCES = {"secrets", "configmaps", "*", "pods/exec", "serviceaccounts/token", "roles", "clusterroles"}
FORBIDDEN_VERBS = {"*", "escalate", "bind", "impersonate", "deletecollection"}


def _rules(rendered: list[dict[str, Any]], kind: str) -> dict[str, set[str]]:
    """Verbs per resource over every object of `kind`."""
    verbs: dict[str, set[str]] = {}
    for role in by_kind(rendered, kind):
        for rule in role["rules"]:
            for resource in rule["resources"]:
                verbs.setdefault(resource, set()).update(rule["verbs"])
    return verbs


def test_rbac_is_least_privilege(case: tuple[str, str]) -> None:
    name, text = case
    rendered = manifests(text)
    values = yaml.safe_load((GOLDEN_DIR / "values" / f"{name}.yaml").read_text()) or {}
    if values.get("rbac", {}).get("create") is False:
        assert not by_kind(rendered, "ClusterRole") and not by_kind(rendered, "Role")
        return
    election = [r for r in by_kind(rendered, "Role") if r["metadata"]["name"].endswith("-leader-election")]
    if values.get("leaderElection", {}).get("enabled", True):
        [role] = election
        assert role["metadata"]["namespace"] == NAMESPACE
        assert role["rules"] == [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": [f"{RELEASE}-autoparallel-operator"],
                "verbs": ["get", "update"],
            },
        ]
    else:
        assert not election
    rendered = [m for m in rendered if not m["metadata"]["name"].endswith("-leader-election")]
    cluster, namespaced = _rules(rendered, "ClusterRole"), _rules(rendered, "Role")
    for verbs_by_resource in (cluster, namespaced):
        assert not FORBIDDEN_RESOURCES & set(verbs_by_resource)
        assert not any(FORBIDDEN_VERBS & verbs for verbs in verbs_by_resource.values())
    # Cluster-wide reads only of what the inventory and kopf need; never a read of a single object by name.
    assert cluster["nodes"] == cluster["pods"] == cluster["customresourcedefinitions"] == {"list", "watch"}
    # Every kind of child with exactly the verbs its row of the table asks for (apply, prune, watch, replace).
    workloads = {
        "paralleldeployments": {"list", "watch", "patch"},
        "paralleldeployments/status": {"patch"},
        "paralleldeployments/finalizers": {"update"},
        **{child.plural: set(child.verbs()) for child in CHILD_KINDS},
        "events": {"create"},
    }
    watched = values.get("watchNamespaces")
    if watched:
        # Writes only in the watched namespaces; cluster-wide only reads.
        assert set(cluster) == {"nodes", "pods", "customresourcedefinitions", "namespaces"}
        assert cluster["namespaces"] == {"list", "watch"}
        assert namespaced == workloads
        assert sorted(r["metadata"]["namespace"] for r in by_kind(rendered, "Role")) == sorted(watched)
        assert sorted(b["metadata"]["namespace"] for b in by_kind(rendered, "RoleBinding")) == sorted(watched)
    else:
        assert set(cluster) == {"nodes", "pods", "customresourcedefinitions", *workloads}
        assert {k: v for k, v in cluster.items() if k in workloads} == workloads
        assert not by_kind(rendered, "Role")


def test_bindings_name_the_charts_service_account(case: tuple[str, str]) -> None:
    rendered = manifests(case[1])
    (deployment,) = by_kind(rendered, "Deployment")
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    for binding in by_kind(rendered, "ClusterRoleBinding") + by_kind(rendered, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]


def test_metrics_service_and_monitor_point_at_the_metrics_port(helm: str) -> None:
    rendered = manifests(render(helm, "namespaced.yaml"))
    (service,) = by_kind(rendered, "Service")
    (monitor,) = by_kind(rendered, "ServiceMonitor")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (dashboard,) = by_kind(rendered, "ConfigMap")
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert '"uid": "autoparallel-operator"' in dashboard["data"]["autoparallel.json"]


def test_chart_app_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = re.search(r'^version = "(.+)"$', (repo_root() / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert version and chart["appVersion"] == version.group(1)


def test_gitops_example_points_at_this_chart_with_valid_values(helm: str, tmp_path: Path) -> None:
    apps = list(yaml.safe_load_all((repo_root() / "examples" / "gitops" / "application.yaml").read_text()))
    operator = next(app for app in apps if app["spec"]["source"].get("path") == "charts/autoparallel-operator")
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(operator["spec"]["source"]["helm"]["valuesObject"]))
    rendered = manifests(run_helm(helm, "template", "autoparallel", str(CHART), "-n", NAMESPACE, "-f", str(values)))
    (deployment,) = by_kind(rendered, "Deployment")
    watched = operator["spec"]["source"]["helm"]["valuesObject"]["watchNamespaces"]
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][: len(watched)] == [
        f"--namespace={namespace}" for namespace in watched
    ]
    workloads = next(app for app in apps if app is not operator)
    assert workloads["spec"]["destination"]["namespace"] in watched
