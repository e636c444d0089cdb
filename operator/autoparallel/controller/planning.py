"""From a ParallelDeployment spec and the GPU inventory to a plan, or to the reason there is none."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from autoparallel.controller.feedback import FailedPlan, has_room
from autoparallel.controller.inventory import Inventory
from autoparallel.controller.kinds import BY_KIND
from autoparallel.controller.models import (
    DEFAULT_SEQUENCE_LENGTH,
    DType,
    MemoryPerGPU,
    MultiNodeBackend,
    ParallelDeploymentSpec,
    PlanStatus,
    PoolInventory,
    ServingSpec,
    WorkloadType,
)
from autoparallel.controller.plan import ChosenPlan
from autoparallel.controller.render.cache import shared_by_one_node_only
from autoparallel.controller.render.common import CACHE_PATH, on_a_volume, writable_mounts
from autoparallel.controller.render.training import training_command
from autoparallel.planner import analyze
from autoparallel.planner.cluster import NodePool
from autoparallel.planner.errors import (
    AutoParallelError,
    InsufficientMemoryError,
    InvalidConfigurationError,
    ModelNotFoundError,
)
from autoparallel.planner.inference import Degrees
from autoparallel.planner.options import ModelRef
from autoparallel.planner.resolve import resolve_as, resolve_model
from autoparallel.planner.units import GIB, human_bytes, to_gib

CANDIDATES = 4
"""Plans evaluated for status.candidates (the chosen one and three alternatives)."""
FALLBACK_CANDIDATES = 64
"""Plans evaluated after an out-of-memory, to find the best one with more room per GPU than those that failed."""
LWS_CRD = BY_KIND["LeaderWorkerSet"].requires
LWS_INSTALL = "https://lws.sigs.k8s.io/docs/installation/"


@dataclass(frozen=True)
class PlanFailure:
    """Why no plan exists: a condition reason and a message that says what would fix it."""

    reason: str
    """ModelNotFound, InsufficientMemory, InsufficientGPUs, InvalidSpec or LeaderWorkerSetNotInstalled."""
    message: str


@dataclass(frozen=True)
class PlanResult:
    """A chosen plan with what the status reports about it."""

    plan: ChosenPlan
    status: PlanStatus
    candidates: tuple[str, ...]


def planner_options(spec: ParallelDeploymentSpec) -> dict[str, Any]:
    """The planner ``**options`` a spec asks for."""
    serving = spec.serving or ServingSpec()
    options: dict[str, Any] = {
        "workload": spec.workload.type.value,
        "objective": spec.objective.value,
        "tensor_parallel": spec.parallelism.tensor,
        "pipeline_parallel": spec.parallelism.pipeline,
        "data_parallel": spec.scaling.min_replicas if spec.scaling else spec.parallelism.data,
        "expert_parallel": spec.parallelism.expert,
        "max_gpus": spec.parallelism.max_gpus,
        "quantization": spec.model.quantization.value if spec.model.quantization else None,
        "weight_format": spec.model.weight_format.value if spec.model.weight_format else None,
        "dtype": None if spec.model.dtype == DType.AUTO else spec.model.dtype.value,
    }
    if spec.workload.type == WorkloadType.INFERENCE:
        options["gpu_memory_utilization"] = float(serving.gpu_memory_utilization)
        options["kv_cache_dtype"] = serving.kv_cache_dtype.value
    return {key: value for key, value in options.items() if value is not None}


def inventory_status(inventory: Inventory) -> list[PoolInventory]:
    return [
        PoolInventory(
            name=pool.name,
            gpu_type=pool.gpu_name,
            nodes=pool.num_nodes,
            gpus_total=pool.total_gpus,
            gpus_free=pool.free_total,
            memory_per_gpu=f"{to_gib(pool.gpu_memory_bytes)} GiB",
        )
        for pool in inventory.pools
    ]


def _memory(config: dict[str, Any], gpu_memory_gib: float) -> MemoryPerGPU:
    breakdown = {k: int(v * GIB) for k, v in config["memory_breakdown"].items()}
    overhead = breakdown["framework_overhead"] + sum(
        breakdown.get(part, 0) for part in ("gradients", "optimizer_states", "gathered")
    )
    total = breakdown["total"]
    human = (
        f"{human_bytes(total)} of {gpu_memory_gib:.1f} GiB (weights {human_bytes(breakdown['weights'])}, "
        f"KV cache {human_bytes(breakdown['kv_cache'])}, activations {human_bytes(breakdown['activations'])}, "
        f"overhead {human_bytes(overhead)})"
    )
    return MemoryPerGPU(
        weights=breakdown["weights"],
        kv_cache=breakdown["kv_cache"],
        activations=breakdown["activations"],
        overhead=overhead,
        total=total,
        capacity=int(gpu_memory_gib * GIB),
        human=human,
        summary=f"{total / GIB:.1f}/{gpu_memory_gib:.1f} GiB",
    )


def _candidate_line(config: dict[str, Any]) -> str:
    return (
        f"TP={config['tensor_parallel']} PP={config['pipeline_parallel']} EP={config['expert_parallel']} "
        f"DP={config['data_parallel']} on {config['total_gpus']}× {config['gpu_type']}: "
        f"{config['memory_per_gpu_gb']} GiB/GPU, {config['max_concurrent_sequences']} sequences/replica"
    )


def plan_hash(spec: ParallelDeploymentSpec, config: dict[str, Any], backend: MultiNodeBackend | None = None) -> str:
    """A digest of everything the children depend on: the spec, the chosen degrees and placement, and the backend
    of multi-node replicas."""
    material: dict[str, Any] = {
        "spec": spec.model_dump(mode="json", by_alias=True, exclude_none=True),
        "plan": {
            k: config[k]
            for k in (
                "tensor_parallel",
                "pipeline_parallel",
                "expert_parallel",
                "data_parallel",
                "pool",
                "nodes_per_replica",
                "gpus_per_replica",
            )
        },
    }
    if backend is MultiNodeBackend.LEADER_WORKER_SET:
        # Only then: plans made before there was a choice (StatefulSets) keep their hash, and so their pods.
        material["multiNodeBackend"] = backend.value
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def multi_node_backend(spec: ParallelDeploymentSpec, served: frozenset[str]) -> MultiNodeBackend | PlanFailure:
    """What runs ``spec``'s replicas when they span nodes, on an API server that serves the CRDs ``served``:
    spec.serving.multiNodeBackend, with auto resolved (a LeaderWorkerSet when its CRD is served)."""
    wanted = (spec.serving or ServingSpec()).multi_node_backend
    topology = spec.placement.topology_key
    if wanted is MultiNodeBackend.STATEFUL_SET:
        return wanted  # (a topologyKey is refused with it by the CRD's validation)
    if LWS_CRD in served:
        return MultiNodeBackend.LEADER_WORKER_SET
    if wanted is MultiNodeBackend.AUTO and topology is None:
        return MultiNodeBackend.STATEFUL_SET
    why = (
        "spec.serving.multiNodeBackend is leaderWorkerSet"
        if wanted is MultiNodeBackend.LEADER_WORKER_SET
        else f"spec.placement.topologyKey {topology} places replicas through LeaderWorkerSet's exclusive topology"
    )
    return PlanFailure(
        "LeaderWorkerSetNotInstalled",
        f"a replica spans nodes and {why}, but the API server does not serve the CRD {LWS_CRD}: install "
        f"LeaderWorkerSet ({LWS_INSTALL}), or set spec.serving.multiNodeBackend to statefulSet"
        f"{' and remove spec.placement.topologyKey' if topology else ''}",
    )


def backend_changed(spec: ParallelDeploymentSpec, plan: PlanStatus, served: frozenset[str]) -> bool:
    """Whether the multi-node backend ``plan`` runs on is no longer the one ``spec`` resolves to with ``served``
    (LeaderWorkerSet installed or removed since): then the resource is planned again."""
    if plan.nodes_per_replica == 1 or spec.workload.type is WorkloadType.TRAINING:
        return False
    return multi_node_backend(spec, served) != plan.multi_node_backend


def _gpus_per_pod(config: dict[str, Any], gpus_per_node: int) -> int:
    if config["nodes_per_replica"] > 1:
        return gpus_per_node
    if config["workload"] == "training":
        # torchrun runs one pod per node: the plan's GPUs are packed onto whole nodes where they fill them.
        return min(int(config["total_gpus"]), gpus_per_node)
    return int(config["gpus_per_replica"])


def _with_room(configs: list[dict[str, Any]], failed: Sequence[FailedPlan]) -> list[dict[str, Any]]:
    """The candidates that leave each GPU more room after the weights than every plan vLLM ran out of memory on."""
    return [
        c
        for c in configs
        if has_room(int(c["gpu_memory_gb"] * GIB), int(c["memory_breakdown"]["weights"] * GIB), failed)
    ]


def _scaling_bounds(
    spec: ParallelDeploymentSpec, pool: NodePool, best: Mapping[str, Any], backend: MultiNodeBackend | None
) -> tuple[int, str] | PlanFailure | None:
    """(maxReplicas, what the reason adds) with spec.scaling: its maxReplicas capped at the replicas the pool holds
    with all its GPUs (what it can ever hold, not what is free now); None without scaling."""
    if spec.scaling is None:
        return None
    nodes_per_replica = int(best["nodes_per_replica"])
    if nodes_per_replica > 1 and backend is not MultiNodeBackend.LEADER_WORKER_SET:
        return PlanFailure(
            "InvalidSpec",
            f"spec.scaling: a replica spans {nodes_per_replica} nodes and runs as a StatefulSet of its own, which an "
            "autoscaler cannot add: run the replicas on a LeaderWorkerSet (install LeaderWorkerSet, "
            f"{LWS_INSTALL}, with spec.serving.multiNodeBackend auto or leaderWorkerSet), remove spec.scaling, or "
            "use GPUs that hold a replica on one node",
        )
    if nodes_per_replica > 1:  # whole nodes per replica
        holds = pool.num_nodes // nodes_per_replica
        how = f"{pool.num_nodes} node(s) ÷ {nodes_per_replica} node(s) per replica"
    else:
        per_node = pool.gpus_per_node // int(best["gpus_per_replica"])
        holds = pool.num_nodes * per_node
        how = f"{pool.num_nodes} node(s) × {per_node} replica(s) of {best['gpus_per_replica']} GPU(s)"
    wanted = spec.scaling.max_replicas
    if wanted <= holds:
        return wanted, f"; autoscaling {spec.scaling.min_replicas}–{wanted} replicas"
    return holds, (
        f"; autoscaling {spec.scaling.min_replicas}–{holds} replicas: spec.scaling.maxReplicas {wanted} is capped at "
        f"{holds}, what the {pool.name} pool holds ({how})"
    )


def planned_model(spec: ParallelDeploymentSpec) -> ModelRef:
    """What the planner resolves: the inline config, or configFrom's architecture, under the name the pods load
    (a path, for a fine-tuned export); else the name itself."""
    if spec.model.config:
        return {**spec.model.config, "_name_or_path": spec.model.name}
    if spec.model.config_from:
        return resolve_as(spec.model.name, spec.model.config_from)
    return spec.model.name


def _outputs_off_volumes(spec: ParallelDeploymentSpec) -> PlanFailure | None:
    """A checkpoint or export directory on no writable volume of the trainer would be lost with its pod."""
    if spec.training is None:
        return None
    mounts = writable_mounts(spec, "trainer")
    outputs = {"checkpointDir": spec.training.checkpoint_dir, "exportDir": spec.training.export_dir}
    for field, path in outputs.items():
        if path is not None and not on_a_volume(path, mounts):
            where = f"under {', '.join(mounts)}" if mounts else f"add spec.model.cache (mounted at {CACHE_PATH})"
            return PlanFailure(
                "InvalidSpec",
                f"spec.training.{field}: {path} is on no writable volume of the trainer container, so it would "
                f"vanish with the pods: put it {where}, or mount a volume there with spec.podTemplate "
                "(volumes, and volumeMounts of the trainer container)",
            )
    return None


def plan_deployment(
    spec: ParallelDeploymentSpec,
    inventory: Inventory,
    prices: Mapping[str, float] | None = None,
    failed: Sequence[FailedPlan] = (),
    served: frozenset[str] = frozenset(),
) -> PlanResult | PlanFailure:
    """Plan ``spec`` on ``inventory`` (``prices``: USD per GPU-hour overrides), past the plans vLLM ran out of
    memory on (``failed``), for an API server serving the optional CRDs ``served`` (the multi-node backend);
    never raises for bad input, it returns the failure instead."""
    off_volumes = _outputs_off_volumes(spec)
    if off_volumes is not None:
        return off_volumes
    if not inventory.pools:
        skipped = f" ({'; '.join(inventory.skipped)})" if inventory.skipped else ""
        return PlanFailure(
            "InsufficientGPUs",
            f"no schedulable node offers {spec.placement.gpu_resource} matching spec.placement.nodeSelector "
            f"{spec.placement.node_selector or '{}'}{skipped}; add GPU nodes or relax the selector",
        )
    try:
        model = planned_model(spec)
        sequence_length = spec.workload.sequence_length or min(
            DEFAULT_SEQUENCE_LENGTH, resolve_model(model).shape.max_position_embeddings
        )
        configs = analyze(
            model,
            list(inventory.pools),
            sequence_length,
            spec.workload.batch_size,
            FALLBACK_CANDIDATES if failed else CANDIDATES,
            **planner_options(spec),
            **({"prices": dict(prices)} if prices else {}),
        )
    except ModelNotFoundError as error:
        if spec.model.config_from:
            return PlanFailure("ModelNotFound", f"spec.model.configFrom: {error}")
        return PlanFailure(
            "ModelNotFound",
            f"spec.model.name: {error}; or give spec.model.config inline, or spec.model.configFrom (a model of the "
            "same architecture)",
        )
    except InsufficientMemoryError as error:
        if not error.gpus_needed:
            return PlanFailure("InsufficientMemory", str(error))
        held = "; ".join(f"{pool} held by {who}" for pool, who in inventory.holders)
        return PlanFailure("InsufficientGPUs", f"{error}{f' ({held})' if held else ''}")
    except InvalidConfigurationError as error:
        return PlanFailure("InvalidSpec", str(error))
    except AutoParallelError as error:
        return PlanFailure("InvalidSpec", str(error))
    if failed:
        configs = _with_room(configs, failed)[:CANDIDATES]
        if not configs:
            tried = "; ".join(plan.label for plan in failed)
            return PlanFailure(
                "InsufficientMemory",
                f"vLLM ran out of memory on {tried}, and no plan that leaves more memory per GPU fits the free "
                "GPUs: add GPUs (or larger ones), lower spec.workload.sequenceLength or batchSize, or quantize",
            )
    best = configs[0]
    pools = {pool.name: pool for pool in inventory.pools}
    pool = pools[best["pool"]]
    backend: MultiNodeBackend | None = None
    if best["nodes_per_replica"] > 1 and spec.workload.type is WorkloadType.INFERENCE:
        resolved = multi_node_backend(spec, served)
        if isinstance(resolved, PlanFailure):
            return resolved
        backend = resolved
    digest = plan_hash(spec, best, backend)
    degrees = Degrees(
        best["tensor_parallel"], best["pipeline_parallel"], best["expert_parallel"], best["data_parallel"]
    )
    gpus_per_pod = _gpus_per_pod(best, pool.gpus_per_node)
    scaling = _scaling_bounds(spec, pool, best, backend)
    if isinstance(scaling, PlanFailure):
        return scaling
    chosen = ChosenPlan(
        degrees=degrees,
        nodes_per_replica=best["nodes_per_replica"],
        gpus_per_pod=gpus_per_pod,
        pool=pool.name,
        gpu_product=dict(inventory.products).get(pool.name),
        plan_hash=digest,
        micro_batches=max(1, spec.workload.batch_size // best["data_parallel"]),
        sequence_length=sequence_length,
        max_replicas=scaling[0] if scaling else None,
        max_num_seqs=best.get("max_num_seqs_flag"),
        multi_node_backend=backend,
    )
    pods = max(1, degrees.total_gpus // gpus_per_pod)
    if pods > 1 and shared_by_one_node_only(spec):
        return PlanFailure(
            "InvalidSpec",
            f"spec.model.cache.accessModes: a ReadWriteOnce cache is mounted by the pods of one node only, and the "
            f"plan has {pods} pods ({degrees.data} replica(s) × {best['nodes_per_replica']} node(s)): use "
            "accessModes [ReadWriteMany] (NFS, EFS, Filestore, CephFS), an existing ReadWriteMany claimName, or "
            "pin parallelism.data: 1",
        )
    status = PlanStatus(
        tensor=degrees.tensor,
        pipeline=degrees.pipeline,
        data=degrees.data,
        expert=degrees.expert,
        gpus=degrees.total_gpus,
        gpus_per_replica=best["gpus_per_replica"],
        nodes=best["nodes"],
        nodes_per_replica=best["nodes_per_replica"],
        multi_node_backend=backend,
        pods=pods,
        gpus_per_pod=gpus_per_pod,
        max_replicas=scaling[0] if scaling else None,
        gpu_type=best["gpu_type"],
        pool=pool.name,
        memory_per_gpu=_memory(best, best["gpu_memory_gb"]),
        utilization=f"{best['memory_utilization']:.2f}",
        kv_cache_tokens=best["kv_cache_tokens"],
        max_concurrency=best["max_concurrent_sequences"],
        sequence_length=sequence_length,
        # a training pod's command carries the spec's runtime flags (data, export, steps) the planner never sees
        command=training_command(chosen, spec)
        if spec.workload.type == WorkloadType.TRAINING
        else best["deployment_command"],
        reason=f"{best['reason']}{scaling[1] if scaling else ''}",
        hash=digest,
    )
    return PlanResult(chosen, status, tuple(_candidate_line(c) for c in configs))
