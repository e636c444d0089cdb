"""The parallel runtime: tensor-parallel analysis, memory estimate and conversion of any torch model.

```python
from autoparallel.parallel import analyze_tp, convert_to_tp, estimate_tp_memory

report = analyze_tp(model)                 # any nn.Module, meta-device models included
print(report.summary())
estimate = estimate_tp_memory(report, 4)   # weights per rank, communication buffers, savings
model = convert_to_tp(model, init_device_mesh("cuda", (4,)))
```

The names resolve lazily, so ``autoparallel.parallel.cli`` (and the ``autoparallel`` command) import
without torch; using any of them needs the ``torch`` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from autoparallel.parallel.tp_analysis import analyze_tp
    from autoparallel.parallel.tp_convert import (
        TensorParallelError,
        build_tp_plan,
        convert_to_tp,
        is_tensor_parallel,
    )
    from autoparallel.parallel.tp_memory import TPMemoryEstimate, estimate_tp_memory
    from autoparallel.parallel.tp_report import LayerAnalysis, TPAnalysisReport
    from autoparallel.parallel.tp_structure import TPStyle

_EXPORTS = {
    "analyze_tp": "tp_analysis",
    "TensorParallelError": "tp_convert",
    "build_tp_plan": "tp_convert",
    "convert_to_tp": "tp_convert",
    "is_tensor_parallel": "tp_convert",
    "TPMemoryEstimate": "tp_memory",
    "estimate_tp_memory": "tp_memory",
    "LayerAnalysis": "tp_report",
    "TPAnalysisReport": "tp_report",
    "TPStyle": "tp_structure",
}

__all__ = [
    "LayerAnalysis",
    "TPAnalysisReport",
    "TPMemoryEstimate",
    "TPStyle",
    "TensorParallelError",
    "analyze_tp",
    "build_tp_plan",
    "convert_to_tp",
    "estimate_tp_memory",
    "is_tensor_parallel",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
