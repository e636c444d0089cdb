"""The plan the operator acts on: what the renderers need to build the children of a ParallelDeployment."""

from __future__ import annotations

from dataclasses import dataclass

from autoparallel.controller.models import MultiNodeBackend
from autoparallel.planner.inference import Degrees

LABEL_PRODUCT = "nvidia.com/gpu.product"
"""GPU-feature-discovery label with the GPU product; pods select their pool's product with it."""


@dataclass(frozen=True)
class Owner:
    """The ParallelDeployment that owns the children (for names, labels and ownerReferences)."""

    name: str
    namespace: str
    uid: str
    api_version: str = "autoparallel.io/v1alpha1"
    kind: str = "ParallelDeployment"


@dataclass(frozen=True)
class ChosenPlan:
    """Degrees and placement chosen by the planner for one ParallelDeployment."""

    degrees: Degrees
    """TP, PP, EP and DP (DP = replicas)."""
    nodes_per_replica: int
    """1: each replica is one pod on one node; > 1: a replica spans this many pods/nodes (Ray for vLLM)."""
    gpus_per_pod: int
    """GPUs each pod requests (TP × PP × attention-DP on one node; GPUs per node for multi-node replicas)."""
    pool: str
    """The node pool (one GPU product) the plan uses."""
    gpu_product: str | None
    """Value of the ``nvidia.com/gpu.product`` label of the pool's nodes (None when nodes lack it)."""
    plan_hash: str
    """Digest of the plan; children carry it in the ``autoparallel.io/plan-hash`` annotation."""
    micro_batches: int = 1
    """Training: micro-batches per step on each data-parallel rank."""
    max_replicas: int | None = None
    """With spec.scaling: the most replicas the autoscaler may run (the plan's DP is the minimum)."""
    max_num_seqs: int | None = None
    """vLLM --max-num-seqs when its GPU-dependent default would not fit (hybrid state blocks, KV blocks)."""
    multi_node_backend: MultiNodeBackend | None = None
    """What runs multi-node replicas (LEADER_WORKER_SET or STATEFUL_SET); None when a replica fits one node."""
    sequence_length: int | None = None
    """Tokens per sequence planned (vLLM --max-model-len, the training sequence length): the spec's
    ``workload.sequenceLength``, or min(4096, the model's positions) when it is unset. None only in plans built by
    hand, which then need the spec's value."""

    def planned_sequence_length(self, spec_value: int | None) -> int:
        """``spec_value`` (the spec's ``workload.sequenceLength``) when set, else the length this plan chose."""
        value = spec_value or self.sequence_length
        if value is None:
            raise ValueError("the plan has no sequence length and spec.workload.sequenceLength is unset")
        return value

    @property
    def pods_per_replica(self) -> int:
        return self.nodes_per_replica
