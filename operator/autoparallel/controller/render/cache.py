"""The weight cache: a PVC mounted as the Hugging Face cache (``HF_HOME``) of every pod, and the Job that
downloads the model (and a training resource's Hub dataset) into it before the first pod starts.

The download Job is named after what it downloads (model, revision, dataset, claim), not after the plan: a replan
keeps it, so its completion keeps saying that the cache holds the model; a new model or revision is a new Job.
"""

from __future__ import annotations

import hashlib
import json
import shlex

from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH
from autoparallel.controller.models import AccessMode, ParallelDeploymentSpec, ServingSpec
from autoparallel.controller.plan import Owner
from autoparallel.controller.render.common import (
    CACHE_PATH,
    CACHE_VOLUME,
    Manifest,
    cache_mount,
    cache_volume,
    claim_name,
    labels,
    owner_references,
    token_env,
)
from autoparallel.controller.render.overrides import merge_pod_template

COMPONENT_DOWNLOAD = "model-download"
DOWNLOAD_BACKOFF_LIMIT = 3
DOWNLOAD_CLI = "if command -v hf >/dev/null 2>&1; then cli=hf; else cli=huggingface-cli; fi"
"""``hf`` (huggingface_hub ≥ 0.34; the only CLI of 1.x), else the older ``huggingface-cli``."""


def shared_by_one_node_only(spec: ParallelDeploymentSpec) -> bool:
    """Whether the created cache can be mounted by the pods of one node only (ReadWriteOnce and -OncePod)."""
    cache = spec.model.cache
    if cache is None or cache.size is None:
        return False  # an existing claim: its modes are the user's to know
    modes = cache.access_modes or [AccessMode.READ_WRITE_ONCE]
    return AccessMode.READ_WRITE_MANY not in modes


def download_digest(spec: ParallelDeploymentSpec, owner: Owner) -> str:
    material = f"{spec.model.name}@{spec.model.revision or 'main'}->{claim_name(spec, owner)}"
    if spec.hub_dataset is not None:
        material += f"+dataset:{spec.hub_dataset}"
    return hashlib.sha256(material.encode()).hexdigest()[:10]


def download_job_name(spec: ParallelDeploymentSpec, owner: Owner) -> str:
    return f"{owner.name}-download-{download_digest(spec, owner)}"


def render_cache_claim(spec: ParallelDeploymentSpec, owner: Owner) -> Manifest | None:
    """The PVC the operator creates for ``cache.size`` (None for an existing claim). Owned by the resource, so
    it goes with it, unless ``retain``."""
    cache = spec.model.cache
    if cache is None or cache.size is None:
        return None
    metadata: Manifest = {
        "name": claim_name(spec, owner),
        "namespace": owner.namespace,
        "labels": labels(owner, CACHE_VOLUME),
    }
    if not cache.retain:
        metadata["ownerReferences"] = owner_references(owner)
    claim_spec: Manifest = {
        "accessModes": [mode.value for mode in cache.access_modes or [AccessMode.READ_WRITE_ONCE]],
        "resources": {"requests": {"storage": cache.size}},
    }
    if cache.storage_class_name is not None:
        claim_spec["storageClassName"] = cache.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": claim_spec}


def downloads(spec: ParallelDeploymentSpec) -> list[list[str]]:
    """The ``hf`` command lines the Job runs: the model at its revision (unless it is a path on a volume), then
    the training dataset if it is on the Hub."""
    commands = []
    if not spec.model.is_path:
        model = ["download", spec.model.name]
        commands.append([*model, "--revision", spec.model.revision] if spec.model.revision else model)
    if spec.hub_dataset is not None:
        commands.append(["download", "--repo-type", "dataset", spec.hub_dataset])
    return commands


def download_subject(spec: ParallelDeploymentSpec) -> str:
    """What the download Job fetches, for messages: ``model@revision``, ``dataset NAME`` or both."""
    parts = [] if spec.model.is_path else [f"{spec.model.name}@{spec.model.revision or 'main'}"]
    if spec.hub_dataset is not None:
        parts.append(f"dataset {spec.hub_dataset}")
    return " and ".join(parts)


def download_argv(spec: ParallelDeploymentSpec) -> list[str]:
    """A shell script running :func:`downloads` in order with whichever CLI the image has, stopping at a failure."""
    script = [DOWNLOAD_CLI, *(f'"$cli" {shlex.join(args)}' for args in downloads(spec))]
    return ["/bin/sh", "-c", "set -e\n" + "\n".join(script)]


def render_download_job(spec: ParallelDeploymentSpec, owner: Owner) -> Manifest:
    """A Job that downloads the model at its revision (and a training dataset) into the cache, with the
    resource's token; no GPU."""
    image = (spec.serving or ServingSpec()).image  # the vLLM image brings huggingface_hub and its CLI
    main: Manifest = {
        "name": "download",
        "image": image,
        "command": download_argv(spec),
        "env": [*token_env(spec), {"name": "HF_HOME", "value": CACHE_PATH}],
        "volumeMounts": cache_mount(spec),
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
    }
    # The Job's pod template is immutable: the hash covers the command and the pod overrides too, so a change
    # replaces a Job still downloading (a completed one is kept as it is: the weights are in the cache).
    overrides = spec.pod_template.model_dump(mode="json", by_alias=True) if spec.pod_template else None
    material = [download_digest(spec, owner), main["command"], overrides]
    digest = hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()
    digest = digest[:16]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": download_job_name(spec, owner),
            "namespace": owner.namespace,
            "labels": labels(owner, COMPONENT_DOWNLOAD),
            "annotations": {
                ANNOTATION_PLAN_HASH: digest,
                "autoparallel.io/download": "; ".join(shlex.join(args) for args in downloads(spec)),
            },
            "ownerReferences": owner_references(owner),
        },
        "spec": {
            "backoffLimit": DOWNLOAD_BACKOFF_LIMIT,
            "template": merge_pod_template(
                {
                    "metadata": {
                        "labels": labels(owner, COMPONENT_DOWNLOAD),
                        "annotations": {ANNOTATION_PLAN_HASH: digest},
                    },
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "enableServiceLinks": False,
                        "containers": [main],
                        "volumes": cache_volume(spec, owner),
                    },
                },
                spec,
            ),
        },
    }


def render_cache(spec: ParallelDeploymentSpec, owner: Owner) -> list[Manifest]:
    """The PVC the operator creates (``cache.size``) and the download Job (``cache.prefetch``), in that order."""
    claim = render_cache_claim(spec, owner)
    job = render_download_job(spec, owner) if spec.prefetched else None
    return [manifest for manifest in (claim, job) if manifest is not None]
