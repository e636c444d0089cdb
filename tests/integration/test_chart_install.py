"""The Helm chart against the real API server: install, the operator under the chart's RBAC, upgrade, uninstall.

One release per module run (unique name, its own namespaces, watching one namespace), installed with the helm
binary of hack/build-helm.sh. The operator then runs here as a process with the Deployment's own command line and
a kubeconfig holding a token of the chart's ServiceAccount (TokenRequest API), so every call it makes is
authorized by the chart's ClusterRole/Role and nothing else: it must reconcile examples/llama70b.yaml with no 403,
and the same token must be refused what the operator does not need (Secrets, deleting nodes, other namespaces).

The CRD is a cluster-wide singleton that other tests also apply: the release adopts it (Helm's ownership
labels), the upgrade test changes its schema and puts it back, and its labels and annotations are restored at
the end. A file lock keeps two runs of this module on one machine from adopting it at the same time.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config
from lupa import lua51  # type: ignore[import-untyped]

from kube import KubeCluster, gone, repo_root, wait_for
from nodes import TestNodes

pytestmark = [pytest.mark.cluster, pytest.mark.helm]

CHART = repo_root() / "charts" / "autoparallel-operator"
CRD_NAME = "paralleldeployments.autoparallel.io"
GROUP, VERSION, PLURAL = "autoparallel.io", "v1alpha1", "paralleldeployments"
HEALTH_LUA = repo_root() / "argocd" / "resource_customizations" / GROUP / "ParallelDeployment" / "health.lua"
TEST_LABEL = {"autoparallel.io/test": "true"}


@dataclass
class Release:
    name: str
    namespace: str
    """Where the operator is installed."""
    watched: str
    """The one namespace it reconciles."""
    fullname: str
    kubeconfig: str
    helm: str
    workdir: Path

    def helm_run(self, *args: str) -> str:
        result = subprocess.run(
            [self.helm, *args, "--kubeconfig", self.kubeconfig], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    def install_args(self) -> list[str]:
        return ["--namespace", self.namespace, "--set", f"watchNamespaces={{{self.watched}}}"]


def _helm_binary(config: pytest.Config) -> str:
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        build = repo_root() / "hack" / "build-helm.sh"
        result = subprocess.run([str(build), "--print-path"], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        pytest.fail(f"hack/build-helm.sh failed (exit {result.returncode}); the chart tests need helm", pytrace=False)
    return result.stdout.strip()


def _create_namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=TEST_LABEL)))
    wait_for(
        lambda: core.read_namespaced_service_account("default", name),
        timeout=30,
        description=f"the default ServiceAccount of namespace {name}",
    )


def _crd_metadata(api: client.ApiextensionsV1Api) -> tuple[dict[str, str], dict[str, str]] | None:
    try:
        meta = api.read_custom_resource_definition(CRD_NAME).metadata
    except client.ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(meta.labels or {}), dict(meta.annotations or {})


def _set_crd_metadata(api: client.ApiextensionsV1Api, labels: dict[str, str], annotations: dict[str, str]) -> None:
    """Make the CRD's labels and annotations exactly these (a merge patch: absent keys become null)."""
    current = _crd_metadata(api)
    if current is None:
        return
    patch = {
        "metadata": {
            "labels": {**dict.fromkeys(current[0]), **labels},
            "annotations": {**dict.fromkeys(current[1]), **annotations},
        }
    }
    api.patch_custom_resource_definition(CRD_NAME, patch)


@pytest.fixture(scope="module")
def crd_lock() -> Iterator[None]:
    """One run of this module per machine at a time: each adopts the cluster's only CRD of this name."""
    path = Path(tempfile.gettempdir()) / f"autoparallel-{CRD_NAME}-helm.lock"
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope="module")
def release(
    kube_cluster: KubeCluster, pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory, crd_lock: None
) -> Iterator[Release]:
    suffix = secrets.token_hex(3)
    name = f"ap-{suffix}"
    rel = Release(
        name=name,
        namespace=f"t-chart-system-{suffix}",
        watched=f"t-chart-work-{suffix}",
        fullname=f"{name}-autoparallel-operator",
        kubeconfig=kube_cluster.kubeconfig,
        helm=_helm_binary(pytestconfig),
        workdir=tmp_path_factory.mktemp("chart"),
    )
    core = kube_cluster.core
    extensions = client.ApiextensionsV1Api(kube_cluster.api_client)
    before = _crd_metadata(extensions)
    for namespace in (rel.namespace, rel.watched):
        _create_namespace(core, namespace)
    if before is not None:
        # Adopt the CRD other tests applied without Helm: Helm installs over an existing object only when it
        # carries the release's ownership metadata (docs/install.md: "Adopting an existing CRD").
        _set_crd_metadata(
            extensions,
            {**before[0], "app.kubernetes.io/managed-by": "Helm"},
            {**before[1], "meta.helm.sh/release-name": rel.name, "meta.helm.sh/release-namespace": rel.namespace},
        )
    try:
        rel.helm_run("install", rel.name, str(CHART), *rel.install_args())
        yield rel
    finally:
        listed = subprocess.run(
            [rel.helm, "status", rel.name, "-n", rel.namespace, "--kubeconfig", rel.kubeconfig],
            capture_output=True,
            check=False,
        )
        if listed.returncode == 0:
            rel.helm_run("uninstall", rel.name, "--namespace", rel.namespace, "--wait")
        for namespace in (rel.namespace, rel.watched):
            core.delete_namespace(namespace, propagation_policy="Background")
        labels, annotations = before if before is not None else ({}, {})
        _set_crd_metadata(extensions, labels, annotations)


# --- install -------------------------------------------------------------------------------------------------------


def test_install_creates_the_crd_rbac_and_the_operator(kube_cluster: KubeCluster, release: Release) -> None:
    extensions = client.ApiextensionsV1Api(kube_cluster.api_client)

    def established() -> bool:
        conditions = extensions.read_custom_resource_definition(CRD_NAME).status.conditions or []
        return any(c.type == "Established" and c.status == "True" for c in conditions)

    wait_for(established, timeout=30, description=f"CRD {CRD_NAME} Established")
    crd = extensions.read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    assert crd.metadata.annotations["meta.helm.sh/release-name"] == release.name

    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client)
    role = rbac.read_cluster_role(release.fullname)
    assert {r for rule in role.rules for r in rule.resources} == {
        "nodes",
        "pods",
        "customresourcedefinitions",
        "namespaces",
    }
    binding = rbac.read_cluster_role_binding(release.fullname)
    assert (binding.subjects[0].name, binding.subjects[0].namespace) == (release.fullname, release.namespace)
    assert rbac.read_namespaced_role(release.fullname, release.watched).rules
    assert rbac.read_namespaced_role_binding(release.fullname, release.watched).role_ref.kind == "Role"
    kube_cluster.core.read_namespaced_service_account(release.fullname, release.namespace)
    kube_cluster.core.read_namespaced_service(f"{release.fullname}-metrics", release.namespace)

    deployment = kube_cluster.apps.read_namespaced_deployment(release.fullname, release.namespace)
    assert deployment.spec.replicas == 1 and deployment.spec.strategy.type == "RollingUpdate"
    # Leader election (the chart's default): a Role in the release namespace for the one Lease.
    election = rbac.read_namespaced_role(f"{release.fullname}-leader-election", release.namespace)
    assert {r for rule in election.rules for r in rule.resources} == {"leases"}
    (container,) = deployment.spec.template.spec.containers
    assert container.args[0] == f"--namespace={release.watched}"
    assert container.security_context.read_only_root_filesystem is True


# --- the operator under the chart's RBAC ---------------------------------------------------------------------------


def _token_kubeconfig(kube_cluster: KubeCluster, release: Release) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (a bound token from the TokenRequest API)."""
    request = client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600))
    token = kube_cluster.core.create_namespaced_service_account_token(release.fullname, release.namespace, request)
    config = kube_cluster.api_client.configuration
    cluster: dict[str, Any] = {"server": config.host}
    if config.verify_ssl and config.ssl_ca_cert:
        cluster["certificate-authority"] = config.ssl_ca_cert
    elif not config.verify_ssl:
        cluster["insecure-skip-tls-verify"] = True
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": release.fullname, "user": {"token": token.status.token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "cluster", "user": release.fullname}}],
        "current-context": "operator",
    }
    path = release.workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def token_kubeconfig(kube_cluster: KubeCluster, release: Release) -> Path:
    return _token_kubeconfig(kube_cluster, release)


@pytest.fixture(scope="module")
def operator_client(token_kubeconfig: Path) -> Iterator[client.ApiClient]:
    """An API client with the ServiceAccount's token: exactly the operator's permissions."""
    api = config.new_client_from_config(config_file=str(token_kubeconfig))
    yield api
    api.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _operator_command(kube_cluster: KubeCluster, release: Release) -> list[str]:
    """The installed Deployment's command line (image entrypoint + args), with free local ports."""
    deployment = kube_cluster.apps.read_namespaced_deployment(release.fullname, release.namespace)
    (container,) = deployment.spec.template.spec.containers
    local_ports = {"--metrics-port": _free_port(), "--liveness-port": _free_port()}
    args = []
    for arg in container.args:
        flag = arg.partition("=")[0]
        args.append(f"{flag}={local_ports[flag]}" if flag in local_ports else arg)
    executable = Path(sys.executable).with_name("autoparallel")
    assert executable.exists(), f"{executable} missing: install the package (make install)"
    return [str(executable), "operator", "run", *args]


def _argocd_health(obj: dict[str, Any]) -> str:
    lua = lua51.LuaRuntime()

    def table(value: Any) -> Any:
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    lua.globals().obj = table(obj)
    return str(lua.execute(HEALTH_LUA.read_text())["status"])


def _handled_here(log_text: str, namespace: str, name: str) -> bool:
    """Whether this operator's log (JSON lines, the chart's default format) says it reconciled the object."""
    for line in log_text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        target = record.get("object") or {}
        this_object = (target.get("namespace"), target.get("name")) == (namespace, name)
        if this_object and record.get("message") == "Handler 'on_change' succeeded.":
            return True
    return False


def _condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = (body.get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == type_), {})


def test_operator_reconciles_llama70b_with_the_service_accounts_permissions(
    kube_cluster: KubeCluster, release: Release, token_kubeconfig: Path, gpu_nodes: TestNodes
) -> None:
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    body = gpu_nodes.place(yaml.safe_load((repo_root() / "examples" / "llama70b.yaml").read_text()))
    custom.create_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL, body)
    name = body["metadata"]["name"]

    def pd_now() -> dict[str, Any]:
        return dict(custom.get_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL, name))

    env = {key: value for key, value in os.environ.items() if not key.startswith(("AUTOPARALLEL_", "KUBERNETES_"))}
    env |= {"KUBECONFIG": str(token_kubeconfig), "HF_HUB_OFFLINE": "1"}
    log_path = release.workdir / "operator.log"
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            _operator_command(kube_cluster, release), env=env, stdout=log, stderr=subprocess.STDOUT, text=True
        )
    try:

        def reconciled() -> dict[str, Any] | None:
            pd = pd_now()
            ready, generation = _condition(pd, "Ready"), pd["metadata"]["generation"]
            handled = _handled_here(log_path.read_text(), release.watched, name)
            kube_cluster.apps.read_namespaced_deployment(name, release.watched)  # 404 until it exists
            if handled and ready.get("status") == "True" and ready.get("observedGeneration") == generation:
                return pd
            assert operator.poll() is None, f"the operator exited:\n{log_path.read_text()[-4000:]}"
            return None

        pd = wait_for(
            reconciled,
            timeout=120,
            description=f"{release.watched}/{name} planned and Ready, its Deployment applied, by this operator",
            observe=lambda: (log_path.read_text()[-2000:], _condition(pd_now(), "Ready")),
        )
        assert pd is not None and _condition(pd, "Planned")["status"] == "True"
        assert _argocd_health(pd) == "Healthy"
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait(timeout=10)
        # Free the simulated H100s for the tests that follow: the Deployment and its pods go with their owner.
        custom.delete_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL, name)
        wait_for(
            lambda: not kube_cluster.core.list_namespaced_pod(release.watched).items,
            timeout=90,
            description=f"the pods of {release.watched}/{name} gone",
        )
    log_text = log_path.read_text()
    assert "forbidden" not in log_text.lower(), f"the operator was refused a call:\n{log_text[-4000:]}"


def _allowed(api: client.ApiClient, verb: str, resource: str, namespace: str | None = None, group: str = "") -> bool:
    review = client.V1SelfSubjectAccessReview(
        spec=client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=client.V1ResourceAttributes(
                verb=verb, resource=resource, group=group, namespace=namespace
            )
        )
    )
    return bool(client.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed)


def test_service_account_can_do_what_the_operator_needs(release: Release, operator_client: client.ApiClient) -> None:
    needed = [
        ("watch", "nodes", None, ""),
        ("list", "pods", None, ""),
        ("watch", "customresourcedefinitions", None, "apiextensions.k8s.io"),
        ("patch", "paralleldeployments", release.watched, GROUP),
        ("patch", "paralleldeployments/status", release.watched, GROUP),
        ("create", "deployments", release.watched, "apps"),
        ("delete", "statefulsets", release.watched, "apps"),
        ("get", "jobs", release.watched, "batch"),
        ("patch", "services", release.watched, ""),
        ("create", "events", release.watched, ""),
    ]
    refused = [n for n in needed if not _allowed(operator_client, *n)]
    assert not refused


def test_service_account_cannot_do_more(
    kube_cluster: KubeCluster, release: Release, operator_client: client.ApiClient
) -> None:
    core = client.CoreV1Api(operator_client)
    for call in (
        lambda: core.list_namespaced_secret(release.watched),
        lambda: core.list_namespaced_secret(release.namespace),
        core.list_secret_for_all_namespaces,
        lambda: core.delete_node("gpu-h100-0", dry_run="All"),
    ):
        with pytest.raises(client.ApiException) as refused:
            call()
        assert refused.value.status == 403
    beyond = [
        ("get", "secrets", release.watched, ""),
        ("list", "configmaps", release.watched, ""),
        ("create", "pods", release.watched, ""),
        ("delete", "nodes", None, ""),
        ("patch", "nodes", None, ""),
        ("get", "nodes", None, ""),  # the inventory lists and watches; it never reads one by name
        ("create", "deployments", release.namespace, "apps"),  # not a watched namespace
        ("create", "deployments", "default", "apps"),
        ("patch", "paralleldeployments", "default", GROUP),
        ("create", "clusterroles", None, "rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts", release.namespace, ""),
        ("update", "customresourcedefinitions", None, "apiextensions.k8s.io"),
    ]
    granted = [b for b in beyond if _allowed(operator_client, *b)]
    assert not granted


# --- upgrade and uninstall -----------------------------------------------------------------------------------------


def _probe_object(namespace: str) -> dict[str, Any]:
    body = yaml.safe_load((repo_root() / "examples" / "llama70b.yaml").read_text())
    body["metadata"] = {"name": "upgrade-probe", "namespace": namespace}
    body["spec"]["upgradeProbe"] = "served"
    return dict(body)


def _schema_serves_probe(kube_cluster: KubeCluster, namespace: str) -> bool:
    """Whether the API server accepts spec.upgradeProbe (strict field validation, dry run: nothing is stored)."""
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    try:
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _probe_object(namespace), dry_run="All", field_validation="Strict"
        )
    except client.ApiException as error:
        if "upgradeProbe" in str(error.body):
            return False
        raise
    return bool(created["spec"].get("upgradeProbe") == "served")


def _chart_with_changed_crd(release: Release) -> Path:
    """A copy of the chart (the CRD symlink resolved) whose CRD has one more optional spec field."""
    copy = release.workdir / "chart-upgraded"
    shutil.copytree(CHART, copy, symlinks=False)
    crd_file = copy / "crd-source" / f"{CRD_NAME}.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    spec_schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec_schema["properties"]["upgradeProbe"] = {"type": "string", "description": "Added by the upgrade test."}
    crd_file.write_text(yaml.safe_dump(crd, sort_keys=False))
    return copy


def test_upgrade_applies_a_changed_crd_schema(kube_cluster: KubeCluster, release: Release) -> None:
    assert not _schema_serves_probe(kube_cluster, release.watched)
    release.helm_run("upgrade", release.name, str(_chart_with_changed_crd(release)), *release.install_args())
    wait_for(
        lambda: _schema_serves_probe(kube_cluster, release.watched),
        timeout=30,
        description="the upgraded CRD schema served (spec.upgradeProbe accepted)",
    )
    # And back: the CRD other tests use returns to the generated schema.
    release.helm_run("upgrade", release.name, str(CHART), *release.install_args())
    wait_for(
        lambda: not _schema_serves_probe(kube_cluster, release.watched),
        timeout=30,
        description="the original CRD schema served again",
    )


def test_uninstall_keeps_the_crd_and_the_parallel_deployments(kube_cluster: KubeCluster, release: Release) -> None:
    custom = client.CustomObjectsApi(kube_cluster.api_client)
    kept = _probe_object(release.watched)
    kept["metadata"]["name"] = "kept"
    kept["spec"] = {**kept["spec"], "planOnly": True}
    del kept["spec"]["upgradeProbe"]
    custom.create_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL, kept)
    release.helm_run("uninstall", release.name, "--namespace", release.namespace, "--wait")
    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client)
    wait_for(gone(lambda: rbac.read_cluster_role(release.fullname)), timeout=30, description="ClusterRole deleted")
    wait_for(
        gone(lambda: kube_cluster.apps.read_namespaced_deployment(release.fullname, release.namespace)),
        timeout=30,
        description="the operator's Deployment deleted",
    )
    crd = client.ApiextensionsV1Api(kube_cluster.api_client).read_custom_resource_definition(CRD_NAME)
    assert crd.metadata.deletion_timestamp is None
    assert custom.get_namespaced_custom_object(GROUP, VERSION, release.watched, PLURAL, "kept")
