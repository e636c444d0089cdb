"""Reading vLLM's own report of the current plan's KV cache from a ready server's ``/metrics`` (the I/O half of
:mod:`feedback`): once per plan, into ``status.measured``, a gauge and, beyond a 10 % gap, a Warning Event.

The operator connects to the pod's IP on the serving port, as Prometheus would: no Kubernetes permission is
involved (no ``pods/proxy``, no ``pods/log``); a NetworkPolicy that isolates the serving pods must admit the
operator's pod on that port.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.request
from collections.abc import Sequence

import kopf

from autoparallel.controller import k8s, metrics
from autoparallel.controller.feedback import (
    MEASURED_GAP,
    Endpoint,
    cache_report,
    format_error,
    relative_error,
)
from autoparallel.controller.models import Measured, ParallelDeploymentSpec, PlanStatus, ServingSpec, WorkloadType
from autoparallel.controller.render.monitoring import METRICS_PATH
from autoparallel.controller.status import now

METRICS_TIMEOUT_SECONDS = 3
METRICS_MAX_BYTES = 4 * 1024 * 1024
"""vLLM's /metrics body is tens of KiB; more is not a vLLM server."""


def _current_measured(body: kopf.Body) -> str | None:
    measured = (body.get("status") or {}).get("measured") or {}
    return measured.get("planHash")


async def measure(
    body: kopf.Body,
    spec: ParallelDeploymentSpec,
    plan: PlanStatus,
    endpoints: Sequence[Endpoint],
    logger: kopf.Logger | logging.Logger,
) -> Measured | None:
    """vLLM's report of the current plan's KV cache, read once per plan from a ready server's /metrics."""
    if spec.workload.type is not WorkloadType.INFERENCE or _current_measured(body) == plan.hash:
        return None
    endpoint = next((e for e in endpoints if e.plan_hash == plan.hash), None)
    if endpoint is None:
        return None
    url = f"http://{endpoint.ip}:{(spec.serving or ServingSpec()).port}{METRICS_PATH}"
    try:
        text = await asyncio.to_thread(_fetch, url)
    except (OSError, ValueError) as failure:  # not serving yet, or not vLLM: try again on the next resync
        logger.debug(f"reading {url}: {failure}")
        return None
    report = cache_report(text)
    if report is None:
        return None
    gap = relative_error(plan.kv_cache_tokens, report.tokens)
    measured = Measured(
        plan_hash=plan.hash,
        kv_cache_tokens=report.tokens,
        gpu_blocks=report.num_gpu_blocks,
        block_size=report.block_size,
        error=format_error(gap),
        pod=endpoint.pod,
        time=now(),
    )
    meta = body["metadata"]
    metrics.record_measured(meta["namespace"], meta["name"], report.tokens, gap)
    if abs(gap) > MEASURED_GAP:
        await k8s.post_event(
            body,
            "Warning",
            "MemoryModelGap",
            f"vLLM reports {report.tokens} KV-cache tokens per replica ({report.num_gpu_blocks} blocks of "
            f"{report.block_size}), the plan {plan.kv_cache_tokens} ({measured.error}): please report it with "
            "these numbers (docs/operator.md, 'Planned versus measured')",
        )
    return measured


def _fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=METRICS_TIMEOUT_SECONDS) as response:
        return str(response.read(METRICS_MAX_BYTES).decode("utf-8", "replace"))
