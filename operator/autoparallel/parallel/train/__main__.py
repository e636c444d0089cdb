"""``python -m autoparallel.parallel.train``: the entry point of the operator's training pods (under torchrun)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

import torch.distributed as dist

from autoparallel.parallel.train.config import ConfigError, load_config
from autoparallel.parallel.train.loop import train


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        config = load_config(argv)
        train(config)
        if dist.is_initialized():
            dist.barrier()  # no rank tears the group down while another still runs a collective (gloo aborts)
    except ConfigError as error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
