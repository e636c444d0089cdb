"""Per-step metrics: a line on stdout (text or JSON), a JSON-lines file, a CSV file, TensorBoard if installed."""

from __future__ import annotations

import csv
import json
import logging
import sys
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

logger = logging.getLogger("autoparallel.parallel.train")
CSV_FIELDS = ("step", "loss", "tokens_per_second", "step_seconds", "peak_memory_bytes")


@dataclass(frozen=True)
class StepMetrics:
    step: int
    loss: float
    tokens_per_second: float
    step_seconds: float
    peak_memory_bytes: int
    """The largest peak over all ranks."""
    peak_memory_bytes_per_rank: tuple[int, ...]


class MetricsWriter:
    """Writes rank 0's view of each step; other ranks build one with every output switched off."""

    def __init__(
        self,
        jsonl: str | None = None,
        csv_path: str | None = None,
        tensorboard_dir: str | None = None,
        json_stdout: bool = False,
    ) -> None:
        self.json_stdout = json_stdout
        self._files = ExitStack()
        self._jsonl = self._open(jsonl)
        csv_file = self._open(csv_path)
        self._csv = csv.DictWriter(csv_file, fieldnames=CSV_FIELDS, extrasaction="ignore") if csv_file else None
        if self._csv and csv_file and csv_file.tell() == 0:
            self._csv.writeheader()
        self._tensorboard: Any = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                logger.warning("tensorboard is not installed; --tensorboard-dir ignored")
            else:
                self._tensorboard = SummaryWriter(tensorboard_dir)

    def _open(self, path: str | None) -> IO[str] | None:
        if not path:
            return None
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # append: a resumed run continues the same files
        return self._files.enter_context(Path(path).open("a", encoding="utf-8"))

    def write(self, metrics: StepMetrics) -> None:
        record: dict[str, Any] = asdict(metrics)
        record["peak_memory_bytes_per_rank"] = list(metrics.peak_memory_bytes_per_rank)
        if self.json_stdout:
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()
        else:
            logger.info(
                "step %d loss %.6f tokens/s %.1f step %.3fs peak memory %d bytes",
                metrics.step,
                metrics.loss,
                metrics.tokens_per_second,
                metrics.step_seconds,
                metrics.peak_memory_bytes,
            )
        if self._jsonl:
            self._jsonl.write(json.dumps(record) + "\n")
            self._jsonl.flush()
        if self._csv:
            self._csv.writerow(record)
        if self._tensorboard is not None:
            for name in ("loss", "tokens_per_second", "step_seconds", "peak_memory_bytes"):
                self._tensorboard.add_scalar(name, record[name], metrics.step)

    def close(self) -> None:
        self._files.close()
        if self._tensorboard is not None:
            self._tensorboard.close()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()
