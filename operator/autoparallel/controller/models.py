"""The ``ParallelDeployment`` API (``autoparallel.io/v1alpha1``) as pydantic models.

These models are the single source of the CRD: ``make crds`` generates ``crds/`` from them (field
descriptions become ``kubectl explain`` text, ``x-kubernetes-validations`` become CEL rules). Field names are
the contract users and examples depend on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import ConfigDict, Field
from pydantic.config import JsonDict

from autoparallel.controller.models_pod import EnvFromSource, EnvVar, PodTemplate, Toleration
from autoparallel.controller.models_pod import KubeModel as _Model

GROUP = "autoparallel.io"
VERSION = "v1alpha1"
KIND = "ParallelDeployment"
PLURAL = "paralleldeployments"
SHORT_NAMES = ("pd", "pdeploy")

DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.19.0"


class WorkloadType(StrEnum):
    INFERENCE = "inference"
    TRAINING = "training"


class Objective(StrEnum):
    MINIMIZE_GPUS = "minimize_gpus"
    MAXIMIZE_BATCH = "maximize_batch"
    BALANCED = "balanced"
    MINIMIZE_COST = "minimize_cost"


class DType(StrEnum):
    AUTO = "auto"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class Quantization(StrEnum):
    """Load-time methods; int8, int4, awq and gptq are accepted only to be refused with a pointer to weightFormat
    (they are checkpoint formats: vLLM refuses them as --quantization on an unquantized checkpoint)."""

    FP8 = "fp8"
    BITSANDBYTES = "bitsandbytes"
    INT8 = "int8"
    INT4 = "int4"
    AWQ = "awq"
    GPTQ = "gptq"


class WeightFormat(StrEnum):
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"
    AWQ = "awq"
    GPTQ = "gptq"
    NVFP4 = "nvfp4"
    MXFP4 = "mxfp4"


class KVCacheDType(StrEnum):
    AUTO = "auto"
    FP8 = "fp8"


class TokenSecretRef(_Model):
    """A Secret key in the resource's namespace."""

    name: str = Field(min_length=1, max_length=253)
    """Name of the Secret."""
    key: str = Field(default="HF_TOKEN", min_length=1, max_length=253)
    """Key of the token within the Secret."""


class AccessMode(StrEnum):
    READ_WRITE_ONCE = "ReadWriteOnce"
    READ_WRITE_MANY = "ReadWriteMany"
    READ_WRITE_ONCE_POD = "ReadWriteOncePod"


class CacheSpec(_Model):
    """Where the model's weights live between pod starts: an existing PVC, or one the operator creates."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.claimName) != has(self.size)", "message": "cache takes claimName or size"},
                {
                    "rule": "!has(self.claimName) || (!has(self.storageClassName) && !has(self.accessModes) "
                    "&& !(has(self.retain) && self.retain))",
                    "message": "storageClassName, accessModes and retain apply to a cache the operator creates (size)",
                },
            ]
        }
    )

    claim_name: str | None = Field(default=None, alias="claimName", min_length=1, max_length=253)
    """An existing PersistentVolumeClaim in the resource's namespace (never deleted by the operator)."""
    size: str | None = Field(default=None, pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$")
    """Create the PVC <name>-model-cache of this size (e.g. 200Gi: the checkpoint's size plus room)."""
    storage_class_name: str | None = Field(default=None, alias="storageClassName")
    """Storage class of the created PVC (the cluster's default when unset)."""
    access_modes: list[AccessMode] | None = Field(default=None, alias="accessModes", min_length=1)
    """Access modes of the created PVC (default ReadWriteOnce: then every pod of the plan must share one
    node; a plan of several pods needs ReadWriteMany, e.g. NFS, EFS, Filestore, CephFS)."""
    prefetch: bool = True
    """Download the model (and a training resource's Hub dataset, training.data) into the cache with a Job
    before any pod starts; the pods then load them offline (HF_HUB_OFFLINE=1). Without prefetch, the first pod
    downloads them into the cache. A model given as a path is never downloaded."""
    retain: bool = False
    """Keep the created PVC when the ParallelDeployment is deleted (it is otherwise garbage-collected)."""


class ModelSpec(_Model):
    """Which model to run."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.quantization) || !has(self.weightFormat)",
                    "message": "quantization quantizes an unquantized checkpoint at load time, weightFormat plans "
                    "for a checkpoint stored quantized: give one",
                },
                {
                    "rule": "!self.name.startsWith('/') || has(self.config) || has(self.configFrom)",
                    "message": "name is a path the operator cannot read: set configFrom to the model the checkpoint "
                    "was trained from (e.g. meta-llama/Llama-3.1-8B), or config to its config.json",
                },
                {
                    "rule": "!has(self.config) || !has(self.configFrom)",
                    "message": "config and configFrom both describe the architecture: give one",
                },
                {
                    "rule": "!has(self.configFrom) || !self.configFrom.startsWith('/')",
                    "message": "configFrom names a model the operator resolves (a catalog or Hugging Face id), not a "
                    "path: the operator cannot read the pods' volumes",
                },
                {
                    "rule": "!self.name.startsWith('/') || !has(self.revision)",
                    "message": "revision selects a Hugging Face revision; a path in name has none: remove revision",
                },
            ]
        }
    )

    name: str = Field(min_length=1, max_length=256)
    """Hugging Face model id (e.g. meta-llama/Llama-3.1-70B), or an absolute path on a volume of the pods (a
    folder with config.json, the tokenizer and *.safetensors, e.g. a training export on the cache:
    /model-cache/exports/llama8b-chat). It is passed to vLLM/torchrun as is. The planner resolves an id from
    its bundled catalog (or `config` when given); a path needs `configFrom` or `config`, and is never
    downloaded."""
    revision: str | None = Field(default=None, max_length=128)
    """Model revision (branch, tag or commit) passed to vLLM as --revision."""
    config: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Inline Hugging Face config.json for models outside the planner's catalog (no Hub access needed)."""
    config_from: str | None = Field(default=None, alias="configFrom", min_length=1, max_length=256)
    """A model id whose config.json describes this model's architecture, resolved like `name` (catalog, then
    Hugging Face): the base model of a fine-tuned checkpoint at a path, e.g. meta-llama/Llama-3.1-8B. The
    planner plans with its shapes; the pods load `name`."""
    dtype: DType = DType.AUTO
    """Weights and activations dtype; auto keeps the checkpoint's (float32 checkpoints run in bfloat16)."""
    quantization: Quantization | None = None
    """Quantize an unquantized checkpoint while vLLM loads it (--quantization): fp8 or bitsandbytes (4-bit).
    int8, int4, awq and gptq are checkpoint formats and are refused here: use weightFormat."""
    weight_format: WeightFormat | None = Field(default=None, alias="weightFormat")
    """Plan for a checkpoint already stored in this format (fp8, int8, int4, awq, gptq, nvfp4, mxfp4): name such a
    checkpoint in `name`, vLLM reads its quantization_config. Unset reads the checkpoint's own quantization_config."""
    cache: CacheSpec | None = None
    """A weight cache (HF_HOME on a PVC) that restarts and replans reuse instead of downloading again."""
    token_secret_ref: TokenSecretRef | None = Field(default=None, alias="tokenSecretRef")
    """A Secret key holding a Hugging Face token (gated models): every pod that downloads gets it as HF_TOKEN
    through secretKeyRef. The token is never copied into the resource, its status or the operator."""

    @property
    def is_path(self) -> bool:
        """Whether ``name`` is a folder on the pods' volumes rather than a Hugging Face id (ids never start
        with a slash)."""
        return self.name.startswith("/")


DEFAULT_SEQUENCE_LENGTH = 4096
"""spec.workload.sequenceLength when unset, or the model's max_position_embeddings when that is shorter."""


class WorkloadSpec(_Model):
    """What the model is used for and how large the work is."""

    type: WorkloadType = WorkloadType.INFERENCE
    """inference serves the model with vLLM; training runs torchrun with autoparallel's training runtime."""
    sequence_length: int | None = Field(default=None, ge=1, le=1_048_576, alias="sequenceLength")
    """Maximum tokens per sequence (vLLM --max-model-len; the training sequence length). Unset: 4096, or the
    model's max_position_embeddings when fewer (status.plan.sequenceLength shows the value planned). A value
    above the model's max_position_embeddings is InvalidSpec."""
    batch_size: int = Field(default=32, ge=1, le=1_000_000, alias="batchSize")
    """Inference: concurrent sequences to serve at sequenceLength. Training: global batch in sequences."""


class ParallelismSpec(_Model):
    """Optional pins; an unset degree is chosen by the planner."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.maxGPUs) || !has(self.tensor) || !has(self.pipeline) "
                    "|| self.maxGPUs >= self.tensor * self.pipeline",
                    "message": "maxGPUs must be at least tensor × pipeline",
                }
            ]
        }
    )

    tensor: int | None = Field(default=None, ge=1, le=1024)
    """Tensor-parallel degree (GPUs that split every layer)."""
    pipeline: int | None = Field(default=None, ge=1, le=1024)
    """Pipeline-parallel degree (stages of consecutive layers)."""
    data: int | None = Field(default=None, ge=1, le=100_000)
    """Data-parallel degree (replicas)."""
    expert: int | None = Field(default=None, ge=1, le=1024)
    """Expert-parallel degree for mixture-of-experts models."""
    max_gpus: int | None = Field(default=None, ge=1, le=1_000_000, alias="maxGPUs")
    """Upper bound on the GPUs of the whole plan."""


class PlacementSpec(_Model):
    """Where the pods may run."""

    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    """Only nodes with these labels are planned on (and the pods select them)."""
    gpu_resource: str = Field(default="nvidia.com/gpu", alias="gpuResource", min_length=1)
    """The extended resource that counts GPUs (amd.com/gpu for AMD)."""
    tolerations: list[Toleration] = Field(default_factory=list)
    """Tolerations added to every pod (GPU nodes are often tainted)."""
    topology_key: str | None = Field(
        default=None, alias="topologyKey", min_length=1, max_length=317, pattern=r"^([a-z0-9.-]+/)?[A-Za-z0-9._-]+$"
    )
    """A node label whose values are topology domains (a rack, an NVLink domain, a node pool, e.g.
    cloud.google.com/gke-nodepool): every multi-node replica runs inside one domain, and no two replicas share one
    (LeaderWorkerSet's exclusive placement, leaderworkerset.sigs.k8s.io/exclusive-topology). Needs the
    leaderWorkerSet backend; single-node replicas ignore it."""


class MultiNodeBackend(StrEnum):
    """What runs a replica that spans nodes."""

    AUTO = "auto"
    LEADER_WORKER_SET = "leaderWorkerSet"
    STATEFUL_SET = "statefulSet"


class FailureMode(StrEnum):
    FAIL_OPEN = "FailOpen"
    FAIL_CLOSE = "FailClose"


class EndpointPicker(_Model):
    """The Gateway API Inference Extension's endpoint picker (EPP) the InferencePool routes through."""

    name: str | None = Field(default=None, min_length=1, max_length=253)
    """Its Service in the resource's namespace (default <name>-epp, the name the extension's inferencepool
    Helm chart gives it)."""
    port: int = Field(default=9002, ge=1, le=65535)
    """Its gRPC port (the service port)."""
    failure_mode: FailureMode = Field(default=FailureMode.FAIL_CLOSE, alias="failureMode")
    """What the gateway does when the picker is unreachable: FailClose refuses requests, FailOpen routes anyway."""


class GatewaySpec(_Model):
    """Registration of the serving pods with an inference gateway."""

    inference_pool: bool = Field(default=False, alias="inferencePool")
    """Render an InferencePool (inference.networking.k8s.io/v1) selecting the vLLM servers on the serving port,
    when the Gateway API Inference Extension's CRD is served; nothing otherwise."""
    endpoint_picker: EndpointPicker = Field(default_factory=EndpointPicker, alias="endpointPicker")
    """The endpoint picker that routes by KV-cache and queue load."""


class ServingSpec(_Model):
    """How vLLM serves the model (inference only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.gpuMemoryUtilization) || (double(self.gpuMemoryUtilization) > 0.0 "
                    "&& double(self.gpuMemoryUtilization) <= 1.0)",
                    "message": 'gpuMemoryUtilization must be a decimal in (0, 1], e.g. "0.90"',
                }
            ]
        }
    )

    image: str = DEFAULT_VLLM_IMAGE
    """vLLM OpenAI-server image."""
    args: list[str] = Field(default_factory=list)
    """Extra `vllm serve` arguments, appended after the planned ones."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables, literal or from a Secret, ConfigMap or pod field (valueFrom)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, alias="envFrom")
    """Every key of Secrets or ConfigMaps as environment variables."""
    gpu_memory_utilization: str = Field(
        default="0.90", alias="gpuMemoryUtilization", pattern=r"^(0?\.[0-9]+|1(\.0+)?)$"
    )
    """Fraction of each GPU's memory vLLM may use, as a decimal string (Kubernetes specs avoid floats)."""
    kv_cache_dtype: KVCacheDType = Field(default=KVCacheDType.AUTO, alias="kvCacheDtype")
    """KV-cache element type; fp8 halves the KV cache per token."""
    port: int = Field(default=8000, ge=1, le=65535)
    """Port of the OpenAI-compatible server."""
    multi_node_backend: MultiNodeBackend = Field(default=MultiNodeBackend.AUTO, alias="multiNodeBackend")
    """What runs a replica that spans nodes: leaderWorkerSet (one LeaderWorkerSet of all replicas: a group per
    replica whose leader runs the Ray head and vLLM's server, restarted as a whole when one of its pods fails, rolled
    out group by group; needs the LeaderWorkerSet controller, lws.sigs.k8s.io), statefulSet (a StatefulSet per
    replica), or auto: leaderWorkerSet when the API server serves its CRD, else statefulSet. status.plan says which
    is used. Single-node replicas are a Deployment either way."""
    gateway: GatewaySpec | None = None
    """An InferencePool for a Gateway with an endpoint picker (Gateway API Inference Extension)."""
    out_of_memory_fallbacks: int = Field(default=2, ge=0, le=10, alias="outOfMemoryFallbacks")
    """How many times the operator may replan onto a plan with more memory per GPU when vLLM runs out of memory
    (0: never; the plan then stays, Ready=False/OutOfMemory with vLLM's line). Pinned parallel degrees are never
    overridden."""


class ScalingSpec(_Model):
    """Autoscaling of the replicas between planned bounds: tensor and pipeline degrees never change with load."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.maxReplicas >= self.minReplicas", "message": "maxReplicas must be at least minReplicas"}
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=10_000, alias="minReplicas")
    """Replicas planned and reserved now (the data-parallel degree of the plan)."""
    max_replicas: int = Field(ge=1, le=10_000, alias="maxReplicas")
    """The most replicas the autoscaler may run; capped at what the pool can ever hold (status.plan.maxReplicas
    says the cap and why)."""
    metric: str = Field(default="vllm:num_requests_waiting", min_length=1, pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
    """vLLM's Prometheus metric the autoscaler averages over the replicas."""
    target: str = Field(default="5", pattern=r"^[0-9]+(\.[0-9]+)?$")
    """Average value of the metric per replica to scale at (a decimal string), e.g. 5 waiting requests."""
    prometheus_url: str = Field(
        default="http://prometheus-operated.monitoring.svc:9090", alias="prometheusURL", min_length=1
    )
    """Where KEDA queries the metric (the Prometheus that scrapes the PodMonitor); unused with an HPA."""


class Init(StrEnum):
    PRETRAINED = "pretrained"
    RANDOM = "random"


RUNTIME_FLAGS = ("data", "dataField", "init", "checkpointDir", "checkpointEvery", "exportDir", "exportEvery")
"""spec.training fields that become flags of autoparallel's runtime (none applies to a user's training.command)."""


def _absolute(field: str, example: str) -> JsonDict:
    """A CEL rule: ``field``, when set, is an absolute path."""
    return {
        "rule": f"!has(self.{field}) || self.{field}.startsWith('/')",
        "message": f"{field} must be an absolute path on a volume of the pods, e.g. {example}",
    }


class TrainingSpec(_Model):
    """How training pods run (training only)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.command) || size(self.command) == 0 || !("
                    + " || ".join(f"has(self.{flag})" for flag in RUNTIME_FLAGS)
                    + ")",
                    "message": f"{', '.join(RUNTIME_FLAGS)} are flags of autoparallel's runtime, which command "
                    "replaces: pass your program's own flags in args",
                },
                {"rule": "!has(self.dataField) || has(self.data)", "message": "dataField applies to data: set data"},
                {
                    "rule": "!has(self.checkpointEvery) || has(self.checkpointDir)",
                    "message": "checkpointEvery needs checkpointDir",
                },
                {"rule": "!has(self.exportEvery) || has(self.exportDir)", "message": "exportEvery needs exportDir"},
                _absolute("checkpointDir", "/model-cache/checkpoints/NAME"),
                _absolute("exportDir", "/model-cache/exports/NAME"),
            ]
        }
    )

    image: str | None = Field(default=None, min_length=1)
    """Image with torch and autoparallel's training runtime (`docker build --target training`, see
    docs/training.md). Unset: the operator's --training-image (the chart's trainingImage, by default
    autoparallel-training:<version>, the name that build gives)."""
    command: list[str] = Field(default_factory=list)
    """Replaces `python -m autoparallel.parallel.train` when set (torchrun still launches it)."""
    args: list[str] = Field(default_factory=list)
    """Extra arguments appended to the training command."""
    env: list[EnvVar] = Field(default_factory=list)
    """Extra environment variables, literal or from a Secret, ConfigMap or pod field (valueFrom)."""
    env_from: list[EnvFromSource] = Field(default_factory=list, alias="envFrom")
    """Every key of Secrets or ConfigMaps as environment variables."""
    steps: int = Field(default=1000, ge=1)
    """Optimizer steps to run."""
    data: str | None = Field(default=None, min_length=1, max_length=1024)
    """What to train on (--data): a Hugging Face dataset id (e.g. tatsu-lab/alpaca), downloaded into the cache
    with the model when spec.model.cache prefetches, or an absolute path on a volume of the pods (a jsonl,
    parquet or arrow file or folder, e.g. /model-cache/datasets/chat.jsonl). Unset: the runtime's default
    (synthetic token patterns: a smoke test of the plan, not a fine-tune)."""
    data_field: str | None = Field(default=None, alias="dataField", min_length=1, max_length=253)
    """The field of each record that holds its text (--data-field; the runtime's default: text)."""
    init: Init | None = None
    """pretrained loads the checkpoint's weights (the runtime's default for a checkpoint); random initialises
    the architecture from its config (--init)."""
    checkpoint_dir: str | None = Field(default=None, alias="checkpointDir", min_length=1, max_length=1024)
    """Where distributed checkpoints go (--checkpoint-dir), on a volume of the pods (the cache or a
    spec.podTemplate volume). The pods then start with --resume: a pod the Job retries continues from the
    newest checkpoint instead of step 0."""
    checkpoint_every: int | None = Field(default=None, alias="checkpointEvery", ge=1)
    """Checkpoint every N optimizer steps (--checkpoint-every; the last step is always saved)."""
    export_dir: str | None = Field(default=None, alias="exportDir", min_length=1, max_length=1024)
    """Where the trained model is written as a Hugging Face folder (config.json, tokenizer, *.safetensors) that
    transformers and vLLM load (--export-dir): a path on a volume of the pods, such as the cache
    (/model-cache/exports/NAME), so that it outlives them and an inference ParallelDeployment serves it with
    spec.model.name set to the same path."""
    export_every: int | None = Field(default=None, alias="exportEvery", ge=1)
    """Also export every N optimizer steps (--export-every); the final export is always exportDir itself."""


class ParallelDeploymentSpec(_Model):
    """A model to split across GPUs and run: the operator plans the degrees and creates the pods."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.workload) || self.workload.type != 'training' || !has(self.serving)",
                    "message": "serving applies to inference; use training for workload.type training",
                },
                {
                    "rule": "!has(self.training) || (has(self.workload) && self.workload.type == 'training')",
                    "message": "training applies to workload.type training",
                },
                {
                    "rule": "!has(self.scaling) || !has(self.workload) || self.workload.type == 'inference'",
                    "message": "scaling applies to inference",
                },
                {
                    "rule": "!has(self.scaling) || !has(self.parallelism) || !has(self.parallelism.data)",
                    "message": "scaling sets the replicas: remove parallelism.data (minReplicas is the planned degree)",
                },
                {
                    "rule": "!has(self.parallelism) || !has(self.parallelism.expert) || "
                    "!has(self.workload) || self.workload.type == 'inference'",
                    "message": "parallelism.expert applies to inference",
                },
                {
                    "rule": "!has(self.placement) || !has(self.placement.topologyKey) || !has(self.serving) || "
                    "!has(self.serving.multiNodeBackend) || self.serving.multiNodeBackend != 'statefulSet'",
                    "message": "placement.topologyKey places replicas through LeaderWorkerSet's exclusive topology: "
                    "use serving.multiNodeBackend auto or leaderWorkerSet, or remove topologyKey",
                },
            ]
        }
    )

    model: ModelSpec
    """The model to run."""
    workload: WorkloadSpec = Field(default_factory=WorkloadSpec)
    """Inference or training, sequence length and batch size."""
    objective: Objective = Objective.MINIMIZE_GPUS
    """What the planner optimises: fewest GPUs, largest batch, most capacity per GPU (balanced) or lowest cost."""
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """Optional pins of the parallel degrees."""
    placement: PlacementSpec = Field(default_factory=PlacementSpec)
    """Node selection and GPU resource name."""
    serving: ServingSpec | None = None
    """vLLM settings (inference)."""
    scaling: ScalingSpec | None = None
    """Autoscale the serving replicas on a vLLM metric between minReplicas (planned and reserved) and maxReplicas
    (capped at what the pool holds): a KEDA ScaledObject when KEDA is installed, else a HorizontalPodAutoscaler on
    the same metric (which needs a custom-metrics adapter). Inference with single-node replicas, or multi-node
    replicas on a LeaderWorkerSet (whole groups are added and removed)."""
    training: TrainingSpec | None = None
    """Training settings (training)."""
    pod_template: PodTemplate | None = Field(default=None, alias="podTemplate")
    """Labels, annotations and pod fields added to every pod the operator creates (affinity, tolerations,
    imagePullSecrets, serviceAccountName, priorityClassName, securityContext, runtimeClassName, volumes, and
    env, envFrom, volumeMounts and resources of the main container). The plan's fields win: a value that
    contradicts them is refused with the condition Planned=False, reason PodTemplateConflict."""
    plan_only: bool = Field(default=False, alias="planOnly")
    """Plan and report in status without creating any pod (previews, GitOps dry runs)."""

    @property
    def hub_dataset(self) -> str | None:
        """A training resource's ``training.data`` when it names a Hugging Face dataset (a path is on a volume)."""
        data = self.training.data if self.training and self.workload.type is WorkloadType.TRAINING else None
        return None if data is None or data.startswith("/") else data

    @property
    def prefetched(self) -> bool:
        """Whether a download Job fills the cache before the pods start: a cache with prefetch, and something
        to download from the Hub (the model, unless it is a path; a training dataset)."""
        cache = self.model.cache
        wanted = not self.model.is_path or self.hub_dataset is not None
        return cache is not None and cache.prefetch and wanted


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Model):
    """A condition in the Kubernetes convention."""

    type: str
    """Planned, Ready or Degraded."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: str
    """One CamelCase word, e.g. Planned, ModelNotFound, InsufficientMemory, InsufficientGPUs, Unschedulable."""
    message: str = ""
    """Human explanation, including what to change."""
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    """The metadata.generation the condition was computed from."""
    last_transition_time: str = Field(alias="lastTransitionTime")
    """When status last changed (RFC 3339)."""


class MemoryPerGPU(_Model):
    """Planned memory of the most-loaded GPU, in bytes."""

    weights: int
    """This GPU's share of the model weights."""
    kv_cache: int = Field(alias="kvCache")
    """KV cache (inference; 0 for training)."""
    activations: int
    """Peak activations."""
    overhead: int
    """CUDA context, NCCL buffers and CUDA graphs (training: also gradients, optimizer states and FSDP2's gathered
    working set)."""
    total: int
    """Sum of the above."""
    capacity: int | None = None
    """Usable memory of one GPU of the pool, in bytes (what total is planned against)."""
    human: str
    """The same as one readable line, e.g. "71.9 GiB of 79.2 GiB (weights 32.9 GiB, KV cache 34.4 GiB, …)"."""
    summary: str
    """Short form for the Mem/GPU printer column, e.g. "71.9/79.2 GiB"."""


class PlanStatus(_Model):
    """The plan the operator chose."""

    tensor: int
    """Tensor-parallel degree."""
    pipeline: int
    """Pipeline-parallel degree."""
    data: int
    """Data-parallel degree (replicas)."""
    expert: int
    """Expert-parallel degree (1 for dense models)."""
    gpus: int
    """GPUs of all replicas together."""
    gpus_per_replica: int = Field(alias="gpusPerReplica")
    """GPUs of one replica (tensor × pipeline)."""
    nodes: int
    """Nodes the replicas occupy."""
    nodes_per_replica: int = Field(alias="nodesPerReplica")
    """Nodes one replica spans (more than 1 runs the replica with Ray across nodes)."""
    multi_node_backend: MultiNodeBackend | None = Field(default=None, alias="multiNodeBackend")
    """What runs the multi-node replicas: leaderWorkerSet or statefulSet (spec.serving.multiNodeBackend resolved
    against the CRDs the API server serves); absent when a replica fits one node."""
    pods: int | None = None
    """Pods of all replicas together: the plan reserves their GPUs until they run."""
    gpus_per_pod: int | None = Field(default=None, alias="gpusPerPod")
    """GPUs each pod requests."""
    max_replicas: int | None = Field(default=None, alias="maxReplicas")
    """With spec.scaling: the most replicas the autoscaler may run (spec.scaling.maxReplicas, capped at what the
    pool can ever hold)."""
    gpu_type: str = Field(alias="gpuType")
    """GPU the plan is for (catalog name, e.g. H100-80GB)."""
    pool: str
    """Node pool (GPU product) the plan uses."""
    memory_per_gpu: MemoryPerGPU = Field(alias="memoryPerGPU")
    """Planned memory of the most-loaded GPU, in bytes and as a readable line."""
    utilization: str
    """Planned share of each GPU's memory, e.g. "0.91"."""
    kv_cache_tokens: int = Field(alias="kvCacheTokens")
    """KV-cache capacity of one replica in tokens (inference)."""
    max_concurrency: int = Field(alias="maxConcurrency")
    """Sequences of sequenceLength one replica holds at once (inference)."""
    sequence_length: int | None = Field(default=None, alias="sequenceLength")
    """Tokens per sequence planned: spec.workload.sequenceLength, or when unset min(4096, the model's
    max_position_embeddings)."""
    command: str
    """The command each replica runs."""
    reason: str
    """Why this plan."""
    hash: str
    """Digest of the plan and rendered children; an unchanged hash means nothing to apply."""


class Replicas(_Model):
    """Replicas the plan asks for and those that are ready."""

    desired: int = 0
    """Replicas of the current plan (data-parallel degree; 1 for a training job; 0 with planOnly)."""
    ready: int = 0
    """Replicas of the current plan whose pods are all ready."""


class PoolInventory(_Model):
    """GPUs of one node pool as seen when planning."""

    name: str
    """Pool name (the GPU name, suffixed with -x<GPUs per node> when one GPU comes in several node shapes)."""
    gpu_type: str = Field(alias="gpuType")
    """GPU of the pool's nodes (catalog name)."""
    nodes: int
    """Schedulable nodes in the pool."""
    gpus_total: int = Field(alias="gpusTotal")
    """Allocatable GPUs of those nodes."""
    gpus_free: int = Field(alias="gpusFree")
    """GPUs not requested by other pods (this deployment's own pods count as free)."""
    memory_per_gpu: str = Field(alias="memoryPerGPU")
    """Usable memory of one GPU, e.g. "79.2 GiB"."""


class OutOfMemoryRecord(_Model):
    """A plan vLLM ran out of memory on."""

    plan: str
    """The plan, e.g. TP=4 PP=1 DP=2 on H100-80GB."""
    plan_hash: str = Field(alias="planHash")
    """Its status.plan.hash."""
    gpu_memory: int = Field(alias="gpuMemory")
    """Bytes of one GPU of its pool."""
    weights_per_gpu: int = Field(alias="weightsPerGPU")
    """Its planned weights on the most-loaded GPU, in bytes: a fallback leaves more room than this plan."""
    pod: str
    """The pod whose vLLM container terminated."""
    message: str
    """vLLM's line (from the container's termination message, FallbackToLogsOnError)."""
    time: str
    """When the operator saw it (RFC 3339)."""
    generation: int | None = None
    """The metadata.generation it happened under (a spec change starts afresh)."""


class Measured(_Model):
    """vLLM's own report of the KV cache of one replica of the current plan."""

    plan_hash: str = Field(alias="planHash")
    """The plan the report is about."""
    kv_cache_tokens: int = Field(alias="kvCacheTokens")
    """num_gpu_blocks × block_size from vllm:cache_config_info."""
    gpu_blocks: int = Field(alias="gpuBlocks")
    """num_gpu_blocks."""
    block_size: int = Field(alias="blockSize")
    """Tokens per block."""
    error: str
    """(planned − measured) / measured of the KV tokens, e.g. "+2.4%" (positive: the plan promised more)."""
    pod: str
    """The pod the figures were read from."""
    time: str
    """When they were read (RFC 3339)."""


class ParallelDeploymentStatus(_Model):
    """What the operator observed and decided."""

    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    """The metadata.generation the plan was made for."""
    conditions: list[Condition] = Field(default_factory=list)
    """Planned, Ready and Degraded, one entry per type."""
    plan: PlanStatus | None = None
    """The plan the operator chose; absent until a plan fits."""
    candidates: list[str] = Field(default_factory=list)
    """The best alternatives, one line each."""
    replicas: Replicas = Field(default_factory=Replicas)
    """Replicas the plan asks for and those that are ready."""
    inventory: list[PoolInventory] = Field(default_factory=list)
    """The GPU pools the plan was made against."""
    measured: Measured | None = None
    """What vLLM reports about the current plan's KV cache, next to status.plan.kvCacheTokens."""
    out_of_memory: list[OutOfMemoryRecord] = Field(default_factory=list, alias="outOfMemory")
    """Plans vLLM ran out of memory on, oldest first; planning moves past them (spec.serving.outOfMemoryFallbacks)."""
