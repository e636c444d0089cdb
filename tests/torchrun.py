"""Multi-process CPU runs for the integration tests: ``torchrun --standalone`` with gloo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

WORKER_TIMEOUT_SECONDS = 300


def torchrun(world: int, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone`` (a free rendezvous port) on CPU; fails the test with the output when it fails."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [*command, str(script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=WORKER_TIMEOUT_SECONDS,
        check=False,
    )
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    return done
