"""Error of the inference memory model against the measured vLLM startups in tests/data."""

import json
from pathlib import Path

from autoparallel.planner.calibration import compare_all, format_table
from autoparallel.planner.inference import VLLM_VERSION

DATA = Path(__file__).parents[1] / "tests" / "data"


def main() -> None:
    bases = {k: v for k, v in json.loads((DATA / "calibration_bases.json").read_text()).items() if k[0] != "_"}
    print(f"memory model (vLLM {VLLM_VERSION}) against {DATA / 'vllm_measured.csv'}")
    print("\n".join(format_table(list(compare_all(DATA / "vllm_measured.csv", bases)))))


if __name__ == "__main__":
    main()
