"""What every module of the bench shares: where things are, its error, and deadline-bounded polling."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).parents[2]
CACHE_DIR = Path(
    os.environ.get("AUTOPARALLEL_CACHE_DIR")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoparallel"
)
CLUSTER_DIR = Path(os.environ.get("AUTOPARALLEL_CLUSTER_DIR") or CACHE_DIR / "cluster")
"""The cluster state dir, as hack/cluster-up.sh computes it: pid files of the components, logs."""


class BenchError(RuntimeError):
    """A deadline passed or a step failed; the message says what was awaited and what was seen."""


def poll(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Call ``check`` until it returns a truthy value; fail with ``what`` and the last value when ``timeout``
    seconds pass. ``check`` may raise BenchError to fail at once (e.g. a process died)."""
    deadline = time.monotonic() + timeout
    stop = threading.Event()
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what} (last seen: {last!r})")
        stop.wait(interval)  # polling interval of a deadline-bounded wait
