"""The training runtime's configuration and pipeline split (pure, no process group); data: test_train_data."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from autoparallel.parallel.train import checkpoint  # noqa: E402
from autoparallel.parallel.train.config import ConfigError, TrainConfig, load_config  # noqa: E402
from autoparallel.parallel.train.layout import keep_stage, layer_range  # noqa: E402
from autoparallel.parallel.train.model import TinyGPT, TinyGPTConfig, build_model  # noqa: E402
from autoparallel.planner.commands import TrainOptions, torchrun_args  # noqa: E402
from autoparallel.planner.inference import Degrees  # noqa: E402

pytestmark = pytest.mark.torch


def test_operator_command_line_parses() -> None:
    argv = torchrun_args(Degrees(tensor=2, pipeline=2, data=3), TrainOptions("tiny-gpt", 64, 24, 4, steps=7), 1, 12)
    config = load_config(argv[argv.index("autoparallel.parallel.train") + 1 :], environ={})
    assert (config.tensor_parallel, config.pipeline_parallel, config.data_parallel) == (2, 2, 3)
    assert (config.seq_len, config.global_batch_size, config.micro_batches, config.steps) == (64, 24, 4, 7)
    assert config.micro_batch_size == 2
    config.validate(12)


def test_yaml_then_environment_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("tensor_parallel: 4\nsteps: 3\nlr: 0.01\ntiny:\n  hidden_size: 64\n  num_heads: 8\n")
    environ = {"AUTOPARALLEL_TENSOR_PARALLEL": "2", "AUTOPARALLEL_DATA_PARALLEL": "2", "UNRELATED": "x"}
    config = load_config(["--config", str(path), "--data-parallel", "1", "--num-layers", "2"], environ=environ)
    assert config.tensor_parallel == 2  # environment over the file
    assert config.data_parallel == 1  # flag over the environment
    assert (config.steps, config.lr) == (3, 0.01)
    assert config.tiny == TinyGPTConfig(hidden_size=64, num_heads=8, num_layers=2)


def test_weights_and_export_flags_parse() -> None:
    argv = ["--model", "org/name", "--init", "random", "--export-dir", "/out", "--export-every", "50"]
    config = load_config(argv, environ={"AUTOPARALLEL_EXPORT_DIR": "/elsewhere"})
    assert (config.model, config.init, config.export_dir, config.export_every) == ("org/name", "random", "/out", 50)
    assert load_config([], environ={"AUTOPARALLEL_EXPORT_DIR": "/elsewhere"}).export_dir == "/elsewhere"
    assert load_config([], environ={}).init is None  # decided by the model: pretrained when it has weights


def test_unknown_yaml_option_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("tensor_paralel: 2\n")
    with pytest.raises(ConfigError, match="unknown option 'tensor_paralel'"):
        load_config(["--config", str(path)], environ={})


@pytest.mark.parametrize(
    ("config", "world_size", "message"),
    [
        (TrainConfig(tensor_parallel=2, data_parallel=2), 2, r"= 4 must equal the world size \(2\)"),
        (TrainConfig(data_parallel=2, micro_batches=3, global_batch_size=8), 2, r"divisible by data parallel"),
        (TrainConfig(tensor_parallel=3), 3, r"number of attention heads \(4\) must be divisible by tensor"),
        (TrainConfig(pipeline_parallel=8, micro_batches=8), 8, r"number of layers \(4\) must be at least"),
        (TrainConfig(pipeline_parallel=2, micro_batches=1), 2, r"micro-batches \(1\) must be at least"),
        (TrainConfig(precision="fp16"), 1, r"precision must be one of"),
        (TrainConfig(init="zeros"), 1, r"init must be one of pretrained, random \(got 'zeros'\)"),
        (TrainConfig(export_every=-1), 1, r"export every \(-1\) must be 0"),
        (TrainConfig(init="pretrained"), 1, r"init pretrained: tiny-gpt has no pretrained weights"),
        (TrainConfig(export_dir="out"), 1, r"export dir: tiny-gpt has no Hugging Face form"),
    ],
)
def test_invalid_layouts_name_the_numbers(config: TrainConfig, world_size: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config.validate(world_size)


def test_stages_keep_full_model_names() -> None:
    full, _ = build_model("tiny-gpt", seed=0, tiny=TinyGPTConfig(num_layers=5))
    names = {name for name, _ in full.named_parameters()}
    stages = [keep_stage(build_model("tiny-gpt", 0, TinyGPTConfig(num_layers=5))[0], s, 2) for s in range(2)]
    assert [list(layer_range(5, s, 2)) for s in range(2)] == [[0, 1, 2], [3, 4]]  # the planner's split
    stage_names = [{name for name, _ in stage.named_parameters()} for stage in stages]
    assert stage_names[0] | stage_names[1] == names
    assert not stage_names[0] & stage_names[1]
    assert isinstance(stages[1], TinyGPT) and stages[1].embed_tokens is None


def test_latest_checkpoint_skips_incomplete_saves(tmp_path: Path) -> None:
    for step, complete in ((2, True), (4, True), (6, False)):
        folder = tmp_path / checkpoint.STEP_DIR.format(step=step)
        folder.mkdir()
        if complete:
            (folder / checkpoint.METADATA_FILE).write_bytes(b"")
    assert checkpoint.latest(str(tmp_path)) == tmp_path / "step-00000004"
    assert checkpoint.latest(str(tmp_path / "missing")) is None
