"""Training runtime on CPU/gloo: every layout's losses match one process's, checkpoints reshard, and the
operator's own command line runs. Each run is a real ``torch.distributed.run`` launch of the runtime."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from autoparallel.planner.commands import TORCHRUN_MASTER_PORT, TrainOptions, torchrun_args
from autoparallel.planner.inference import Degrees

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


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def _launch(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, env=env or _env(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def _train(tmp_path: Path, name: str, nproc: int, *args: str) -> list[dict[str, float]]:
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
        ]
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


def test_packed_documents_at_dp2_with_a_resume_match_one_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Real data: a jsonl dataset tokenized by the checkpoint's tokenizer and packed with document masking. DP=2
    (FSDP2, one sequence per micro-batch) saved at step 2, mid-epoch, and resumed at DP=2 matches one process
    over every step, across the epoch boundary: the same rows, order and token-weighted loss."""
    from tiny_checkpoint import DOCUMENTS, write_checkpoint

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    write_checkpoint(tmp_path / "llama")
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
