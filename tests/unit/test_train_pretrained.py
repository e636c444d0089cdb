"""Pretrained weights in: where ``--model`` is found, and the checkpoint read into the empty skeleton (one
process; the layouts are tests/integration/test_train_parity.py's)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from transformers import AutoModelForCausalLM, LlamaConfig  # noqa: E402

from autoparallel.parallel.train.config import ConfigError  # noqa: E402
from autoparallel.parallel.train.model import build_model  # noqa: E402
from autoparallel.parallel.train.optim import MasterAdamW  # noqa: E402
from autoparallel.parallel.train.pretrained import load_weights, materialize, resolve_model  # noqa: E402
from tiny_checkpoint import cache_model, save_tiny_llama  # noqa: E402

pytestmark = pytest.mark.torch

REPO_ID = "autoparallel-tests/tiny-llama"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("llama"), seed=3)


def _loaded(folder: Path, precision: str) -> tuple[torch.nn.Module, MasterAdamW]:
    """The runtime's way in: an empty skeleton, given memory, read from ``folder``."""
    source = resolve_model(str(folder))
    model, _ = build_model(str(folder), seed=0, hf_config=source.config(), empty=True)
    materialize(model, torch.device("cpu"))
    optimizer = MasterAdamW(model, precision, lr=1e-3, weight_decay=0.0)
    load_weights(model, optimizer, folder)
    return model, optimizer


def test_a_folder_with_weights_is_pretrained_by_default(checkpoint: Path) -> None:
    source = resolve_model(str(checkpoint))
    assert source.config_file == checkpoint / "config.json"
    assert source.weights_folder(None) == checkpoint
    assert source.weights_folder("pretrained") == checkpoint
    assert source.weights_folder("random") is None


def test_a_bare_config_or_a_folder_without_weights_starts_random(checkpoint: Path, tmp_path: Path) -> None:
    LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2).save_pretrained(tmp_path)
    for name, message in ((checkpoint / "config.json", "a bare config file has no weights"), (tmp_path, "holds no")):
        source = resolve_model(str(name))
        assert source.weights_folder(None) is None
        with pytest.raises(ConfigError, match=rf"init pretrained: model .*{message}.*--init random"):
            source.weights_folder("pretrained")


def test_a_hub_id_resolves_through_the_cache(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    snapshot = cache_model(tmp_path, REPO_ID, checkpoint)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    source = resolve_model(REPO_ID)
    assert source.folder == snapshot
    assert source.weights_folder(None) == snapshot
    assert source.config().num_hidden_layers == 4


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (REPO_ID, r"not in the Hugging Face cache .*/hub \(HF_HOME=.*\); download it there first"),
        ("/no/such/folder", r"no such file or folder, and not a Hugging Face id"),
    ],
)
def test_models_that_are_not_there_name_where_they_were_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, message: str
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError, match=message):
        resolve_model(name)


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"the folder has no config.json"):
        resolve_model(str(tmp_path))


def test_the_skeleton_has_no_weights_but_real_buffers(checkpoint: Path) -> None:
    config = resolve_model(str(checkpoint)).config()
    empty, _ = build_model(str(checkpoint), seed=0, hf_config=config, empty=True)
    full, _ = build_model(str(checkpoint), seed=0, hf_config=config)
    assert all(p.is_meta for p in empty.parameters())
    buffers = dict(full.named_buffers())
    assert buffers  # the rotary frequencies, which no checkpoint holds
    for name, buffer in empty.named_buffers():
        assert torch.equal(buffer, buffers[name]), name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weights_load_into_the_masters_and_the_model(checkpoint: Path, precision: str) -> None:
    model, optimizer = _loaded(checkpoint, precision)
    expected = AutoModelForCausalLM.from_pretrained(checkpoint).state_dict()
    masters = dict(optimizer.masters.named_parameters())
    assert len(masters) == len(expected)
    for name, master in masters.items():
        assert master.dtype == torch.float32
        assert torch.equal(master, expected[name.removeprefix("model.")]), name
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    for name, param in model.named_parameters():
        assert torch.equal(param, expected[name.removeprefix("model.")].to(dtype)), name
    inputs = torch.tensor([[1, 5, 9, 13, 2]])
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=dtype)
    torch.testing.assert_close(model(inputs), reference(input_ids=inputs).logits, rtol=0, atol=0)


def test_tied_embeddings_load_once(tmp_path: Path) -> None:
    folder = save_tiny_llama(tmp_path, seed=5, tie_word_embeddings=True)
    model, _ = _loaded(folder, "fp32")
    embedding = AutoModelForCausalLM.from_pretrained(folder).state_dict()["model.embed_tokens.weight"]
    head = model.get_parameter("model.lm_head.weight")
    assert head is model.get_parameter("model.model.embed_tokens.weight")
    assert torch.equal(head, embedding)


def test_a_checkpoint_of_another_model_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    for name, changes, message in (
        ("deeper", {"num_hidden_layers": 6}, r"lack 18 of the model's 57 weights \(model.layers.4"),
        ("wider", {"vocab_size": 256}, r"weight model.embed_tokens.weight has shape \[96, 32\] in the safetensors"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "model.safetensors").symlink_to(checkpoint / "model.safetensors")
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
        with pytest.raises(ConfigError, match=message):
            _loaded(folder, "fp32")
