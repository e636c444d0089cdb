"""The CLI: readable output, JSON, exit codes and one-line errors."""

import json

import pytest

from autoparallel.cli import EXIT_INSUFFICIENT_MEMORY, EXIT_INVALID, EXIT_MODEL_NOT_FOUND, main

PLAN = ["plan", "meta-llama/Llama-3.1-70B", "--gpu", "H100-80GB", "--gpus-per-node", "8", "--nodes", "2"]


def test_plan_prints_a_table_and_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, "--seq-len", "8192", "--explain"]) == 0
    out = capsys.readouterr().out
    assert "TP" in out and "KV tokens" in out
    assert "vllm serve meta-llama/Llama-3.1-70B" in out
    assert "Rejected" in out and "not divisible by TP=3" in out


def test_plan_json_is_the_api_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*PLAN, "--json", "--objective", "maximize_batch"]) == 0
    configs = json.loads(capsys.readouterr().out)
    assert configs[0]["total_gpus"] == 16
    assert configs[0]["reason"].startswith("maximize_batch")


def test_memory_cost_and_gpus(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["memory", "Qwen/Qwen3-30B-A3B", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameter_count"] == 30_532_122_624
    assert main(["cost", "meta-llama/Llama-3.1-70B", "--gpu", "H100-80GB", "--price", "H100-80GB=3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_per_gpu_hour"] == 3.0
    assert main(["gpus", "--json"]) == 0
    names = {row["name"] for row in json.loads(capsys.readouterr().out)}
    assert {
        "A10G",
        "L4",
        "L40S",
        "A100-40GB",
        "A100-80GB",
        "H100-80GB",
        "H100-PCIe",
        "H200",
        "B200",
        "MI300X",
    } <= names


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["plan", "nobody/nothing-1b", "--gpu", "H100"], EXIT_MODEL_NOT_FOUND, "model: 'nobody/nothing-1b'"),
        (
            ["plan", "meta-llama/Llama-3.1-405B", "--gpu", "L4", "--gpus-per-node", "4"],
            EXIT_INSUFFICIENT_MEMORY,
            "smallest cluster that fits",
        ),
        (["plan", "meta-llama/Llama-3.1-70B"], EXIT_INVALID, "--gpu or --gpu-memory-gb"),
        (["plan", "meta-llama/Llama-3.1-70B", "--gpu", "TPUv5"], EXIT_INVALID, "unknown GPU 'TPUv5'"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    argv: list[str], code: int, fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("autoparallel: error: ")
    assert fragment in err
