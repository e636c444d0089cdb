"""From a spec and an inventory to a plan or a precise failure (what the operator writes into status)."""

import pytest

from autoparallel.controller.config import OperatorConfig
from autoparallel.controller.inventory import NodeGPUs, build_inventory
from autoparallel.controller.models import MultiNodeBackend, ParallelDeploymentSpec
from autoparallel.controller.planning import (
    PlanFailure,
    PlanResult,
    backend_changed,
    plan_deployment,
    plan_hash,
    planner_options,
)
from autoparallel.controller.render.inference import vllm_argv
from autoparallel.planner.resolve import resolve_model
from autoparallel.planner.training import TrainingSettings, estimate_training

H100 = (("nvidia.com/gpu.product", "NVIDIA-H100-80GB-HBM3"),)


def h100_nodes(count: int) -> list[NodeGPUs]:
    return [
        NodeGPUs(f"h{i}", "NVIDIA-H100-80GB-HBM3", 81559, (("nvidia.com/gpu", 8),), H100, True) for i in range(count)
    ]


def spec(**fields: object) -> ParallelDeploymentSpec:
    return ParallelDeploymentSpec.model_validate({"model": {"name": "meta-llama/Llama-3.1-70B"}, **fields})


def test_a_plan_carries_everything_the_status_and_renderers_need() -> None:
    result = plan_deployment(
        spec(workload={"sequenceLength": 8192, "batchSize": 64}), build_inventory(h100_nodes(2), [])
    )
    assert isinstance(result, PlanResult)
    status, plan = result.status, result.plan
    assert status.gpus == plan.degrees.total_gpus and status.gpu_type == "H100-80GB"
    assert plan.gpu_product == "NVIDIA-H100-80GB-HBM3"
    memory = status.memory_per_gpu
    parts = memory.weights + memory.kv_cache + memory.activations + memory.overhead
    assert abs(memory.total - parts) < 32 * 2**20  # the parts are rounded to 0.01 GiB each
    assert status.memory_per_gpu.summary.endswith("/79.2 GiB")
    assert status.command.startswith("vllm serve meta-llama/Llama-3.1-70B")
    assert status.hash == plan.plan_hash and len(result.candidates) >= 1


def test_the_plan_hash_is_deterministic_and_follows_the_spec() -> None:
    inventory = build_inventory(h100_nodes(2), [])
    first, again = plan_deployment(spec(), inventory), plan_deployment(spec(), inventory)
    other = plan_deployment(spec(workload={"sequenceLength": 2048}), inventory)
    assert isinstance(first, PlanResult) and isinstance(again, PlanResult) and isinstance(other, PlanResult)
    assert first.plan.plan_hash == again.plan.plan_hash != other.plan.plan_hash


def test_failures_have_reasons() -> None:
    inventory = build_inventory(h100_nodes(1), [])
    unknown = plan_deployment(spec(model={"name": "nobody/nothing"}), inventory)
    assert isinstance(unknown, PlanFailure) and unknown.reason == "ModelNotFound"
    too_big = plan_deployment(spec(model={"name": "meta-llama/Llama-3.1-405B"}), inventory)
    assert isinstance(too_big, PlanFailure) and too_big.reason == "InsufficientGPUs"
    assert "smallest cluster that fits" in too_big.message
    nothing = plan_deployment(spec(), build_inventory([], []))
    assert isinstance(nothing, PlanFailure) and nothing.reason == "InsufficientGPUs"
    assert "spec.placement.nodeSelector" in nothing.message
    too_long = plan_deployment(spec(workload={"sequenceLength": 1_000_000}), inventory)
    assert isinstance(too_long, PlanFailure) and too_long.reason == "InvalidSpec"


def test_inline_config_is_planned_without_the_catalog() -> None:
    config = {
        "model_type": "gpt2",
        "n_embd": 768,
        "n_head": 12,
        "n_layer": 12,
        "n_positions": 1024,
        "vocab_size": 50257,
    }
    result = plan_deployment(
        spec(model={"name": "my-org/private-gpt", "config": config}, workload={"sequenceLength": 1024}),
        build_inventory(h100_nodes(1), []),
    )
    assert isinstance(result, PlanResult)
    assert "vllm serve my-org/private-gpt" in result.status.command


def test_planner_options_follow_the_spec() -> None:
    options = planner_options(
        spec(objective="maximize_batch", parallelism={"tensor": 4}, serving={"gpuMemoryUtilization": "0.85"})
    )
    assert options["objective"] == "maximize_batch" and options["tensor_parallel"] == 4
    assert options["gpu_memory_utilization"] == 0.85
    assert "pipeline_parallel" not in options


def test_operator_gpu_prices_steer_minimize_cost() -> None:
    l4 = [NodeGPUs(f"l{i}", "NVIDIA-L4", 23034, (("nvidia.com/gpu", 4),), (), True) for i in range(2)]
    inventory = build_inventory([*h100_nodes(1), *l4], [])
    cheap_spec = spec(model={"name": "meta-llama/Meta-Llama-3.1-8B"}, objective="minimize_cost")
    default = plan_deployment(cheap_spec, inventory)
    priced = plan_deployment(cheap_spec, inventory, OperatorConfig(gpu_prices='{"L4": 50}').prices())
    assert isinstance(default, PlanResult) and isinstance(priced, PlanResult)
    assert default.status.gpu_type == "L4" and priced.status.gpu_type == "H100-80GB"


def test_operator_config_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPARALLEL_RESYNC_SECONDS", "2.5")
    monkeypatch.setenv("AUTOPARALLEL_GPU_PRICES", '{"H100-80GB": 3}')
    monkeypatch.setenv("AUTOPARALLEL_TRAINING_IMAGE", "registry.example.com/ml/autoparallel-training:0.1.0")
    config = OperatorConfig.from_env()
    assert config.resync_seconds == 2.5 and config.prices() == {"H100-80GB": 3.0}
    assert config.training_image == "registry.example.com/ml/autoparallel-training:0.1.0"
    assert OperatorConfig().training_image == "autoparallel-training:0.1.0"  # what the Dockerfile's build line names
    with pytest.raises(ValueError, match="gpu_prices"):
        OperatorConfig(gpu_prices='["H100"]').prices()


def test_an_unset_sequence_length_is_4096_or_the_models_positions_when_fewer() -> None:
    inventory = build_inventory(h100_nodes(1), [])
    gpt2_spec = spec(model={"name": "openai-community/gpt2"})
    assert gpt2_spec.workload.sequence_length is None
    gpt2 = plan_deployment(gpt2_spec, inventory)
    assert isinstance(gpt2, PlanResult)
    assert gpt2.plan.sequence_length == gpt2.status.sequence_length == 1024  # n_positions
    assert "--max-model-len 1024" in gpt2.status.command
    argv = vllm_argv(gpt2.plan, gpt2_spec)
    assert argv[argv.index("--max-model-len") + 1] == "1024"
    llama = plan_deployment(spec(model={"name": "meta-llama/Llama-3.1-8B-Instruct"}), inventory)
    assert isinstance(llama, PlanResult) and llama.status.sequence_length == 4096
    explicit = plan_deployment(
        spec(model={"name": "openai-community/gpt2"}, workload={"sequenceLength": 512}), inventory
    )
    assert isinstance(explicit, PlanResult) and explicit.status.sequence_length == 512


def test_an_explicit_sequence_length_above_the_models_positions_is_invalid() -> None:
    too_long = plan_deployment(
        spec(model={"name": "openai-community/gpt2"}, workload={"sequenceLength": 4096}),
        build_inventory(h100_nodes(1), []),
    )
    assert isinstance(too_long, PlanFailure) and too_long.reason == "InvalidSpec"
    assert "4096 exceeds the 1024 positions" in too_long.message


def test_scaling_plans_min_replicas_and_caps_max_at_what_the_pool_holds() -> None:
    inventory = build_inventory(h100_nodes(2), [])
    result = plan_deployment(spec(scaling={"minReplicas": 1, "maxReplicas": 50}), inventory)
    assert isinstance(result, PlanResult)
    status = result.status
    assert status.data == 1
    per_node = 8 // status.gpus_per_replica
    assert status.max_replicas == result.plan.max_replicas == 2 * per_node
    assert f"maxReplicas 50 is capped at {2 * per_node}" in status.reason
    within = plan_deployment(spec(scaling={"minReplicas": 1, "maxReplicas": 2}), inventory)
    assert isinstance(within, PlanResult) and within.status.max_replicas == 2 and "capped" not in within.status.reason
    wide = plan_deployment(spec(model={"name": "meta-llama/Llama-3.1-405B"}, scaling={"maxReplicas": 2}), inventory)
    assert isinstance(wide, PlanFailure) and wide.reason == "InvalidSpec" and "spec.scaling" in wide.message


def test_the_pods_run_vllm_with_the_planned_max_num_seqs() -> None:
    """A hybrid model whose state blocks cannot hold vLLM's default of 1024 sequences on an H100: the flag of
    status.plan.command is in the serving pods' argv too (else vLLM refuses to start)."""
    hybrid = spec(model={"name": "Qwen/Qwen3.5-35B-A3B"}, workload={"sequenceLength": 8192, "batchSize": 8})
    result = plan_deployment(hybrid, build_inventory(h100_nodes(1), []))
    assert isinstance(result, PlanResult)
    assert result.plan.max_num_seqs is not None and result.plan.max_num_seqs < 1024
    argv = vllm_argv(result.plan, hybrid)
    assert argv[argv.index("--max-num-seqs") + 1] == str(result.plan.max_num_seqs)
    assert f"--max-num-seqs {result.plan.max_num_seqs}" in result.status.command
    dense = plan_deployment(
        spec(model={"name": "meta-llama/Llama-3.1-8B-Instruct"}), build_inventory(h100_nodes(1), [])
    )
    assert isinstance(dense, PlanResult)
    assert ("--max-num-seqs" in vllm_argv(dense.plan, spec(model={"name": "meta-llama/Llama-3.1-8B-Instruct"}))) == (
        "--max-num-seqs" in dense.status.command
    )


# --- a fine-tuned export: planned from its base model's config, trained outputs on a volume ----------------------


EXPORT = "/model-cache/exports/llama8b-chat"


def test_a_path_is_planned_with_the_shapes_of_config_from() -> None:
    inventory = build_inventory(h100_nodes(1), [])
    base = plan_deployment(spec(model={"name": "meta-llama/Llama-3.1-8B"}), inventory)
    export = plan_deployment(
        spec(model={"name": EXPORT, "configFrom": "meta-llama/Llama-3.1-8B", "cache": {"claimName": "weights"}}),
        inventory,
    )
    assert isinstance(base, PlanResult) and isinstance(export, PlanResult)
    assert export.plan.degrees == base.plan.degrees
    assert export.status.memory_per_gpu == base.status.memory_per_gpu
    assert export.status.command.startswith(f"vllm serve {EXPORT} ")  # the pods load the path, not the base
    argv = vllm_argv(export.plan, spec(model={"name": EXPORT, "configFrom": "meta-llama/Llama-3.1-8B"}))
    assert argv[2] == EXPORT and argv[argv.index("--served-model-name") + 1] == "llama8b-chat"


def test_an_unknown_config_from_is_model_not_found_naming_the_field() -> None:
    failure = plan_deployment(
        spec(model={"name": EXPORT, "configFrom": "nobody/nothing-8b"}), build_inventory(h100_nodes(1), [])
    )
    assert isinstance(failure, PlanFailure) and failure.reason == "ModelNotFound"
    assert failure.message.startswith("spec.model.configFrom: ")
    unknown_name = plan_deployment(spec(model={"name": "nobody/nothing"}), build_inventory(h100_nodes(1), []))
    assert isinstance(unknown_name, PlanFailure) and "spec.model.configFrom" in unknown_name.message  # the fix


def _training(training: dict[str, object], pod_template: object = None, **model: object) -> ParallelDeploymentSpec:
    return spec(
        model={"name": "meta-llama/Llama-3.1-8B", **model},
        workload={"type": "training", "sequenceLength": 2048, "batchSize": 16},
        training=training,
        **({"podTemplate": pod_template} if pod_template else {}),
    )


def _trainer_mount(mount: dict[str, object]) -> dict[str, object]:
    return {
        "spec": {
            "volumes": [{"name": "out", "persistentVolumeClaim": {"claimName": "out"}}],
            "containers": [{"name": "trainer", "volumeMounts": [{"name": "out", **mount}]}],
        }
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_training({"exportDir": "/exports/x"}), "exportDir"),
        (_training({"exportDir": "/model-cache-2/x"}, cache={"claimName": "c"}), "exportDir"),
        (_training({"exportDir": "/model-cache/../tmp/x"}, cache={"claimName": "c"}), "exportDir"),
        (_training({"checkpointDir": "/ckpt/run"}), "checkpointDir"),
        (
            _training({"checkpointDir": "/out/ckpt"}, _trainer_mount({"mountPath": "/out", "readOnly": True})),
            "checkpointDir",
        ),
        (_training({"exportDir": "/out/x"}, _trainer_mount({"mountPath": "/elsewhere"})), "exportDir"),
    ],
    ids=[
        "no-volume",
        "a-sibling-of-the-cache",
        "out-of-the-cache",
        "checkpoint-on-no-volume",
        "read-only",
        "elsewhere",
    ],
)
def test_trained_outputs_on_no_writable_volume_are_invalid(body: ParallelDeploymentSpec, field: str) -> None:
    failure = plan_deployment(body, build_inventory(h100_nodes(1), []))
    assert isinstance(failure, PlanFailure) and failure.reason == "InvalidSpec"
    assert failure.message.startswith(f"spec.training.{field}: ")
    assert "spec.podTemplate" in failure.message  # the fix


@pytest.mark.parametrize(
    "body",
    [
        _training(
            {"checkpointDir": "/model-cache/ckpt/x", "exportDir": "/model-cache/exports/x"}, cache={"size": "1Ti"}
        ),
        _training({"checkpointDir": "/out/ckpt", "exportDir": "/out"}, _trainer_mount({"mountPath": "/out"})),
    ],
    ids=["cache", "pod-template-mount"],
)
def test_trained_outputs_on_a_writable_volume_plan(body: ParallelDeploymentSpec) -> None:
    assert isinstance(plan_deployment(body, build_inventory(h100_nodes(1), [])), PlanResult)


def test_a_data_parallel_training_plan_counts_what_fsdp2_gathers() -> None:
    body = spec(
        model={"name": "meta-llama/Meta-Llama-3.1-8B"},
        workload={"type": "training", "sequenceLength": 4096, "batchSize": 64},
        objective="maximize_batch",
    )
    result = plan_deployment(body, build_inventory(h100_nodes(2), []))
    assert isinstance(result, PlanResult) and result.plan.degrees.data > 1
    degrees = result.plan.degrees
    settings = TrainingSettings(num_micro_batches=64 // degrees.data)
    planned = estimate_training(resolve_model("meta-llama/Meta-Llama-3.1-8B").shape, degrees, settings, 4096)
    assert planned.gathered > 0
    memory = result.status.memory_per_gpu
    folded = planned.overhead + planned.gradients + planned.optimizer_states + planned.gathered
    assert abs(memory.overhead - folded) < 32 * 2**20  # each part rounded to 0.01 GiB
    parts = memory.weights + memory.kv_cache + memory.activations + memory.overhead
    assert abs(memory.total - parts) < 32 * 2**20


LWS = frozenset({"leaderworkersets.leaderworkerset.x-k8s.io"})
LLAMA_405B = {"name": "meta-llama/Llama-3.1-405B"}


def test_multi_node_replicas_run_on_a_leader_worker_set_when_its_crd_is_served() -> None:
    inventory = build_inventory(h100_nodes(2), [])
    without = plan_deployment(spec(model=LLAMA_405B), inventory)
    served = plan_deployment(spec(model=LLAMA_405B), inventory, served=LWS)
    pinned = plan_deployment(spec(model=LLAMA_405B, serving={"multiNodeBackend": "statefulSet"}), inventory, served=LWS)
    assert isinstance(without, PlanResult) and isinstance(served, PlanResult) and isinstance(pinned, PlanResult)
    assert without.status.nodes_per_replica == 2
    assert without.plan.multi_node_backend == without.status.multi_node_backend == MultiNodeBackend.STATEFUL_SET
    assert served.plan.multi_node_backend == served.status.multi_node_backend == MultiNodeBackend.LEADER_WORKER_SET
    assert pinned.status.multi_node_backend == MultiNodeBackend.STATEFUL_SET
    # Another backend is another set of children: another hash (StatefulSet plans keep the one they always had).
    assert without.plan.plan_hash != served.plan.plan_hash
    keys = ("tensor_parallel", "pipeline_parallel", "expert_parallel", "data_parallel", "nodes_per_replica")
    config = {**dict.fromkeys(keys, 2), "pool": "H100-80GB", "gpus_per_replica": 16}
    body = spec(model=LLAMA_405B)
    assert plan_hash(body, config, MultiNodeBackend.STATEFUL_SET) == plan_hash(body, config)
    assert plan_hash(body, config, MultiNodeBackend.LEADER_WORKER_SET) != plan_hash(body, config)
    single = plan_deployment(spec(serving={"multiNodeBackend": "leaderWorkerSet"}), inventory)
    assert isinstance(single, PlanResult) and single.status.multi_node_backend is None  # a Deployment either way


def test_asking_for_a_leader_worker_set_that_is_not_installed_names_the_fix() -> None:
    inventory = build_inventory(h100_nodes(2), [])
    asked = plan_deployment(spec(model=LLAMA_405B, serving={"multiNodeBackend": "leaderWorkerSet"}), inventory)
    assert isinstance(asked, PlanFailure) and asked.reason == "LeaderWorkerSetNotInstalled"
    assert "leaderworkersets.leaderworkerset.x-k8s.io" in asked.message
    assert "install LeaderWorkerSet" in asked.message and "multiNodeBackend to statefulSet" in asked.message
    placed = plan_deployment(spec(model=LLAMA_405B, placement={"topologyKey": "rack"}), inventory)
    assert isinstance(placed, PlanFailure) and placed.reason == "LeaderWorkerSetNotInstalled"
    assert "spec.placement.topologyKey rack" in placed.message and "remove spec.placement.topologyKey" in placed.message
    installed = plan_deployment(spec(model=LLAMA_405B, placement={"topologyKey": "rack"}), inventory, served=LWS)
    assert isinstance(installed, PlanResult)


def test_multi_node_replicas_autoscale_in_whole_groups_on_a_leader_worker_set_only() -> None:
    scaled = spec(model=LLAMA_405B, scaling={"minReplicas": 1, "maxReplicas": 5})
    four_nodes = build_inventory(h100_nodes(4), [])
    result = plan_deployment(scaled, four_nodes, served=LWS)
    assert isinstance(result, PlanResult) and result.status.nodes_per_replica == 2
    assert result.status.max_replicas == 2  # 4 nodes, 2 per replica
    assert "maxReplicas 5 is capped at 2" in result.status.reason and "2 node(s) per replica" in result.status.reason
    refused = plan_deployment(scaled, four_nodes)
    assert isinstance(refused, PlanFailure) and refused.reason == "InvalidSpec"
    assert "spec.scaling" in refused.message and "LeaderWorkerSet" in refused.message


def test_a_plan_is_made_again_when_its_backend_is_no_longer_what_the_spec_resolves_to() -> None:
    inventory = build_inventory(h100_nodes(2), [])
    on_lws = plan_deployment(spec(model=LLAMA_405B), inventory, served=LWS)
    assert isinstance(on_lws, PlanResult)
    assert not backend_changed(spec(model=LLAMA_405B), on_lws.status, LWS)
    assert backend_changed(spec(model=LLAMA_405B), on_lws.status, frozenset())  # LWS uninstalled
    assert backend_changed(spec(model=LLAMA_405B, serving={"multiNodeBackend": "statefulSet"}), on_lws.status, LWS)
    older = on_lws.status.model_copy(update={"multi_node_backend": None})  # stored by an operator before backends
    assert backend_changed(spec(model=LLAMA_405B), older, frozenset())
    single = plan_deployment(spec(), inventory)
    assert isinstance(single, PlanResult) and not backend_changed(spec(), single.status, LWS)
