"""Probes of the machine from /proc: CPU seconds per process and of all CPUs, peak memory, whether torch is
mapped, and the pids of the local control plane's components."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from bench.operator.base import CLUSTER_DIR, BenchError

CONTROL_PLANE = ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok")
TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # fields 14 and 15 of proc(5), counted from state (3)


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user/nice
    return total - idle, total


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise BenchError(f"no VmHWM in /proc/{pid}/status")


def maps_torch(pid: int) -> bool:
    """Whether the process has torch's shared libraries mapped (it imported torch)."""
    return "/torch/lib/" in Path(f"/proc/{pid}/maps").read_text()


def control_plane_pids() -> dict[str, int]:
    """Pids of the running components from the state dir's pid files (only those still running the binary)."""
    pids: dict[str, int] = {}
    for component in CONTROL_PLANE:
        with contextlib.suppress(OSError, ValueError):
            pid = int((CLUSTER_DIR / "pids" / f"{component}.pid").read_text().strip())
            if Path(f"/proc/{pid}/exe").resolve().name == component:
                pids[component] = pid
    if "kube-apiserver" not in pids:
        raise BenchError(f"no running kube-apiserver recorded in {CLUSTER_DIR}/pids (AUTOPARALLEL_CLUSTER_DIR)")
    return pids


@dataclass(frozen=True)
class CpuSample:
    at: float
    processes: dict[str, float]
    """CPU seconds by process name."""
    machine: tuple[int, int]
    """(busy, total) jiffies."""


def sample_cpu(pids: dict[str, int]) -> CpuSample:
    return CpuSample(time.monotonic(), {name: cpu_seconds(pid) for name, pid in pids.items()}, machine_ticks())


@dataclass(frozen=True)
class CpuUse:
    wall: float
    seconds: dict[str, float]
    """CPU seconds used by each process over the window."""
    machine: float
    """Busy fraction of all the machine's CPUs over the window."""

    def cores(self, name: str) -> float:
        return self.seconds[name] / self.wall


def cpu_use(before: CpuSample, after: CpuSample) -> CpuUse:
    """CPU seconds of each process over the window, plus "other": every other process of the machine (the
    machine's busy time minus the processes named)."""
    busy = after.machine[0] - before.machine[0]
    total = after.machine[1] - before.machine[1]
    wall = after.at - before.at
    machine = busy / total if total else 0.0
    seconds = {name: after.processes[name] - before.processes[name] for name in before.processes}
    seconds["other processes"] = max(0.0, machine * CPUS * wall - sum(seconds.values()))
    return CpuUse(wall=wall, seconds=seconds, machine=machine)
