"""The inference memory model against measured vLLM 0.19 startups (tests/data/vllm_measured.csv).

Every row whose model resolves offline is reproduced with the same model, dtype, quantization, TP/PP,
utilization and GPU memory: weights per GPU within 2 %, KV-cache tokens within 10 %. The per-row error table
is printed (run with ``-s``; ``make bench`` prints it too).
"""

import json
from pathlib import Path

import pytest

from autoparallel.planner.calibration import Comparison, compare_all, format_table

DATA = Path(__file__).parents[1] / "data"
MEASUREMENTS = DATA / "vllm_measured.csv"
BASES = {k: v for k, v in json.loads((DATA / "calibration_bases.json").read_text()).items() if k[0] != "_"}
COMPARISONS = list(compare_all(MEASUREMENTS, BASES))
USABLE = [c for c in COMPARISONS if c.skipped is None]


def _row_id(comparison: Comparison) -> str:
    m = comparison.measurement
    quantization = m.runtime_quantization or m.weight_format or "stored"
    return f"{m.label}-tp{m.tensor}-pp{m.pipeline}-{m.dtype}-{quantization}-kv{m.kv_cache_dtype}-{m.max_model_len}"


def test_most_rows_are_usable_and_the_table_is_printed() -> None:
    print("\n" + "\n".join(format_table(COMPARISONS)))
    # Rows skip only for models without a bundled config (multimodal and remote-code models among them).
    assert len(USABLE) >= 37


@pytest.mark.parametrize("comparison", USABLE, ids=_row_id)
def test_weights_per_gpu_within_2_percent(comparison: Comparison) -> None:
    assert abs(comparison.weights_error) <= 0.02


@pytest.mark.parametrize("comparison", USABLE, ids=_row_id)
def test_kv_cache_tokens_within_10_percent(comparison: Comparison) -> None:
    assert abs(comparison.kv_tokens_error) <= 0.10
