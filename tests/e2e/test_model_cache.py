"""The weight cache on the real control plane: the PVC the operator creates, the download Job before any serving
pod, ModelCached, serving pods loading offline from HF_HOME on the claim, and who deletes the PVC."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from kube import KubeCluster, gone, wait_for
from nodes import TEST_RUN_LABEL

from . import pd as pds
from .conftest import Operator
from .pd import GROUP, PLURAL, VERSION, children, create, get, wait_condition


@pytest.fixture
def storage_class(kube_cluster: KubeCluster) -> Iterator[str]:
    """A PersistentVolume of a storage class of its own, for the claim the operator creates to bind to (the
    local control plane has no provisioner). Deleted afterwards."""
    assert pds.TEST_NODES is not None
    name = f"e2e-{pds.TEST_NODES.run}-{secrets.token_hex(3)}"
    volume = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": name, "labels": {TEST_RUN_LABEL: pds.TEST_NODES.run}},
        "spec": {
            "capacity": {"storage": "200Gi"},
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": name,
            "persistentVolumeReclaimPolicy": "Retain",
            "hostPath": {"path": f"/tmp/{name}"},
        },
    }
    kube_cluster.core.create_persistent_volume(volume)
    yield name
    kube_cluster.core.delete_persistent_volume(name)


def _cached(storage: str, retain: bool = False) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ParallelDeployment",
        "metadata": {"name": "cached"},
        "spec": {
            "model": {
                "name": "meta-llama/Meta-Llama-3.1-8B",
                "revision": "main",
                "tokenSecretRef": {"name": "hf-token", "key": "token"},
                "cache": {"size": "100Gi", "storageClassName": storage, **({"retain": True} if retain else {})},
            },
            "workload": {"sequenceLength": 4096, "batchSize": 8},
            "placement": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}},
        },
    }


def _secret(kube_cluster: KubeCluster, namespace: str) -> None:
    kube_cluster.core.create_namespaced_secret(
        namespace, client.V1Secret(metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": "hf_x"})
    )


def _delete(kube_cluster: KubeCluster, namespace: str) -> None:
    client.CustomObjectsApi(kube_cluster.api_client).delete_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "cached"
    )
    wait_for(gone(lambda: get(kube_cluster, namespace, "cached")), timeout=30, description="the resource deleted")


def test_the_model_is_downloaded_into_the_cache_before_any_serving_pod(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str, storage_class: str
) -> None:
    _secret(kube_cluster, pd_namespace)
    create(kube_cluster, pd_namespace, _cached(storage_class))
    cached = wait_condition(kube_cluster, pd_namespace, "cached", "ModelCached", "True", timeout=90)
    claim = kube_cluster.core.read_namespaced_persistent_volume_claim("cached-model-cache", pd_namespace)
    assert claim.spec.storage_class_name == storage_class and claim.status.phase == "Bound"
    assert claim.metadata.owner_references[0].uid == cached["metadata"]["uid"]
    uid = cached["metadata"]["uid"]
    [job] = [j for j in children(kube_cluster, pd_namespace, uid)["Job"] if "download" in j.metadata.name]
    container = job.spec.template.spec.containers[0]
    assert container.command[:2] == ["/bin/sh", "-c"]
    assert container.command[2].endswith('"$cli" download meta-llama/Meta-Llama-3.1-8B --revision main')
    assert {e.name: e.value_from.secret_key_ref.name for e in container.env if e.value_from} == {"HF_TOKEN": "hf-token"}

    ready = wait_condition(kube_cluster, pd_namespace, "cached", "Ready", "True", timeout=90)
    [deployment] = children(kube_cluster, pd_namespace, uid)["Deployment"]
    job = kube_cluster.batch.read_namespaced_job(job.metadata.name, pd_namespace)
    # The serving pods were created only after the download completed.
    assert deployment.metadata.creation_timestamp >= job.status.completion_time
    pod = deployment.spec.template.spec
    env = {e.name: e for e in pod.containers[0].env}
    assert env["HF_HOME"].value == "/model-cache" and env["HF_HUB_OFFLINE"].value == "1"
    assert env["HF_TOKEN"].value is None and env["HF_TOKEN"].value_from.secret_key_ref.name == "hf-token"
    [volume] = [v for v in pod.volumes if v.persistent_volume_claim]
    assert volume.persistent_volume_claim.claim_name == "cached-model-cache"
    assert ready["status"]["replicas"] == {"desired": 1, "ready": 1}

    _delete(kube_cluster, pd_namespace)
    wait_for(
        gone(lambda: kube_cluster.core.read_namespaced_persistent_volume_claim("cached-model-cache", pd_namespace)),
        timeout=90,
        description="the created cache garbage-collected with its resource",
    )


def test_a_retained_cache_outlives_its_resource(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str, storage_class: str
) -> None:
    _secret(kube_cluster, pd_namespace)
    create(kube_cluster, pd_namespace, _cached(storage_class, retain=True))
    pd = wait_condition(kube_cluster, pd_namespace, "cached", "Ready", "True", timeout=120)
    _delete(kube_cluster, pd_namespace)
    wait_for(
        lambda: not any(children(kube_cluster, pd_namespace, pd["metadata"]["uid"]).values()),
        timeout=90,
        description="the resource's other children garbage-collected",
    )
    claim = kube_cluster.core.read_namespaced_persistent_volume_claim("cached-model-cache", pd_namespace)
    assert not claim.metadata.owner_references and claim.metadata.deletion_timestamp is None
    kube_cluster.core.delete_namespaced_persistent_volume_claim("cached-model-cache", pd_namespace)
