"""Real data for the training runtime: loading, tokenizing, packing with document masking, order, sharding, resume."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
datasets = pytest.importorskip("datasets")

import numpy as np  # noqa: E402

from autoparallel.parallel.train import checkpoint  # noqa: E402
from autoparallel.parallel.train.config import ConfigError, TrainConfig, load_config  # noqa: E402
from autoparallel.parallel.train.corpus import load_corpus  # noqa: E402
from autoparallel.parallel.train.data import IGNORE_INDEX, DataStream, SyntheticRows, build_stream  # noqa: E402
from autoparallel.parallel.train.loop import causal_lm_loss  # noqa: E402
from autoparallel.parallel.train.model import CausalLMLogits, TinyGPT, TinyGPTConfig  # noqa: E402
from autoparallel.parallel.train.optim import MasterAdamW  # noqa: E402
from autoparallel.parallel.train.packing import PackedRows  # noqa: E402
from tiny_checkpoint import CONVERSATIONS, DOCUMENTS, VOCAB_SIZE, save_tiny_llama  # noqa: E402

pytestmark = pytest.mark.torch

LENGTHS = [5, 3, 9, 2, 1, 6]
"""Tokens per document; the lone token (an empty text's EOS) has no pair."""


def _documents(lengths: list[int]) -> list[np.ndarray]:
    """Document ``d``'s token ``j`` is ``100 d + j``: a pair's document and order are readable from its ids."""
    return [100 * d + np.arange(n) for d, n in enumerate(lengths)]


def _packed(lengths: list[int], seq_len: int, seed: int = 0) -> PackedRows:
    documents = _documents(lengths)
    return PackedRows(np.array(lengths), lambda indices: [documents[i] for i in indices], seq_len, seed, pad_id=0)


def _segments(position_ids: torch.Tensor) -> list[tuple[int, int, int]]:
    """``(row, start, end)`` of each run of consecutive positions."""
    found = []
    for row, positions in enumerate(position_ids.tolist()):
        starts = [i for i, p in enumerate(positions) if i == 0 or p != positions[i - 1] + 1]
        found += [(row, a, b) for a, b in zip(starts, [*starts[1:], len(positions)], strict=True)]
    return found


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("llama")
    save_tiny_llama(folder)
    return folder


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``datasets`` caches under the test's folder, never the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_packing_keeps_pairs_inside_documents_and_pads_the_last_row() -> None:
    seq_len = 4
    packed = _packed(LENGTHS, seq_len)
    total = sum(n - 1 for n in LENGTHS)
    assert (packed.total_pairs, packed.rows_per_epoch) == (total, -(-total // seq_len))
    inputs, targets, positions = packed.read(0, packed.rows_per_epoch)
    valid = targets != IGNORE_INDEX
    # every target is the next token of its input's own document: no pair crosses a boundary
    assert torch.equal(targets[valid], inputs[valid] + 1)
    # the epoch holds every document's pairs exactly once
    expected = sorted((int(t[j]), int(t[j + 1])) for t in _documents(LENGTHS) for j in range(len(t) - 1))
    assert sorted(zip(inputs[valid].tolist(), targets[valid].tolist(), strict=True)) == expected
    # positions restart at each document start (and where a row boundary split a document), else count up
    for row, start, end in _segments(positions):
        ids = inputs[row, start:end]
        assert torch.equal(positions[row, start:end], torch.arange(end - start))
        if valid[row, start:end].all():
            assert len(set((ids // 100).tolist())) == 1  # one document per segment
    # only the epoch's last row is padded: input pad id, target ignored
    padding = total - (packed.rows_per_epoch - 1) * seq_len
    assert valid[:-1].all() and int(valid[-1].sum()) == padding
    assert torch.equal(inputs[-1, padding:], torch.zeros(seq_len - padding, dtype=torch.long))
    assert packed.target_count(0, packed.rows_per_epoch) == int(valid.sum())


def test_order_is_a_function_of_seed_and_epoch() -> None:
    packed, again, other = _packed(LENGTHS, 4, seed=1), _packed(LENGTHS, 4, seed=1), _packed(LENGTHS, 4, seed=2)
    assert all(np.array_equal(packed.order(e), again.order(e)) for e in range(3))
    assert not np.array_equal(packed.order(0), other.order(0))
    assert not np.array_equal(packed.order(0), packed.order(1))
    n = packed.rows_per_epoch
    first, second = packed.read(0, n), packed.read(n, n)  # epoch 1: same pairs, another order
    assert not torch.equal(first[0], second[0])
    for epoch in (first, second):
        assert int((epoch[1] != IGNORE_INDEX).sum()) == packed.total_pairs


@pytest.mark.parametrize(
    "rows", [_packed(LENGTHS, 4, seed=3), SyntheticRows(vocab_size=128, seq_len=4, seed=3)], ids=["packed", "synthetic"]
)
def test_data_parallel_shares_cover_the_global_batch(rows: Any) -> None:
    """Four steps of 6 rows (crossing epochs of the packed rows) at DP=1, 2 and 3."""
    streams = {dp: [DataStream(rows, 6, "f") for _ in range(dp)] for dp in (1, 2, 3)}
    for _ in range(4):
        batches = {dp: [s.next_batch(rank, dp) for rank, s in enumerate(ranks)] for dp, ranks in streams.items()}
        (whole,) = batches[1]
        assert whole.target_count == int((whole.targets != IGNORE_INDEX).sum())
        for dp in (2, 3):
            assert all(len(b.inputs) == 6 // dp and b.target_count == whole.target_count for b in batches[dp])
            for field in ("inputs", "targets", "position_ids"):
                assert torch.equal(torch.cat([getattr(b, field) for b in batches[dp]]), getattr(whole, field))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_resume_mid_epoch_continues_the_same_order(tmp_path: Path) -> None:
    """A DCP checkpoint round trip (one process) restores the data position; other data is refused."""
    rows = _packed(LENGTHS, 4, seed=5)  # 5 rows per epoch, 4 per step: step 1 ends mid-epoch 0
    uninterrupted = DataStream(rows, 4, "fingerprint")
    expected = [uninterrupted.next_batch(0, 1) for _ in range(4)]
    model = TinyGPT(TinyGPTConfig(num_layers=1))
    optimizer = MasterAdamW(model, "fp32", lr=1e-3, weight_decay=0.0)
    first = DataStream(rows, 4, "fingerprint")
    first.next_batch(0, 1)
    path = checkpoint.save(str(tmp_path), 1, optimizer, first)
    assert {k: int(v) for k, v in first.state_dict().items() if k != "fingerprint"} == {"epoch": 0, "index": 4}
    resumed = DataStream(rows, 4, "fingerprint")
    assert checkpoint.load(path, optimizer, resumed) == 1
    for batch in expected[1:]:
        again = resumed.next_batch(0, 1)
        assert torch.equal(again.inputs, batch.inputs) and torch.equal(again.position_ids, batch.position_ids)
    with pytest.raises(ConfigError, match="saved over other data"):
        checkpoint.load(path, optimizer, DataStream(rows, 4, "another fingerprint"))


def test_tiny_gpt_attends_within_each_packed_document() -> None:
    """Each segment's logits in a packed batch equal the model's logits for that segment alone."""
    torch.manual_seed(0)
    model = TinyGPT(TinyGPTConfig(vocab_size=1000, num_layers=2)).eval()
    inputs, _, positions = _packed(LENGTHS, seq_len=8).read(0, 3)
    with torch.no_grad():
        packed = model(inputs, positions)
        for row, start, end in _segments(positions):
            alone = model(inputs[row : row + 1, start:end])
            assert torch.allclose(packed[row, start:end], alone[0], atol=1e-5), (row, start, end)
        assert not torch.allclose(model(inputs), packed, atol=1e-3)  # one causal row would leak across documents


def test_packed_loss_equals_transformers_per_document_losses(checkpoint_dir: Path, tmp_path: Path) -> None:
    """The packed loss through ``CausalLMLogits`` is the token-weighted mean of the losses transformers computes
    for each document alone: no attention crosses a document, and the divisor counts real targets only."""
    from transformers import AutoModelForCausalLM

    data = _jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    corpus = load_corpus(str(data), "text", str(checkpoint_dir), VOCAB_SIZE)
    rows = PackedRows(corpus.lengths, corpus.fetch, seq_len=128, seed=0, pad_id=corpus.eos_id)
    assert rows.rows_per_epoch == 1  # every document whole in one row, then padding
    inputs, targets, positions = rows.read(0, 2)  # epochs 0 and 1: two orders
    count = rows.target_count(0, 2)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir).eval()
    with torch.no_grad():
        packed = causal_lm_loss(CausalLMLogits(model)(inputs, positions), targets, count)
        documents = [torch.from_numpy(ids).long()[None] for ids in corpus.fetch(range(len(DOCUMENTS)))]
        per_document = [(model(input_ids=ids, labels=ids).loss, ids.shape[1] - 1) for ids in documents]
        leaky = causal_lm_loss(CausalLMLogits(model)(inputs), targets, count)
    weighted = sum(loss * n for loss, n in per_document) / sum(n for _, n in per_document)
    assert count == 2 * sum(n for _, n in per_document)
    assert abs(float(packed) - float(weighted)) < 1e-5, (float(packed), float(weighted))
    assert abs(float(leaky) - float(weighted)) > 1e-3  # without position ids documents see each other


def test_transformers_split_documents_are_attended_alone(checkpoint_dir: Path, tmp_path: Path) -> None:
    """Rows shorter than documents: each segment (a document, or the part a row boundary split off) reads as
    that segment alone through transformers' packed-sequence mask."""
    from transformers import AutoModelForCausalLM

    data = _jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    corpus = load_corpus(str(data), "text", str(checkpoint_dir), VOCAB_SIZE)
    inputs, _, positions = PackedRows(corpus.lengths, corpus.fetch, 10, 0, corpus.eos_id).read(0, 4)
    model = CausalLMLogits(AutoModelForCausalLM.from_pretrained(checkpoint_dir).eval())
    with torch.no_grad():
        packed = model(inputs, positions)
        segments = _segments(positions)
        assert len(segments) > len(positions)  # some rows hold several documents
        for row, start, end in segments:
            assert torch.allclose(packed[row, start:end], model(inputs[row : row + 1, start:end])[0], atol=1e-5)


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "saved", "txt"])
def test_text_datasets_load_and_tokenize(checkpoint_dir: Path, tmp_path: Path, kind: str) -> None:
    from transformers import AutoTokenizer

    rows = datasets.Dataset.from_dict({"body": DOCUMENTS, "id": list(range(len(DOCUMENTS)))})
    path = tmp_path / f"docs.{kind}"
    if kind == "jsonl":
        rows.to_json(str(path))
    elif kind == "parquet":
        rows.to_parquet(str(path))
    elif kind == "saved":
        rows.save_to_disk(str(path))
    else:
        path.write_text("\n".join(DOCUMENTS) + "\n")
    field = "text" if kind == "txt" else "body"
    corpus = load_corpus(str(path), field, str(checkpoint_dir), VOCAB_SIZE)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    expected = [[*tokenizer(text)["input_ids"], tokenizer.eos_token_id] for text in DOCUMENTS]
    assert expected[0][0] == tokenizer.bos_token_id
    assert [list(ids) for ids in corpus.fetch(range(len(DOCUMENTS)))] == expected
    assert corpus.lengths.tolist() == [len(ids) for ids in expected]


def test_a_dataset_id_loads_offline_from_the_hugging_face_cache(
    checkpoint_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the operator's download Job puts a dataset (``hf download --repo-type dataset``): the hub cache's
    ``datasets--org--name`` snapshot, read with the Hub unreachable."""
    import huggingface_hub.constants

    hub = tmp_path / "hub"
    snapshot = hub / "datasets--acme--docs" / "snapshots" / ("0" * 40)
    (snapshot / "data").mkdir(parents=True)
    datasets.Dataset.from_dict({"text": DOCUMENTS}).to_parquet(str(snapshot / "data" / "train.parquet"))
    (hub / "datasets--acme--docs" / "refs").mkdir()
    (hub / "datasets--acme--docs" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    corpus = load_corpus("acme/docs", "text", str(checkpoint_dir), VOCAB_SIZE)
    assert len(corpus.lengths) == len(DOCUMENTS)
    with pytest.raises(ConfigError, match="--data acme/absent: cannot be read"):
        load_corpus("acme/absent", "text", str(checkpoint_dir), VOCAB_SIZE)


def test_messages_go_through_the_chat_template(checkpoint_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    data = _jsonl(tmp_path / "chat.jsonl", [{"messages": c, "source": "test"} for c in CONVERSATIONS])
    corpus = load_corpus(str(data), "text", str(checkpoint_dir), VOCAB_SIZE)  # no text column: messages
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    rendered = tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert rendered.startswith("[BOS]user : hello there assistant : the cat")
    expected = [*tokenizer.apply_chat_template(CONVERSATIONS[0], tokenize=True, return_dict=False), 2]
    assert list(corpus.fetch([0])[0]) == expected
    assert tokenizer.unk_token_id not in expected


def test_same_dataset_and_options_give_the_same_fingerprint(checkpoint_dir: Path, tmp_path: Path) -> None:
    data = _jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    other = _jsonl(tmp_path / "other.jsonl", [{"text": text} for text in reversed(DOCUMENTS)])
    base = TrainConfig(model=str(checkpoint_dir), data=str(data), seq_len=16)
    stream = build_stream(base, VOCAB_SIZE)
    assert stream.fingerprint == build_stream(base, VOCAB_SIZE).fingerprint
    for changed in ({"data": str(other)}, {"seq_len": 17}, {"seed": 1}):
        assert build_stream(replace(base, **changed), VOCAB_SIZE).fingerprint != stream.fingerprint


def test_data_field_flag() -> None:
    config = load_config(["--data", "corpus.jsonl", "--data-field", "body"], environ={})
    assert (config.data, config.data_field) == ("corpus.jsonl", "body")
    assert load_config([], environ={}).data_field == "text"


def _bad_inputs(checkpoint_dir: Path, tmp_path: Path) -> list[tuple[str, str, str, str]]:
    bare = tmp_path / "bare"
    save_tiny_llama(bare, tokenizer=False)
    plain = tmp_path / "plain"
    save_tiny_llama(plain, chat_template=False)
    docs = _jsonl(tmp_path / "docs.jsonl", [{"text": text} for text in DOCUMENTS])
    chat = _jsonl(tmp_path / "chat.jsonl", [{"messages": c} for c in CONVERSATIONS])
    numbers = _jsonl(tmp_path / "numbers.jsonl", [{"text": 1}])
    (tmp_path / "docs.xml").write_text("<doc/>")
    return [
        ("tiny-gpt", str(docs), "text", r"--model tiny-gpt has no tokenizer .* use --data synthetic"),
        (str(bare), str(docs), "text", r"--model .*bare: .*tokenizer.*save one"),
        (str(checkpoint_dir), str(tmp_path / "gone.jsonl"), "text", r"--data .*gone.jsonl: cannot be read .*download"),
        (str(checkpoint_dir), "nobody/no-such-dataset", "text", r"--data nobody/no-such-dataset: cannot be read"),
        (str(checkpoint_dir), str(tmp_path / "docs.xml"), "text", r"unknown file type '\.xml'"),
        (str(checkpoint_dir), str(docs), "body", r"--data-field body: no such column .*columns: text"),
        (str(checkpoint_dir), str(numbers), "text", r"--data-field text: holds .*int64.*neither text nor"),
        (str(plain), str(chat), "text", r"conversations need a chat template"),
    ]


def test_bad_data_is_a_config_error_naming_the_flag(checkpoint_dir: Path, tmp_path: Path) -> None:
    for model, data, field, message in _bad_inputs(checkpoint_dir, tmp_path):
        with pytest.raises(ConfigError, match=message):
            load_corpus(data, field, model, VOCAB_SIZE)
    data = _jsonl(tmp_path / "more.jsonl", [{"text": text} for text in DOCUMENTS])
    with pytest.raises(ConfigError, match=r"token id \d+ .* outside the model's vocabulary \(vocab_size 8\)"):
        load_corpus(str(data), "text", str(checkpoint_dir), 8)
