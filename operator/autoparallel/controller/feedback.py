"""What vLLM reports back, checked against the plan: out-of-memory terminations and measured KV capacity.

Pure functions; reconcile does the I/O (reading pod statuses from the index, fetching ``/metrics``).

Out of memory. Serving containers run with ``terminationMessagePolicy: FallbackToLogsOnError``, so when vLLM
exits with an error the kubelet puts the tail of its log in the container status (``terminated.message``): the
operator reads it there, with no ``pods/log`` permission. :data:`OOM_SIGNATURES` are vLLM's and torch's own
texts for a plan that does not fit.

Measured capacity. vLLM exports the engine's cache configuration as the info gauge ``vllm:cache_config_info``,
whose labels carry ``num_gpu_blocks`` and ``block_size`` (vllm/v1/metrics/loggers.py, ``log_metrics_info``):
their product is the KV-cache capacity of the replica in tokens, the figure the plan predicts as
``status.plan.kvCacheTokens``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from autoparallel.controller.inventory import ANNOTATION_PLAN_HASH, LABEL_OWNER_UID
from autoparallel.controller.models import OutOfMemoryRecord, ParallelDeploymentSpec, ParallelDeploymentStatus
from autoparallel.controller.render.common import COMPONENT_INFERENCE, LABEL_COMPONENT
from autoparallel.controller.render.inference import LABEL_POD_INDEX, LABEL_WORKER_INDEX

OOM_SIGNATURES: tuple[tuple[str, re.Pattern[str]], ...] = (
    # torch's allocator (c10/cuda/CUDACachingAllocator.cpp): weights, the profiling run or CUDA-graph capture.
    ("torch", re.compile(r"(torch\.)?(cuda\.)?OutOfMemoryError: CUDA out of memory[^\n]*")),
    ("cuda", re.compile(r"CUDA error: out of memory[^\n]*")),
    # vllm/v1/core/kv_cache_utils.py, check_enough_kv_cache_memory: nothing left for the KV cache …
    ("kv-cache", re.compile(r"No available memory for the cache blocks[^\n]*")),
    # … or less than one sequence of max_model_len.
    ("max-model-len", re.compile(r"To serve at least one request with the models's max seq len[^\n]*")),
    # vLLM's hybrid cache check (kaito#2319, vLLM 0.25): fewer Mamba state blocks than max_num_seqs.
    ("mamba-blocks", re.compile(r"max_num_seqs \(\d+\) exceeds available Mamba cache blocks \(\d+\)[^\n]*")),
)
"""(name, pattern) of the texts that mean "this plan does not fit the GPU" in a terminated vLLM's log tail."""


@dataclass(frozen=True)
class PodProblem:
    """Why a pod of a ParallelDeployment does not run: the scheduler could not place it (``Unschedulable``), or
    the kubelet could not create its container (``SecretNotFound``, ``ContainerConfigError``), or vLLM ran out
    of memory (``OutOfMemory``)."""

    owner_uid: str
    name: str
    message: str
    reason: str = "Unschedulable"
    plan_hash: str | None = None
    """The plan the pod belongs to."""


SECRET_MISSING = re.compile(r'secrets? "[^"]+" not found|couldn\'t find key \S+ in Secret \S+')
"""The kubelet's messages for a missing Secret or key (``CreateContainerConfigError``)."""


def pod_problem(body: Mapping[str, Any]) -> PodProblem | None:
    """Why a pod of ours does not run, if it does not: the scheduler's or the kubelet's complaint."""
    meta = body["metadata"]
    owner, name = meta["labels"][LABEL_OWNER_UID], meta["name"]
    plan_hash = (meta.get("annotations") or {}).get(ANNOTATION_PLAN_HASH)
    status = body.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return PodProblem(owner, name, condition.get("message", ""), plan_hash=plan_hash)
    for container in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        line = terminated_out_of_memory(container)
        if line:
            return PodProblem(owner, name, f"container {container.get('name')}: {line}", "OutOfMemory", plan_hash)
        waiting = (container.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") == "CreateContainerConfigError":
            message = waiting.get("message", "")
            reason = "SecretNotFound" if SECRET_MISSING.search(message) else "ContainerConfigError"
            return PodProblem(owner, name, f"container {container.get('name')}: {message}", reason, plan_hash)
    return None


def out_of_memory_line(message: str | None) -> str | None:
    """The first line of ``message`` (a terminated container's log tail) that says vLLM ran out of memory."""
    if not message:
        return None
    for _, pattern in OOM_SIGNATURES:
        match = pattern.search(message)
        if match:
            return match.group(0).strip()[:500]
    return None


def terminated_out_of_memory(container_status: Mapping[str, Any]) -> str | None:
    """The OOM line of a container that terminated (now, or before its restart) with a non-zero exit code."""
    state = container_status.get("state") or {}
    last = container_status.get("lastState") or {}
    for terminated in (state.get("terminated"), last.get("terminated")):
        if terminated and terminated.get("exitCode", 0) != 0:
            line = out_of_memory_line(terminated.get("message"))
            if line:
                return line
    return None


@dataclass(frozen=True)
class FailedPlan:
    """A plan vLLM ran out of memory on: what the next plan must improve on."""

    gpu_memory_bytes: int
    """Memory of one GPU of the failed plan's pool."""
    weights_per_gpu: int
    """Planned weights on its most-loaded GPU."""
    label: str
    """e.g. TP=4 PP=1 on H100-80GB."""

    @property
    def room(self) -> int:
        """Bytes of each GPU left after the weights: what activations, CUDA graphs and the KV cache share."""
        return self.gpu_memory_bytes - self.weights_per_gpu


def has_room(candidate_gpu_memory: int, candidate_weights_per_gpu: int, failed: Iterable[FailedPlan]) -> bool:
    """Whether a candidate leaves every GPU more room after its weights than each plan that ran out of memory
    (the next step up: more GPUs per replica, or larger GPUs)."""
    room = candidate_gpu_memory - candidate_weights_per_gpu
    return all(room > plan.room for plan in failed)


@dataclass(frozen=True)
class CacheReport:
    """vLLM's own report of its KV cache (one replica)."""

    num_gpu_blocks: int
    block_size: int

    @property
    def tokens(self) -> int:
        return self.num_gpu_blocks * self.block_size


def cache_report(metrics_text: str) -> CacheReport | None:
    """``vllm:cache_config_info``'s ``num_gpu_blocks`` and ``block_size`` from a ``/metrics`` body; None when
    the body has no such gauge or the engine has not allocated its cache yet."""
    for family in text_string_to_metric_families(metrics_text):
        if family.name not in ("vllm:cache_config_info", "vllm:cache_config"):
            continue
        for sample in family.samples:
            blocks, size = sample.labels.get("num_gpu_blocks"), sample.labels.get("block_size")
            if blocks and size and blocks.isdigit() and size.isdigit() and int(blocks) > 0:
                return CacheReport(int(blocks), int(size))
    return None


MEASURED_GAP = 0.10
"""A planned/measured KV capacity gap beyond this is a Warning Event: the memory model is off for this model."""


def relative_error(planned: int, measured: int) -> float:
    """(planned − measured) / measured: positive when the plan promised more than vLLM has."""
    return (planned - measured) / measured if measured else 0.0


def format_error(error: float) -> str:
    return f"{error:+.1%}"


def recorded_for(records: Sequence[OutOfMemoryRecord], generation: int | None) -> list[OutOfMemoryRecord]:
    """The out-of-memory records of the current spec generation (older ones were for another spec)."""
    return [record for record in records if record.generation == generation]


def pinned(spec: ParallelDeploymentSpec) -> bool:
    """Whether the user pinned a degree that sets the memory per GPU: then no automatic fallback overrides it."""
    pins = spec.parallelism
    return any(degree is not None for degree in (pins.tensor, pins.pipeline, pins.expert))


def oom_record(
    status: ParallelDeploymentStatus, pod: str, message: str, time: str, generation: int | None
) -> OutOfMemoryRecord:
    """The current plan of ``status`` as one vLLM ran out of memory on."""
    plan = status.plan
    assert plan is not None
    memory = plan.memory_per_gpu
    return OutOfMemoryRecord(
        plan=f"TP={plan.tensor} PP={plan.pipeline} EP={plan.expert} DP={plan.data} on {plan.gpu_type}",
        plan_hash=plan.hash,
        gpu_memory=memory.capacity or memory.total,
        weights_per_gpu=memory.weights,
        pod=pod,
        message=message,
        time=time,
        generation=generation,
    )


def failed_plan(record: OutOfMemoryRecord) -> FailedPlan:
    return FailedPlan(record.gpu_memory, record.weights_per_gpu, record.plan)


@dataclass(frozen=True)
class Endpoint:
    """A ready pod running vLLM's server (pod 0 of a multi-node group)."""

    owner_uid: str
    pod: str
    ip: str
    plan_hash: str | None


def serving_endpoint(pod: Mapping[str, Any]) -> Endpoint | None:
    """The pod as a vLLM server to read /metrics from: ready, with an IP, running the server."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    server = labels.get(LABEL_POD_INDEX, "0") == "0" and labels.get(LABEL_WORKER_INDEX, "0") == "0"  # a group's head
    if labels.get(LABEL_COMPONENT) != COMPONENT_INFERENCE or not (ready and server and status.get("podIP")):
        return None
    plan_hash = (meta.get("annotations") or {}).get(ANNOTATION_PLAN_HASH)
    return Endpoint(labels[LABEL_OWNER_UID], meta["name"], status["podIP"], plan_hash)
