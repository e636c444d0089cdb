"""Children of a training ParallelDeployment: an Indexed Job of torchrun pods and its headless Service.

The pods follow the Kubeflow Trainer conventions: ``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``
(the Job completion index), ``PET_MASTER_ADDR`` (pod 0's stable DNS name) and ``PET_MASTER_PORT``.
"""

from __future__ import annotations

from autoparallel.controller.config import DEFAULT_TRAINING_IMAGE
from autoparallel.controller.models import ParallelDeploymentSpec, TrainingSpec
from autoparallel.controller.plan import ChosenPlan, Owner
from autoparallel.controller.render.common import (
    COMPONENT_TRAINING,
    Manifest,
    container,
    container_port,
    env,
    env_from,
    field_env,
    gpu_resources,
    model_env,
    object_meta,
    pod_template,
    selector_labels,
    service_port,
)
from autoparallel.planner.commands import (
    TORCHRUN_MASTER_PORT,
    TrainOptions,
    join,
    torchrun_args,
    torchrun_program_args,
)

TORCHRUN_PORT_NAME = "torchrun"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
"""Annotation the Job controller sets on each pod of an Indexed Job: its index, used as the node rank."""
TRAINING_BACKOFF_LIMIT = 3
"""Pod failures the Job retries before it fails: a lost node or an NCCL timeout is often transient (every
rank restarts with it under torchrun's static rendezvous), while a bug fails the same way every time and
should surface quickly rather than burn GPU hours."""
TRAINING_IMAGE_GROUP = 65532
"""The group of the training image's user (the Dockerfile's ``USER`` of its training target)."""
VOLUME_GROUP = {"fsGroup": TRAINING_IMAGE_GROUP, "fsGroupChangePolicy": "OnRootMismatch"}
"""Pod securityContext of the training pods unless spec.podTemplate gives one: the image runs as a non-root user,
and the kubelet makes the pods' volumes (the cache the download Job filled as root, a claim of the user's)
writable by this group, so checkpoints and exports can be written there. OnRootMismatch skips the recursive
change when the volume's root already has the group."""


def _training(spec: ParallelDeploymentSpec) -> TrainingSpec:
    return spec.training or TrainingSpec()


def training_pods(plan: ChosenPlan) -> int:
    """Pods of the training Job: one per node, each with ``gpus_per_pod`` GPUs, covering every planned GPU."""
    return plan.degrees.total_gpus // plan.gpus_per_pod


def master_address(owner: Owner) -> str:
    """Pod 0's DNS name: an Indexed Job's pods are named ``<job>-<index>``, and the headless Service named as
    the pods' ``subdomain`` resolves them within the namespace."""
    return f"{owner.name}-0.{owner.name}"


def training_script(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> str:
    """The pods' shell script: ``exec`` :func:`training_command`."""
    return "exec " + training_command(plan, spec)


def training_command(plan: ChosenPlan, spec: ParallelDeploymentSpec) -> str:
    """torchrun launching ``python -m autoparallel.parallel.train`` with the planned degrees, or the user's
    ``training.command``, then ``training.args``.

    It runs under ``sh -c`` because torchrun's flags reference ``${PET_NODE_RANK}`` and ``${PET_MASTER_ADDR}``
    in shell syntax (as the planner's status command prints them); ``commands.join`` quotes every other
    argument, so only ``--flag=${VAR}`` arguments are expanded by the shell."""
    training = _training(spec)
    pods = training_pods(plan)
    if training.command:
        argv = torchrun_program_args(training.command, pods, plan.gpus_per_pod)
    else:
        options = TrainOptions(
            model=spec.model.name,
            sequence_length=plan.planned_sequence_length(spec.workload.sequence_length),
            global_batch_size=spec.workload.batch_size,
            micro_batches=plan.micro_batches,
            steps=training.steps,
            init=training.init.value if training.init else None,
            data=training.data,
            data_field=training.data_field,
            checkpoint_dir=training.checkpoint_dir,
            checkpoint_every=training.checkpoint_every,
            export_dir=training.export_dir,
            export_every=training.export_every,
        )
        argv = torchrun_args(plan.degrees, options, pods, plan.gpus_per_pod)
    return join([*argv, *training.args])


def training_env(plan: ChosenPlan, owner: Owner) -> list[Manifest]:
    """The rendezvous variables torchrun reads, and the planned degrees for runtimes that read the environment."""

    def literal(name: str, value: object) -> Manifest:
        return {"name": name, "value": str(value)}

    return [
        literal("PET_NNODES", training_pods(plan)),
        literal("PET_NPROC_PER_NODE", plan.gpus_per_pod),
        field_env("PET_NODE_RANK", f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"),
        literal("PET_MASTER_ADDR", master_address(owner)),
        literal("PET_MASTER_PORT", TORCHRUN_MASTER_PORT),
        literal("AUTOPARALLEL_TENSOR_PARALLEL", plan.degrees.tensor),
        literal("AUTOPARALLEL_PIPELINE_PARALLEL", plan.degrees.pipeline),
        literal("AUTOPARALLEL_DATA_PARALLEL", plan.degrees.data),
    ]


def _volume_group(spec: ParallelDeploymentSpec) -> Manifest:
    """:data:`VOLUME_GROUP` as the pods' securityContext, unless spec.podTemplate sets one (which then wins whole)."""
    if spec.pod_template is not None and spec.pod_template.spec.security_context is not None:
        return {}
    return {"securityContext": dict(VOLUME_GROUP)}


def render_training_service(plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner) -> Manifest:
    """Headless Service ``<name>``: DNS names for the Job's pods, published before they are ready (the
    rendezvous happens before any pod could be)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(owner.name, plan.plan_hash, owner, COMPONENT_TRAINING),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(owner, COMPONENT_TRAINING),
            "ports": [service_port(TORCHRUN_PORT_NAME, TORCHRUN_MASTER_PORT)],
        },
    }


def render_training_job(
    plan: ChosenPlan, spec: ParallelDeploymentSpec, owner: Owner, default_image: str = DEFAULT_TRAINING_IMAGE
) -> Manifest:
    """Indexed Job ``<name>``: one pod per node, all running at once (completions = parallelism), in
    ``training.image`` or else ``default_image`` (the operator's --training-image)."""
    training = _training(spec)
    pods = training_pods(plan)
    main = container(
        "trainer",
        training.image or default_image,
        ["/bin/sh", "-c", training_script(plan, spec)],
        ports=[container_port(TORCHRUN_PORT_NAME, TORCHRUN_MASTER_PORT)],
        env_vars=env([*training_env(plan, owner), *model_env(spec)], training.env),
        env_sources=env_from(training.env_from),
        resources=gpu_resources(plan, spec),
    )
    template = pod_template(
        plan,
        spec,
        owner,
        COMPONENT_TRAINING,
        main,
        extra_spec={"restartPolicy": "Never", "subdomain": owner.name, **_volume_group(spec)},
    )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": object_meta(owner.name, plan.plan_hash, owner, COMPONENT_TRAINING),
        "spec": {
            "completionMode": "Indexed",
            "completions": pods,
            "parallelism": pods,
            "backoffLimit": TRAINING_BACKOFF_LIMIT,
            "template": template,
        },
    }
