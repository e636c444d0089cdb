"""Training runtime on CPU/gloo: every layout's losses match one process's, checkpoints reshard, and the
operator's own command line runs; a pretrained Hugging Face checkpoint trains from its own loss under every
layout and comes back out as a folder transformers reloads. Each run is a real ``torch.distributed.run``
launch of the runtime."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from autoparallel.parallel.train.checkpoint import STEP_DIR  # noqa: E402
from autoparallel.parallel.train.data import SyntheticRows  # noqa: E402
from autoparallel.planner.commands import TORCHRUN_MASTER_PORT, TrainOptions, torchrun_args  # noqa: E402
from autoparallel.planner.inference import Degrees  # noqa: E402
from tiny_checkpoint import VOCAB_SIZE, cache_model, save_tiny_llama  # noqa: E402

pytestmark = pytest.mark.torch

STEPS = 5
LOSS_TOLERANCE = 1e-4
RUN_TIMEOUT_S = 180
TINY = ["--num-layers", "4", "--hidden-size", "32", "--vocab-size", "128", "--seq-len", "16"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def _launch(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env or _env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _train(
    tmp_path: Path, name: str, nproc: int, *args: str, env: dict[str, str] | None = None
) -> list[dict[str, float]]:
    """Run the runtime on ``nproc`` processes; returns its metrics, one object per step."""
    metrics = tmp_path / f"{name}.jsonl"
    _launch(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            f"--nproc-per-node={nproc}",
            f"--master-port={_free_port()}",
            "-m",
            "autoparallel.parallel.train",
            "--steps",
            str(STEPS),
            "--global-batch-size",
            "8",
            "--seed",
            "7",
            "--metrics-jsonl",
            str(metrics),
            *TINY,
            *args,
        ],
        env,
    )
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def _losses(records: list[dict[str, float]]) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in records}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[int, float]:
    """One process, four micro-batches of two sequences."""
    return _losses(_train(tmp_path_factory.mktemp("reference"), "reference", 1, "--micro-batches", "4"))


@pytest.mark.parametrize(
    ("name", "nproc", "args"),
    [
        ("dp2-accumulate", 2, ["--data-parallel", "2", "--micro-batches", "2"]),
        ("tp2", 2, ["--tensor-parallel", "2", "--micro-batches", "4"]),
        ("pp2-1f1b", 2, ["--pipeline-parallel", "2", "--micro-batches", "4"]),
        ("dp2-tp2", 4, ["--data-parallel", "2", "--tensor-parallel", "2", "--micro-batches", "2"]),
    ],
)
def test_layout_matches_single_process(
    reference: dict[int, float], tmp_path: Path, name: str, nproc: int, args: list[str]
) -> None:
    records = _train(tmp_path, name, nproc, *args)
    losses = _losses(records)
    assert sorted(losses) == list(range(1, STEPS + 1))
    differences = {step: abs(losses[step] - reference[step]) for step in losses}
    assert max(differences.values()) < LOSS_TOLERANCE, differences
    assert reference[STEPS] < reference[1]  # it learns
    assert all(len(r["peak_memory_bytes_per_rank"]) == nproc for r in records)  # type: ignore[arg-type]


def test_tp2_checkpoint_resumes_at_tp1_and_dp2(reference: dict[int, float], tmp_path: Path) -> None:
    saved = tmp_path / "tp2"
    records = _train(tmp_path, "save", 2, "--tensor-parallel", "2", "--micro-batches", "4", "--steps", "3",
                     "--checkpoint-dir", str(saved), "--checkpoint-every", "2")  # fmt: skip
    assert [int(r["step"]) for r in records] == [1, 2, 3]
    assert sorted(p.name for p in saved.iterdir()) == ["step-00000002", "step-00000003"]
    for name, nproc, layout in (
        ("tp1", 1, ["--micro-batches", "4"]),
        ("dp2", 2, ["--data-parallel", "2", "--micro-batches", "2"]),
    ):
        directory = tmp_path / name
        shutil.copytree(saved, directory)
        resumed = _losses(_train(tmp_path, name, nproc, *layout, "--checkpoint-dir", str(directory), "--resume"))
        assert sorted(resumed) == [4, 5]
        assert abs(resumed[4] - reference[4]) < LOSS_TOLERANCE, (name, resumed, reference)
        assert abs(resumed[5] - reference[5]) < LOSS_TOLERANCE, (name, resumed, reference)


def test_operator_generated_command_line(tmp_path: Path) -> None:
    """The exact argv the operator renders (planner.commands), with the pod's environment filled in."""
    argv = torchrun_args(Degrees(tensor=2), TrainOptions("tiny-gpt", 16, 4, 2, steps=2), nodes=1, gpus_per_node=2)
    port = str(_free_port())
    substitutions = {
        "torchrun": f"{sys.executable} -m torch.distributed.run",
        "--node-rank=${PET_NODE_RANK}": "--node-rank=0",
        "--master-addr=${PET_MASTER_ADDR}": "--master-addr=127.0.0.1",
        f"--master-port={TORCHRUN_MASTER_PORT}": f"--master-port={port}",
    }
    command = [part for arg in argv for part in substitutions.get(arg, arg).split(" ")]
    metrics = tmp_path / "operator.jsonl"
    env = {**_env(), "AUTOPARALLEL_TENSOR_PARALLEL": "2", "AUTOPARALLEL_PIPELINE_PARALLEL": "1"}
    env["AUTOPARALLEL_DATA_PARALLEL"] = "1"
    result = _launch([*command, "--metrics-jsonl", str(metrics), "--log-json"], env)
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["loss"] > 0 and r["tokens_per_second"] > 0 for r in records)
    assert '"step": 2' in result.stdout


def test_bad_layout_fails_with_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autoparallel.parallel.train", "--tensor-parallel", "2", "--steps", "1"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert "must equal the world size (1)" in result.stderr


def test_transformers_config_trains_and_splits_with_convert_to_tp(tmp_path: Path) -> None:
    """A transformers causal LM built from its config; TP=2 through ``autoparallel.parallel.convert_to_tp``."""
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
    )
    config.save_pretrained(tmp_path)
    model = ["--model", str(tmp_path / "config.json"), "--steps", "3", "--micro-batches", "2"]
    single = _losses(_train(tmp_path, "llama", 1, *model))
    split = _losses(_train(tmp_path, "llama-tp2", 2, *model, "--tensor-parallel", "2"))
    assert sorted(single) == [1, 2, 3]
    assert all(abs(split[step] - single[step]) < LOSS_TOLERANCE for step in single), (split, single)


REPO_ID = "autoparallel-tests/tiny-llama"
ROUND_TRIP_TOLERANCE = 1e-6
"""Export reloaded against the runtime's final model: the same weights through the same kernels (measured 0 in
fp32 and in bf16)."""


@dataclass(frozen=True)
class Pretrained:
    """A tiny Llama checkpoint in a Hugging Face cache, and one process's run from it."""

    hf_home: Path
    folder: Path
    losses: dict[int, float]
    export: Path
    checkpoints: Path


def _pretrained_run(tmp_path: Path, name: str, nproc: int, model: str, *args: str, **env: str) -> dict[int, float]:
    """A run from the pretrained checkpoint that exports, and checkpoints its final step, under ``tmp_path``."""
    records = _train(tmp_path, name, nproc, "--model", model, "--export-dir", str(tmp_path / f"{name}-export"),
                     "--checkpoint-dir", str(tmp_path / f"{name}-checkpoints"), *args, env=_env(**env))  # fmt: skip
    return _losses(records)


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Pretrained:
    """One process, four micro-batches, the model named by its hub id and found through ``HF_HOME``."""
    root = tmp_path_factory.mktemp("pretrained")
    snapshot = cache_model(root / "hf-home", REPO_ID, save_tiny_llama(root / "llama", seed=3))
    losses = _pretrained_run(root, "reference", 1, REPO_ID, "--micro-batches", "4", HF_HOME=str(root / "hf-home"))
    return Pretrained(root / "hf-home", snapshot, losses, root / "reference-export", root / "reference-checkpoints")


def _round_trip_error(export: Path, checkpoints: Path, precision: str) -> float:
    """Largest |logit| difference between the exported folder reloaded by transformers and the runtime's final
    model: the fp32 masters of its last checkpoint, as the runtime computes with them (bf16 parameters under
    ``bf16``, the rotary buffers left in fp32)."""
    import torch.distributed.checkpoint as dcp
    from transformers import AutoConfig, AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(export)
    runtime = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(export), dtype=torch.float32)
    state = {"model": {"model." + name: tensor for name, tensor in runtime.state_dict().items()}}
    dcp.load(state, checkpoint_id=str(checkpoints / STEP_DIR.format(step=STEPS)))
    runtime.load_state_dict({name.removeprefix("model."): tensor for name, tensor in state["model"].items()})
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for parameter in runtime.parameters():
        parameter.data = parameter.data.to(dtype)
    assert reloaded.dtype == dtype
    inputs = SyntheticRows(VOCAB_SIZE, 16, seed=11).read(0, 8)[0]
    with torch.no_grad():
        difference = reloaded(input_ids=inputs).logits.float() - runtime(input_ids=inputs).logits.float()
    return float(difference.abs().max())


def test_pretrained_loss_at_step_0_is_the_loss_transformers_computes(pretrained: Pretrained) -> None:
    """The first step's loss is the checkpoint's own, as transformers computes it (labels shifted inside)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(pretrained.folder, dtype=torch.float32)
    inputs, targets, _ = SyntheticRows(VOCAB_SIZE, 16, seed=7).read(0, 8)
    tokens = torch.cat([inputs, targets[:, -1:]], dim=1)
    with torch.no_grad():
        expected = float(model(input_ids=tokens, labels=tokens).loss)
    assert abs(pretrained.losses[1] - expected) < 1e-6, (pretrained.losses[1], expected)
    assert pretrained.losses[STEPS] < pretrained.losses[1]  # it learns
    assert _round_trip_error(pretrained.export, pretrained.checkpoints, "fp32") < ROUND_TRIP_TOLERANCE


@pytest.mark.parametrize(
    ("name", "nproc", "args"),
    [
        ("tp2", 2, ["--tensor-parallel", "2", "--micro-batches", "4"]),
        ("pp2", 2, ["--pipeline-parallel", "2", "--micro-batches", "4"]),
        ("dp2", 2, ["--data-parallel", "2", "--micro-batches", "2"]),
    ],
)
def test_pretrained_layout_matches_single_process_and_exports(
    pretrained: Pretrained, tmp_path: Path, name: str, nproc: int, args: list[str]
) -> None:
    losses = _pretrained_run(tmp_path, name, nproc, str(pretrained.folder), *args)
    assert sorted(losses) == list(range(1, STEPS + 1))
    differences = {step: abs(losses[step] - pretrained.losses[step]) for step in losses}
    assert max(differences.values()) < LOSS_TOLERANCE, differences
    export = tmp_path / f"{name}-export"
    assert _round_trip_error(export, tmp_path / f"{name}-checkpoints", "fp32") < ROUND_TRIP_TOLERANCE
    assert sorted(p.name for p in export.iterdir()) == sorted(p.name for p in pretrained.export.iterdir())


def test_bf16_export_every_n_steps_replaces_the_folder(pretrained: Pretrained, tmp_path: Path) -> None:
    """bf16 weights from the fp32 masters, written at step 2 and again at the end into the same folder."""
    from safetensors import safe_open
    from transformers import AutoTokenizer

    _pretrained_run(tmp_path, "bf16", 2, str(pretrained.folder), "--data-parallel", "2", "--micro-batches", "2",
                    "--precision", "bf16", "--export-every", "2")  # fmt: skip
    export = tmp_path / "bf16-export"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no partial export left
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"
    index = json.loads((export / "model.safetensors.index.json").read_text())
    files = set(index["weight_map"].values())
    for file in files:
        with safe_open(export / file, framework="pt") as weights:
            assert {weights.get_slice(key).get_dtype() for key in weights.keys()} == {"BF16"}  # noqa: SIM118
    assert _round_trip_error(export, tmp_path / "bf16-checkpoints", "bf16") < ROUND_TRIP_TOLERANCE
    tokenizer = AutoTokenizer.from_pretrained(export)
    assert (
        tokenizer("the lazy dog")["input_ids"]
        == AutoTokenizer.from_pretrained(pretrained.folder)("the lazy dog")["input_ids"]
    )


def test_a_model_missing_from_the_cache_fails_with_a_clear_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "autoparallel.parallel.train", "--model", "org/not-cached", "--steps", "1"],
        env=_env(HF_HOME=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 2
    assert f"not in the Hugging Face cache {tmp_path}/hub (HF_HOME={tmp_path})" in result.stderr


def test_packed_documents_at_dp2_with_a_resume_match_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real data: a jsonl dataset tokenized by the checkpoint's tokenizer and packed with document masking. DP=2
    (FSDP2, one sequence per micro-batch) saved at step 2, mid-epoch, and resumed at DP=2 matches one process
    over every step, across the epoch boundary: the same rows, order and token-weighted loss."""
    from tiny_checkpoint import DOCUMENTS, save_tiny_llama

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    save_tiny_llama(tmp_path / "llama")
    data = tmp_path / "docs.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in DOCUMENTS * 3))  # 14 rows of 16
    common = ["--model", str(tmp_path / "llama"), "--data", str(data), "--global-batch-size", "4"]
    common += ["--micro-batches", "2"]
    reference = _losses(_train(tmp_path, "one", 1, *common))
    saved = ["--checkpoint-dir", str(tmp_path / "checkpoints")]
    dp2 = [*common, "--data-parallel", "2", *saved]
    first = _losses(_train(tmp_path, "dp2", 2, *dp2, "--steps", "2"))
    resumed = _losses(_train(tmp_path, "dp2-resumed", 2, *dp2, "--resume"))
    assert (sorted(first), sorted(resumed)) == ([1, 2], [3, 4, 5])
    differences = {step: abs(loss - reference[step]) for step, loss in {**first, **resumed}.items()}
    assert max(differences.values()) < LOSS_TOLERANCE, differences
    assert reference[STEPS] < reference[1]  # it learns
