"""Operator scale: N ParallelDeployments applied against M simulated GPU nodes on the local control plane.

Prints apply→Planned latency p50/p99, throughput and the operator's peak resident memory. Needs a cluster
(`make cluster-up`; KUBECONFIG is taken from it). Nodes and resources it creates are removed at the end.
Usage: python -m bench.operator [N] [M]
"""

from __future__ import annotations

import os
import secrets
import statistics
import subprocess
import sys
import time
from pathlib import Path

from kubernetes import client, config, watch

REPO = Path(__file__).parents[1]
GROUP, VERSION, PLURAL = "autoparallel.io", "v1alpha1", "paralleldeployments"
MODELS = ("meta-llama/Llama-3.2-1B", "meta-llama/Meta-Llama-3.1-8B", "Qwen/Qwen3-8B", "mistralai/Mistral-7B-v0.1")


def _kubeconfig() -> str:
    script = REPO / "hack" / "cluster-up.sh"
    subprocess.run([str(script)], check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(
        [str(script), "--print-kubeconfig-path"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _node(name: str, run: str) -> tuple[dict, dict]:
    labels = {
        "kubernetes.io/hostname": name,
        "type": "kwok",
        "autoparallel.io/bench": run,
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
        "nvidia.com/gpu.memory": "81559",
    }
    resources = {"cpu": "192", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
    body = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels, "annotations": {"kwok.x-k8s.io/node": "fake"}},
    }
    return body, {"status": {"capacity": resources, "allocatable": resources}}


def _deployment(index: int, run: str) -> dict:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ParallelDeployment",
        "metadata": {"name": f"pd-{index:04d}"},
        "spec": {
            "model": {"name": MODELS[index % len(MODELS)]},
            "workload": {"sequenceLength": 4096, "batchSize": 8},
            "placement": {"nodeSelector": {"autoparallel.io/bench": run}},
        },
    }


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    node_count = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    kubeconfig = _kubeconfig()
    config.load_kube_config(config_file=kubeconfig)
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    run = secrets.token_hex(3)
    namespace = f"bench-{run}"
    names = [f"bench-{run}-{i:03d}" for i in range(node_count)]
    env = {**os.environ, "KUBECONFIG": kubeconfig, "HF_HUB_OFFLINE": "1"}
    kubectl = str(Path.home() / ".cache" / "autoparallel" / "bin" / "kubectl")
    subprocess.run(
        [kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], check=True, env=env, stdout=subprocess.DEVNULL
    )
    operator = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "autoparallel"),
            "operator",
            "run",
            "-A",
            "--metrics-port",
            "0",
            "--liveness-port",
            "0",
            "--resync-seconds",
            "10",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for name in names:
            body, status = _node(name, run)
            core.create_node(body)
            core.patch_node_status(name, status)
        core.create_namespace({"metadata": {"name": namespace}})
        print(f"{node_count} simulated 8 × H100 nodes; applying {count} ParallelDeployments in {namespace}")
        created: dict[str, float] = {}
        planned: dict[str, float] = {}
        start = time.monotonic()
        for index in range(count):
            body = _deployment(index, run)
            created[body["metadata"]["name"]] = time.monotonic()
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, timeout_seconds=600
        ):
            obj = event["object"]
            name = obj["metadata"]["name"]
            conditions = (obj.get("status") or {}).get("conditions") or []
            if name not in planned and any(c["type"] == "Planned" and c["status"] == "True" for c in conditions):
                planned[name] = time.monotonic()
                if len(planned) == count:
                    stream.stop()
        elapsed = time.monotonic() - start
        latencies = sorted(planned[n] - created[n] for n in planned)
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(f"planned {len(planned)}/{count} in {elapsed:.1f} s: throughput {len(planned) / elapsed:.1f} /s")
        print(f"apply→Planned latency p50 {statistics.median(latencies) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms")
        print(f"operator peak RSS {_peak_rss_mib(operator.pid):.0f} MiB")
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        core.delete_namespace(namespace)
        for name in names:
            core.delete_node(name)


if __name__ == "__main__":
    main()
