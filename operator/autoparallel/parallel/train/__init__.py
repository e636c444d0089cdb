"""Training runtime of the operator's training pods: data × tensor × pipeline parallelism on torch.distributed.

``python -m autoparallel.parallel.train`` (under torchrun) builds a (dp, pp, tp) device mesh, a tiny GPT or a
transformers causal LM, splits it into pipeline stages (1F1B) and tensor-parallel shards (DTensor), shards it
over the data-parallel ranks with FSDP2 (``fully_shard``, gradients reduce-scattered after each micro-batch),
and saves resharding checkpoints (``torch.distributed.checkpoint``). A Hugging Face checkpoint is read into that
layout shard by shard (``pretrained.py``), and the result written out as a Hugging Face folder (``export.py``).
See ``docs/training.md``.
"""

from autoparallel.parallel.train.config import ConfigError, TrainConfig, load_config
from autoparallel.parallel.train.loop import train
from autoparallel.parallel.train.metrics import StepMetrics

__all__ = ["ConfigError", "StepMetrics", "TrainConfig", "load_config", "train"]
