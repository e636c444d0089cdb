"""Phases: running one (creating ParallelDeployments at once or at a rate and waiting until all are Planned,
sampling CPU around it), its figures and report lines, and the rule that names what limits them."""

from __future__ import annotations

import math
import os
import statistics
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from bench.operator.base import poll
from bench.operator.cluster import Cluster, deployment
from bench.operator.probes import CPUS, CpuUse, control_plane_pids, cpu_seconds, cpu_use, sample_cpu
from bench.operator.process import Operator
from bench.operator.watch import PlannedWatch

BUSY = 0.85
"""CPU use (of one core for the operator, of all cores for the machine) from which a component limits."""


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


@dataclass(frozen=True)
class Phase:
    label: str
    count: int
    latencies: list[float]
    span: float
    """First create to last Planned, seconds."""
    reconciles: float
    cpu: CpuUse
    offered_rate: float | None = None
    achieved_rate: float | None = None

    def report(self) -> list[str]:
        lat = sorted(self.latencies)
        operator_cpu = self.cpu.seconds["operator"]
        lines = [
            f"{self.label}: {self.count} planned in {self.span:.1f} s",
            f"  apply→Planned p50 {statistics.median(lat) * 1000:.0f} ms, p99 {percentile(lat, 0.99) * 1000:.0f} ms, "
            f"max {lat[-1] * 1000:.0f} ms",
            f"  throughput {self.count / self.span:.1f} planned/s; reconciles {self.reconciles:.0f} "
            f"= {self.reconciles / self.cpu.wall:.1f}/s",
            f"  operator CPU {operator_cpu:.1f} s = "
            + (f"{operator_cpu / self.reconciles * 1000:.1f} ms per reconcile" if self.reconciles else "no reconcile"),
        ]
        if self.offered_rate is not None and self.achieved_rate is not None:
            lines.insert(1, f"  arrivals {self.offered_rate:g}/s asked, {self.achieved_rate:.1f}/s achieved")
        return lines

    def cpu_report(self) -> str:
        parts = [f"{name} {self.cpu.cores(name):.2f}" for name in self.cpu.seconds]
        return (
            f"  CPU over {self.cpu.wall:.1f} s, in cores: {', '.join(parts)}; "
            f"machine {self.cpu.machine * CPUS:.2f} of {CPUS}"
        )


def limiting(phase: Phase) -> str:
    """One line naming what limits the phase's figures."""
    cpu = phase.cpu
    operator = cpu.cores("operator")
    others = {name: cpu.cores(name) for name in cpu.seconds if name != "operator"}
    top, top_cores = max(others.items(), key=lambda item: item[1])
    if operator >= BUSY:
        return (
            f"limited by the operator's CPU: it used {operator:.2f} of the one core its single asyncio thread "
            f"can use (next: {top} {top_cores:.2f} cores)"
        )
    if cpu.machine >= BUSY:
        ranked = sorted(cpu.seconds.items(), key=lambda item: -item[1])
        shares = ", ".join(f"{name} {seconds / cpu.wall:.2f}" for name, seconds in ranked[:4])
        return (
            f"limited by the machine's {CPUS} CPUs ({cpu.machine:.0%} busy), shared by {shares} cores: "
            f"{ranked[0][0]} is the largest consumer; the operator ({operator:.2f} cores) is not saturated"
        )
    if top_cores > operator:
        return f"limited by {top} ({top_cores:.2f} cores vs the operator's {operator:.2f}): API round-trips dominate"
    return (
        f"limited by the operator's latency, not CPU ({operator:.2f} cores, machine {cpu.machine:.0%} busy): "
        f"it waits on API round-trips"
    )


@dataclass
class Bench:
    cluster: Cluster
    watcher: PlannedWatch
    operator: Operator
    namespace: str
    pool: ThreadPoolExecutor
    timeout: float

    def processes(self) -> dict[str, int]:
        return {"operator": self.operator.pid, **control_plane_pids(), "bench": os.getpid()}

    def warm_up(self) -> float:
        """Wait for /healthz, then for one plan-only ParallelDeployment to be Planned; returns the seconds."""
        started = time.monotonic()
        poll(self.operator.healthy, 180, f"the operator's /healthz on port {self.operator.liveness_port}")
        self.cluster.create(self.namespace, deployment("warm-up", 0, self.cluster.run, plan_only=True))
        self.watcher.wait_planned(["warm-up"], self.timeout, self.operator.check_alive)
        return time.monotonic() - started

    def phase(self, label: str, names: list[str], rate: float | None = None) -> Phase:
        """Create ``names`` at once (rate None) or ``rate`` per second, and wait until all are Planned."""
        pids = self.processes()
        reconciles_before = self.operator.reconciles()
        before = sample_cpu(pids)
        created: dict[str, float] = {}

        def create(item: tuple[int, str]) -> None:
            index, name = item
            created[name] = time.monotonic()
            self.cluster.create(self.namespace, deployment(name, index, self.cluster.run))

        if rate is None:
            list(self.pool.map(create, enumerate(names)))
        else:
            pacing = threading.Event()
            futures = []
            for index, name in enumerate(names):
                due = before.at + index / rate
                pacing.wait(max(0.0, due - time.monotonic()))  # the arrival schedule, not a condition
                futures.append(self.pool.submit(create, (index, name)))
            for future in futures:
                future.result()
        last_create = max(created.values())
        planned = self.watcher.wait_planned(names, self.timeout, self.operator.check_alive)
        after = sample_cpu(pids)
        reconciles = self.operator.reconciles() - reconciles_before
        first = min(created.values())
        return Phase(
            label=label,
            count=len(names),
            latencies=[planned[name] - created[name] for name in names],
            span=max(planned.values()) - first,
            reconciles=reconciles,
            cpu=cpu_use(before, after),
            offered_rate=rate,
            achieved_rate=(len(names) - 1) / (last_create - first) if rate and len(names) > 1 else None,
        )

    def settle(self, timeout: float = 60) -> str:
        """Poll the operator's CPU over 2 s windows until it is below a quarter core (the tail of the previous
        phase: pods starting, statuses); says how long it took, or that it did not settle."""
        pid, started = self.operator.pid, time.monotonic()
        window = threading.Event()
        use = float("nan")
        while time.monotonic() - started < timeout:
            self.operator.check_alive()
            before = cpu_seconds(pid)
            window.wait(2.0)  # measurement window
            use = (cpu_seconds(pid) - before) / 2.0
            if use < 0.25:
                return f"operator settled ({use:.2f} cores) after {time.monotonic() - started:.0f} s"
        return f"operator still busy after {timeout:.0f} s ({use:.2f} cores): the next phase starts on a busy operator"
