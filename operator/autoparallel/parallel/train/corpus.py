"""Real data: a ``datasets`` dataset, tokenized by the model's tokenizer (``transformers.AutoTokenizer``).

``--data`` is a local file (jsonl/json, parquet, arrow, csv, or txt with one document per line), a local folder
(a ``save_to_disk`` dataset, or data files that ``datasets.load_dataset`` recognises) or a dataset id in the
local Hugging Face cache (``HF_HOME``). Each row is one document: its ``--data-field`` text, or its ``messages``
(a list of ``{"role", "content"}``) rendered by the tokenizer's chat template. Every document ends with EOS.

Tokenizing is ``Dataset.map``, cached by ``datasets`` beside the dataset's own cache (so a second rank or run
reads the tokens instead of computing them again); documents are read back by index, memory-mapped.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoparallel.parallel.train.config import DEFAULT_DATA_FIELD, ConfigError
from autoparallel.parallel.train.model import TINY_GPT

MESSAGES = "messages"
"""The column of chat conversations, used when the ``--data-field`` column is missing."""
TOKENS = "input_ids"
"""The tokenized dataset's one column."""
BUILDERS = {
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".csv": "csv",
    ".txt": "text",
}
"""``datasets`` packaged builders by file suffix."""
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")
"""Written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``: such a folder loads with ``load_from_disk``."""
SPLIT = "train"
CHAT_KEYS = {"role", "content"}
"""What each message of a conversation holds."""


@dataclass(frozen=True)
class Corpus:
    """Tokenized documents."""

    tokens: Any
    """A ``datasets.Dataset`` with one row of token ids per document (numpy format)."""
    lengths: np.ndarray
    """Tokens per document."""
    content_hash: str
    """sha256 of every document's token ids and length: identifies the data and the tokenizer together."""
    eos_id: int

    def fetch(self, indices: Sequence[int]) -> Sequence[np.ndarray]:
        """Token ids of the documents at ``indices``, in that order."""
        fetched: Sequence[np.ndarray] = self.tokens[list(indices)][TOKENS]
        return fetched


def load_tokenizer(model: str) -> Any:
    """The tokenizer saved with ``--model`` (its folder, the folder of its ``config.json``, or a cached hub id)."""
    from transformers import AutoTokenizer

    if model == TINY_GPT:
        raise ConfigError(
            f"--model {TINY_GPT} has no tokenizer to read --data with: use --data synthetic, or a --model folder "
            "or hub id that holds a tokenizer"
        )
    path = Path(model)
    source = str(path.parent if path.is_file() else path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"--model {model}: no tokenizer to read --data with ({_first_line(error)}); "
            "save one beside the model (tokenizer.save_pretrained) or use --data synthetic"
        ) from error
    if len(tokenizer) <= len(tokenizer.all_special_ids):
        raise ConfigError(
            f"--model {model}: no tokenizer files (tokenizer.json, tokenizer_config.json) beside the "
            "model; save one there (tokenizer.save_pretrained) or use --data synthetic"
        )
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"--model {model}: the tokenizer has no eos_token to end documents with; set eos_token "
            "in its tokenizer_config.json"
        )
    return tokenizer


def cached_dataset(data: str) -> str:
    """A dataset id's snapshot folder in the local Hugging Face cache (where the operator's download Job puts it;
    ``datasets.load_dataset(id)`` itself needs the Hub, even offline), else ``data`` unchanged."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder: str = snapshot_download(repo_id=data, repo_type="dataset", local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError):
        return data
    return folder


def load_rows(data: str) -> Any:
    """The ``train`` split (or the only one) of ``data`` as a ``datasets.Dataset``."""
    import datasets

    path = Path(data)
    if path.is_file() and path.suffix not in BUILDERS:
        raise ConfigError(f"--data {data}: unknown file type {path.suffix!r}; use one of {', '.join(BUILDERS)}")
    try:
        if path.is_file():
            loaded = datasets.load_dataset(BUILDERS[path.suffix], data_files=str(path))
        elif path.is_dir() and any((path / name).is_file() for name in SAVED_DATASET_FILES):
            loaded = datasets.load_from_disk(str(path))
        else:
            loaded = datasets.load_dataset(cached_dataset(data))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        fix = (
            f"give a {', '.join(sorted(set(BUILDERS.values())))} file, or a folder of them"
            if path.exists()
            else "fix the path, or download the dataset into the Hugging Face cache (HF_HOME) first: "
            f"hf download --repo-type dataset {data}"
        )
        raise ConfigError(f"--data {data}: cannot be read ({_first_line(error)}); {fix}") from error
    if isinstance(loaded, datasets.Dataset):
        return loaded
    splits = list(loaded)
    if SPLIT not in splits and len(splits) != 1:
        raise ConfigError(f"--data {data}: no {SPLIT!r} split among {', '.join(splits)}; keep the split to train on")
    return loaded[SPLIT if SPLIT in splits else splits[0]]


def document_column(rows: Any, field: str, data: str) -> tuple[str, bool]:
    """The column holding each row's document, and whether it is a conversation for the chat template: the
    ``field`` column, else (``field`` left at its default) a ``messages`` column."""
    from datasets import LargeList, List, Value

    column = field if field in rows.column_names else None
    if column is None and field == DEFAULT_DATA_FIELD and MESSAGES in rows.column_names:
        column = MESSAGES
    if column is None:
        raise ConfigError(
            f"--data-field {field}: no such column in --data {data} (columns: "
            f"{', '.join(rows.column_names)}); pass the text column as --data-field"
        )
    feature = rows.features[column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string"):
        return column, False
    if (
        isinstance(feature, List | LargeList)
        and isinstance(feature.feature, dict)
        and set(feature.feature) >= CHAT_KEYS
    ):
        return column, True
    raise ConfigError(
        f"--data-field {column}: holds {feature}, neither text nor a list of messages; pass the "
        "text column as --data-field"
    )


def tokenize(rows: Any, column: str, chat: bool, tokenizer: Any) -> Any:
    """One row of token ids per document: the text with the tokenizer's special tokens (its BOS), or the
    conversation through ``apply_chat_template``; then EOS unless the document already ends with it."""
    from datasets import Features, List, Value

    if chat and tokenizer.chat_template is None:
        raise ConfigError(
            f"--data-field {column}: conversations need a chat template, and the tokenizer has none; "
            "add chat_template to its tokenizer_config.json or train on a text column"
        )
    eos = int(tokenizer.eos_token_id)

    def encode(batch: dict[str, list[Any]]) -> dict[str, list[list[int]]]:
        if chat:
            encoded = tokenizer.apply_chat_template(batch[column], tokenize=True, return_dict=False)
        else:
            encoded = tokenizer(batch[column], add_special_tokens=True)[TOKENS]
        return {TOKENS: [ids if ids and ids[-1] == eos else [*ids, eos] for ids in encoded]}

    return rows.map(
        encode,
        batched=True,
        remove_columns=rows.column_names,
        features=Features({TOKENS: List(Value("int32"))}),
        desc="tokenizing",
    )


def summarize(tokens: Any) -> tuple[np.ndarray, str, int]:
    """Each document's length, the content hash, and the largest token id, in one pass over the arrow data."""
    digest = hashlib.sha256()
    lengths: list[np.ndarray] = []
    largest = -1
    for chunk in tokens.with_format("arrow")[:][TOKENS].chunks:
        chunk_lengths = chunk.value_lengths().to_numpy(zero_copy_only=False).astype(np.int64)
        values = chunk.flatten().to_numpy()
        digest.update(chunk_lengths.tobytes())
        digest.update(values.astype(np.int32).tobytes())
        lengths.append(chunk_lengths)
        if values.size:
            largest = max(largest, int(values.max()))
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64), digest.hexdigest(), largest


def load_corpus(data: str, field: str, model: str, vocab_size: int) -> Corpus:
    """``data`` tokenized by ``model``'s tokenizer; :class:`ConfigError` for anything that cannot train."""
    tokenizer = load_tokenizer(model)
    rows = load_rows(data)
    column, chat = document_column(rows, field, data)
    tokens = tokenize(rows, column, chat, tokenizer)
    lengths, content_hash, largest = summarize(tokens)
    if not (lengths > 1).any():
        raise ConfigError(f"--data {data}: no document with text in column {column!r}")
    if largest >= vocab_size:
        raise ConfigError(
            f"--data {data}: token id {largest} of the tokenizer of --model {model} is outside the "
            f"model's vocabulary (vocab_size {vocab_size}); use the tokenizer saved with the model"
        )
    return Corpus(tokens.with_format("numpy"), lengths, content_hash, int(tokenizer.eos_token_id))


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
