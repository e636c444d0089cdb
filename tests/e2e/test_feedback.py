"""The plan checked against what vLLM reports, on the real control plane. kwok runs no vLLM, so the tests play
its part: they write a real vLLM out-of-memory text into a serving container's termination status (what the
kubelet does with FallbackToLogsOnError), and serve a vLLM-format /metrics body from a stand-in HTTP server at
the pod's address."""

from __future__ import annotations

import http.server
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kube import KubeCluster, wait_for

from .conftest import Operator, example
from .pd import children, create, events, get, kubelet_reports, patch_spec, scrape_metrics, wait_condition

DATA = Path(__file__).resolve().parent.parent / "data" / "vllm"
OOM_LINE = (
    "ValueError: No available memory for the cache blocks. Try increasing `gpu_memory_utilization` when "
    "initializing the engine."
)  # vllm/v1/core/kv_cache_utils.py, check_enough_kv_cache_memory


def _vllm_ran_out_of_memory(kube_cluster: KubeCluster, namespace: str, pod: client.V1Pod) -> None:
    """What the kubelet records when vLLM exits at start-up with that error, its log tail kept as the
    termination message (FallbackToLogsOnError)."""
    log_tail = f"INFO loading weights\nERROR [core.py:708] {OOM_LINE}\n"
    kubelet_reports(
        kube_cluster,
        namespace,
        pod,
        "Running",
        restarts=1,
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting"}},
        lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}},
    )


def _serving_pods(kube_cluster: KubeCluster, namespace: str, pd: dict[str, Any]) -> list[client.V1Pod]:
    plan_hash = pd["status"]["plan"]["hash"]
    pods = children(kube_cluster, namespace, pd["metadata"]["uid"])["Pod"]
    return [p for p in pods if (p.metadata.annotations or {}).get("autoparallel.io/plan-hash") == plan_hash]


def test_out_of_memory_falls_back_onto_a_plan_with_more_room_and_serves(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("moe-mixtral.yaml")
    create(kube_cluster, pd_namespace, body)
    first = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    before = first["status"]["plan"]
    _vllm_ran_out_of_memory(kube_cluster, pd_namespace, _serving_pods(kube_cluster, pd_namespace, first)[0])

    def replanned() -> dict[str, Any] | None:
        pd = get(kube_cluster, pd_namespace, "mixtral")
        plan = pd["status"].get("plan") or {}
        return pd if plan.get("hash") not in (None, before["hash"]) else None

    pd = wait_for(replanned, timeout=60, description="a new plan after the out-of-memory")
    after = pd["status"]["plan"]
    assert after["memoryPerGPU"]["weights"] < before["memoryPerGPU"]["weights"]  # more room on every GPU
    [record] = pd["status"]["outOfMemory"]
    assert record["planHash"] == before["hash"] and "No available memory for the cache blocks" in record["message"]
    assert f"TP={before['tensor']} PP={before['pipeline']}" in record["plan"]
    reasons = [(e.type, e.reason) for e in events(kube_cluster, pd_namespace, "mixtral")]
    assert ("Warning", "OutOfMemory") in reasons and ("Normal", "Replanned") in reasons
    ready = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    assert ready["status"]["plan"]["hash"] == after["hash"]


def test_no_plan_with_more_room_left_is_insufficient_memory(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str
) -> None:
    body = example("moe-mixtral.yaml")
    create(kube_cluster, pd_namespace, body)
    first = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    # Cap the GPUs at what the plan uses: no plan with more GPUs per replica is allowed.
    gpus = first["status"]["plan"]["gpus"]
    patch_spec(kube_cluster, pd_namespace, "mixtral", {"parallelism": {"maxGPUs": gpus}})
    capped = wait_condition(kube_cluster, pd_namespace, "mixtral", "Ready", "True", timeout=90)
    _vllm_ran_out_of_memory(kube_cluster, pd_namespace, _serving_pods(kube_cluster, pd_namespace, capped)[0])
    failed = wait_condition(kube_cluster, pd_namespace, "mixtral", "Planned", "False", "InsufficientMemory", timeout=60)
    message = next(c["message"] for c in failed["status"]["conditions"] if c["type"] == "Planned")
    assert "vLLM ran out of memory on" in message and f"TP={capped['status']['plan']['tensor']}" in message
    assert failed["status"]["outOfMemory"][0]["planHash"] == capped["status"]["plan"]["hash"]


class _VLLMMetrics(http.server.BaseHTTPRequestHandler):
    body = (DATA / "metrics.txt").read_bytes()

    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        if self.path == "/metrics":
            self.wfile.write(self.body)

    def log_message(self, *_: Any) -> None:
        """No access log on the test's stderr."""


@pytest.fixture
def stand_in_vllm() -> Iterator[int]:
    """A local HTTP server answering /metrics as vLLM 0.19 does; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _VLLMMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    thread.join()


def test_measured_kv_capacity_is_in_the_status_with_its_error(
    operator: Operator, kube_cluster: KubeCluster, pd_namespace: str, stand_in_vllm: int
) -> None:
    body = example("llama70b.yaml")
    body["spec"].setdefault("serving", {})["port"] = stand_in_vllm
    create(kube_cluster, pd_namespace, body)
    pd = wait_condition(kube_cluster, pd_namespace, "llama70b", "Ready", "True", timeout=90)
    # The stand-in server is the pod's vLLM: point the pod's address at it.
    for pod in _serving_pods(kube_cluster, pd_namespace, pd):
        patch = {"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
        kube_cluster.core.patch_namespaced_pod_status(
            pod.metadata.name, pd_namespace, patch, _content_type="application/merge-patch+json"
        )

    def measured() -> dict[str, Any] | None:
        return get(kube_cluster, pd_namespace, "llama70b")["status"].get("measured")

    report = wait_for(measured, timeout=60, description="status.measured")
    planned = pd["status"]["plan"]["kvCacheTokens"]
    assert (report["kvCacheTokens"], report["gpuBlocks"], report["blockSize"]) == (29745 * 16, 29745, 16)
    assert report["planHash"] == pd["status"]["plan"]["hash"]
    assert report["error"] == f"{(planned - 475_920) / 475_920:+.1%}"
    if abs(planned - 475_920) / 475_920 > 0.10:
        assert any(e.reason == "MemoryModelGap" for e in events(kube_cluster, pd_namespace, "llama70b"))
    labels = f'name="llama70b",namespace="{pd_namespace}"'

    def scraped() -> str | None:
        text = scrape_metrics(operator.metrics_port)
        return text if f"autoparallel_kv_cache_tokens_measured{{{labels}}}" in text else None

    text = wait_for(scraped, timeout=30, description="the measured gauge")
    assert re.search(rf"autoparallel_kv_cache_tokens_measured{{{labels}}} 475920\.0", text)
